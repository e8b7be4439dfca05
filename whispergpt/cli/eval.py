"""``whispergpt eval``: argument parsing only; the metrics are ``whispergpt.evaluation.teacher_forced.evaluate``.

Multi-process: ``accelerate launch -m whispergpt eval ...`` (``whispergpt/__main__.py`` dispatches here).
"""

from __future__ import annotations

import sys

import torch

from whispergpt.cli import command, make_parser
from whispergpt.evaluation.teacher_forced import evaluate, make_accelerator, markdown_table, write_outputs


@command("eval")
def main(argv: list[str]) -> int:
    ap = make_parser(
        "whispergpt eval",
        "Teacher-forced NLL / perplexity / accuracy / bits per second of checkpoints on a whole "
        "prepared split. Multi-process: accelerate launch -m whispergpt eval ...",
        """
        whispergpt eval --checkpoint runs/tiny --data data/prepared/speech --out reports/tiny.json
        whispergpt eval --checkpoint runs/a --checkpoint runs/b --data ds --split val --mel decoded
        accelerate launch --config_file configs/accelerate/ddp_cpu.yaml -m whispergpt eval \\
            --checkpoint runs/tiny --data ds
        """,
    )
    ap.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        help="save_pretrained dir or Hub id org/name[@rev] (repeatable)",
    )
    ap.add_argument("--data", required=True, help="a `whispergpt prepare` output")
    ap.add_argument("--split", default="val")
    ap.add_argument("--out", help="report JSON path (also writes .md and .png next to it)")
    ap.add_argument(
        "--mel",
        choices=("both", "truth", "decoded", "codec_latent"),
        default="both",
        help="mel source(s) for hybrid models (token-only models: n/a; models trained on "
        "data.mel_source=codec_latent are always scored on the codec latent of the codes)",
    )
    ap.add_argument(
        "--overlap",
        type=int,
        default=None,
        help="frames shared by consecutive windows (default context // 2)",
    )
    ap.add_argument("--batch-size", type=int, default=16, help="windows per forward")
    ap.add_argument("--codec", default=None, help="codec for mel=decoded (default: the manifest's)")
    ap.add_argument(
        "--precision", choices=("auto", "fp32", "bf16"), default="auto", help="auto: bf16 on CUDA"
    )
    args = ap.parse_args(argv)
    acc = make_accelerator()
    report = evaluate(
        args.checkpoint,
        args.data,
        split=args.split,
        mel=args.mel,
        overlap=args.overlap,
        batch_size=args.batch_size,
        codec=args.codec,
        precision=args.precision,
        accelerator=acc,
    )
    if acc.is_main_process:
        print(markdown_table(report), flush=True)
        if args.out:
            paths = write_outputs(report, args.out)
            print("wrote " + ", ".join(str(p) for p in paths), flush=True)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        acc.wait_for_everyone()
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
