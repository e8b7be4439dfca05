"""EnCodecMAE for the tools: loading a checkpoint, and audio -> the features it reads -> its frames.

One place for "what does this MAE read": ``embed``, ``probe``, ``semantic fit`` and ``prepare
--semantic`` all go through ``MAEInput``, which computes exactly what ``prepare`` stores:

- ``mae.input: mel``: ``whispergpt.audio.log_mel(wave, n_mels)``, the causal log-mel of ``mel.npy``
  (``n_mels`` = ``mae.in_dim``, else the ``n_mels`` of the checkpoint's training record);
- ``mae.input: latent``: ``Codec.latent(wave)``, the continuous EnCodec encoder output, of the codec
  named in the checkpoint's training record (``training.record.training_codec``), at its bandwidth.

From a prepared dataset the stored stream is read instead of recomputing it (``open_dataset``: the
``mel`` stream, or ``latent`` of ``prepare --latent`` with the same codec).

The encoder is run over long inputs in windows of at most ``chunk_frames`` (``encode_frames``):
attention cost is quadratic in length and the model only saw windows of ``mae.context`` frames in
training (4 s by default), so longer audio is cut into equal non-overlapping windows of at most
that many frames (``default_chunk_frames``; ``DEFAULT_CHUNK_SECONDS`` for a config without
``context``), each encoded alone, frames concatenated. A window never sees its neighbours.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from whispergpt.audio import FRAME_RATE, HOP_LENGTH, log_mel
from whispergpt.errors import InputError

MAE_MODEL_TYPE = "encodecmae"
DEFAULT_CHUNK_SECONDS = 10.0


def check_mae_checkpoint(directory: str | os.PathLike) -> None:
    """``InputError`` naming the model type unless ``directory`` holds an EnCodecMAE (``models.registry``)."""
    from whispergpt.models.registry import model_type_of

    try:
        actual = model_type_of(directory)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read the checkpoint's config.json ({e})", directory) from e
    if actual != MAE_MODEL_TYPE:
        raise InputError(
            f"not an EnCodecMAE checkpoint: config.json model_type is {actual!r}, expected {MAE_MODEL_TYPE!r}",
            directory,
            "pass a checkpoint written by `whispergpt train` with an mae recipe",
        )


def load_mae(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Path]:
    """``(model in eval mode on device, resolved checkpoint dir)`` from a model dir or a training run dir."""
    from whispergpt.training.record import resolve_checkpoint

    p = Path(path).expanduser()
    if p.is_dir() and (p / "config.json").is_file():
        check_mae_checkpoint(p)  # name a non-MAE checkpoint before the checksum pass
    directory = resolve_checkpoint(p)
    check_mae_checkpoint(directory)
    from whispergpt.models.encodecmae import EnCodecMAE

    model = EnCodecMAE.from_pretrained(directory)
    return model.to(device).eval(), directory


def random_mae(config: Any, seed: int = 0) -> torch.nn.Module:
    """A freshly initialised EnCodecMAE of ``config`` (the probe's "same size, untrained" baseline)."""
    from whispergpt.models.encodecmae import EnCodecMAE

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return EnCodecMAE(config).eval()


def check_layer(model: torch.nn.Module, layer: int | None) -> int:
    """The encoder layer to read, 1..num_layers (None = the last); ``InputError`` when out of range."""
    n = int(model.num_layers)
    if layer is None:
        return n
    if not isinstance(layer, int) or not 1 <= layer <= n:
        raise InputError(
            f"--layer is out of range: expected 1..{n} (the checkpoint's encoder layers), got {layer}"
        )
    return layer


@dataclass
class MAEInput:
    """What an EnCodecMAE reads, computed from 24 kHz audio or read from a prepared dataset."""

    kind: str  # "mel" | "latent"
    dim: int | None  # C: n_mels or the latent width (None: the codec's, known once it is opened)
    codec: str | None = None  # latent: the training codec (name or path) and its bandwidth
    bandwidth: float | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    _codec: Any = field(default=None, repr=False)

    @classmethod
    def from_checkpoint(
        cls, model: torch.nn.Module, directory: str | os.PathLike, device: str | torch.device = "cpu"
    ) -> MAEInput:
        from whispergpt.training.record import read_training_record, training_codec

        cfg = model.config
        kind = str(getattr(cfg, "input", "mel"))
        record = read_training_record(directory) or {}
        dim = getattr(cfg, "in_dim", None)
        if kind == "mel":
            dim = dim if dim is not None else record.get("n_mels")
            if dim is None:
                raise InputError(
                    "cannot tell the MAE's n_mels: config.json has no in_dim and there is no training record",
                    directory,
                    "set mae.in_dim in the checkpoint's config.json",
                )
            return cls("mel", int(dim), device=torch.device(device))
        if kind != "latent":
            raise InputError(f"unknown mae.input {kind!r}, expected 'mel' or 'latent'", directory)
        found = training_codec(directory)
        if found is None:
            raise InputError(
                "cannot tell which codec's latent this MAE reads: no training record names the codec",
                directory,
                f"write training_data.json next to the weights (whispergpt.training.record) in {directory}",
            )
        return cls("latent", None if dim is None else int(dim), found[0], found[1], torch.device(device))

    def codec_model(self):
        """The ``Codec`` of a latent MAE (opened once)."""
        if self._codec is None:
            from whispergpt.codec import Codec

            self._codec = Codec.from_pretrained(self.codec, bandwidth=self.bandwidth, device=self.device)
        return self._codec

    @torch.inference_mode()
    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """``(S,)`` or ``(B, S)`` 24 kHz audio -> ``(B, C, T)`` float32, ``T = S // 320``."""
        if wave.dim() == 1:
            wave = wave[None]
        if self.kind == "mel":
            return log_mel(wave.to(self.device), n_mels=self.dim)  # (B, M, T)
        return self.codec_model().latent(wave.to(self.device)).float()  # (B, D, T)

    @property
    def stream(self) -> str:
        """The prepared-dataset stream that holds this input."""
        return "mel" if self.kind == "mel" else "latent"

    def open_dataset(self, directories: Sequence[str | os.PathLike], split: str = "train"):
        """``PreparedDataset`` of the stream this MAE reads; ``InputError`` when it cannot serve it."""
        from whispergpt.data.dataset import PreparedDataset

        ds = PreparedDataset([Path(d) for d in directories], split=split, streams=(self.stream,))
        m = ds.manifest
        if self.kind == "mel" and ds.n_mels != self.dim:
            raise InputError(
                f"the dataset's mel has n_mels={ds.n_mels}, the MAE reads {self.dim}",
                ds.directory,
                f"prepare the data with --n-mels {self.dim}",
            )
        if self.kind == "latent":
            from whispergpt.codec import same_codec_name  # (the codec module is imported only when needed)

            if not same_codec_name(str(m.get("codec")), str(self.codec)):
                raise InputError(
                    f"the dataset's latent is codec {m.get('codec')!r}'s, the MAE reads codec {self.codec!r}'s",
                    ds.directory,
                    f"prepare the data with --codec {self.codec} --latent",
                )
            if self.dim is not None and m.get("latent_dim") != self.dim:
                raise InputError(
                    f"the dataset's latent has width {m.get('latent_dim')}, the MAE reads {self.dim}",
                    ds.directory,
                )
        return ds

    @staticmethod
    def dataset_features(dataset, file_index: int) -> torch.Tensor:
        """The stored ``(C, T)`` input of file ``file_index`` of a dataset from ``open_dataset``."""
        return dataset.file_arrays(file_index)[0]


def default_chunk_frames(model: torch.nn.Module) -> int:
    """The encoder window for long inputs: the model's training window (``mae.context``), else 10 s."""
    return int(getattr(model.config, "context", None) or DEFAULT_CHUNK_SECONDS * FRAME_RATE)


@torch.inference_mode()
def encode_frames(
    model: torch.nn.Module, x: torch.Tensor, layer: int | None = None, chunk_frames: int | None = None
) -> torch.Tensor:
    """MAE input ``x (C, T)`` or ``(B, C, T)`` -> frames of encoder ``layer`` ``(T, D)`` or ``(B, T, D)``,
    in windows of at most ``chunk_frames`` (a batch holds clips of one length: nothing is padded)."""
    if x.dim() not in (2, 3):
        raise ValueError(f"encode_frames expects (C, T) or (B, C, T) features, got shape {tuple(x.shape)}")
    chunk = chunk_frames or default_chunk_frames(model)
    if chunk < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk}")
    device = next(model.parameters()).device
    xb = x if x.dim() == 3 else x[None]  # (B, C, T)
    T = xb.shape[-1]
    n = -(-T // chunk)  # equal windows: no stub of a few frames at the end
    edges = [round(i * T / n) for i in range(n + 1)]
    parts = [
        model.encode(xb[:, :, a:b].to(device, torch.float32), layer=layer)  # (B, b - a, D)
        for a, b in zip(edges[:-1], edges[1:])
    ]
    out = torch.cat(parts, dim=1) if parts else xb.new_zeros(xb.shape[0], 0, 0)
    assert out.shape[1] == T, (out.shape, T)
    out = out.float().cpu()
    return out if x.dim() == 3 else out[0]


def embed_clips(
    model: torch.nn.Module, inputs: MAEInput, clips: list[torch.Tensor], layer: int | None = None,
    pool: bool = True, batch_frames: int = FRAME_RATE * 240,
) -> list[torch.Tensor]:  # fmt: skip
    """Frames ``(T_i, D)`` (or their mean ``(D,)`` with ``pool``) of ``(S_i,)`` clips; clips of equal
    length go through the MAE together, up to ``batch_frames`` frames per call (same results as one by one)."""
    out: list[torch.Tensor | None] = [None] * len(clips)
    by_len: dict[int, list[int]] = {}
    for i, c in enumerate(clips):
        by_len.setdefault(int(c.shape[-1]), []).append(i)
    for length, idx in sorted(by_len.items()):
        size = max(1, batch_frames // max(1, length // HOP_LENGTH))
        for b in range(0, len(idx), size):
            chunk = idx[b : b + size]
            h = encode_frames(
                model, inputs.features(torch.stack([clips[i] for i in chunk])), layer
            )  # (B, T, D)
            for j, i in enumerate(chunk):
                out[i] = h[j].mean(0) if pool else h[j]
    return out  # type: ignore[return-value]
