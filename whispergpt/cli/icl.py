"""``whispergpt icl``: in-context audio classification with a frozen LLM (argument parsing only)."""

from __future__ import annotations

import sys

from whispergpt.cli import command, make_parser


@command("icl")
def main(argv: list[str]) -> int:
    from whispergpt.llm_codec.icl_run import labelled_folder, run_icl

    p = make_parser(
        "whispergpt icl",
        "N-way K-shot in-context classification (UniAudio 1.5): audio as an LLM-Codec's LLM token ids in "
        "the prompt, a frozen LLM answers; with two LLM-free 1-NN baselines on the same episodes.",
        """
        whispergpt icl --codec runs/llm-codec --llm runs/tiny-llm --data clips/ --way 2 --shot 1 --episodes 200 --seed 0 --out runs/icl
        whispergpt icl --codec runs/llm-codec --llm meta-llama/Llama-2-7b-hf --task speech-music --way 2 --shot 1 --episodes 200 --seed 0 --out runs/icl
        whispergpt icl --codec runs/llm-codec --llm runs/tiny-llm --task toy --way 2 --shot 1 --episodes 1 --seed 0 --out x --dry-run
        """,
    )
    p.add_argument("--codec", required=True, help="an LLM-Codec folder (whispergpt llm-codec train --out)")
    p.add_argument(
        "--llm", required=True, help="the causal LM whose tables the codec uses (folder or Hub id)"
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="a labelled folder: one subfolder of audio per label")
    src.add_argument(
        "--task", help="a `whispergpt probe` task: speech-music, language, instrument, pitch, toy"
    )
    p.add_argument("--clips-per-class", type=int, default=20, help="--task: clips built per label")
    p.add_argument("--way", type=int, required=True, help="N labels per episode")
    p.add_argument("--shot", type=int, required=True, help="K examples of each label in the prompt")
    p.add_argument("--episodes", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--layers", type=int, choices=(1, 2, 3), default=1, help="codec layers in the prompt (paper: 1)"
    )
    p.add_argument(
        "--max-seconds", type=float, default=5.0, help="--data: use at most this much of each file"
    )
    p.add_argument("--out", required=True, help="folder for icl.json and icl.md")
    p.add_argument("--dry-run", action="store_true", help="print the first episode's prompt and stop")
    args = p.parse_args(argv)
    if args.episodes < 1:
        p.error("--episodes must be >= 1")
    if args.data:
        classes, clips, labels, origins = labelled_folder(args.data, args.max_seconds)
        task = ""
    else:
        from whispergpt.experiments.probe_tasks import load_task

        t = load_task(args.task, args.clips_per_class)
        classes, clips, labels, origins, task = (
            t.classes,
            t.clips,
            [int(x) for x in t.labels],
            t.origins,
            t.name,
        )
    report = run_icl(args.codec, args.llm, classes, clips, labels, origins, args.way, args.shot, args.episodes,
                     args.seed, args.layers, None if args.dry_run else args.out, args.dry_run, task)  # fmt: skip
    if not args.dry_run:
        print(report["markdown"])
        print(f"wrote {args.out}/icl.json and icl.md")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
