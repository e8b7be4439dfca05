"""The semantic LM (AudioLM's first stage): the model at its rate, its run config, a tiny training run
-> ``whispergpt eval`` (NLL per token, bits/s at the semantic rate) -> sampling, long-form included."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from whispergpt.cli.train import main as train_main
from whispergpt.config import ConfigError, load_run_config
from whispergpt.data import PreparedDataset
from whispergpt.evaluation.teacher_forced import evaluate
from whispergpt.inference.hierarchy import SemanticStage
from whispergpt.models import (
    SemanticLM,
    SemanticLMConfig,
    WhisperGPT,
    WhisperGPTConfig,
    WrongModelType,
    load_pretrained,
)
from whispergpt.models.semantic_lm import frame_tokens, rate_tokens
from whispergpt.training.tasks import get_task

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "semantic_tiny.yaml"


class _SingleProcess:
    device = torch.device("cpu")
    process_index, num_processes, is_main_process = 0, 1, True


def quiet(data, out, *extra) -> list[str]:
    return [f"data.dir={data}", f"out_dir={out}", "logging.wandb=false", "logging.progress=false", *extra]


def small_lm(clusters=6, context=16, seed=0) -> SemanticLM:
    torch.manual_seed(seed)
    cfg = SemanticLMConfig(clusters=clusters, rate=25, d_model=32, n_layers=1, n_heads=2, context=context)
    return SemanticLM(cfg).eval()


def test_rate_and_codec_grid_round_trip():
    tok = torch.tensor([[4, 1, 5]])
    grid = frame_tokens(tok, 3, 8)
    assert grid.tolist() == [[4, 4, 4, 1, 1, 1, 5, 5]]  # frame t carries token t // 3
    assert rate_tokens(grid, 3).equal(tok)
    assert rate_tokens(grid[:, 2:], 3).tolist() == [[4, 1]]  # from any start: consecutive tokens
    with pytest.raises(ValueError, match="need ceil"):
        frame_tokens(tok, 3, 10)
    with pytest.raises(ValueError, match="must divide 75"):
        SemanticLMConfig(clusters=6, rate=10)


def test_model_is_the_decoder_at_k1_and_round_trips(tmp_path):
    lm = small_lm()
    c = lm.lm.config
    assert (c.num_codebooks, c.codebook_size, c.pattern, c.fusion) == (1, 6, "coarse", "none")
    tokens = torch.randint(0, 6, (2, 10), generator=torch.Generator().manual_seed(0))
    logits = lm(tokens)
    assert logits.shape == (2, 10, 6)
    torch.testing.assert_close(logits, lm.lm(tokens[:, None]).logits[:, 0])
    nll_sum, count = lm.nll(tokens)
    torch.testing.assert_close(
        nll_sum.sum() / count.sum(), F.cross_entropy(logits.reshape(-1, 6), tokens.reshape(-1)).double()
    )
    lm.save_pretrained(tmp_path / "lm")
    assert json.loads((tmp_path / "lm" / "config.json").read_text())["model_type"] == "semantic-lm"
    back = load_pretrained(tmp_path / "lm")
    assert isinstance(back, SemanticLM) and back(tokens).equal(logits)
    with pytest.raises(WrongModelType, match="'semantic-lm' model"):
        WhisperGPT.from_pretrained(tmp_path / "lm")


def test_task_reads_the_stream_at_the_semantic_rate():
    lm = small_lm()
    task = get_task("semantic")
    frames = torch.tensor([[0, 0, 0, 3, 3, 3, 5, 5], [1, 2, 2, 2, 4, 4, 4, 0]])  # (B, T): crops at any offset
    logits, tokens = task.forward(lm, frames)
    assert tokens.tolist() == [[[0, 3, 5]], [[1, 2, 4]]]
    objective, nll_sum, count = task.loss((logits, tokens), frames)
    want = F.cross_entropy(lm(tokens[:, 0]).reshape(-1, 6), tokens.reshape(-1))
    torch.testing.assert_close(objective.float(), want)
    assert count.tolist() == [6] and task.tokens_per_crop(lm, 8) == 3


def test_config_takes_clusters_and_rate_from_the_dataset(semantic_dataset, tiny_dataset, tmp_path):
    cfg = load_run_config(TINY, quiet(semantic_dataset, tmp_path))
    assert cfg.task == "semantic" and (cfg.semantic_lm.clusters, cfg.semantic_lm.rate) == (6, 25)
    assert cfg.data.frames == 3 * cfg.semantic_lm.context == 96  # the crop in codec frames
    assert get_task("semantic").streams(cfg) == ("semantic",)
    with pytest.raises(ConfigError, match=r"semantic_lm.clusters=7 does not match the dataset"):
        load_run_config(TINY, quiet(semantic_dataset, tmp_path, "semantic_lm.clusters=7"))
    with pytest.raises(ConfigError, match="semantic_lm.rate=15 does not match"):
        load_run_config(TINY, quiet(semantic_dataset, tmp_path, "semantic_lm.rate=15"))
    with pytest.raises(ConfigError, match="prepare it with --semantic"):
        load_run_config(TINY, quiet(tiny_dataset, tmp_path))
    with pytest.raises(ConfigError, match=r"exceeds semantic_lm.context=32 \(96 codec frames\)"):
        load_run_config(TINY, quiet(semantic_dataset, tmp_path, "data.frames=97"))


@pytest.fixture(scope="module")
def semantic_run(semantic_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("semantic-run") / "slm"
    over = ["train.max_steps=4", "train.save_every=4", "train.eval_every=4", "train.eval_batches=1"]
    assert train_main([str(TINY), *quiet(semantic_dataset, out, *over)]) == 0
    return out


def test_training_records_the_tokenizer(semantic_run, semantic_tokenizer, mae_dir):
    assert isinstance(load_pretrained(semantic_run / "final"), SemanticLM)
    rec = json.loads((semantic_run / "final" / "training_data.json").read_text())["semantic_tokenizer"]
    assert Path(rec["dir"]) == semantic_tokenizer.resolve()
    assert (rec["clusters"], rec["rate"], rec["group"]) == (6, 25, 3)
    assert rec["mae_checkpoint"] == str(mae_dir)
    metrics = [json.loads(x) for x in (semantic_run / "metrics.jsonl").read_text().splitlines()]
    assert any("val_nll" in m for m in metrics)


def test_eval_reports_nll_per_token_and_bits_at_the_semantic_rate(
    semantic_run, semantic_dataset, tiny_dataset
):
    report = evaluate([str(semantic_run / "final")], str(semantic_dataset), accelerator=_SingleProcess())
    entry = report["checkpoints"][0]
    m = entry["evaluations"][0]["metrics"]
    assert entry["config"]["pattern"] == "semantic" and entry["config"]["rate"] == 25
    ds = PreparedDataset(semantic_dataset, "val", streams=("semantic",))
    want_count = sum(math.ceil(f["frames"] / 3) for f in ds.files)  # every semantic token once
    assert m["tokens"] == want_count
    assert m["bits_per_second"] == pytest.approx(m["nll"] * 25 / math.log(2))
    row = report["bits_per_second"][0]
    assert row["strategy"] == "semantic" and row["frame_rate"] == 25 and not row["complete"]
    assert row["bits_per_second"] == pytest.approx(m["bits_per_second"])
    from whispergpt.evaluation.teacher_forced import markdown_table

    assert "Semantic LMs: bits per second" in markdown_table(report)
    from whispergpt.cli.eval import main as eval_main

    assert eval_main(["--checkpoint", str(semantic_run / "final"), "--data", str(tiny_dataset)]) == 2


def test_eval_scores_every_token_once_across_windows(semantic_dataset, tmp_path):
    # a context of 16 tokens tiles each 50-token file; overlap 0 = independent windows, each scored fully
    lm = small_lm(context=16)
    lm.save_pretrained(tmp_path / "lm")
    report = evaluate([str(tmp_path / "lm")], str(semantic_dataset), overlap=0, accelerator=_SingleProcess())
    m = report["checkpoints"][0]["evaluations"][0]["metrics"]
    ds = PreparedDataset(semantic_dataset, "val", streams=("semantic",))
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(ds.files)):
            tok = rate_tokens(ds.file_arrays(i)[0], 3)
            for lo in range(0, tok.shape[-1], 16):
                w = tok[None, lo : lo + 16]
                total += float(F.cross_entropy(lm(w)[0], w[0], reduction="sum"))
                count += w.shape[-1]
    assert m["tokens"] == count and m["nll"] == pytest.approx(total / count, rel=1e-5)
    # next to an acoustic checkpoint in one report: each reads its own stream, ranked apart
    torch.manual_seed(0)
    cfg = WhisperGPTConfig(
        num_codebooks=2, codebook_size=1024, fusion="none", d_model=32, n_layers=1, n_heads=2, context=32
    )
    WhisperGPT(cfg).save_pretrained(tmp_path / "ac")
    both = evaluate([str(tmp_path / "lm"), str(tmp_path / "ac")], str(semantic_dataset), overlap=0,
                    accelerator=_SingleProcess())  # fmt: skip
    assert both["checkpoints"][0]["evaluations"][0]["metrics"]["nll"] == pytest.approx(m["nll"])
    assert both["checkpoints"][1]["evaluations"][0]["metrics"]["tokens"] == sum(f["frames"] for f in ds.files)
    assert [r["strategy"] for r in both["bits_per_second"]] == ["semantic", "coarse"]


def test_long_form_semantic_generation_past_the_context():
    stage = SemanticStage(small_lm(context=16), top_k=0, temperature=1.0, seed=3)
    prompt = torch.tensor([1, 2, 3, 4, 5])
    out = stage.continue_tokens(prompt, 60, num_samples=2)  # 60 tokens, context 16
    assert out.shape == (2, 60) and out[:, :5].eq(prompt).all()
    assert int(out.min()) >= 0 and int(out.max()) < 6
    assert stage.counts["reprefills"] >= 3 and stage.counts["generated_tokens"] == 55
    again = SemanticStage(small_lm(context=16), top_k=0, temperature=1.0, seed=3).continue_tokens(
        prompt, 60, 2
    )
    assert again.equal(out)  # seeded
    assert not out[0].equal(out[1])  # two samples, two continuations
    # a prompt longer than the context: its last context - 1 tokens are fed, all are kept
    long = torch.arange(40) % 6
    out = stage.continue_tokens(long, 50, 1)
    assert out.shape == (1, 50) and out[0, :40].equal(long)
    # unconditional: from nothing
    assert stage.continue_tokens(None, 20, 1).shape == (1, 20)
    # on the codec grid: frames of the prompt + continuation, each token g = 3 times
    grid = stage.frame_tokens(None, 10, 1, "cpu")
    assert grid.shape == (1, 10) and grid[0, :3].unique().numel() == 1
    rec = stage.record()
    assert rec["seed"] == 3 and rec["model"]["rate"] == 25 and rec["timing"]["semantic_s"] > 0


def test_datasets_of_two_tokenizers_are_not_read_as_one(semantic_dataset, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(semantic_dataset, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps(dict(manifest, semantic="/another/tokenizer")))
    assert (
        len(PreparedDataset([semantic_dataset, semantic_dataset], "train", streams=("semantic",)).files) == 8
    )
    with pytest.raises(ValueError, match="semantic tokenizer /another/tokenizer differs"):
        PreparedDataset([semantic_dataset, other], "train", streams=("semantic",))
    PreparedDataset([semantic_dataset, other], "train")  # codes + mel only: the tokenizer does not matter
