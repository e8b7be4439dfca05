"""End-to-end real-time factor of the three-stage sampler (``sample --semantic-lm``) and each stage's share.

``run_hierarchy_benchmark(mode, repeats)`` runs the stages of ``whispergpt.inference.hierarchy`` exactly as
``sample --semantic-lm ... --fine ...`` chains them, on a prompt of ``prompt_s`` seconds continued
by ``seconds`` seconds, with random weights of the shipped recipes' sizes:

1. ``tokenize``: the prompt's semantic tokens (EnCodecMAE of ``mae_quickstart.yaml``'s size on the
   prompt's log-mel, 512-cluster nearest centroid, ``SemanticStage.prompt_tokens``);
2. ``semantic``: the semantic LM (``semantic_quickstart.yaml``: D128 L4, 150-token context, 512
   clusters) continues them to the whole length (``SemanticStage.continue_tokens``, long-form);
3. ``acoustic``: the acoustic model (``quickstart.yaml``'s size, pattern coarse, fusion concat,
   ``model.semantic: aligned``) generates codebook 0 with the mel feedback loop (``generate``);
4. ``fine``: the fine stage (``fine_quickstart.yaml``) fills codebook 1 (``FineStage``);
5. ``decode``: the codec decodes all K codebooks to audio (``Codec.decode``).

Codecs: ``quick`` uses ``Codec.random(tiny=True)`` and tiny models (a CI smoke, seconds); ``cpu``
the shipped codec (``whispergpt-small-24khz``, what the quickstart trains on) at 1.5 kbps (K=2).
``x_real_time = batch x seconds generated / median wall time of all five stages``; ``share_*`` is
each stage's fraction of that time (medians of the per-stage times, so the shares sum to ~1).
Standalone: ``python benchmarks/bench_hierarchy.py [--quick] [--threads 2] [--out runs/bench/hierarchy.json]``;
also the ``hierarchy`` section of ``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

STAGES = ("tokenize", "semantic", "acoustic", "fine", "decode")
SIZES = {  # name -> (mae (D, L), semantic LM (D, L, context tokens), acoustic (D, L, context), fine (D, L, context), clusters)
    "tiny": ((32, 2), (32, 2, 32), (32, 2, 64), (32, 1, 64), 16),
    "quickstart": ((128, 4), (128, 4, 150), (128, 4, 225), (128, 4, 225), 512),
}
MODES = {  # mode -> (size, codec, prompt seconds, seconds generated, batches, repeats)
    "quick": ("tiny", "tiny", 0.4, 1.0, (1,), 1),
    "cpu": ("quickstart", "shipped", 2.0, 6.0, (1, 4), 2),
    "gpu": ("quickstart", "shipped", 2.0, 20.0, (1, 8), 3),
}


def build_stages(size: str, codec_kind: str, device: torch.device):
    """Random models of ``size`` wired as ``sample --semantic-lm`` wires them: ``(semantic stage,
    acoustic model, codec, fine stage)``."""
    from whispergpt.codec import Codec
    from whispergpt.codec.codec import SHIPPED_CODEC_DIR
    from whispergpt.inference.fine_stage import FineStage
    from whispergpt.inference.hierarchy import SemanticStage
    from whispergpt.models import (
        EnCodecMAE,
        EnCodecMAEConfig,
        FineConfig,
        FineModel,
        SemanticLM,
        SemanticLMConfig,
        WhisperGPT,
        WhisperGPTConfig,
    )
    from whispergpt.semantic.features import MAEInput
    from whispergpt.semantic.tokenizer import SemanticConfig, SemanticTokenizer

    (md, ml), (sd, sl, sctx), (ad, al, actx), (fd, fl, fctx), clusters = SIZES[size]
    torch.manual_seed(0)
    if codec_kind == "shipped":
        codec = Codec.from_pretrained(SHIPPED_CODEC_DIR, bandwidth=1.5)
    else:
        codec = Codec.random(bandwidth=1.5, seed=0, tiny=True)
    codec.to(device)
    K = codec.num_codebooks
    mae_cfg = EnCodecMAEConfig(input="mel", in_dim=80, num_codebooks=K, codebook_size=1024, d_model=md,
                               n_layers=ml, n_heads=4 if md >= 64 else 2, decoder_layers=1)  # fmt: skip
    mae = EnCodecMAE(mae_cfg).to(device).eval()
    tok = SemanticTokenizer(SemanticConfig(clusters=clusters, dim=md, layer=ml), torch.randn(clusters, md))
    tok._mae = (mae, MAEInput("mel", 80, device=device))  # in memory: what load_mae would open
    heads = 4 if sd >= 64 else 2
    lm = SemanticLM(SemanticLMConfig(clusters=clusters, d_model=sd, n_layers=sl, n_heads=heads, context=sctx))
    stage = SemanticStage(lm.to(device).eval(), tokenizer=tok, top_k=0)
    acoustic = (
        WhisperGPT(
            WhisperGPTConfig(
                num_codebooks=K,
                codebook_size=1024,
                n_mels=80,
                pattern="coarse",
                fusion="concat",
                d_model=ad,
                n_layers=al,
                n_heads=heads,
                context=actx,
                mel_dim=min(32, ad // 2),
                mel_layers=1,
                mel_heads=2,
                semantic="aligned",
                semantic_vocab=clusters,
            )  # fmt: skip
        )
        .to(device)
        .eval()
    )
    fine = FineModel(FineConfig(num_codebooks=K, codebook_size=1024, d_model=fd, n_layers=fl, n_heads=heads,
                                context=fctx))  # fmt: skip
    return stage, acoustic, codec, FineStage(fine.to(device).eval(), Path("random"))


def run_once(stage, acoustic, codec, fine, wave: torch.Tensor, frames: int, batch: int, device) -> dict:
    """One three-stage generation; seconds per stage (``STAGES``)."""
    from whispergpt.inference.generate import generate

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    wave = stage.trim_prompt(wave)
    stage.timings.update(tokenize_s=0.0, semantic_s=0.0)
    semantic = stage.frame_tokens(wave, frames, batch, device)  # stages 1-2, timed inside
    sync()
    t2 = time.perf_counter()
    prompt_codes = codec.encode(wave[None].to(device))
    result = generate(acoustic, codec, frames=frames, prompt_codes=prompt_codes, num_samples=batch, top_k=250,
                      decode_audio=False, semantic=semantic, generator=torch.Generator(device).manual_seed(0))  # fmt: skip
    sync()
    t3 = time.perf_counter()
    codes = fine(result.codes, prompt_codes)
    sync()
    t4 = time.perf_counter()
    audio = codec.decode(codes)
    sync()
    t5 = time.perf_counter()
    T = wave.shape[-1] // 320 + frames
    assert audio.shape == (batch, T * 320), audio.shape
    return dict(tokenize=stage.timings["tokenize_s"], semantic=stage.timings["semantic_s"], acoustic=t3 - t2,
                fine=t4 - t3, decode=t5 - t4)  # fmt: skip


def run_hierarchy_benchmark(
    mode: str = "cpu", device: str | torch.device = "cpu", repeats: int | None = None
) -> list[dict]:
    size, codec_kind, prompt_s, seconds, batches, default_repeats = MODES[mode]
    repeats = repeats or default_repeats
    device = torch.device(device)
    stage, acoustic, codec, fine = build_stages(size, codec_kind, device)
    g = torch.Generator().manual_seed(0)
    wave = 0.1 * torch.randn(int(prompt_s * 24000), generator=g)
    frames = int(round(seconds * 75))
    rows = []
    with torch.inference_mode():
        run_once(stage, acoustic, codec, fine, wave[:4800], 6, 1, device)  # warm-up
        for B in batches:
            runs = [run_once(stage, acoustic, codec, fine, wave, frames, B, device) for _ in range(repeats)]
            per = {s: statistics.median(r[s] for r in runs) for s in STAGES}
            total = sum(per.values())
            params = dict(semantic=stage.model.num_parameters(), acoustic=acoustic.num_parameters(),
                          fine=fine.model.num_parameters(), mae=stage.tokenizer._mae[0].num_parameters())  # fmt: skip
            rows.append(
                dict(
                    models=size,
                    codec=Path(codec.name).name if codec_kind == "shipped" else "Codec.random(tiny=True)",
                    params_M=round(sum(params.values()) / 1e6, 3),
                    batch=B,
                    prompt_s=prompt_s,
                    seconds_audio=seconds,
                    seconds=total,
                    x_real_time=B * seconds / total,
                    **{f"share_{s}": per[s] / total for s in STAGES},
                    **{f"{s}_s": per[s] for s in STAGES},
                    repeats=repeats,
                )
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python benchmarks/bench_hierarchy.py", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--mode", choices=list(MODES), default="cpu")
    ap.add_argument("--quick", action="store_true", help="= --mode quick (tiny models and codec, seconds)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", default=None, help="JSON path; the table goes next to it as .md")
    args = ap.parse_args(argv)
    mode = "quick" if args.quick else args.mode
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import markdown_table, write_outputs

    rows = run_hierarchy_benchmark(mode, args.device, args.repeats)
    table = markdown_table(rows)
    meta = dict(mode=mode, device=args.device, torch_threads=torch.get_num_threads(), torch=torch.__version__)
    print(f"three-stage sampler, {meta}\n\n{table}")
    if args.out:
        write_outputs(args.out, dict(meta=meta, rows=rows), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
