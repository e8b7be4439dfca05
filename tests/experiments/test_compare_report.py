"""compare --preset's report: seed statistics, the gap-vs-spread rule, equal-FLOPs readings."""

from __future__ import annotations

import pytest

from whispergpt.experiments.compare_report import best_within, gap, markdown, spread, summarize


def test_spread_is_mean_and_sample_sd():
    s = spread([4.0, 4.2, 4.4])
    assert (s["n"], s["min"], s["max"]) == (3, 4.0, 4.4)
    assert s["mean"] == pytest.approx(4.2) and s["sd"] == pytest.approx(0.2)  # n - 1
    assert spread([3.0])["sd"] == 0.0 and spread([])["mean"] is None


@pytest.mark.parametrize(
    "a, b, beyond",
    [
        ([4.0, 4.1, 4.2], [4.5, 4.6, 4.7], True),  # gap 0.5 > 0.1 + 0.1
        ([4.0, 4.1, 4.2], [4.15, 4.25, 4.35], False),  # gap 0.15 < 0.2: bars overlap
        ([4.0, 4.2, 4.4], [4.0, 4.2, 4.4], False),  # no gap
        ([4.0], [5.0], False),  # one seed: no spread to compare with, never "beyond"
        ([5.0, 5.0], [4.0, 4.0], True),  # zero spread, any gap counts (a worse than b)
    ],
)
def test_gap_beyond_spread_rule(a, b, beyond):
    g = gap(spread(a), spread(b))
    assert g["beyond"] is beyond
    assert g["delta"] == pytest.approx(sum(a) / len(a) - sum(b) / len(b))
    assert g["spread"] == pytest.approx(spread(a)["sd"] + spread(b)["sd"])


def test_best_within_budget():
    curve = [(10.0, 5.0), (20.0, 4.0), (30.0, 4.5), (40.0, 3.0)]
    assert best_within(curve, 5.0) is None
    assert best_within(curve, 20.0) == 4.0
    assert best_within(curve, 35.0) == 4.0  # the best so far, not the last point
    assert best_within(curve, 1e9) == 3.0


def _record(set_name, setting, model, seed, nll, cb0, flops_per_frame, curve, stopped=False):
    return dict(set=set_name, setting=setting, model=model, seed=seed, params=1000, n_matmul=900,
                flops_per_frame=flops_per_frame, frames_per_step=10, mel_source="n/a", nll=nll,
                nll_per_codebook=[cb0, nll], curve=[[s, v] for s, v in curve],
                curve_flops=[[s * 10 * flops_per_frame, v] for s, v in curve], steps=curve[-1][0],
                train_flops=curve[-1][0] * 10 * flops_per_frame, best_val=min(v for _, v in curve),
                stopped_early=stopped, train_s=1.0)  # fmt: skip


def test_summary_gaps_budget_and_codebook0():
    recs = []
    for seed, d in enumerate((0.0, 0.01, -0.01)):
        recs.append(
            _record("speech", "paper", "hybrid", seed, 4.0 + d, 4.0 + d, 100.0, [(1, 5.0), (2, 4.0 + d)])
        )
        recs.append(
            _record("speech", "paper", "large", seed, 4.5 + d, 4.5 + d, 400.0, [(1, 4.8), (2, 4.5 + d)])
        )
        recs.append(
            _record("speech", "delay", "hybrid", seed, 3.0 + d, 4.2 + d, 110.0, [(1, 4.0), (4, 3.0 + d)])
        )
        recs.append(
            _record("speech", "delay", "large", seed, 3.01 + d, 4.3, 400.0, [(1, 3.5), (2, 3.01 + d)])
        )
        recs.append(
            _record("speech", "delay", "large-concat", seed, 3.1, 4.1 + 3 * d, 400.0, [(1, 4.0), (3, 3.1)])
        )
    recs[-1]["stopped_early"] = True
    s = summarize(recs, ["hybrid", "large"], ["paper", "delay"], {"large-concat": "large"})
    # the budget of a (set, setting) is the smallest total any of its runs spent:
    # paper: hybrid 2 steps x 10 frames x 100 = 2000; delay: hybrid 4 x 10 x 110 = 4400 < large 8000
    assert s["budgets"] == {"speech/paper": 2000.0, "speech/delay": 4400.0}
    g = {(x["setting"], x["b"]): x for x in s["gaps"]}
    assert set(g) == {("paper", "large"), ("delay", "large")}  # the first model against each other one
    paper, delay = g[("paper", "large")], g[("delay", "large")]
    assert paper["nll"]["delta"] == pytest.approx(-0.5) and paper["nll"]["beyond"]
    assert delay["nll"]["delta"] == pytest.approx(-0.01) and not delay["nll"]["beyond"]  # 0.01 < 0.01 + 0.01
    groups = {(x["setting"], x["model"]): x for x in s["groups"]}
    # at equal FLOPs: not one evaluation of paper's large model fits in 2000 (its first costs 4000)
    assert groups[("paper", "large")]["equal_flops"]["n"] == 0
    # delay: the hybrid reaches 3.0 within 4400, the large model only its step-1 value (3.5)
    assert groups[("delay", "hybrid")]["equal_flops"]["mean"] == pytest.approx(3.0)
    assert groups[("delay", "large")]["equal_flops"]["mean"] == pytest.approx(3.5)
    assert delay["equal_flops"]["delta"] == pytest.approx(-0.5) and delay["equal_flops"]["beyond"]
    cb0 = {(x["a"], x["b"]): x["nll"] for x in s["codebook0"]}
    assert set(cb0) == {("delay/hybrid", "paper/hybrid"), ("delay/large", "paper/large"),
                        ("delay/large-concat", "delay/large")}  # fmt: skip
    assert cb0[("delay/hybrid", "paper/hybrid")]["delta"] == pytest.approx(0.2)
    assert cb0[("delay/large-concat", "delay/large")]["delta"] == pytest.approx(-0.2)
    abl = groups[("delay", "large-concat")]
    assert abl["stopped_early"] == 1 and abl["steps"]["mean"] == 3.0
    text = markdown(s)
    assert "| speech | paper | hybrid − large | -0.500 (spread 0.020): **beyond spread** |" in text
    assert "| speech | delay | 4.4e+03 |" in text  # the equal-FLOPs table
