"""What a prepared dataset holds, as ``whispergpt inspect`` prints it (hours, files, streams, skipped)."""

from __future__ import annotations

import os

import numpy as np

from whispergpt.data.dataset import read_manifest
from whispergpt.data.prepare import SPLITS
from whispergpt.data.streams import STREAMS, stored_streams, time_major


def summarize(directory: str | os.PathLike, max_skipped: int = 10) -> str:
    """The human summary ``whispergpt inspect`` prints."""
    m = read_manifest(directory)
    fr = m["frame_rate"]
    streams = stored_streams(m)

    def stored(name: str) -> str:
        return "stored" if name in streams else "not stored"

    bytes_per_frame = sum(
        int(np.prod(STREAMS[s].frame_shape(m))) * STREAMS[s].storage(m).itemsize for s in streams
    )
    lines = [
        f"dataset      {directory}",
        f"codec        {m.get('codec')} @ {m.get('bandwidth')} kbps: K={m['num_codebooks']} codebooks, "
        f"V={m['codebook_size']}, {fr} Hz, {m['sample_rate']} Hz audio",
        f"mel          M={m['n_mels']} bins, {m.get('mel_dtype', 'float32')}; decoded mel (log-mel of codec-decoded "
        f"tokens): all codebooks {stored('mel_decoded')}, codebook 0 alone {stored('mel_decoded_coarse')}",
        f"format       {m['format_version']} ({'time-major' if time_major(m) else 'channel-major, older version'}); "
        f"streams {', '.join(streams)}; {bytes_per_frame} bytes/frame",
        f"split        seed={m.get('seed')} val_fraction={m.get('val_fraction')}",
    ]
    for s, v in m["splits"].items():
        hours = v["frames"] / fr / 3600
        lines.append(f"{s:<12} {v['files']} files, {v['frames']} frames, {hours:.3f} h")
    if m.get("augment"):
        lines.append(f"augment      {m['augment']}")
    if "semantic" in streams:
        t = m.get("semantic_tokenizer") or {}
        lines.append(
            f"semantic     {t.get('clusters')} clusters of MAE layer {t.get('layer')} at {t.get('rate')} Hz "
            f"({t.get('rule')}); tokenizer {m.get('semantic')}"
        )
    lines.append(
        f"shards       {len(m['shards'])}"
        + (f" (merged from {m['merged_parts']} parts)" if m.get("merged_parts") else "")
    )
    skipped = m.get("skipped", [])
    lines.append(f"skipped      {len(skipped)} files")
    for s in skipped[:max_skipped]:
        lines.append(
            f"  - {s['reason'] if s['reason'].startswith(s['path']) else s['path'] + ': ' + s['reason']}"
        )
    if len(skipped) > max_skipped:
        lines.append(f"  ... and {len(skipped) - max_skipped} more (see manifest.json)")
    warnings = []
    for s in SPLITS:
        if m["splits"].get(s, {}).get("files", 0) == 0:
            warnings.append(f"split {s!r} is empty")
    total = sum(v["files"] for v in m["splits"].values())
    if total and len(skipped) > total:
        warnings.append("more files were skipped than kept: check the inputs")
    for w in warnings:
        lines.append(f"WARNING      {w}")
    return "\n".join(lines)
