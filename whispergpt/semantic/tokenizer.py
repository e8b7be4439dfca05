"""Semantic tokens: k-means clusters of EnCodecMAE frames, at a rate below the codec's 75 Hz.

Alignment rule (the one place it is defined)
--------------------------------------------
With ``rate`` Hz semantic frames (``rate`` must divide 75: ``g = 75 // rate`` codec frames per
semantic frame), semantic frame ``s`` is the mean of the MAE frames of codec frames
``g*s .. g*s + g - 1`` (``pool_to_rate``), and codec frame ``t`` carries semantic token
``tokens[t // g]`` (``codec_frame_tokens``). At the default 25 Hz, ``g = 3``: semantic frame ``s``
covers codec frames ``3s, 3s+1, 3s+2``. A file of ``T`` codec frames has ``S = ceil(T / g)``
semantic frames; the last one averages the ``T - g*(S-1)`` frames that exist. The token of codec
frame ``t`` may therefore depend on up to ``g - 1`` later codec frames (and the MAE itself is
bidirectional): semantic tokens are a conditioning stream computed from the whole clip, not a
causal one.

Tokenizer directory (``SemanticTokenizer.save_pretrained``)
----------------------------------------------------------
::

    DIR/config.json            model_type "semantic-tokenizer", clusters, dim, layer, rate, group,
                               frame_rate, mae_input, mae_checkpoint (the path it was fitted from),
                               seed, datasets, split, frames (fitted on), inertia, fit_seconds
    DIR/centroids.safetensors  "centroids": (clusters, dim) float32
    DIR/mae/                   a copy of the EnCodecMAE checkpoint (config.json, model.safetensors,
                               training_data.json): the tokenizer works after the run is gone

Fitting: scikit-learn's ``MiniBatchKMeans`` (k-means++ init, ``n_init`` restarts, fixed
``random_state``) on the pooled frames of a prepared dataset's split, read from the stored streams
(``MAEInput.open_dataset``); frames are visited in the dataset's file order, so the result is a
function of (data, MAE, layer, rate, clusters, seed), whatever the thread count. ``--max-frames``
subsamples (seeded) first. ``--threads``: OpenMP threads of the fit; on a machine shared with other
jobs, oversubscribed OpenMP threads spin: measured 9x slower than ``--threads 1`` there.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from whispergpt.audio import FRAME_RATE
from whispergpt.data.streams import SemanticSource
from whispergpt.errors import InputError
from whispergpt.models.semantic import group_size as models_group_size
from whispergpt.runtime import resolve_device, write_json_atomic
from whispergpt.semantic.features import MAEInput, check_layer, encode_frames, load_mae

TOKENIZER_TYPE = "semantic-tokenizer"
CENTROIDS = "centroids.safetensors"
MAE_SUBDIR = "mae"


# -- the alignment rule ---------------------------------------------------------------------------
def group_size(rate: float) -> int:
    """Codec frames per semantic frame, ``75 / rate``; ``ValueError`` unless ``rate`` divides 75."""
    return models_group_size(rate, "--rate")  # the one rule, shared with the conditioned decoder


def num_semantic_frames(T: int, rate: float = 25) -> int:
    """``S = ceil(T / g)`` semantic frames for ``T`` codec frames."""
    return -(-int(T) // group_size(rate))


def pool_to_rate(features: torch.Tensor, rate: float = 25) -> torch.Tensor:
    """``(T, D)`` frames at 75 Hz -> ``(S, D)`` at ``rate`` Hz: frame ``s`` = mean of frames ``g*s .. g*s+g-1``."""
    if features.dim() != 2:
        raise ValueError(f"expected (T, D) features, got shape {tuple(features.shape)}")
    g = group_size(rate)
    T, D = features.shape
    S = num_semantic_frames(T, rate)
    x = features.float()
    pad = S * g - T
    if pad:  # the last group averages only the frames that exist
        x = torch.cat([x, x.new_zeros(pad, D)])
    sums = x.reshape(S, g, D).sum(dim=1)  # (S, g, D) -> (S, D)
    counts = torch.full((S, 1), float(g), dtype=x.dtype)
    counts[-1] = g - pad if S else g
    return sums / counts


def codec_frame_tokens(tokens: torch.Tensor, T: int, rate: float = 25) -> torch.Tensor:
    """``(S,)`` semantic tokens -> ``(T,)``: codec frame ``t`` gets ``tokens[t // g]`` (``S`` must be ``ceil(T / g)``)."""
    g = group_size(rate)
    if tokens.dim() != 1 or tokens.shape[0] != num_semantic_frames(T, rate):
        raise ValueError(
            f"{T} codec frames need ceil({T}/{g}) = {num_semantic_frames(T, rate)} semantic tokens, got shape "
            f"{tuple(tokens.shape)}"
        )
    return tokens[torch.arange(T) // g]


# -- the tokenizer --------------------------------------------------------------------------------
@dataclass
class SemanticConfig:
    clusters: int
    dim: int
    layer: int
    rate: float = 25
    mae_input: str = "mel"
    mae_checkpoint: str | None = None
    seed: int = 0
    datasets: list[str] = field(default_factory=list)
    split: str = "train"
    frames: int = 0
    inertia: float | None = None
    fit_seconds: float | None = None

    @property
    def group(self) -> int:
        return group_size(self.rate)


class SemanticTokenizer:
    """Nearest-centroid tokens of pooled EnCodecMAE frames (see the module docstring)."""

    def __init__(
        self, config: SemanticConfig, centroids: torch.Tensor, mae_dir: str | os.PathLike | None = None
    ):
        if tuple(centroids.shape) != (config.clusters, config.dim):
            raise ValueError(
                f"centroids must be ({config.clusters}, {config.dim}), got {tuple(centroids.shape)}"
            )
        group_size(config.rate)
        self.config = config
        self.centroids = centroids.float()
        self.mae_dir = None if mae_dir is None else Path(mae_dir)
        self._mae = None

    @property
    def clusters(self) -> int:
        return self.config.clusters

    def assign(self, pooled: torch.Tensor) -> torch.Tensor:
        """``(S, D)`` pooled frames -> ``(S,)`` int64 nearest centroid (squared Euclidean)."""
        c = self.centroids
        d = (
            pooled.float().square().sum(1, keepdim=True) - 2 * pooled.float() @ c.T + c.square().sum(1)
        )  # (S, C)
        return d.argmin(dim=1)

    def tokens(self, features: torch.Tensor) -> torch.Tensor:
        """``(T, D)`` MAE frames (75 Hz, the fitted layer) -> ``(S,)`` tokens at ``rate`` Hz."""
        if features.dim() != 2 or features.shape[1] != self.config.dim:
            raise ValueError(f"expected (T, {self.config.dim}) MAE frames, got shape {tuple(features.shape)}")
        return self.assign(pool_to_rate(features, self.config.rate))

    def frame_tokens(self, features: torch.Tensor) -> torch.Tensor:
        """``(T, D)`` MAE frames -> ``(T,)`` tokens on the codec grid (``codec_frame_tokens``)."""
        return codec_frame_tokens(self.tokens(features), features.shape[0], self.config.rate)

    def load_mae(self, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, MAEInput]:
        """The EnCodecMAE copied into the tokenizer dir, and what it reads (opened once)."""
        if self._mae is None:
            if self.mae_dir is None:
                raise ValueError("this tokenizer has no MAE checkpoint (built in memory)")
            model, directory = load_mae(self.mae_dir, device)
            self._mae = (model, MAEInput.from_checkpoint(model, directory, device))
        return self._mae

    def audio_frame_tokens(self, wave: torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
        """``(S,)`` 24 kHz audio -> ``(S // 320,)`` int64 tokens on the codec grid."""
        model, inputs = self.load_mae(device)
        frames = encode_frames(model, inputs.features(wave)[0], self.config.layer)  # (T, D)
        return self.frame_tokens(frames)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_file({"centroids": self.centroids.contiguous()}, str(d / CENTROIDS))
        write_json_atomic(d / "config.json", dict(model_type=TOKENIZER_TYPE, group=self.config.group,
                                                  frame_rate=FRAME_RATE, **asdict(self.config)))  # fmt: skip

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> SemanticTokenizer:
        from safetensors.torch import load_file

        d = Path(directory)
        try:
            raw = json.loads((d / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"not a semantic tokenizer: cannot read config.json ({e})", d) from e
        if not isinstance(raw, dict) or raw.get("model_type") != TOKENIZER_TYPE:
            actual = raw.get("model_type") if isinstance(raw, dict) else None
            raise InputError(
                f"not a semantic tokenizer: config.json model_type is {actual!r}, expected {TOKENIZER_TYPE!r}",
                d,
                "pass a folder written by `whispergpt semantic fit`",
            )
        known = SemanticConfig.__dataclass_fields__
        config = SemanticConfig(**{k: v for k, v in raw.items() if k in known})
        centroids = load_file(str(d / CENTROIDS))["centroids"]
        mae = d / MAE_SUBDIR
        return cls(config, centroids, mae if (mae / "config.json").is_file() else None)


# -- prepare --semantic DIR -----------------------------------------------------------------------
SEMANTIC_STORAGE_MAX = 32767  # the stream is stored as int16 (data.streams)


def stream_writer(work) -> np.ndarray:
    """The ``semantic`` stream of one file for ``prepare --semantic DIR``: ``(T,)`` tokens on the codec
    grid (the alignment rule), from the file's audio through the tokenizer's own MAE copy."""
    tok = work.state.get("semantic_tokenizer")
    if tok is None:  # loaded once per prepare run, on its device
        tok = work.state["semantic_tokenizer"] = SemanticTokenizer.from_pretrained(work.settings["semantic"])
    return tok.audio_frame_tokens(work.wave, work.wave.device).numpy()


def semantic_source(directory: str | os.PathLike) -> SemanticSource:
    """Check the tokenizer at ``directory``: ``prepare(..., semantic=semantic_source(DIR))`` writes its
    tokens as the ``semantic`` stream and records ``info`` in the manifest (``semantic_tokenizer``)."""
    tok = SemanticTokenizer.from_pretrained(directory)
    if tok.clusters > SEMANTIC_STORAGE_MAX + 1:
        raise InputError(
            f"the semantic stream is stored as int16: at most {SEMANTIC_STORAGE_MAX + 1} clusters, got {tok.clusters}",
            directory,
        )
    if tok.mae_dir is None:
        raise InputError("the tokenizer folder holds no mae/ checkpoint copy", directory, "fit it again")
    c = tok.config
    info = dict(clusters=c.clusters, layer=c.layer, rate=c.rate, group=c.group, mae_input=c.mae_input,
                mae_checkpoint=c.mae_checkpoint, rule=f"codec frame t carries semantic token t // {c.group}")  # fmt: skip
    return SemanticSource(str(Path(directory).resolve()), info, stream_writer)


# -- fitting --------------------------------------------------------------------------------------
def dataset_frames(
    model: torch.nn.Module, inputs: MAEInput, dataset, layer: int, rate: float, progress: bool = False
) -> np.ndarray:
    """Pooled ``(N, D)`` float32 MAE frames of every file of ``dataset``, in file order."""
    parts = []
    for i in range(len(dataset.files)):
        frames = encode_frames(model, inputs.dataset_features(dataset, i), layer)  # (T, D)
        parts.append(pool_to_rate(frames, rate).numpy())
        if progress and (i + 1) % 50 == 0:
            print(f"semantic: {i + 1}/{len(dataset.files)} files", file=sys.stderr, flush=True)
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)


def kmeans(x: np.ndarray, clusters: int, seed: int = 0, n_init: int = 3, max_iter: int = 100,
           batch_size: int = 4096, threads: int | None = None) -> tuple[np.ndarray, float]:  # fmt: skip
    """``(centroids (clusters, D) float32, inertia)`` of MiniBatchKMeans on ``x (N, D)``; deterministic in
    ``seed``, and the same for any ``threads`` (OpenMP/BLAS threads; None: the libraries' default)."""
    import contextlib

    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    try:
        from sklearn.cluster import MiniBatchKMeans
    except ImportError as e:
        raise InputError(
            "semantic fit needs scikit-learn", hint="pip install 'whispergpt[mae-tools]' (scikit-learn)"
        ) from e
    km = MiniBatchKMeans(
        n_clusters=clusters, random_state=seed, n_init=n_init, max_iter=max_iter,
        batch_size=min(batch_size, len(x)), reassignment_ratio=0.01,
    )  # fmt: skip
    with threadpool_limits(threads) if threads else contextlib.nullcontext():
        km.fit(x)
    return km.cluster_centers_.astype(np.float32), float(km.inertia_)


def fit_semantic(
    mae_checkpoint: str | os.PathLike,
    datasets: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    clusters: int = 512,
    layer: int | None = None,
    rate: float = 25,
    seed: int = 0,
    split: str = "train",
    max_frames: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    threads: int | None = None,
) -> SemanticTokenizer:
    """Fit a tokenizer on the ``split`` of ``datasets`` and write it to ``out`` (replacing an older tokenizer there)."""
    group_size(rate)
    if clusters < 1:
        raise ValueError(f"--clusters must be >= 1, got {clusters}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"--max-frames must be >= 1, got {max_frames}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / CENTROIDS).is_file():
        raise InputError(
            "--out exists, is not empty and holds no semantic tokenizer", out, "use a new folder"
        )
    dev = resolve_device(device)
    model, directory = load_mae(mae_checkpoint, dev)
    layer = check_layer(model, layer)
    inputs = MAEInput.from_checkpoint(model, directory, dev)
    ds = inputs.open_dataset(datasets, split)
    t0 = time.perf_counter()
    x = dataset_frames(model, inputs, ds, layer, rate, progress)
    t_features = time.perf_counter() - t0
    if max_frames is not None and len(x) > max_frames:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), max_frames, replace=False))]
    if clusters > len(x):
        raise InputError(
            f"--clusters is larger than the number of {rate:g} Hz frames in the data: expected at most "
            f"{len(x)}, got {clusters}",
            hint="use fewer clusters or more data",
        )
    t1 = time.perf_counter()
    centroids, inertia = kmeans(x, clusters, seed, threads=threads)
    t_fit = time.perf_counter() - t1
    config = SemanticConfig(
        clusters=clusters, dim=int(x.shape[1]), layer=layer, rate=rate, mae_input=inputs.kind,
        mae_checkpoint=str(directory), seed=seed, datasets=[str(d) for d in datasets], split=split,
        frames=int(len(x)), inertia=inertia, fit_seconds=round(t_fit, 3),
    )  # fmt: skip
    tok = SemanticTokenizer(config, torch.from_numpy(centroids))
    _write_atomically(tok, directory, out)
    print(
        f"semantic: {clusters} clusters of layer {layer} at {rate:g} Hz from {len(x)} frames "
        f"({len(x) / rate / 3600:.3f} h); MAE features {t_features:.1f} s, k-means {t_fit:.1f} s -> {out}",
        flush=True,
    )
    return SemanticTokenizer.from_pretrained(out)


def _write_atomically(tok: SemanticTokenizer, mae_dir: Path, out: Path) -> None:
    """Build the tokenizer dir under a temp name beside ``out``, then swap it in (an old one is removed)."""
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        (tmp / MAE_SUBDIR).mkdir()
        for name in ("config.json", "model.safetensors", "training_data.json"):
            if (mae_dir / name).is_file():
                shutil.copy2(mae_dir / name, tmp / MAE_SUBDIR / name)
        tok.save_pretrained(tmp)
        old = None
        if out.exists():
            old = out.parent / f".old-{out.name}-{os.getpid()}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
