import numpy as np
import pytest

from whispergpt.evaluation.paired import (
    chroma_similarity,
    f0_stats,
    loudness_correlation,
    mel_distance_curve,
    onset_rate,
    paired_metrics,
)

SR = 24000
T = np.arange(3 * SR) / SR


def _signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    clicks = np.zeros(T.size)
    clicks[:: SR // 4] = 1.0
    clicks = np.convolve(clicks, np.exp(-np.arange(400) / 40) * rng.standard_normal(400) * 0.3)[: T.size]
    return dict(
        sine=0.3 * np.sin(2 * np.pi * 220 * T) * (1 + 0.5 * np.sin(2 * np.pi * 1.0 * T)),
        chirp=0.3 * np.sin(2 * np.pi * (100 * T + 40 * T**2)),
        noise=0.1 * rng.standard_normal(T.size),
        clicks=clicks,
    )


@pytest.mark.parametrize("name", ["sine", "chirp", "noise", "clicks"])
def test_paired_metrics_are_perfect_for_identical_audio(name):
    x = _signals()[name]
    m = paired_metrics(x, x.copy())
    assert m["mel_distance_curve"] == [0.0] * 3
    assert m["chroma_similarity"] == pytest.approx(1.0, abs=1e-12)
    assert m["onset_rate_diff"] == 0.0
    assert m["loudness_correlation"] == pytest.approx(1.0, abs=1e-12)
    assert m["voiced_share_diff"] == 0.0
    if m["f0_median_diff_semitones"] is not None:
        assert m["f0_median_diff_semitones"] == 0.0


def test_paired_metrics_see_differences():
    s = _signals()
    assert min(mel_distance_curve(s["sine"], s["noise"])) > 0.1
    assert chroma_similarity(s["sine"], s["noise"]) < 0.9
    assert loudness_correlation(s["sine"], s["clicks"]) < 0.5
    # 220 Hz vs 233.08 Hz is one semitone
    up = 0.3 * np.sin(2 * np.pi * 220 * 2 ** (1 / 12) * T)
    assert paired_metrics(s["sine"], up)["f0_median_diff_semitones"] == pytest.approx(1.0, abs=0.05)


def test_onsets_and_f0_on_known_signals():
    s = _signals()
    assert onset_rate(s["clicks"]) == pytest.approx(4.0, abs=0.5)  # a click every 250 ms
    assert onset_rate(s["sine"]) == 0.0 and onset_rate(s["noise"]) == 0.0
    st = f0_stats(s["sine"])
    assert st["median_hz"] == pytest.approx(220.0, rel=0.01) and st["voiced_share"] > 0.9
    assert f0_stats(s["noise"])["voiced_share"] < 0.05
    assert f0_stats(np.zeros(SR))["median_hz"] is None


def test_mel_curve_is_per_second_since_the_start():
    s = _signals()
    # identical first 2 s, then the second signal turns to noise: only the third second drifts
    mixed = np.concatenate([s["sine"][: 2 * SR], s["noise"][2 * SR :]])
    curve = mel_distance_curve(s["sine"], mixed)
    assert len(curve) == 3
    assert curve[0] == 0.0 and curve[2] > 0.1
