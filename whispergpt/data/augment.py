"""Data augmentation for small corpora: a YAML recipe of seeded DSP transforms.

A recipe is an ordered list of transforms, each applied with probability ``p`` and parameters drawn
uniformly from its ranges::

    transforms:
      - {name: pitch_shift, p: 0.3, semitones: [-1.5, 1.5]}
      - {name: noise, p: 0.3, kind: pink, snr_db: [25, 45]}
      - {name: reverb, p: 0.2, rt60: [0.2, 0.6], wet: [0.1, 0.3]}   # or folder: DIR of IRs

A range is ``[lo, hi]`` or one number (fixed). Folders are resolved against the recipe's folder.
Validation is strict (``ValueError`` listing the valid names, or naming the limit broken), so a
typo never silently disables a transform.

Determinism: ``sample_chain(recipe, seed)`` draws which transforms apply and their parameters
(the *chain*, a JSON list of ``{name, params}``); ``apply_chain(wave, chain, seed)`` is a pure
function of its inputs (the library's own randomness, e.g. noise samples, is seeded per step and
the global ``random`` / ``numpy.random`` states are restored afterwards). ``prepare --augment``
stores the chain and seed of every copy, so any augmented clip can be rebuilt from the manifest.

DSP comes from audiomentations (MIT, optional extra ``augment``; its signalsmith pitch/tempo is
~4x faster than pedalboard's Rubber Band here, and pedalboard is GPLv3). Hand-written: only the
synthetic room impulse response (an exponentially decaying noise tail), because audiomentations'
``RoomSimulator`` needs pyroomacoustics (a heavy compiled extra) and ``ApplyImpulseResponse``
only reads IR files. After the chain, a clip peaking above full scale is scaled down to 0.99
peak (real files cannot exceed it, so neither should training audio); a clip that is then
non-finite or quieter than ``SILENCE_RMS`` raises ``AugmentedClipError``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from whispergpt.audio import AUDIO_EXTENSIONS, SAMPLE_RATE, AudioLoadError

SILENCE_RMS = 10 ** (-70 / 20)  # -70 dBFS: an augmented clip quieter than this is skipped
PEAK = 0.99


class AugmentedClipError(AudioLoadError):
    """An augmented copy came out silent or non-finite (prepare skips it and lists it)."""


def _library():
    try:
        import audiomentations
    except ImportError as e:  # an optional extra: say how to get it
        raise ImportError("augmentation needs audiomentations: pip install 'whispergpt[augment]'") from e
    return audiomentations


# -- schema -------------------------------------------------------------------------------------
Range = tuple[float, float]


def _as_range(owner: str, key: str, value: Any, limits: Range) -> Range:
    if isinstance(value, bool):
        value = None  # a bool is an int to Python; never a valid range
    if isinstance(value, int | float):
        value = [value, value]
    if not (isinstance(value, list | tuple) and len(value) == 2 and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value)):  # fmt: skip
        raise ValueError(f"{owner}.{key}: expected a number or [lo, hi], got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"{owner}.{key}: need finite lo <= hi, got [{lo}, {hi}]")
    if lo < limits[0] or hi > limits[1]:
        raise ValueError(
            f"{owner}.{key}: [{lo:g}, {hi:g}] is outside the supported range [{limits[0]:g}, {limits[1]:g}]"
        )
    return lo, hi


def _resolve_folder(owner: str, folder: Any, base_dir: Path) -> str:
    if not isinstance(folder, str):
        raise ValueError(f"{owner}.folder: expected a folder path, got {folder!r}")
    return str((base_dir / Path(folder).expanduser()).resolve())


def _audio_files(owner: str, folder: str) -> list[str]:
    """The readable audio files under ``folder`` (recursive, sorted); none is a ``ValueError``."""
    import soundfile as sf

    root = Path(folder)  # already resolved against the recipe's folder
    if not root.is_dir():
        raise ValueError(f"{owner}.folder: {folder} is not a folder")
    files = []
    for f in sorted(root.rglob("*")):
        if not (f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS):
            continue
        try:
            if sf.info(str(f)).frames > 0:
                files.append(str(f.resolve()))
        except Exception:  # soundfile raises several types; an unreadable file is just not used
            continue
    if not files:
        raise ValueError(
            f"{owner}.folder: {folder} holds no readable audio file ({', '.join(AUDIO_EXTENSIONS)})"
        )
    return files


@dataclass
class Transform:
    """One recipe entry. Subclasses declare their range fields in ``LIMITS`` (field -> supported range)."""

    NAME: ClassVar[str] = ""
    LIMITS: ClassVar[dict[str, Range]] = {}
    p: float = 0.5

    def validate(self, base_dir: Path) -> None:
        owner = self.NAME
        if not (isinstance(self.p, int | float) and not isinstance(self.p, bool) and 0.0 <= self.p <= 1.0):
            raise ValueError(f"{owner}.p: probability must be in [0, 1], got {self.p!r}")
        self.p = float(self.p)
        for key, limits in self.LIMITS.items():
            setattr(self, key, _as_range(owner, key, getattr(self, key), limits))

    def sample(self, rng: np.random.Generator) -> dict:
        """Parameters for one application: a uniform draw from every range (in field order)."""
        return {k: float(rng.uniform(*getattr(self, k))) for k in self.LIMITS}

    @staticmethod
    def apply(x: np.ndarray, params: dict, sr: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def to_dict(self) -> dict:
        d = {"name": self.NAME}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = list(v) if isinstance(v, tuple) else v
        return d


@dataclass
class PitchShift(Transform):
    NAME: ClassVar[str] = "pitch_shift"
    LIMITS: ClassVar[dict[str, Range]] = {"semitones": (-12.0, 12.0)}
    semitones: Range = (-2.0, 2.0)

    @staticmethod
    def apply(x, params, sr, rng):
        s = params["semitones"]
        return _library().PitchShift(min_semitones=s, max_semitones=s, p=1.0)(x, sr)


@dataclass
class TimeStretch(Transform):
    NAME: ClassVar[str] = "time_stretch"
    LIMITS: ClassVar[dict[str, Range]] = {"rate": (0.5, 2.0)}
    rate: Range = (0.9, 1.1)

    @staticmethod
    def apply(x, params, sr, rng):
        r = params["rate"]  # > 1 is faster (shorter); the clip's length changes with it
        return _library().TimeStretch(min_rate=r, max_rate=r, leave_length_unchanged=False, p=1.0)(x, sr)


NOISE_KINDS = {"white": 0.0, "pink": -3.01, "folder": None}  # kind -> spectral decay in dB/octave


@dataclass
class Noise(Transform):
    NAME: ClassVar[str] = "noise"
    LIMITS: ClassVar[dict[str, Range]] = {"snr_db": (-10.0, 100.0)}
    snr_db: Range = (20.0, 40.0)
    kind: str = "white"
    folder: str | None = None
    files: list[str] = field(default_factory=list, repr=False)  # derived from folder, not a recipe key

    def validate(self, base_dir: Path) -> None:
        super().validate(base_dir)
        if not isinstance(self.kind, str) or self.kind not in NOISE_KINDS:
            raise ValueError(f"noise.kind: {self.kind!r} is not one of {', '.join(NOISE_KINDS)}")
        if (self.kind == "folder") != (self.folder is not None):
            raise ValueError("noise: kind: folder needs folder: DIR, and folder: needs kind: folder")
        if self.folder is not None:
            self.folder = _resolve_folder("noise", self.folder, base_dir)
            self.files = _audio_files("noise", self.folder)

    def sample(self, rng):
        params = super().sample(rng)
        if self.files:
            params["file"] = self.files[int(rng.integers(len(self.files)))]
        return params

    @staticmethod
    def apply(x, params, sr, rng):
        A, snr = _library(), params["snr_db"]
        if "file" in params:
            t = A.AddBackgroundNoise(sounds_path=[params["file"]], min_snr_db=snr, max_snr_db=snr, p=1.0)
        else:
            decay = NOISE_KINDS[params.get("kind", "white")]
            t = A.AddColorNoise(min_snr_db=snr, max_snr_db=snr, min_f_decay=decay, max_f_decay=decay, p=1.0)
        return t(x, sr)

    def to_dict(self) -> dict:
        d = super().to_dict()
        d.pop("files")
        return d


@dataclass
class Reverb(Transform):
    NAME: ClassVar[str] = "reverb"
    LIMITS: ClassVar[dict[str, Range]] = {"rt60": (0.05, 3.0), "wet": (0.0, 1.0)}
    rt60: Range = (0.2, 0.6)  # seconds to decay by 60 dB (synthetic IR; unused with folder)
    wet: Range = (0.1, 0.3)  # reverberant share of the mix
    folder: str | None = None
    files: list[str] = field(default_factory=list, repr=False)

    def validate(self, base_dir: Path) -> None:
        super().validate(base_dir)
        if self.folder is not None:
            self.folder = _resolve_folder("reverb", self.folder, base_dir)
            self.files = _audio_files("reverb", self.folder)

    def sample(self, rng):
        params = super().sample(rng)
        if self.files:
            del params["rt60"]
            params["ir"] = self.files[int(rng.integers(len(self.files)))]
        return params

    @staticmethod
    def apply(x, params, sr, rng):
        if "ir" in params:
            y = _library().ApplyImpulseResponse(ir_path=[params["ir"]], p=1.0, leave_length_unchanged=True)(
                x, sr
            )
        else:
            from scipy.signal import fftconvolve

            rt60 = params["rt60"]
            t = np.arange(max(1, int(rt60 * sr))) / sr
            ir = rng.standard_normal(t.size) * np.exp(-math.log(1000.0) * t / rt60)  # -60 dB at rt60
            ir /= np.sqrt(np.sum(ir**2))  # unit energy: the wet path is about as loud as the dry one
            y = fftconvolve(x, ir)[: x.shape[-1]]  # causal, same length
        return ((1.0 - params["wet"]) * x + params["wet"] * y).astype(np.float32)


@dataclass
class Gain(Transform):
    NAME: ClassVar[str] = "gain"
    LIMITS: ClassVar[dict[str, Range]] = {"db": (-40.0, 20.0)}
    db: Range = (-6.0, 6.0)

    @staticmethod
    def apply(x, params, sr, rng):
        return _library().Gain(min_gain_db=params["db"], max_gain_db=params["db"], p=1.0)(x, sr)


_NYQUIST_MARGIN = (20.0, 0.49 * SAMPLE_RATE)  # cut-offs the 24 kHz biquads handle


@dataclass
class HighPass(Transform):
    NAME: ClassVar[str] = "highpass"
    LIMITS: ClassVar[dict[str, Range]] = {"cutoff_hz": _NYQUIST_MARGIN}
    cutoff_hz: Range = (40.0, 200.0)

    @staticmethod
    def apply(x, params, sr, rng):
        c = params["cutoff_hz"]
        return _library().HighPassFilter(min_cutoff_freq=c, max_cutoff_freq=c, min_rolloff=12, max_rolloff=12,
                                         p=1.0)(x, sr)  # fmt: skip


@dataclass
class LowPass(Transform):
    NAME: ClassVar[str] = "lowpass"
    LIMITS: ClassVar[dict[str, Range]] = {"cutoff_hz": _NYQUIST_MARGIN}
    cutoff_hz: Range = (4000.0, 10000.0)

    @staticmethod
    def apply(x, params, sr, rng):
        c = params["cutoff_hz"]
        return _library().LowPassFilter(min_cutoff_freq=c, max_cutoff_freq=c, min_rolloff=12, max_rolloff=12,
                                        p=1.0)(x, sr)  # fmt: skip


@dataclass
class BandPass(Transform):
    NAME: ClassVar[str] = "bandpass"
    LIMITS: ClassVar[dict[str, Range]] = {"center_hz": _NYQUIST_MARGIN, "bandwidth_fraction": (0.1, 1.99)}
    center_hz: Range = (500.0, 3000.0)
    bandwidth_fraction: Range = (1.0, 1.99)  # bandwidth / centre frequency

    @staticmethod
    def apply(x, params, sr, rng):
        c, b = params["center_hz"], params["bandwidth_fraction"]
        return _library().BandPassFilter(min_center_freq=c, max_center_freq=c, min_bandwidth_fraction=b,
                                         max_bandwidth_fraction=b, min_rolloff=12, max_rolloff=12,
                                         p=1.0)(x, sr)  # fmt: skip


@dataclass
class Polarity(Transform):
    NAME: ClassVar[str] = "polarity"

    @staticmethod
    def apply(x, params, sr, rng):
        return _library().PolarityInversion(p=1.0)(x, sr)


@dataclass
class TimeShift(Transform):
    NAME: ClassVar[str] = "time_shift"
    LIMITS: ClassVar[dict[str, Range]] = {"seconds": (-5.0, 5.0)}
    seconds: Range = (-0.05, 0.05)  # > 0 delays (silence in front); the clip keeps its length

    @staticmethod
    def apply(x, params, sr, rng):
        s = params["seconds"]
        return _library().Shift(min_shift=s, max_shift=s, shift_unit="seconds", rollover=False, p=1.0)(x, sr)


TRANSFORMS: dict[str, type[Transform]] = {
    t.NAME: t
    for t in (PitchShift, TimeStretch, Noise, Reverb, Gain, HighPass, LowPass, BandPass, Polarity, TimeShift)
}


def _recipe_keys(cls: type[Transform]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.name != "files"]


@dataclass
class AugmentRecipe:
    """An ordered list of transforms (see the module docstring for the YAML form)."""

    transforms: list[Transform]

    @classmethod
    def from_dict(cls, d: Any, base_dir: str | os.PathLike = ".") -> AugmentRecipe:
        if not isinstance(d, dict):
            raise ValueError(f"an augment recipe is a mapping with key 'transforms', got {type(d).__name__}")
        unknown = sorted(set(d) - {"transforms"})
        if unknown:
            raise ValueError(f"unknown recipe key(s) {', '.join(map(str, unknown))}; valid: transforms")
        items = d.get("transforms")
        if not isinstance(items, list) or not items:
            raise ValueError("recipe: 'transforms' must be a non-empty list of {name: ..., p: ..., ...}")
        transforms = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or "name" not in item:
                raise ValueError(f"recipe transforms[{i}]: expected a mapping with a 'name', got {item!r}")
            name = item["name"]
            if not isinstance(name, str) or name not in TRANSFORMS:
                raise ValueError(f"unknown transform {name!r}; valid transforms: {', '.join(TRANSFORMS)}")
            t_cls = TRANSFORMS[name]
            kwargs = {k: v for k, v in item.items() if k != "name"}
            bad = sorted(set(kwargs) - set(_recipe_keys(t_cls)))
            if bad:
                raise ValueError(
                    f"{name}: unknown parameter(s) {', '.join(map(str, bad))}; valid: {', '.join(_recipe_keys(t_cls))}"
                )
            t = t_cls(**kwargs)
            t.validate(Path(base_dir))
            transforms.append(t)
        try:
            _library()
        except ImportError as e:  # a valid recipe that cannot run here is still a clear user error
            raise ValueError(str(e)) from None
        return cls(transforms)

    def to_dict(self) -> dict:
        return {"transforms": [t.to_dict() for t in self.transforms]}


def recipe_arg(path: str) -> AugmentRecipe:
    """argparse ``type=`` for ``--augment``: a bad recipe is a usage error (exit 2) with our message."""
    import argparse

    try:
        return load_recipe(path)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def load_recipe(path: str | os.PathLike) -> AugmentRecipe:
    """Read and validate a recipe YAML (``ValueError`` naming the file on any problem)."""
    import yaml

    from whispergpt.config_io import ConfigError, recipe_path

    path = Path(path)
    if not path.is_file():  # a shipped recipe by name: speech-light.yaml -> configs/augment/
        try:
            path = recipe_path(path if path.parent != Path(".") else Path("augment") / path)
        except ConfigError:
            raise ValueError(f"augment recipe {path}: no such file, nor a shipped augment recipe") from None
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"augment recipe {path}: not valid YAML ({e})") from e
    try:
        return AugmentRecipe.from_dict(data, path.parent)
    except ValueError as e:
        raise ValueError(f"augment recipe {path}: {e}") from e


# -- seeded application ---------------------------------------------------------------------------
def copy_seed(seed: int, path: str, copy: int) -> int:
    """The seed of augmented copy ``copy`` (1-based) of ``path`` under the dataset ``seed``."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(str(path).encode()), int(copy)])
    return int(ss.generate_state(1)[0])


