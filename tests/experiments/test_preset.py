"""compare --preset: the plan, the shipped paper preset, and the pipeline end to end (tiny scale)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from whispergpt.cli import main as cli_main
from whispergpt.experiments import preset as pr


def test_paper_preset_plans_every_run(tiny_dataset, tmp_path):
    """settings x models x seeds x sets + the ablation; configs layered as documented."""
    p = pr.load_preset("paper")
    assert list(p["settings"]) == ["paper", "delay", "depth"] and p["models"] == ["hybrid", "twin", "large"]
    assert p["default_settings"] == ["paper", "delay"]  # depth on request: --settings paper,delay,depth
    assert p["seeds"] == [0, 1, 2]
    runs = pr.plan(
        p, "cpu", {"speech": str(tiny_dataset), "music": str(tiny_dataset)}, tmp_path, [0, 1, 2], []
    )
    assert len(runs) == 3 * 2 * (2 * 3 + 1)
    assert len({r.dir for r in runs}) == len(runs)
    assert [r.seed for r in runs] == sorted(
        r.seed for r in runs
    )  # seed-major: a cut-short run has whole seeds
    by = {(r.set, r.setting, r.model, r.seed): r for r in runs}
    from whispergpt.config import resolve_config

    cfg = {k: resolve_config(r.raw) for k, r in by.items() if k[0] == "speech" and k[3] == 1}
    hyb, twin, large = (cfg[("speech", "paper", m, 1)] for m in ("hybrid", "twin", "large"))
    assert (hyb.model.pattern, hyb.data.mel_source, hyb.model.fusion) == ("coarse", "truth", "concat")
    assert (twin.model.fusion, twin.model.d_model, twin.model.n_layers) == ("none", 128, 4)
    assert (large.model.d_model, large.model.n_layers, large.train.lr) == (256, 6, 1e-3)  # its own lr
    assert hyb.train.seed == 1 and hyb.train.early_stop_patience == 8 and hyb.train.eval_batches == "full"
    d_hyb, d_concat = cfg[("speech", "delay", "hybrid", 1)], cfg[("speech", "delay", "twin-concat", 1)]
    assert (d_hyb.model.pattern, d_hyb.data.mel_source) == ("delay", "decoded")
    assert (d_concat.model.token_input, d_concat.model.fusion, d_concat.model.pattern) == (
        "concat",
        "none",
        "delay",
    )
    # the large token-only model is >= 4x the hybrid, in parameters that compute and in all of them
    rec = {k[1:3]: r.record for k, r in by.items() if k[0] == "speech" and k[3] == 0}
    assert rec[("paper", "large")]["n_matmul"] >= 4 * rec[("paper", "hybrid")]["n_matmul"]
    assert rec[("paper", "hybrid")]["frames_per_step"] == 8 * 225
    # depth (issue 14) on request: 3 models x 3 seeds x 2 sets more, all generation-consistent
    more = pr.plan(p, "cpu", {"speech": str(tiny_dataset), "music": str(tiny_dataset)}, tmp_path, [0, 1, 2], [],
                   settings=["paper", "delay", "depth"])  # fmt: skip
    depth = [r for r in more if r.setting == "depth"]
    assert len(more) == len(runs) + 18 and {r.model for r in depth} == {"hybrid", "twin", "large"}
    assert {(r.record["mel"], resolve_config(r.raw).model.pattern) for r in depth} == {("decoded", "depth")}
    size = {r.model: r.record["params"] for r in depth if r.seed == 0 and r.set == "speech"}
    assert size["large"] >= 4 * size["hybrid"]  # the depth transformers scale with the width
    # a command-line override goes on top of everything
    again = pr.plan(p, "cpu", {"speech": str(tiny_dataset)}, tmp_path, [0], ["train.max_steps=7"])
    assert {resolve_config(r.raw).train.max_steps for r in again} == {7}


def test_gpu_scale_is_the_papers_sizes(tiny_dataset, tmp_path):
    """--scale gpu trains the paper's recipes: ~3.7M / ~39M / ~3.9M parameters (K=2 data)."""
    p = pr.load_preset("paper")
    runs = pr.plan(p, "gpu", {"speech": str(tiny_dataset)}, tmp_path, [0], [])
    params = {r.model: r.record["params"] for r in runs if r.setting == "paper"}
    assert (
        3.5e6 < params["twin"] < 3.9e6 and 3.7e6 < params["hybrid"] < 4.2e6 and 37e6 < params["large"] < 42e6
    )
    assert params["large"] / params["hybrid"] > 9  # the paper's ratio


