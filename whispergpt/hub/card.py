"""The model card (``README.md`` of a model folder, on the Hub too), written from the training record.

``render_card`` is pure (dicts in, Markdown out); ``write_card`` reads a folder's ``config.json`` and
``training_data.json`` (``training.record``) and writes its ``README.md``. What it says: the task,
the sizes, the codec and bandwidth, the training data (hours, files, domains), the steps, the val
NLL per codebook, the parent model of a fine-tune, the exact training command, and the licence
fields the user sets (``whispergpt push --license``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from whispergpt.hub import HUB_TAGS, LIBRARY_NAME, REPO_URL

CARD_FILE = "README.md"
RECORD_FILE = "training_data.json"  # = training.record.TRAINING_DATA_FILE (hub sits below training)
TASKS = {  # model_type -> what it does, in one line
    "whispergpt": "hybrid log-mel + EnCodec-token audio language model (next-frame tokens)",
    "whispergpt-fine": "fine acoustic stage: codebooks 1..K-1 from the coarse codebooks",
    "semantic-lm": "semantic-token language model (the first stage of the AudioLM hierarchy)",
    "encodecmae": "EnCodecMAE masked audio encoder (embeddings, semantic tokens)",
}
SIZE_KEYS = (
    "num_codebooks", "codebook_size", "n_mels", "pattern", "fusion", "d_model", "n_layers", "n_heads",
    "context", "mel_dim", "mel_layers", "dim", "layers", "heads", "clusters",
)  # fmt: skip


def _front_matter(
    model_type: str, license: str | None, license_name: str | None, license_link: str | None
) -> str:
    lines = ["---", f"library_name: {LIBRARY_NAME}", "tags:"]
    lines += [f"- {t}" for t in [*HUB_TAGS, model_type]]
    if license:
        lines.append(f"license: {license}")
    if license_name:
        lines.append(f"license_name: {license_name}")
    if license_link:
        lines.append(f"license_link: {license_link}")
    return "\n".join([*lines, "---"])


def _data_summary(record: dict[str, Any]) -> list[str]:
    data = record.get("data") or {}
    out = []
    for split in ("train", "val"):
        s = data.get(split)
        if isinstance(s, dict):
            out.append(f"- {split}: {s.get('files', '?')} files, {float(s.get('hours', 0.0)):.3f} h")
    if data.get("domains"):
        out.append("- domains: " + ", ".join(f"{k} ({v} files)" for k, v in sorted(data["domains"].items())))
    dirs = record.get("data_dirs") or []
    if dirs:
        out.append("- prepared datasets: " + ", ".join(f"`{d}`" for d in dirs))
    return out


def render_card(
    model_type: str,
    config: dict[str, Any],
    parameters: int | None,
    record: dict[str, Any] | None,
    license: str | None = None,
    license_name: str | None = None,
    license_link: str | None = None,
    repo_id: str | None = None,
) -> str:
    """The Markdown card of a model (``record``: its ``training_data.json``, or None)."""
    record = record or {}
    name = repo_id or "this model"
    lines = [_front_matter(model_type, license, license_name, license_link), "", f"# {name}", ""]
    lines += [f"**Task**: {TASKS.get(model_type, model_type)} (`model_type: {model_type}`).", ""]
    lines += [
        "```python",
        "from whispergpt import Pipeline"
        if model_type == "whispergpt"
        else "from whispergpt.models import load_pretrained",
    ]
    ref = repo_id or "PATH_OR_HUB_ID"
    lines += [
        f'pipe = Pipeline.from_pretrained("{ref}")'
        if model_type == "whispergpt"
        else f'model = load_pretrained("{ref}")'
    ]
    lines += ["```", "", "## Sizes", ""]
    if parameters is not None:
        lines.append(f"- parameters: {parameters:,}")
    lines += [f"- {k}: {config[k]}" for k in SIZE_KEYS if k in config]
    lines += ["", "## Training", ""]
    if record.get("codec") is not None:
        lines.append(
            f"- codec: `{record['codec']}` at {record.get('bandwidth')} kbps (K={record.get('num_codebooks')}, V={record.get('codebook_size')})"
        )
    if record.get("mel_source"):
        lines.append(f"- mel source: {record['mel_source']}")
    if record.get("steps") is not None:
        lines.append(f"- steps: {record['steps']}")
    if record.get("parent"):
        lines.append(
            f"- fine-tuned from: `{record['parent']['source']}` ({record['parent'].get('init', 'full')} init)"
        )
    if record.get("lora"):
        lo = record["lora"]
        lines.append(f"- LoRA r={lo['r']} alpha={lo['alpha']} on {', '.join(lo['targets'])}: {lo['trainable']:,} of "
                     f"{lo['total']:,} parameters trained; these weights are merged (the adapter: `adapter/`)")  # fmt: skip
    lines += _data_summary(record)
    ev = record.get("val") or {}
    if ev.get("val_nll") is not None:
        per = ", ".join(f"{x:.4f}" for x in ev.get("val_nll_per_codebook") or [])
        lines.append(
            f"- val NLL (nats/token) at step {ev.get('step')}: {ev['val_nll']:.4f}; per codebook: [{per}]"
        )
    if record.get("command"):
        lines += ["", "Trained with:", "", "```bash", str(record["command"]), "```"]
    if not record:
        lines.append("No training record (`training_data.json`) was found next to the weights.")
    lines += ["", "## Licence", ""]
    lines.append(
        f"{license}" + (f" ({license_name}, {license_link})" if license_name or license_link else "")
        if license
        else "Not set (set it with `whispergpt push --license`)."
    )
    lines += ["", f"Code: {REPO_URL}", ""]
    return "\n".join(lines)


def write_card(
    directory: str | os.PathLike,
    license: str | None = None,
    license_name: str | None = None,
    license_link: str | None = None,
    repo_id: str | None = None,
) -> Path:
    """``directory/README.md`` from its ``config.json`` and training record; returns the path."""
    from whispergpt.runtime import write_atomic

    d = Path(directory)
    config = json.loads((d / "config.json").read_text())
    model_type = str(config.pop("model_type", "whispergpt"))
    parameters = None
    weights = d / "model.safetensors"
    if weights.is_file():
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:  # counts without loading the tensors
            parameters = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
    record = None  # the folder's own record (training.record.TRAINING_DATA_FILE)
    if (d / RECORD_FILE).is_file():
        record = json.loads((d / RECORD_FILE).read_text())
    text = render_card(model_type, config, parameters, record, license, license_name, license_link, repo_id)
    path = d / CARD_FILE
    write_atomic(path, text)
    return path


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
