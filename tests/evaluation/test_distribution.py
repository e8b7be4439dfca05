import numpy as np
import pytest

from whispergpt.evaluation.distribution import (
    MIN_N,
    bootstrap_mean,
    distribution_metrics,
    frechet_distance,
    mmd2_unbiased,
)


def _gauss(seed: int, n: int = 200, d: int = 8, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)) * scale + shift


def test_fd_of_a_set_against_itself_is_zero():
    for n, d in ((200, 8), (30, 64)):  # full-rank and rank-deficient covariances
        x = _gauss(0, n, d)
        assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)


def test_fd_matches_the_sqrtm_formula():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    x, y = _gauss(1, 120, 6), _gauss(2, 90, 6, scale=1.5, shift=0.4)
    sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    ref = (
        np.square(x.mean(0) - y.mean(0)).sum()
        + np.trace(sx)
        + np.trace(sy)
        - 2 * np.trace(scipy_linalg.sqrtm(sx @ sy).real)
    )
    assert frechet_distance(x, y) == pytest.approx(ref, rel=1e-9)


def test_fd_grows_with_added_noise():
    x = _gauss(3, 300, 8)
    noise = _gauss(4, 300, 8)
    fds = [frechet_distance(x, x + level * noise) for level in (0.1, 0.5, 1.0)]
    assert 0 < fds[0] < fds[1] < fds[2]


def test_mmd_is_unbiased_on_two_draws_of_one_distribution():
    same = [mmd2_unbiased(_gauss(10 + 2 * i, 20), _gauss(11 + 2 * i, 20)) for i in range(40)]
    other = [mmd2_unbiased(_gauss(200 + i, 20), _gauss(300 + i, 20, scale=2.0, shift=0.5)) for i in range(10)]
    spread = np.std(same) / np.sqrt(len(same))
    assert abs(np.mean(same)) < 3 * spread  # centred on 0 (a biased estimator sits clearly above)
    assert min(same) < 0  # the unbiased estimator can go below 0
    assert np.mean(other) > 10 * spread and min(other) > 0


def test_distribution_metrics_null_below_min_n_and_deterministic():
    small = distribution_metrics(_gauss(0, MIN_N["mmd"] - 1), _gauss(1, 40), n_boot=20)
    assert small["fd"]["value"] is None and "needs >=" in small["fd"]["reason"]
    assert small["mmd"]["value"] is None and small["mmd"]["reason"]
    a = distribution_metrics(_gauss(0, 60), _gauss(1, 60, shift=0.3), n_boot=50, seed=3)
    b = distribution_metrics(_gauss(0, 60), _gauss(1, 60, shift=0.3), n_boot=50, seed=3)
    assert a == b
    for key in ("fd", "mmd"):
        lo, hi = a[key]["ci"]
        assert lo <= a[key]["value"] <= hi


def test_bootstrap_mean_interval():
    assert bootstrap_mean(np.array([1.0])) is None
    lo, hi = bootstrap_mean(np.arange(100.0), n_boot=200)
    assert lo < 49.5 < hi
