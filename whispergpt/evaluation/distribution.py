"""Set-vs-set distances between embeddings: Fréchet distance, unbiased MMD, bootstrap intervals.

All math is float64 numpy, seeded, so a score is reproducible to the digit on one machine.

Fréchet distance (FD) between Gaussians fitted to ``x (n, d)`` and ``y (m, d)``::

    FD = |mu_x - mu_y|^2 + tr(S_x) + tr(S_y) - 2 tr((S_x S_y)^(1/2))

The last trace is computed without a matrix square root: with centred data ``X``, ``Y`` and
``S_x = X^T X / (n-1)``, the non-zero eigenvalues of ``S_x S_y`` are the squared singular values
of ``X Y^T / sqrt((n-1)(m-1))``, so ``tr((S_x S_y)^(1/2))`` is that matrix's nuclear norm. Thin QR
factors (``X = Q R``) shrink it to ``min(n, d) x min(m, d)``. This is exact, symmetric, needs no
``scipy.linalg.sqrtm`` (whose result on a singular ``S_x S_y``, the usual case when ``n <= d``,
carries imaginary noise), and is fast enough to bootstrap 1000 times.

MMD: the unbiased estimator of the squared MMD with the KID kernel ``k(a, b) = (a.b / d + 1)^3``
(Binkowski et al. 2018) on features z-scored with the mean and std of both sets pooled (so the
kernel's scale does not depend on the codec; pooled, because z-scoring by one set alone biases
the estimate at small n). Its expectation is the true MMD^2 at any n >= 2, so it can be slightly
negative when the sets match.

Bootstrap: both sets are resampled with replacement, independently, ``n_boot`` times; the interval
is the 2.5 / 97.5 percentile. For MMD a resample keeps the estimator unbiased by dropping pairs of
one original sample with itself (not only the diagonal). A resample with repeats has fewer distinct
samples, which inflates FD, so FD's interval is shifted back by the bootstrap bias
(``mean(boot) - FD``). Linear algebra runs on one BLAS thread (``threadpoolctl``): small SVDs are
fastest that way on a shared machine, and sums do not depend on the thread count. Below ``MIN_N`` samples per set a metric is
``None`` with the reason (see docs/EVAL.md for why FD needs more samples than MMD).
"""

from __future__ import annotations

import contextlib

import numpy as np

# Minimum samples per set before a distribution metric is reported (docs/EVAL.md, "sample sizes").
MIN_N = {"fd": 50, "mmd": 10}
CI_LEVEL = 0.95


def _as_features(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be (n, d) features, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} holds non-finite values")
    return x


def _centred_r(x: np.ndarray) -> np.ndarray:
    """The R of a thin QR of the centred ``x`` scaled by ``1/sqrt(n-1)``: ``R^T R = cov(x)``."""
    xc = (x - x.mean(axis=0)) / np.sqrt(x.shape[0] - 1)
    if xc.shape[0] <= xc.shape[1]:
        return xc  # already (n, d) with n <= d: XX^T is the small side
    return np.linalg.qr(xc, mode="r")  # (d, d)


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """FD between Gaussians fitted to ``x (n, d)`` and ``y (m, d)``, n, m >= 2 (module docstring)."""
    x, y = _as_features(x, "x"), _as_features(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature widths differ: {x.shape[1]} vs {y.shape[1]}")
    if min(len(x), len(y)) < 2:
        raise ValueError("FD needs at least 2 samples per set")
    rx, ry = _centred_r(x), _centred_r(y)
    tr_sqrt = np.linalg.svd(rx @ ry.T, compute_uv=False).sum()
    mean_term = float(np.square(x.mean(axis=0) - y.mean(axis=0)).sum())
    fd = mean_term + float(np.square(rx).sum() + np.square(ry).sum()) - 2.0 * float(tr_sqrt)
    return max(fd, 0.0)  # rounding can leave -1e-15 for identical sets


def poly_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """KID's cubic polynomial kernel ``(a.b / d + 1)^3`` -> ``(len(a), len(b))``."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def zscore_pooled(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standardise both sets per feature with the mean and std of ``x`` and ``y`` together."""
    both = np.concatenate([x, y])
    mu = both.mean(axis=0)
    sd = np.maximum(both.std(axis=0), 1e-8 * max(1.0, float(np.abs(both).max())))
    return (x - mu) / sd, (y - mu) / sd


def _mmd2_from_kernels(kxx, kyy, kxy, ix, iy) -> float:
    """Unbiased MMD^2 from full kernel matrices and (resampled) index vectors ``ix``, ``iy``."""
    sub_xx, sub_yy = kxx[np.ix_(ix, ix)], kyy[np.ix_(iy, iy)]
    keep_x = ix[:, None] != ix[None, :]  # pairs of distinct original samples only
    keep_y = iy[:, None] != iy[None, :]
    if not keep_x.any() or not keep_y.any():
        return float("nan")
    return float(sub_xx[keep_x].mean() + sub_yy[keep_y].mean() - 2.0 * kxy[np.ix_(ix, iy)].mean())


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, standardise: bool = True) -> float:
    """Unbiased squared MMD between ``x (n, d)`` and ``y (m, d)`` (n, m >= 2), cubic kernel."""
    x, y = _as_features(x, "x"), _as_features(y, "y")
    if min(len(x), len(y)) < 2:
        raise ValueError("the unbiased MMD needs at least 2 samples per set")
    if standardise:
        x, y = zscore_pooled(x, y)
    ix, iy = np.arange(len(x)), np.arange(len(y))
    return _mmd2_from_kernels(poly_kernel(x, x), poly_kernel(y, y), poly_kernel(x, y), ix, iy)