def sample_chain(recipe: AugmentRecipe, seed: int) -> list[dict]:
    """Which transforms apply and with what parameters: ``[{name, params}]`` (JSON-ready)."""
    rng = np.random.default_rng(seed)
    chain = []
    for t in recipe.transforms:
        if rng.random() < t.p:
            params = t.sample(rng)
            if isinstance(t, Noise) and not t.files:
                params["kind"] = t.kind
            chain.append({"name": t.NAME, "params": params})
    return chain


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """audiomentations draws from the global RNGs: seed them, then give the caller's states back."""
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def apply_chain(wave: Any, chain: Sequence[dict], seed: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Apply a recorded chain to ``(S,)`` audio; returns ``(S',)`` float32 (S' differs after a stretch).

    Raises ``AugmentedClipError`` when the result is non-finite or silent.
    """
    x = np.ascontiguousarray(np.asarray(wave, dtype=np.float32).reshape(-1))
    for i, step in enumerate(chain):
        if step["name"] not in TRANSFORMS:
            raise ValueError(f"unknown transform {step['name']!r}; valid transforms: {', '.join(TRANSFORMS)}")
        step_seed = int(np.random.SeedSequence([int(seed), i]).generate_state(1)[0])
        with _seeded(step_seed), warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=".*had to be resampled"
            )  # noise/IR files at other rates
            x = TRANSFORMS[step["name"]].apply(
                x, step["params"], sample_rate, np.random.default_rng(step_seed)
            )
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    if not np.isfinite(x).all():
        raise AugmentedClipError(f"augmented clip is non-finite (chain {describe_chain(chain)})")
    peak = float(np.abs(x).max()) if x.size else 0.0
    if peak > 1.0:
        x = x * np.float32(PEAK / peak)
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0
    if rms < SILENCE_RMS:
        raise AugmentedClipError(
            f"augmented clip is silent (RMS {rms:.2e} < {SILENCE_RMS:.2e}; chain {describe_chain(chain)})"
        )
    return x


def augment(
    wave: Any, recipe: AugmentRecipe, seed: int, sample_rate: int = SAMPLE_RATE
) -> tuple[np.ndarray, list[dict]]:
    """Draw a chain from ``recipe`` with ``seed`` and apply it: ``(audio, chain)``."""
    chain = sample_chain(recipe, seed)
    return apply_chain(wave, chain, seed, sample_rate), chain


def describe_chain(chain: Sequence[dict]) -> str:
    if not chain:
        return "empty"
    parts = []
    for step in chain:
        ps = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={Path(v).name if k in ('file', 'ir') else v}"
                       for k, v in step["params"].items())  # fmt: skip
        parts.append(f"{step['name']}({ps})")
    return " -> ".join(parts)


class AugmentedCopies:
    """The augmented copies ``prepare`` adds: copy ``n`` of train file ``SRC`` is named ``SRC#augN``.

    ``recipe`` is a YAML path, an ``AugmentRecipe`` or ``None`` (no copies: plain loading only).
    """

    def __init__(self, recipe: str | os.PathLike | AugmentRecipe | None, copies: int, seed: int) -> None:
        if isinstance(recipe, str | os.PathLike):
            recipe = load_recipe(recipe)
        if recipe is None and copies != 1:
            raise ValueError(f"copies={copies!r} needs an augment recipe (--augment RECIPE.yaml)")
        if recipe is not None:
            if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
                raise ValueError(f"copies must be an integer >= 1, got {copies!r}")
        self.recipe, self.seed = recipe, seed
        self.copies = copies if recipe is not None else None
        self.source: dict[str, tuple[str, int]] = {}  # "SRC#augN" -> (SRC, N)
        self.loader = None  # id -> (S,) audio; None: load_audio (prepare sets it for dataset rows)
        self._records: dict[str, dict] = {}

    def settings(self) -> dict | None:
        """The manifest's ``augment``: the validated recipe and the copies (None without a recipe)."""
        return None if self.recipe is None else {**self.recipe.to_dict(), "copies": self.copies}

    def names(self, path: str, split: str) -> list[str]:
        """``path`` and, in train, the names of its copies (registered so that ``load`` knows them)."""
        out = [path]
        for n in range(1, (self.copies if split == "train" and self.recipe is not None else 0) + 1):
            self.source[f"{path}#aug{n}"] = (path, n)
            out.append(f"{path}#aug{n}")
        return out

    def load(self, name: str):
        """``(S,)`` float32 tensor of a plain file or of a copy (whose record ``pop_record`` then holds)."""
        import torch

        from whispergpt.audio import load_audio

        load = self.loader or (lambda p: load_audio(p, SAMPLE_RATE))
        if name not in self.source:
            return load(name)
        src, n = self.source[name]
        s = copy_seed(self.seed, src, n)
        chain = sample_chain(self.recipe, s)
        wave = apply_chain(load(src).numpy(), chain, s)  # AugmentedClipError: skipped
        self._records[name] = dict(augment=dict(copy=n, seed=s, source=src, chain=chain))
        return torch.from_numpy(wave)

    def pop_record(self, name: str) -> dict | None:
        """The extra index-entry keys of a loaded copy (``None`` for a plain file)."""
        return self._records.pop(name, None)
