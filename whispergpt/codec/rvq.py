"""Trainable residual vector quantiser (RVQ) that exports into transformers' ``EncodecModel``.

transformers' ``EncodecResidualVectorQuantizer`` is inference-only (no EMA, no straight-through
estimator), so training uses this module and copies the codebooks into the ``EncodecModel`` on
export (``export_to_encodec``). Nearest-code search uses the same distance expression as
transformers, so our codes equal ``Codec.encode`` codes of the exported model.

Per layer: a ``(V, D)`` codebook, k-means initialised on the first training batch (a few Lloyd
iterations), then updated by exponential moving averages of the assigned vectors (decay ~0.99,
Laplace-smoothed cluster sizes); codes whose EMA cluster size falls below ``dead_threshold`` are
reset to random vectors of the current batch. The encoder gets gradients through the
straight-through estimator and a commitment loss ``||z - sg(q)||^2`` per layer. Quantiser
dropout: the trainer picks ``n_q`` per batch from the bandwidth set, so every prefix of
codebooks decodes on its own.

Under ``torch.distributed`` (accelerate with several processes) the EMA statistics are summed
over ranks and k-means / dead-code replacements are broadcast from rank 0, so every rank holds
identical codebooks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if _dist_on():
        dist.all_reduce(t)
    return t


def _broadcast(t: torch.Tensor) -> torch.Tensor:
    if _dist_on():
        dist.broadcast(t, src=0)
    return t


def nearest_code(x: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
    """Index of the nearest row of ``embed`` (V, D) for each row of ``x`` (N, D).

    The same expression (and op order) as transformers' ``EncodecEuclideanCodebook.quantize``,
    so exported models pick identical codes.
    """
    e = embed.t()
    dist_ = -(x.pow(2).sum(1, keepdim=True) - 2 * x @ e + e.pow(2).sum(0, keepdim=True))
    return dist_.max(dim=-1).indices


def _sample_rows(x: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    idx = torch.randint(0, x.shape[0], (n,), device=x.device, generator=generator)
    return x[idx]


@torch.no_grad()
def kmeans(
    x: torch.Tensor, k: int, iters: int = 10, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Lloyd's k-means on ``x`` (N, D) -> centroids (k, D); empty clusters keep their old centre."""
    centres = _sample_rows(x, k, generator).clone()
    for _ in range(iters):
        codes = nearest_code(x, centres)
        counts = torch.bincount(codes, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centres).index_add_(0, codes, x)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return centres


