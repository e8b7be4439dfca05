"""Data-dependent initialisation of a from-scratch codec: LSUV for every conv, then a standardised
encoder output (see ``CodecModelConfig.lsuv_init``). EnCodec (weight-normed convs) and LLM-Codec
(plain convs) both init through these."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from whispergpt.codec.trainable import TrainableCodec


def _gain(conv: nn.Module) -> torch.Tensor:
    """The tensor whose scale sets a conv's output scale: weight norm's ``g``, else the weight."""
    wn = getattr(conv, "parametrizations", None)
    return wn.weight.original0 if wn is not None else conv.weight


@torch.no_grad()
def lsuv_init(gen: TrainableCodec, wave: torch.Tensor) -> list[float]:
    """Data-dependent init of every conv (layer-sequential unit variance): output std 1, bias 0.

    PyTorch's default conv init shrinks the signal ~3x per layer, so through EnCodec's ~15 convs a
    fresh encoder maps audio to its biases plus a signal part ~1e-3 of them, and the decoder
    learns to ignore its input: trained like that, a codec outputs steady noise with the corpus'
    average spectrum. Rescaling each conv's weight-norm gain, in forward order, so its output on
    real audio has unit std (the decoder's last conv: the input's RMS) keeps the signal alive
    end to end; the log-mel distance then falls from the first steps. Returns the stds before.
    """
    return lsuv_modules(gen.model, lambda: gen(wave, bypass=True), float(wave.pow(2).mean().sqrt()))


@torch.no_grad()
def lsuv_modules(model: nn.Module, run: Callable[[], object], out_rms: float) -> list[float]:
    """``lsuv_init`` for any model: ``run()`` is one forward on real audio; the last conv (in
    module order) targets ``out_rms``, the others unit std."""
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))]
    seen: dict[str, torch.Tensor] = {}
    before = []
    for conv in convs:
        if conv.bias is not None:
            conv.bias.zero_()
    for i, conv in enumerate(convs):
        hook = conv.register_forward_hook(lambda mod, args, out: seen.__setitem__("out", out))
        target = out_rms if i == len(convs) - 1 else 1.0
        for it in range(2):  # the second pass corrects for the (nonlinear) rest of the layer
            run()
            sd = float(seen["out"].std())
            if it == 0:
                before.append(sd)
            _gain(conv).mul_(target / max(sd, 1e-8))
        hook.remove()
    return before


@torch.no_grad()
def standardize_latent(gen: TrainableCodec, wave: torch.Tensor) -> tuple[float, float]:
    """Data-dependent init of the encoder's last conv: per-channel zero mean, unit std on ``wave``.

    A freshly initialised EnCodec encoder maps real audio to a large constant (its biases) plus a
    tiny signal-dependent part (frame std ~1% of the norm): the decoder then learns to ignore its
    input and codebooks fitted to it collapse as soon as the constant drifts. Rescaling the last
    conv's weight-norm gain and bias per output channel (as in weight normalisation's data-dependent
    init) makes the latents signal-driven from step 0. Returns (spread before, spread after).
    """
    return standardize_conv(gen.model.encoder.layers[-1].conv, lambda: gen.encode_latent(wave))


@torch.no_grad()
def standardize_conv(conv: nn.Conv1d, encode: Callable[[], torch.Tensor]) -> tuple[float, float]:
    """``standardize_latent`` for any encoder whose output is ``conv``'s: ``encode()`` gives
    ``(B, D, T)`` on real audio."""
    z = encode()  # (B, D, T)
    mu = z.mean(dim=(0, 2))  # (D,)
    sd = z.std(dim=(0, 2)).clamp_min(1e-6)  # (D,)
    before = float(sd.norm() / (mu.norm() + 1e-12))
    _gain(conv).div_(sd[:, None, None])
    conv.bias.sub_(mu).div_(sd)
    z = encode()
    return before, float(z.std(dim=(0, 2)).norm() / (z.mean(dim=(0, 2)).norm() + 1e-12))
