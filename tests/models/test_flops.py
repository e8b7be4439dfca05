"""Training FLOPs per frame: 6 N + the causal attention term."""

from __future__ import annotations

import pytest
from test_model import small_model  # the same small model as the model tests

from whispergpt import WhisperGPT
from whispergpt.models.flops import matmul_params, train_flops_per_step, whispergpt_flops_per_frame


@pytest.mark.parametrize("fusion", ["concat", "none"])
def test_per_frame_equals_the_per_step_formula(fusion):
    model = small_model("coarse", fusion)
    c = model.config
    got = whispergpt_flops_per_frame(model)
    assert got["n_matmul"] == matmul_params(model)
    stacks = [(c.n_layers, c.d_model)] + ([(c.mel_layers, c.mel_dim)] if fusion != "none" else [])
    step = train_flops_per_step(matmul_params(model), stacks, batch=3, positions=c.context, causal=True)
    assert got["flops_per_frame"] * 3 * c.context == step


def test_interleave_runs_the_decoder_twice_per_frame():
    a, b = small_model("coarse", "sum"), small_model("coarse", "interleave")
    c = a.config
    fa, fb = (
        whispergpt_flops_per_frame(a)["flops_per_frame"],
        whispergpt_flops_per_frame(b)["flops_per_frame"],
    )
    n_dec, n_proj = matmul_params(a.decoder), matmul_params(a.mel_proj)
    # two decoder positions per frame, each with twice the keys to attend to
    assert fb - fa == 6 * (n_dec + n_proj) + 6 * c.n_layers * c.d_model * 3 * c.context


@pytest.mark.parametrize("name, lo, hi", [("paper_gpt_s", 6e15, 9e15), ("paper_gpt_l", 7e16, 9e16)])
def test_paper_sizes_match_the_documented_estimate(name, lo, hi):
    """docs/EVAL.md: 327.7M training frames cost ~7e15 FLOPs for GPT-S, ~8e16 for GPT-L."""
    from whispergpt.config import from_dict, load_recipe
    from whispergpt.models import WhisperGPTConfig

    cfg = from_dict(WhisperGPTConfig, {**load_recipe(name)["model"], "num_codebooks": 8, "codebook_size": 1024,
                                       "n_mels": 80}, "model")  # fmt: skip
    f = whispergpt_flops_per_frame(WhisperGPT(cfg))["flops_per_frame"]
    assert lo < f * 32 * 512 * 20000 < hi


def test_depth_adds_its_stack_of_k_positions_per_frame():
    delay, depth = small_model("delay", "none"), small_model("depth", "none")
    c, K = depth.config, depth.config.num_codebooks
    d = depth.depth
    expected = 6 * matmul_params(depth.decoder) + 6 * c.n_layers * c.d_model * c.context  # no temporal head
    expected += 6 * (matmul_params(d.ctx) + K * matmul_params(d.stack) + d.head.numel())
    expected += 6 * K * c.depth_layers * c.depth_dim * K
    got = whispergpt_flops_per_frame(depth)
    assert got["flops_per_frame"] == expected
    assert got["n_matmul"] == matmul_params(depth) + d.head.numel()  # the heads are a Parameter
    assert got["flops_per_frame"] != whispergpt_flops_per_frame(delay)["flops_per_frame"]
