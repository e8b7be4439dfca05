"""``whispergpt prepare`` / ``whispergpt inspect``: argument parsing only (the work is ``data.prepare`` and ``data.summary``)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from whispergpt.cli import command, make_parser
from whispergpt.data.augment import recipe_arg
from whispergpt.data.dataset import MANIFEST, SHARDS_DIR, verify_dataset
from whispergpt.data.merge import launcher_shard, merge_parts, parse_shard, wait_and_merge
from whispergpt.data.prepare import NoUsableAudioError, prepare
from whispergpt.data.sources import HFOptions
from whispergpt.data.streams import MEL_DTYPES
from whispergpt.data.summary import summarize
from whispergpt.errors import InputError
from whispergpt.semantic.tokenizer import semantic_source


@command("prepare")
def main_prepare(argv: list[str]) -> int:
    ap = make_parser(
        "whispergpt prepare",
        "Encode audio into a whispergpt dataset (resumes if --out exists). Every candidate path is "
        "either prepared or listed with its reason in manifest.json's `skipped`.",
        """
        whispergpt prepare data/speech --out data/prepared/speech --codec facebook/encodec_24khz
        whispergpt prepare files.txt extra.wav --out ds --codec whispergpt/assets/codec/whispergpt-small-24khz \\
            --bandwidth 1.5 --val-fraction 0.1 --device cpu
        whispergpt prepare data/speech --out ds --codec facebook/encodec_24khz --augment speech-light.yaml --copies 2
        whispergpt prepare my_hf_dataset/ --hf-split train --id-column id --out ds --codec facebook/encodec_24khz
        whispergpt prepare openslr/librispeech_asr --hf-split train.clean.100 --hf-streaming --out ds --codec ...
        whispergpt prepare manifest.jsonl --out ds --codec facebook/encodec_24khz --shard 0/4   # then 1/4 .. 3/4
        whispergpt prepare --merge ds
        accelerate launch --num_processes 8 -m whispergpt prepare data/speech --out ds --codec ...  # rank 0 merges
        """,
    )
    ap.add_argument(
        "sources",
        nargs="*",
        metavar="SRC",
        help="audio files, folders (recursive), text lists, JSON-lines/CSV manifests, datasets "
        "save_to_disk folders or hub ids (whispergpt/data/sources.py)",
    )
    ap.add_argument("--out", help="dataset folder (resumed if it exists)")
    ap.add_argument("--codec", help="EnCodec hub id (facebook/encodec_24khz) or local folder")
    ap.add_argument("--hf-split", help="split of a datasets SRC (default train)")
    ap.add_argument(
        "--audio-column", default="audio", help="audio column of a dataset / path column of a manifest"
    )
    ap.add_argument("--id-column", help="column holding each row's stable id (default: fingerprint:row)")
    ap.add_argument(
        "--hf-streaming", action="store_true", help="stream a hub dataset instead of downloading it"
    )
    ap.add_argument(
        "--shard",
        metavar="I/N",
        help="prepare only the candidates whose id hashes to I of N, as part I of --out (default under "
        "accelerate launch / torchrun: RANK/WORLD_SIZE, and rank 0 merges at the end)",
    )
    ap.add_argument(
        "--merge", metavar="DIR", help="join the finished parts of a sharded prepare in DIR into one manifest"
    )
    ap.add_argument("--bandwidth", type=float, default=6.0, help="kbps (6 -> 8 codebooks)")
    ap.add_argument("--n-mels", type=int, default=80)
    ap.add_argument("--val-fraction", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-seconds", type=float, default=60.0, help="audio per codec call")
    ap.add_argument(
        "--shard-seconds", type=float, default=1800.0, help="audio per shard (resume granularity)"
    )
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    ap.add_argument(
        "--no-decoded-mel",
        action="store_true",
        help="skip mel_decoded.npy and mel_decoded_coarse.npy (log-mel of the audio decoded from all "
        "codebooks / from codebook 0 alone: what delay / coarse sampling feeds back)",
    )
    ap.add_argument(
        "--no-coarse-mel",
        action="store_true",
        help="skip mel_decoded_coarse.npy (only coarse models train on it): one decode per file less",
    )
    ap.add_argument(
        "--mel-dtype",
        choices=MEL_DTYPES,
        default="float16",
        help="on-disk dtype of every mel stream (float16: half the bytes, error <= 5e-4; see docs/DATA.md)",
    )
    ap.add_argument(
        "--latent",
        action="store_true",
        help="also store latent.npy: the codec encoder's continuous output before quantization (EnCodecMAE input)",
    )
    ap.add_argument(
        "--semantic",
        metavar="TOKENIZER_DIR",
        help="also store semantic.npy: one semantic token per frame from a `whispergpt semantic fit` folder",
    )
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument(
        "--augment", type=recipe_arg, metavar="RECIPE.yaml", help="add augmented copies of the train files"
    )
    ap.add_argument("--copies", type=int, default=1, help="augmented copies per train file (with --augment)")
    args = ap.parse_args(argv)
    if args.merge is not None:
        if args.sources or args.out or args.shard:
            ap.error("--merge DIR takes no SRC, --out or --shard")
        m = merge_parts(args.merge)
        print(f"prepare: merged {m['merged_parts']} parts into {Path(args.merge) / MANIFEST}: "
              f"train {m['splits']['train']['files']} files, val {m['splits']['val']['files']} files")  # fmt: skip
        return 0
    if not args.sources or args.out is None or args.codec is None:
        ap.error("SRC..., --out and --codec are required (or --merge DIR)")
    launched = args.shard is None and launcher_shard() is not None
    started = time.time() - 60.0  # this launch's parts are all rewritten after this (clock skew margin)
    shard = parse_shard(args.shard) if args.shard else launcher_shard()
    prepare(
        args.sources,
        args.out,
        args.codec,
        bandwidth=args.bandwidth,
        n_mels=args.n_mels,
        val_fraction=args.val_fraction,
        seed=args.seed,
        batch_seconds=args.batch_seconds,
        device=args.device,
        shard_seconds=args.shard_seconds,
        progress=not args.no_progress,
        decoded_mel=not args.no_decoded_mel,
        augment=args.augment,
        copies=args.copies,
        mel_dtype=args.mel_dtype,
        latent=args.latent,
        decoded_coarse_mel=False if args.no_coarse_mel else None,
        semantic=None if args.semantic is None else semantic_source(args.semantic),
        hf=HFOptions(args.hf_split, args.audio_column, args.id_column, args.hf_streaming),
        shard=shard,
    )
    if launched and shard[0] == 0:  # the launched run's rank 0 joins the parts once all are finished
        m = wait_and_merge(args.out, shard[1], since=started)
        print(f"prepare: rank 0 merged {shard[1]} parts into {Path(args.out) / MANIFEST}", flush=True)
        if m["splits"]["train"]["files"] + m["splits"]["val"]["files"] == 0:
            raise NoUsableAudioError(f"no usable audio: every candidate was skipped (reasons in {args.out})")
    return 0


@command("inspect")
def main_inspect(argv: list[str]) -> int:
    ap = make_parser(
        "whispergpt inspect",
        "Summarise a prepared dataset: codec, splits, shards, skipped files and warnings.",
        """
        whispergpt inspect data/prepared/speech
        whispergpt inspect data/prepared/speech --max-skipped 50
        whispergpt inspect --verify data/prepared/speech
        """,
    )
    ap.add_argument("dir", help="dataset folder written by whispergpt prepare")
    ap.add_argument("--max-skipped", type=int, default=10, help="skipped files to list")
    ap.add_argument(
        "--verify",
        action="store_true",
        help="read every shard: sizes, dtypes, frame counts, code range, finite mel; one line per "
        "broken shard, exit 2 if any",
    )
    args = ap.parse_args(argv)
    print(summarize(args.dir, args.max_skipped))
    if args.verify:
        broken, total = verify_dataset(args.dir)
        for name, problem in broken:
            print(f"broken shard {Path(args.dir) / SHARDS_DIR / name}: {problem}")
        if broken:
            raise InputError(
                f"{len(broken)} of {total} shards are broken",
                args.dir,
                f"rerun `whispergpt prepare` with the same sources and --out {args.dir} to re-encode them",
            )
        print(f"verify       all {total} shards ok")
    return 0


if __name__ == "__main__":
    sys.exit(main_prepare(sys.argv[1:]))
