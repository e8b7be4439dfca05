"""``whispergpt push RUN_OR_FOLDER REPO_ID [--private]``: upload a trained model to the Hugging Face Hub."""

from __future__ import annotations

from whispergpt.cli import command, make_parser

EXAMPLES = """
  whispergpt push runs/quickstart/train/hybrid you/whispergpt-quickstart --license mit
  whispergpt push runs/hybrid/final you/hybrid --private
  whispergpt push runs/hybrid you/hybrid-best --best     # out_dir/best/ (early stopping)

  Uploads config.json, model.safetensors, training_data.json and a README.md model card written
  from the training record (task, sizes, codec, data, steps, val NLL per codebook, the training
  command, the licence). Then: WhisperGPT.from_pretrained("you/hybrid"), --checkpoint you/hybrid.
  Needs a token (hf auth login or HF_TOKEN); offline it stops with one line (exit 2).
"""


@command("push")
def main(argv: list[str]) -> int:
    ap = make_parser(
        "whispergpt push", "Upload a trained model (final/ or best/) with its model card.", EXAMPLES
    )
    ap.add_argument("run", metavar="RUN_OR_FOLDER", help="a training out_dir (its final/) or a model folder")
    ap.add_argument("repo_id", metavar="REPO_ID", help="the Hub repo, org/name (created if needed)")
    ap.add_argument("--private", action="store_true", help="create the repo private")
    ap.add_argument("--best", action="store_true", help="push out_dir/best/ instead of final/")
    ap.add_argument("--license", default=None, help="licence id for the card, e.g. mit, cc-by-4.0, other")
    ap.add_argument("--license-name", default=None, help="with --license other: its name")
    ap.add_argument("--license-link", default=None, help="with --license other: a link to its text")
    ap.add_argument("--token", default=None, help="Hub token (default: hf auth login / HF_TOKEN)")
    args = ap.parse_args(argv)
    from whispergpt.hub.upload import push_model

    folder, url = push_model(
        args.run, args.repo_id, private=args.private, best=args.best, license=args.license,
        license_name=args.license_name, license_link=args.license_link, token=args.token,
    )  # fmt: skip
    print(f"pushed {folder} to {args.repo_id}: {url}")
    return 0
