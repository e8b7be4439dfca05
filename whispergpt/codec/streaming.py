"""Exact incremental EnCodec decode: ``StreamingDecoder`` carries the decoder's state across pushes.

Used by the hybrid sampler's mel feedback loop (``whispergpt.inference.generate``): one push per generated
frame, the output equal to ``Codec.decode`` of all codes pushed so far up to float rounding.
Only transformers' public module attributes are read (weights, kernel/stride/dilation, the
config's ``pad_mode``); the causal padding rule is re-derived here (``causal_padding``,
``pad_left``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from whispergpt.codec.codec import PRIME_FRAMES


def causal_padding(kernel_size: int, dilation: int = 1, stride: int = 1) -> int:
    """Left padding of an EnCodec causal conv: its effective kernel span minus the stride."""
    return (kernel_size - 1) * dilation + 1 - stride


def pad_left(x: torch.Tensor, pad: int, mode: str = "reflect") -> torch.Tensor:
    """Pad ``x (..., T)`` by ``pad`` samples on the left, as an EnCodec causal conv pads its input.

    ``reflect`` needs ``T > pad``; a shorter input is first extended with zeros on the right to
    ``pad + 1`` samples (so the reflection sees those zeros) and the extension dropped again.
    """
    if pad == 0:
        return x
    if mode != "reflect":
        return F.pad(x, (pad, 0), "constant" if mode in ("zero", "constant") else mode)
    extra = max(0, pad + 1 - x.shape[-1])
    if extra:
        x = F.pad(x, (0, extra))
    out = F.pad(x, (pad, 0), "reflect")
    return out[..., : out.shape[-1] - extra]


class StreamingDecoder:
    """Decode codes frame by frame with the EnCodec decoder's conv / LSTM state carried over.

    Each causal conv keeps its last ``kernel - 1`` (dilated) input samples, each transposed conv
    the overlap-add tail it trimmed, each LSTM its ``(h, c)``; the first call primes with the codes
    of silence (``PRIME_FRAMES``), as ``Codec.decode`` does, so reflect padding only ever sees
    that prefix. Output equals ``codec.decode`` of all codes pushed so far up to float rounding.
    ``StreamingDecoder.supported(codec)`` says whether the codec's layers are known here.

    Speed (one push per generated frame is the hybrid sampler's feedback-loop cost): the decoder is
    flattened once into a list of ops with the weight-norm weights materialised (no
    parametrization per call), codebooks are looked up in one stacked table, and a one-frame
    push runs the LSTM cell written out, one ``addmm`` per layer (the fused LSTM kernel costs ~0.7 ms
    per call on CPU whatever the length). Activations are time-major ``(B, n, C)`` and every conv is
    one ``addmm`` over ``(k, Cin)`` columns with the weight stored as the right operand (for a
    one-frame push the carried window is its own column matrix, no unfold); biases and the residual
    blocks' k=1 shortcut ride in those ``addmm`` calls (no separate adds). The codec must not be
    trained while a decoder built on it is used.

    ``static=True``: the carried state lives in buffers allocated once (by the priming push) and
    updated in place, so a one-frame push always reads and writes the same memory with the same
    shapes (traceable once, capturable in a CUDA graph); the output is the same.
    """

    def __init__(self, codec, batch: int, num_codebooks: int, static: bool = False) -> None:
        self.codec = codec
        self.static = static
        with torch.no_grad(), parametrize.cached():
            self._build(codec, num_codebooks)
        prime = codec.silence_codes()[:num_codebooks].expand(num_codebooks, batch, PRIME_FRAMES)
        self.push_kbt(prime.to(codec.device))  # fills the state; audio of the prefix is dropped

    @staticmethod
    def supported(codec) -> bool:
        from transformers.models.encodec import modeling_encodec as me

        known = (
            me.EncodecConv1d,
            me.EncodecConvTranspose1d,
            me.EncodecLSTM,
            me.EncodecResnetBlock,
            torch.nn.ELU,
        )
        cfg = codec.model.config
        return (
            cfg.use_causal_conv
            and cfg.norm_type == "weight_norm"
            and float(cfg.trim_right_ratio) == 1.0
            and all(isinstance(m, known) for m in codec.model.decoder.layers)
            and all(
                m.conv.stride[0] == 1  # the carried-context rule below is for stride-1 convs
                for m in codec.model.decoder.modules()
                if isinstance(m, me.EncodecConv1d)
            )
        )

    # -- build: modules -> flat op list -------------------------------------------------------
    def _build(self, codec, num_codebooks: int) -> None:
        layers = codec.model.quantizer.layers[:num_codebooks]
        table = torch.stack([q.codebook.embed for q in layers])  # (K, V, D)
        self.V = table.shape[1]
        self.table = table.reshape(-1, table.shape[-1]).detach().clone()  # (K*V, D)
        self.offsets = (torch.arange(num_codebooks, device=table.device) * self.V)[:, None, None]
        self.state: list = []
        self.ops = [self._op(m) for m in codec.model.decoder.layers]

    def _slot(self) -> int:
        self.state.append(None)
        return len(self.state) - 1

    def _op(self, m) -> tuple:
        from transformers.models.encodec import modeling_encodec as me

        # Activations run time-major, (B, n, C), so that every conv is one F.linear (addmm): on
        # CPU a conv1d call on a handful of samples costs ~3x the matmul it performs.
        if isinstance(m, me.EncodecConv1d):
            conv = m.conv
            assert conv.stride[0] == 1 and conv.padding[0] == 0, "decoder convs are stride 1, unpadded"
            w = conv.weight.detach()  # (Cout, Cin, k) weight-norm weight, computed once (cached)
            b = None if conv.bias is None else conv.bias.detach().clone()
            # columns of a window laid out (k, Cin): a one-frame push's window (B, k, Cin) is then
            # its own column matrix; stored (k*Cin, Cout), the right-operand layout of addmm
            wt = w.permute(2, 1, 0).reshape(-1, w.shape[0]).contiguous()
            k, dil = w.shape[-1], conv.dilation[0]
            return ("conv", wt, b, k, dil, causal_padding(k, dil), m.pad_mode, self._slot())
        if isinstance(m, me.EncodecConvTranspose1d):
            conv = m.conv
            w = conv.weight.detach()  # (Cin, Cout, k)
            r, k = conv.stride[0], w.shape[-1]
            b = conv.bias.detach().clone()
            if k != 2 * r:  # EnCodec uses k = 2r; anything else takes the generic path
                return ("convT", w.clone(), b, r, self._slot())
            # out[i*r + j] = x[i] @ w[:, :, j]: one matmul gives both halves of each input's span;
            # columns (half, j, o), so that for one input frame each half is a (r, Cout) view; the
            # bias rides in the matmul, on the head half only (added once per output sample)
            w2 = w.permute(0, 2, 1).reshape(w.shape[0], -1).contiguous()  # (Cin, k*Cout)
            b2 = torch.cat([b.repeat(r), torch.zeros_like(b).repeat(r)])  # (k*Cout,)
            return ("convT2", w2, b2, r, w.shape[1], self._slot())
        if isinstance(m, me.EncodecLSTM):
            lstm = m.lstm
            # one-frame step per layer: gates = [x, h] @ [W_ih; W_hh]^T + b_ih + b_hh as one addmm
            # with the weights stored as its right operand, (2C, 4C): at C = 512 (EnCodec 24 kHz)
            # and batch 8 ~1.6x faster than torch.lstm_cell, which multiplies by transposed weights
            cells = []
            for i in range(lstm.num_layers):
                w_ih, w_hh = (
                    getattr(lstm, f"weight_ih_l{i}").detach(),
                    getattr(lstm, f"weight_hh_l{i}").detach(),
                )
                b = getattr(lstm, f"bias_ih_l{i}").detach() + getattr(lstm, f"bias_hh_l{i}").detach()
                cells.append((torch.cat([w_ih, w_hh], 1).t().contiguous(), b))
            return ("lstm", lstm, cells, self._slot())
        if isinstance(m, me.EncodecResnetBlock):
            block = [self._op(sub) for sub in m.block]
            short = None if isinstance(m.shortcut, torch.nn.Identity) else self._op(m.shortcut)
            last = block[-1]
            if short is not None and last[0] == short[0] == "conv" and last[3] == short[3] == 1:
                # both k=1 convs (EnCodec's): out = x @ Ws + bs + h @ Wl + bl, the shortcut
                # product being the last conv's addmm input (no separate residual add)
                bias = sum(b for b in (last[2], short[2]) if b is not None)
                return ("res1", block[:-1], last[1], short[1], bias)
            return ("res", block, short)
        if isinstance(m, torch.nn.ELU):
            return ("elu", float(m.alpha))
        raise AssertionError(f"unsupported decoder layer {type(m).__name__} (check supported() first)")

    # -- run ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def push(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes (B, K, n)`` of the next n frames -> their audio ``(B, n * 320)``."""
        return self.push_kbt(codes.to(self.table.device).transpose(0, 1))  # (K, B, n)

    def push_kbt(self, codes_kbt: torch.Tensor) -> torch.Tensor:
        """``push`` on codes already on the device in ``(K, B, n)`` order (the static sampler's layout)."""
        # one lookup in the stacked codebooks, summed over K: (K, B, n, D) -> (B, n, D)
        x = torch.embedding(self.table, codes_kbt + self.offsets).sum(0)
        for op in self.ops:
            x = self._apply(op, x)
        return x[..., 0].float()  # (B, n*320, 1) -> (B, n*320)

    def _keep(self, i: int, value) -> None:
        """Carry ``value`` (a tensor, or a tuple of lists of tensors) to the next push as state ``i``."""
        old = self.state[i]
        if not self.static:
            self.state[i] = value
        elif old is None:  # the priming push allocates the buffers
            self.state[i] = (
                value.clone()
                if isinstance(value, torch.Tensor)
                else tuple([t.clone() for t in part] for part in value)
            )
        elif isinstance(value, torch.Tensor):
            old.copy_(value)
        else:
            for dst, src in zip((t for part in old for t in part), (t for part in value for t in part)):
                dst.copy_(src)

    def _apply(self, op: tuple, x: torch.Tensor) -> torch.Tensor:
        # x: (B, n, C), time-major
        st = self.state
        kind = op[0]
        if kind == "elu":
            return F.elu(x, op[1])
        if kind == "conv":
            _, wt, b, k, dil, pad, mode, i = op
            B, n = x.shape[:2]
            if pad:
                prev = st[i]
                if prev is None:  # first chunk: padded as the module pads a whole input
                    xx = pad_left(x.transpose(1, 2), pad, mode).transpose(1, 2)
                else:
                    xx = torch.cat([prev, x], 1)
                self._keep(i, xx[:, -pad:])
                x = xx
            if k > 1:
                if n == 1 and pad == dil * (k - 1):  # the window (B, span, Cin) is the only one
                    x = x[:, ::dil] if dil > 1 else x  # (B, k, Cin)
                else:  # (B, n, Cin, span) windows -> (B, n, k, Cin) columns
                    cols = x.unfold(1, dil * (k - 1) + 1, 1)
                    x = (cols[..., ::dil] if dil > 1 else cols).transpose(2, 3)
            x = x.reshape(B * n, -1)
            return (torch.mm(x, wt) if b is None else torch.addmm(b, x, wt)).view(B, n, -1)
        if kind == "convT2":
            _, w2, b2, r, c_out, i = op
            B, n, _ = x.shape
            z = torch.addmm(b2, x.reshape(B * n, -1), w2).view(B, n, 2, r, c_out)  # (B, n, half, j, Cout)
            head = z[:, :, 0].reshape(B, n * r, c_out)  # out[i*r + j] + bias (a view when n == 1)
            spill = z[:, :, 1].reshape(B, n * r, c_out)  # out[(i+1)*r + j]
            tail = st[i]
            if tail is None:
                tail = spill.new_zeros(B, r, c_out)
            out = head + (tail if n == 1 else torch.cat([tail, spill[:, :-r]], 1))
            self._keep(i, spill[:, -r:])  # after its last read: the static buffer is ``tail``
            return out
        if kind == "convT":
            _, w, b, r, i = op
            y = F.conv_transpose1d(x.transpose(1, 2), w, b, r).transpose(1, 2)  # (B, n*r + k - r, C)
            n = x.shape[1] * r
            tail = st[i]
            if tail is not None:  # overlap-add the previous chunk's trimmed tail (bias counted once)
                y = y.clone()
                y[:, : tail.shape[1]] += tail
            self._keep(i, y[:, n:] - b)
            return y[:, :n]
        if kind == "res1":
            _, block, w_last, w_short, bias = op
            h = x
            for sub in block:
                h = self._apply(sub, h)
            B, n = x.shape[:2]
            skip = (
                torch.mm(x.reshape(B * n, -1), w_short)
                if isinstance(bias, int)
                else torch.addmm(bias, x.reshape(B * n, -1), w_short)
            )
            return torch.addmm(skip, h.reshape(B * n, -1), w_last).view(B, n, -1)
        if kind == "res":
            _, block, short = op
            h = x
            for sub in block:
                h = self._apply(sub, h)
            return (x if short is None else self._apply(short, x)) + h
        _, lstm, cells, i = op  # lstm
        if x.shape[1] == 1 and st[i] is not None:
            # one step, the cell written out (the fused sequence kernel costs ~0.7 ms per call on
            # CPU whatever the length): gates (i, f, g, o) in PyTorch's order
            hs, cs = st[i]
            inp = x[:, 0]  # (B, C)
            C = inp.shape[1]
            new_h, new_c = [], []
            for (wt, b), h, c in zip(cells, hs, cs):
                g = torch.addmm(b, torch.cat([inp, h], 1), wt)  # (B, 4C)
                s = torch.sigmoid(g)  # i, f, o used; the g gate's slot is unused
                c = torch.addcmul(s[:, C : 2 * C] * c, s[:, :C], torch.tanh(g[:, 2 * C : 3 * C]))
                inp = s[:, 3 * C :] * torch.tanh(c)
                new_h.append(inp)
                new_c.append(c)
            self._keep(i, (new_h, new_c))
            return (inp + x[:, 0]).unsqueeze(1)
        seq = x.transpose(0, 1)  # (n, B, C)
        hc = None if st[i] is None else (torch.stack(st[i][0]), torch.stack(st[i][1]))
        out, (h, c) = lstm(seq, hc)
        self._keep(i, (list(h.unbind(0)), list(c.unbind(0))))
        return (out + seq).transpose(0, 1)
