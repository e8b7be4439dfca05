"""compare --preset strategies: delay, depth and coarse + fine, hybrid and token-only, ranked on
bits per second over all K codebooks (the plan, the bits table, and the pipeline at tiny scale)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from whispergpt.cli import main as cli_main
from whispergpt.config import resolve_config
from whispergpt.experiments import preset as pr
from whispergpt.experiments.compare_bits import bits_report, fine_runs


def test_strategies_preset_plans_three_strategies_and_a_fine_stage(tiny_dataset, tmp_path):
    p = pr.load_preset("strategies")
    assert list(p["settings"]) == ["delay", "depth", "coarse"] and p["models"] == ["hybrid", "twin"]
    sets = {"speech": str(tiny_dataset), "music": str(tiny_dataset)}
    runs = pr.plan(p, "quickstart", sets, tmp_path, [0], [])
    fine = fine_runs(p, "quickstart", sets, tmp_path, [0], ["train.max_steps=9"])
    assert len(runs) == 2 * (3 * 2 + 1) and len(fine) == 2  # + the delay hybrid on the codec latent
    cfg = {(r.setting, r.model): resolve_config(r.raw) for r in runs if r.set == "speech"}
    latent = cfg[("delay", "latent")]
    assert (latent.data.mel_source, latent.model.mel_input, latent.model.pattern) == (
        "codec_latent",
        "codec_latent",
        "delay",
    )
    assert latent.model.d_model == cfg[("delay", "hybrid")].model.d_model
    assert cfg[("depth", "hybrid")].model.pattern == "depth" and cfg[("depth", "twin")].model.fusion == "none"
    assert cfg[("coarse", "hybrid")].data.mel_source == "decoded_coarse"  # what a coarse sampler feeds back
    assert cfg[("delay", "hybrid")].model.d_model == 128 and cfg[("delay", "hybrid")].model.context == 225
    (f,) = [r for r in fine if r.set == "speech"]
    fc = resolve_config(f.raw)
    assert fc.task == "fine" and (fc.fine.d_model, fc.fine.context, fc.fine.num_codebooks) == (128, 225, 2)
    assert fc.train.lr == 2e-3 and fc.train.max_steps == 9 and fc.train.early_stop_patience == 8
    assert f.dir == tmp_path / "runs" / "speech" / "fine" / "fine" / "seed0"
    assert pr.load_preset("paper")["scales"]["cpu"].get("fine") is None  # other presets: no fine runs


def _eval_json(d: Path, pattern: str, fusion: str, nlls: list[float], first: int = 0) -> None:
    d.mkdir(parents=True)
    per = [dict(codebook=first + k, nll=n) for k, n in enumerate(nlls)]
    entry = dict(name="x", config=dict(pattern=pattern, fusion=fusion, num_codebooks=2, num_parameters=10),
                 evaluations=[dict(mel_source="n/a" if fusion == "none" else "decoded", metrics=dict(per_codebook=per))])  # fmt: skip
    (d / "eval.json").write_text(json.dumps(dict(checkpoints=[entry])))


def test_bits_report_pairs_each_coarse_run_with_its_fine_stage(tmp_path):
    runs = []
    for seed, shift in ((0, 0.0), (1, 0.2)):
        for setting, model, pattern, fusion, nlls, first in (
            ("delay", "twin", "delay", "none", [2.0, 2.5], 0),
            ("coarse", "hybrid", "coarse", "concat", [1.5], 0),
            ("fine", "fine", "fine", "none", [1.0], 1),
        ):
            d = tmp_path / setting / model / str(seed)
            _eval_json(d, pattern, fusion, [n + shift for n in nlls], first)
            runs.append(SimpleNamespace(set="music", setting=setting, model=model, seed=seed, dir=d))
    runs.append(
        SimpleNamespace(set="music", setting="depth", model="twin", seed=0, dir=tmp_path / "unfinished")
    )
    rows = {r["name"]: r for r in bits_report(runs)["rows"]}
    assert set(rows) == {"delay/twin", "coarse/hybrid", "fine", "coarse/hybrid + fine"}
    k = 75 / math.log(2)
    stack = rows["coarse/hybrid + fine"]
    assert stack["complete"] and stack["seeds"] == 2 and stack["params"] == 20
    assert stack["bits_per_second"] == pytest.approx((2.5 + 0.2) * k)  # mean of 2.5 and 2.9 nats/frame
    assert stack["bits_sd"] == pytest.approx(0.4 * k / math.sqrt(2))
    assert not rows["coarse/hybrid"]["complete"] and rows["delay/twin"]["complete"]
    text = bits_report(runs)["markdown"]
    lines = [x for x in text.splitlines() if x.startswith("| ") and "---" not in x][1:]
    assert [x.split("|")[1].strip() for x in lines][:2] == [
        "coarse/hybrid + fine",
        "delay/twin",
    ]  # fewest bits first
    assert "partial (" in text
    assert bits_report(runs[-1:]) is None


@pytest.mark.slow
def test_strategies_preset_end_to_end_tiny(tiny_dataset, tmp_path):
    out = tmp_path / "strategies"
    summary = pr.run_preset("strategies", out, "tiny", {"speech": str(tiny_dataset)}, seeds=1, main=cli_main)
    assert summary["runs_done_now"] == 8 and not summary["failures"]  # 3 x (hybrid, twin) + latent + fine
    rows = {r["name"]: r for r in summary["bits_per_second"]}
    for name in (
        "delay/hybrid",
        "delay/twin",
        "delay/latent",
        "depth/hybrid",
        "depth/twin",
        "coarse/hybrid + fine",
        "coarse/twin + fine",
    ):
        assert rows[name]["complete"] and rows[name]["bits_per_second"] > 0, name
    assert not rows["coarse/twin"]["complete"] and rows["fine"]["codebooks"] == [1]
    text = (out / "compare.md").read_text()
    assert "Bits per second over all K codebooks" in text and "| coarse/twin + fine | coarse+fine |" in text
    assert (out / "runs" / "speech" / "fine" / "fine" / "seed0" / "final" / "config.json").is_file()
    again = pr.run_preset("strategies", out, "tiny", {"speech": str(tiny_dataset)}, seeds=1, main=cli_main)
    assert again["runs_done_now"] == 0 and again["bits_per_second"] == summary["bits_per_second"]
