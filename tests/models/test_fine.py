"""The fine acoustic stage: shapes, bidirectional in time but ordered across codebooks, the
sampling path equal to the training path, persistence, and the window tiling of long audio."""

from __future__ import annotations

import pytest
import torch

from whispergpt.inference.fine_stage import fine_generate, fine_windows
from whispergpt.models import FineConfig, FineModel, WhisperGPT, WrongModelType, load_pretrained

K, V, KC = 4, 16, 1


def tiny_fine(coarse_codebooks: int = KC, context: int = 24, pos_emb: str = "rope") -> FineModel:
    torch.manual_seed(0)
    cfg = FineConfig(
        num_codebooks=K, codebook_size=V, coarse_codebooks=coarse_codebooks, d_model=32, n_layers=2,
        n_heads=2, context=context, pos_emb=pos_emb,
    )  # fmt: skip
    return FineModel(cfg).eval()


def random_codes(B: int = 2, T: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, K, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kc", [1, 2])
def test_logits_shape_scores_the_fine_codebooks(kc):
    model = tiny_fine(kc)
    logits = model(random_codes()).logits
    assert logits.shape == (2, K - kc, 12, V)
    assert model.num_scored_codebooks == K - kc and model.first_scored_codebook == kc


def test_bidirectional_in_time():
    """Changing a later coarse frame moves an earlier fine logit (intended: the coarse tokens of
    the whole window are fixed before the fine stage runs)."""
    model = tiny_fine()
    codes = random_codes()
    later = codes.clone()
    later[:, 0, 10] = (later[:, 0, 10] + 1) % V
    with torch.no_grad():
        a, b = model(codes).logits, model(later).logits
    assert not torch.allclose(a[:, :, 2], b[:, :, 2])


@pytest.mark.parametrize("kc", [1, 2])
def test_codebook_k_never_reads_codebooks_from_k_on(kc):
    model = tiny_fine(kc)
    codes = random_codes()
    with torch.no_grad():
        base = model(codes).logits
        for j in range(K - kc):
            k = kc + j
            changed = codes.clone()
            changed[:, k:] = (changed[:, k:] + 3) % V  # codebooks >= k, every frame
            assert torch.equal(model(changed).logits[:, j], base[:, j]), f"codebook {k} read codebooks >= {k}"
            below = codes.clone()
            below[:, k - 1] = (below[:, k - 1] + 3) % V  # ... but it does read codebook k - 1
            assert not torch.allclose(model(below).logits[:, j], base[:, j])


def test_stage_logits_equal_the_training_forward():
    model = tiny_fine(2)
    codes = random_codes()
    with torch.no_grad():
        full = model(codes).logits
        for j, k in enumerate(range(2, K)):
            torch.testing.assert_close(model.stage_logits(codes[:, :k], k), full[:, j], rtol=1e-5, atol=1e-5)


def test_save_load_roundtrip_and_type_checks(tmp_path):
    model = tiny_fine(pos_emb="learned")
    model.save_pretrained(tmp_path / "fine")
    loaded = load_pretrained(tmp_path / "fine")
    assert isinstance(loaded, FineModel) and loaded.config == model.config
    codes = random_codes()
    with torch.no_grad():
        assert torch.equal(loaded.eval()(codes).logits, model(codes).logits)
    with pytest.raises(WrongModelType, match="whispergpt-fine"):
        WhisperGPT.from_pretrained(tmp_path / "fine")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_codebooks=1), "K >= 2"),
        (dict(num_codebooks=4, coarse_codebooks=4), "coarse_codebooks must be in"),
        (dict(coarse_codebooks=0), "coarse_codebooks must be in"),
        (dict(d_model=30, n_heads=4), "heads"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FineConfig(**kwargs)


# --- tiling and sampling ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "T, context, overlap", [(5, 8, 2), (8, 8, 2), (9, 8, 2), (50, 8, 2), (50, 8, 0), (97, 24, 6)]
)
def test_windows_partition_the_audio_with_context_on_both_sides(T, context, overlap):
    windows = fine_windows(T, context, overlap)
    kept = [t for w in windows for t in range(w.keep_from, w.keep_to)]
    assert kept == list(range(T))  # every frame kept exactly once, in order
    for w in windows:
        assert w.end - w.start == min(T, context) and 0 <= w.start and w.end <= T
        assert w.start <= w.keep_from < w.keep_to <= w.end
        if w.keep_from > 0:
            assert w.keep_from - w.start >= overlap // 2
        if w.keep_to < T:
            assert w.end - w.keep_to >= overlap // 2


def test_window_errors():
    with pytest.raises(ValueError, match="overlap"):
        fine_windows(10, 8, 8)


def test_generate_one_window_is_stage_by_stage_argmax():
    model = tiny_fine(2)
    coarse = random_codes(T=10)[:, :2]
    out = fine_generate(model, coarse)
    assert out.shape == (2, K, 10) and torch.equal(out[:, :2], coarse)
    with torch.no_grad():
        for k in range(2, K):
            assert torch.equal(out[:, k], model.stage_logits(out[:, :k], k).argmax(-1))


def test_tiled_generation_reads_the_final_codes_and_keeps_the_prefix():
    """Long audio: each kept frame of codebook k is the argmax of its window run on the final
    codebooks < k (stage k+1 never reads a neighbour's discarded guess); the prompt's codes stay."""
    model = tiny_fine(context=16)
    T, Tp = 70, 9
    truth = random_codes(T=T, seed=3)
    out = fine_generate(model, truth[:, :KC], prefix=truth[:, :, :Tp], overlap=4, max_rows=3)
    assert torch.equal(out[:, :, :Tp], truth[:, :, :Tp])
    assert torch.equal(out[:, :KC], truth[:, :KC])
    with torch.no_grad():
        for w in fine_windows(T, 16, 4):
            for k in range(KC, K):
                pred = model.stage_logits(out[:, :k, w.start : w.end], k).argmax(-1)  # (B, L)
                lo, hi = max(w.keep_from, Tp), w.keep_to
                if lo < hi:
                    assert torch.equal(out[:, k, lo:hi], pred[:, lo - w.start : hi - w.start])


def test_generate_sampling_is_seeded():
    model = tiny_fine()
    coarse = random_codes(T=30)[:, :1]

    def draw(seed):
        return fine_generate(model, coarse, temperature=1.0, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(5), draw(5)) and not torch.equal(draw(5), draw(6))
    with pytest.raises(ValueError, match=r"codes must lie in"):
        fine_generate(model, coarse + V)