def test_bad_presets_are_input_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        pr.load_preset("nope")
    bad = tmp_path / "p.yaml"
    bad.write_text(yaml.safe_dump(dict(settings={}, models=["a"], scales={"x": {"models": {}}})))
    with pytest.raises(ValueError, match="a `models` entry for each"):
        pr.load_preset(bad)
    bad.write_text(yaml.safe_dump(dict(settings={"s": {}}, models=["a"], scales={"x": {"models": {"a": {}}}},
                                       ablations={"z": {"setting": "s", "model": "b"}})))  # fmt: skip
    with pytest.raises(ValueError, match="ablation 'z'"):
        pr.load_preset(bad)


@pytest.mark.slow
def test_paper_preset_end_to_end_tiny_then_resumes(tiny_dataset, tmp_path, capsys):
    """The paper preset at its tiny scale, 2 seeds, one set: every run trained and evaluated, the
    report, the curves and every run's config written; a re-run trains nothing; a deleted run is
    redone alone."""
    out = tmp_path / "cmp"
    summary = pr.run_preset("paper", out, "tiny", {"speech": str(tiny_dataset)}, seeds=2, main=cli_main)
    assert summary["runs_done_now"] == 2 * 7 and not summary["failures"]
    assert (out / "compare.md").is_file() and (out / "curves-speech.png").stat().st_size > 10_000
    written = json.loads((out / "compare.json").read_text())
    assert len(written["runs"]) == 14 and all(
        r["config"]["train"]["seed"] == r["seed"] for r in written["runs"]
    )
    assert {(g["setting"], g["model"]) for g in written["groups"]} == {
        ("paper", "hybrid"), ("paper", "twin"), ("paper", "large"),
        ("delay", "hybrid"), ("delay", "twin"), ("delay", "large"), ("delay", "twin-concat"),
    }  # fmt: skip
    assert all(g["nll"]["n"] == 2 and g["nll"]["sd"] >= 0 for g in written["groups"])
    gaps = {(g["setting"], g["b"]) for g in written["gaps"]}
    assert gaps == {("paper", "twin"), ("paper", "large"), ("delay", "twin"), ("delay", "large")}
    mel = {(g["setting"], g["model"]): g["mel_source"] for g in written["groups"]}
    assert mel[("paper", "hybrid")] == "truth" and mel[("delay", "hybrid")] == "decoded"
    assert mel[("delay", "twin")] == "n/a"
    one = Path(written["runs"][0]["run_dir"])
    assert (one / "config.yaml").is_file() and (one / "recipe.yaml").is_file() and (one / "final").is_dir()
    text = (out / "compare.md").read_text()
    assert "| speech | delay | hybrid − large |" in text and "Codebook 0 alone" in text
    capsys.readouterr()

    again = pr.run_preset("paper", out, "tiny", {"speech": str(tiny_dataset)}, seeds=2, main=cli_main)
    assert again["runs_done_now"] == 0 and "finished already" in capsys.readouterr().out
    assert [g["nll"] for g in again["groups"]] == [g["nll"] for g in written["groups"]]

    import shutil

    shutil.rmtree(one / "final")
    (one / "eval.json").unlink()
    assert (
        pr.run_preset("paper", out, "tiny", {"speech": str(tiny_dataset)}, seeds=2, main=cli_main)[
            "runs_done_now"
        ]
        == 1
    )


def test_compare_cli_checks_its_flags(tmp_path, capsys):
    from whispergpt.cli.compare import main

    out = ["--out", str(tmp_path / "o")]
    assert main(out) == 2  # neither a preset nor the two sets
    assert main([*out, "--speech", str(tmp_path)]) == 2  # one set alone
    assert main([*out, "--preset", "paper", "--tokens", "5"]) == 2
    assert main([*out, "--preset", "paper", "--estimate", "5"]) == 2  # two step counts
    assert main([*out, "--preset", "nope", "--speech", str(tmp_path), "--music", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "give both --speech and --music" in err and "preset 'nope' not found" in err