def _percentiles(values: np.ndarray) -> list[float] | None:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    lo, hi = np.percentile(values, [50 * (1 - CI_LEVEL), 50 * (1 + CI_LEVEL)])
    return [float(lo), float(hi)]


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(stream)])


def _null(reason: str, **extra) -> dict:
    return dict(value=None, ci=None, reason=reason, **extra)


def one_blas_thread():
    """Context manager limiting BLAS to one thread (a no-op without ``threadpoolctl``)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def distribution_metrics(
    generated: np.ndarray, reference: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> dict[str, dict]:
    """``{"fd": {...}, "mmd": {...}}`` with value, 95 % bootstrap interval, n, min_n, reason."""
    with one_blas_thread():
        return _distribution_metrics(generated, reference, n_boot, seed)


def _distribution_metrics(generated, reference, n_boot: int, seed: int) -> dict[str, dict]:
    g, r = _as_features(generated, "generated"), _as_features(reference, "reference")
    n, m = len(g), len(r)
    out: dict[str, dict] = {}
    base = dict(n_generated=n, n_reference=m)

    if min(n, m) < MIN_N["fd"]:
        out["fd"] = _null(f"needs >= {MIN_N['fd']} clips per set, got {n} / {m}", min_n=MIN_N["fd"], **base)
    else:
        rng = _rng(seed, 1)
        boots = np.array(
            [frechet_distance(g[rng.integers(0, n, n)], r[rng.integers(0, m, m)]) for _ in range(n_boot)]
        )
        value = frechet_distance(g, r)
        ci = _percentiles(boots - (boots.mean() - value))  # undo the repeats' upward bias
        ci = None if ci is None else [max(ci[0], 0.0), max(ci[1], 0.0)]
        note = None
        if min(n, m) <= g.shape[1]:
            note = f"n <= d={g.shape[1]}: covariances are rank-deficient, FD is dominated by its bias"
        out["fd"] = dict(value=value, ci=ci, reason=None, note=note, min_n=MIN_N["fd"], **base)

    if min(n, m) < MIN_N["mmd"]:
        out["mmd"] = _null(
            f"needs >= {MIN_N['mmd']} clips per set, got {n} / {m}", min_n=MIN_N["mmd"], **base
        )
    else:
        gz, rz = zscore_pooled(g, r)
        kxx, kyy, kxy = poly_kernel(gz, gz), poly_kernel(rz, rz), poly_kernel(gz, rz)
        rng = _rng(seed, 2)
        boots = np.array(
            [
                _mmd2_from_kernels(kxx, kyy, kxy, rng.integers(0, n, n), rng.integers(0, m, m))
                for _ in range(n_boot)
            ]
        )
        value = _mmd2_from_kernels(kxx, kyy, kxy, np.arange(n), np.arange(m))
        out["mmd"] = dict(value=value, ci=_percentiles(boots), reason=None, min_n=MIN_N["mmd"], **base)
    return out


def bootstrap_mean(
    values: np.ndarray, n_boot: int = 1000, seed: int = 0, stream: int = 0
) -> list[float] | None:
    """95 % percentile interval of the mean of ``values (n,)`` (None below 2 finite values)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return None
    idx = _rng(seed, stream).integers(0, v.size, (n_boot, v.size))
    return _percentiles(v[idx].mean(axis=1))


def mean_summary(values: list, n_boot: int, seed: int, stream: int, **extra) -> dict:
    """``{value, ci, n, reason}``: the mean of the non-None ``values`` and its bootstrap interval."""
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return dict(value=None, ci=None, n=0, reason="no pair defines it", **extra)
    ci = bootstrap_mean(v, n_boot, seed, stream)
    return dict(
        value=float(v.mean()), ci=ci, n=int(v.size), reason=None if ci else "interval needs >= 2", **extra
    )


def bootstrap_ratio(num: np.ndarray, den: np.ndarray, n_boot: int = 1000, seed: int = 0, stream: int = 0):
    """95 % interval of ``sum(num) / sum(den)`` resampling items (e.g. nats / tokens per clip)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    if num.size < 2:
        return None
    idx = _rng(seed, stream).integers(0, num.size, (n_boot, num.size))
    return _percentiles(num[idx].sum(axis=1) / np.maximum(den[idx].sum(axis=1), 1e-300))
