"""Bits per second of audio: the one figure that ranks codebook strategies on the same data.

A model's cost of the audio is the total NLL of every codec token of a frame, summed over all K
codebooks, in nats per frame; times the frame rate (75/s) over ln 2 it is bits per second:
``bits/s = sum_k NLL_k * 75 / ln 2`` (``NLL_k`` in nats per token of codebook ``k``, each frame
scored once). Strategies compare on it whatever they factor: ``delay`` / ``parallel`` / ``depth``
score all K codebooks themselves; ``coarse`` scores codebook 0 and a fine stage codebooks
``Kc..K-1`` given the true coarse ones, and together (``coarse + fine``) they score all K, so
their bits/s add up (the same split, the same frames).

A checkpoint that scores only some codebooks gets its bits/s over those (``codebooks`` says which)
and no all-K figure (``complete: false``); ``bits_rows`` adds one ``A + B`` row for every pair of
an evaluation starting at codebook 0 and a fine checkpoint scoring exactly the rest.

A semantic LM (``strategy: semantic``) scores another stream, one token per ``1 / rate`` s: its
bits/s is ``NLL * rate / ln 2`` (``rate``: the tokenizer's, 25 Hz by default), listed in a table
of its own (it does not rank against the codec's all-K figures).
"""

from __future__ import annotations

import math

from whispergpt.audio import FRAME_RATE

LN2 = math.log(2.0)


def bits_per_second(nats_per_frame: float, frame_rate: float = FRAME_RATE) -> float:
    """Nats per frame (summed over the codebooks scored) -> bits per second."""
    return nats_per_frame * frame_rate / LN2


def _row(
    name: str,
    strategy: str,
    fusion: str,
    mel: str,
    per: list[dict],
    K: int,
    params: int | None,
    frame_rate: float = FRAME_RATE,
) -> dict:
    codebooks = [p["codebook"] for p in per]
    nats = sum(p["nll"] for p in per)
    semantic = strategy == "semantic"
    return dict(
        name=name,
        strategy=strategy,
        fusion=fusion,
        mel_source=mel,
        codebooks=codebooks,
        num_codebooks=K,
        params=params,
        complete=codebooks == list(range(K)) and not semantic,
        nats_per_frame=nats,
        bits_per_second=bits_per_second(nats, frame_rate),
        frame_rate=frame_rate,
        nll_per_codebook=[p["nll"] for p in per],
    )


def bits_rows(report: dict) -> list[dict]:
    """One row per (checkpoint, mel source) of an eval report, then one per coarse + fine pair."""
    rows = []
    for e in report["checkpoints"]:
        c = e["config"]
        for ev in e["evaluations"]:
            per = ev["metrics"]["per_codebook"]
            K, params = c["num_codebooks"], c.get("num_parameters")
            rate = c.get("rate", FRAME_RATE) if c["pattern"] == "semantic" else FRAME_RATE
            rows.append(_row(e["name"], c["pattern"], c["fusion"], ev["mel_source"], per, K, params, rate))
    stacks = []
    for a in rows:
        if a["complete"] or a["codebooks"][:1] != [0] or a["strategy"] == "semantic":
            continue
        for b in rows:
            rest = list(range(len(a["codebooks"]), a["num_codebooks"]))
            if (
                b["strategy"] == "fine"
                and b["num_codebooks"] == a["num_codebooks"]
                and b["codebooks"] == rest
            ):
                per = [
                    dict(codebook=k, nll=n)
                    for k, n in zip(
                        a["codebooks"] + b["codebooks"], a["nll_per_codebook"] + b["nll_per_codebook"]
                    )
                ]
                name, strategy = f"{a['name']} + {b['name']}", f"{a['strategy']}+fine"
                params = None if None in (a["params"], b["params"]) else a["params"] + b["params"]
                stacks.append(
                    _row(name, strategy, a["fusion"], a["mel_source"], per, a["num_codebooks"], params)
                )
    return rows + stacks


def bits_markdown(rows: list[dict]) -> str:
    """The bits/s table: all-K figures first (best first), then the partial ones."""
    lines = [
        "Bits per second over all K codebooks (sum of the per-codebook NLLs x 75 / ln 2); a checkpoint "
        "scoring only some codebooks is partial, its pair with a fine stage complete.",
        "",
        "| model | strategy | fusion | mel source (eval) | codebooks | nats/frame | bits/s (all K) | NLL per codebook |",
        "|---|---|---|---|---|---:|---:|---|",
    ]
    semantic = [r for r in rows if r["strategy"] == "semantic"]
    rows = [r for r in rows if r["strategy"] != "semantic"]
    for r in sorted(rows, key=lambda r: (not r["complete"], r["bits_per_second"] if r["complete"] else 0.0)):
        cbs = r["codebooks"]
        span = f"{cbs[0]}..{cbs[-1]}" if len(cbs) > 1 else str(cbs[0])
        bits = f"{r['bits_per_second']:.1f}" if r["complete"] else f"partial ({r['bits_per_second']:.1f})"
        per = ", ".join(f"{n:.3f}" for n in r["nll_per_codebook"])
        lines.append(
            f"| {r['name']} | {r['strategy']} | {r['fusion']} | {r['mel_source']} | {span} of {r['num_codebooks']} | "
            f"{r['nats_per_frame']:.3f} | {bits} | {per} |"
        )
    if semantic and not rows:  # semantic LMs only: no codec table
        lines = []
    if semantic:
        lines += [
            *([""] if lines else []),
            "Semantic LMs: bits per second of semantic tokens (NLL x rate / ln 2).",
            "",
            "| model | rate (tokens/s) | NLL (nats/token) | bits/s |",
            "|---|---:|---:|---:|",
        ]
        for r in sorted(semantic, key=lambda r: r["bits_per_second"]):
            lines.append(
                f"| {r['name']} | {r['frame_rate']:g} | {r['nats_per_frame']:.4f} | {r['bits_per_second']:.1f} |"
            )
    return "\n".join(lines) + "\n"