class EMACodebook(nn.Module):
    """One RVQ layer: a ``(V, D)`` codebook with EMA updates, k-means init and dead-code reset.

    Buffers have the names and shapes of transformers' ``EncodecEuclideanCodebook``
    (``inited``, ``cluster_size``, ``embed``, ``embed_avg``) so export is a plain copy.
    """

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        decay: float = 0.99,
        eps: float = 1e-5,
        kmeans_iters: int = 10,
        dead_threshold: float = 2.0,
        mean_decay: float = 0.0,
    ):
        super().__init__()
        self.codebook_size = codebook_size
        self.dim = dim
        self.mean_decay = mean_decay
        self.decay = decay
        self.eps = eps
        self.kmeans_iters = kmeans_iters
        self.dead_threshold = dead_threshold
        self.register_buffer("inited", torch.zeros(1))
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("embed", torch.zeros(codebook_size, dim))
        self.register_buffer("embed_avg", torch.zeros(codebook_size, dim))
        # running mean of this layer's input, for mean tracking (not exported: training only)
        self.register_buffer("input_mean", torch.zeros(dim))
        self.last_replaced = 0  # dead codes reset in the last update (for metrics)

    @property
    def reset_size(self) -> float:
        """EMA cluster size given to freshly (re)initialised codes: twice the dead threshold, so an
        unused code is declared dead again after ln(2) / (1 - decay) steps (~70 at decay 0.99)."""
        return 2.0 * self.dead_threshold if self.dead_threshold > 0 else 1.0

    @torch.no_grad()
    def init_from(self, x: torch.Tensor) -> None:
        """k-means initialisation on ``x`` (N, D) (rank 0's result is broadcast)."""
        centres = kmeans(x.float(), self.codebook_size, self.kmeans_iters)
        _broadcast(centres)
        self.embed.copy_(centres)
        self.input_mean.copy_(_all_reduce(x.float().mean(0)) / (dist.get_world_size() if _dist_on() else 1))
        size = self.reset_size
        self.embed_avg.copy_(centres * size)
        self.cluster_size.fill_(size)
        self.inited.fill_(1.0)

    @torch.no_grad()
    def ema_update(self, x: torch.Tensor, codes: torch.Tensor) -> None:
        """Mean tracking, EMA of cluster sizes and sums, Laplace smoothing, dead-code replacement.

        Mean tracking (``mean_decay > 0``): early in training the encoder output is a large constant
        plus a small signal-dependent spread, and the constant drifts with every optimiser step
        faster than EMA codebooks follow, so all vectors end up nearest one code (collapse). All
        codes are therefore translated by the change of a running mean of the input.
        """
        if self.mean_decay > 0:
            m = _all_reduce(x.mean(0)) / (dist.get_world_size() if _dist_on() else 1)
            new_mean = self.mean_decay * self.input_mean + (1 - self.mean_decay) * m
            shift = new_mean - self.input_mean
            self.input_mean.copy_(new_mean)
            self.embed.add_(shift)
            self.embed_avg.add_(self.cluster_size[:, None] * shift)
        onehot_counts = torch.bincount(codes, minlength=self.codebook_size).to(x.dtype)  # (V,)
        sums = torch.zeros_like(self.embed).index_add_(0, codes, x)  # (V, D)
        _all_reduce(onehot_counts)
        _all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(onehot_counts, alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n
        self.embed.copy_(self.embed_avg / smoothed[:, None])
        self.replace_dead(x)

    @torch.no_grad()
    def replace_dead(self, x: torch.Tensor) -> int:
        """Reset codes whose EMA cluster size is below the threshold to random batch vectors."""
        dead = self.cluster_size < self.dead_threshold  # (V,)
        n_dead = int(dead.sum())
        self.last_replaced = n_dead
        if n_dead == 0:
            return 0
        new = _sample_rows(x, self.codebook_size)
        _broadcast(new)
        self.embed[dead] = new[dead]
        # restart their statistics as a fresh cluster, large enough to survive ~70 EMA steps unused
        self.embed_avg[dead] = new[dead] * self.reset_size
        self.cluster_size[dead] = self.reset_size
        return n_dead

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (N, D) -> (quantised (N, D) without gradient path, codes (N,))."""
        if self.training and not bool(self.inited.item()):
            self.init_from(x.detach())
        codes = nearest_code(x.detach(), self.embed)
        q = self.embed[codes]  # embed is a buffer: no gradient flows into the codebook
        if self.training:
            self.ema_update(x.detach().float(), codes)
        return q, codes


@dataclass
class RVQOutput:
    quantized: torch.Tensor  # (B, D, T), straight-through: gradient w.r.t. it reaches the encoder
    codes: torch.Tensor  # (B, K, T) int64, K = n_q used
    commit_loss: torch.Tensor  # scalar, sum over layers of mean ||z_residual - sg(q)||^2


class ResidualVQ(nn.Module):
    """``num_quantizers`` EMA codebooks applied to successive residuals."""

    def __init__(
        self,
        num_quantizers: int,
        codebook_size: int,
        dim: int,
        decay: float = 0.99,
        eps: float = 1e-5,
        kmeans_iters: int = 10,
        dead_threshold: float = 2.0,
        mean_decay: float = 0.0,
    ):
        super().__init__()
        if num_quantizers < 1 or codebook_size < 2 or dim < 1:
            raise ValueError(
                f"ResidualVQ needs num_quantizers >= 1, codebook_size >= 2, dim >= 1; "
                f"got {num_quantizers}, {codebook_size}, {dim}"
            )
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.num_quantizers = num_quantizers
        self.codebook_size = codebook_size
        self.dim = dim
        self.layers = nn.ModuleList(
            EMACodebook(codebook_size, dim, decay, eps, kmeans_iters, dead_threshold, mean_decay)
            for _ in range(num_quantizers)
        )

    def _check_nq(self, n_q: int | None) -> int:
        n_q = self.num_quantizers if n_q is None else int(n_q)
        if not 1 <= n_q <= self.num_quantizers:
            raise ValueError(f"n_q must be in 1..{self.num_quantizers}, got {n_q}")
        return n_q

    def forward(self, z: torch.Tensor, n_q: int | None = None) -> RVQOutput:
        """Quantise ``z`` (B, D, T) with the first ``n_q`` codebooks."""
        n_q = self._check_nq(n_q)
        B, D, T = z.shape
        x = z.transpose(1, 2).reshape(B * T, D)  # (B*T, D)
        residual = x
        q_sum = torch.zeros_like(x)
        codes = []
        commit = x.new_zeros(())
        for layer in self.layers[:n_q]:
            q, c = layer(residual)
            # gradient of the commitment term reaches the encoder only through `residual`
            commit = commit + (residual - q.detach()).pow(2).mean()
            residual = residual - q.detach()
            q_sum = q_sum + q.detach()
            codes.append(c)
        # straight-through: forward value q_sum, backward identity to x
        q_st = x + (q_sum - x).detach()
        quantized = q_st.reshape(B, T, D).transpose(1, 2)  # (B, D, T)
        code_t = torch.stack(codes).reshape(n_q, B, T).transpose(0, 1)  # (B, K, T)
        return RVQOutput(quantized, code_t, commit)

    @property
    def inited(self) -> bool:
        return all(bool(layer.inited.item()) for layer in self.layers)

    @torch.no_grad()
    def init_codebooks(self, z: torch.Tensor) -> None:
        """k-means initialise every layer on ``z`` (B, D, T) (or (N, D)) and its successive residuals."""
        residual = z.transpose(1, 2).reshape(-1, z.shape[1]) if z.dim() == 3 else z
        residual = residual.float()
        for layer in self.layers:
            layer.init_from(residual)
            residual = residual - layer.embed[nearest_code(residual, layer.embed)]

    @torch.no_grad()
    def encode(self, z: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """``z`` (B, D, T) -> codes (B, K, T) without touching the codebooks."""
        n_q = self._check_nq(n_q)
        B, D, T = z.shape
        residual = z.transpose(1, 2).reshape(B * T, D)
        codes = []
        for layer in self.layers[:n_q]:
            c = nearest_code(residual, layer.embed)
            residual = residual - layer.embed[c]
            codes.append(c)
        return torch.stack(codes).reshape(n_q, B, T).transpose(0, 1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, K, T) -> (B, D, T)."""
        out = 0
        for k in range(codes.shape[1]):
            out = out + self.layers[k].embed[codes[:, k]]  # (B, T, D)
        return out.transpose(1, 2)


def rvq_for_encodec(model, **kwargs) -> ResidualVQ:
    """A ``ResidualVQ`` shaped like ``model``'s quantiser; copies its codebooks if they are trained.

    Fine-tuning a pretrained EnCodec starts from its codebooks (``inited`` set); a fresh model's
    all-zero codebooks are left to k-means initialisation.
    """
    cfg = model.config
    rvq = ResidualVQ(cfg.num_quantizers, cfg.codebook_size, cfg.codebook_dim, **kwargs)
    with torch.no_grad():
        for ours, theirs in zip(rvq.layers, model.quantizer.layers):
            cb = theirs.codebook
            if cb.embed.abs().sum() > 0:
                ours.embed.copy_(cb.embed)
                ours.cluster_size.copy_(
                    cb.cluster_size if cb.cluster_size.sum() > 0 else torch.ones_like(cb.cluster_size)
                )
                # rebuilt rather than copied (shipped files store it in float16), so that
                # embed == embed_avg / cluster size holds at the first EMA step
                ours.embed_avg.copy_(ours.embed * ours.cluster_size[:, None])
                ours.inited.fill_(1.0)
    return rvq


@torch.no_grad()
def export_to_encodec(rvq: ResidualVQ, model) -> None:
    """Write ``rvq``'s codebooks into ``model.quantizer`` (an ``EncodecModel``), in place."""
    layers = model.quantizer.layers
    if len(layers) != rvq.num_quantizers:
        raise ValueError(f"EncodecModel has {len(layers)} quantizers, the RVQ has {rvq.num_quantizers}")
    for ours, theirs in zip(rvq.layers, layers):
        cb = theirs.codebook
        if cb.embed.shape != ours.embed.shape:
            raise ValueError(
                f"codebook shape mismatch: EncodecModel {tuple(cb.embed.shape)} vs RVQ {tuple(ours.embed.shape)}"
            )
        cb.embed.copy_(ours.embed)
        cb.embed_avg.copy_(ours.embed_avg)
        cb.cluster_size.copy_(ours.cluster_size)
        cb.inited.fill_(1.0)
