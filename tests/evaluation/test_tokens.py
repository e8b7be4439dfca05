import torch

from whispergpt.evaluation.tokens import continuation_windows, entropy_bits, repetition, silent_share


def test_entropy_and_repetition():
    const = torch.zeros(2, 40, dtype=torch.long)
    assert entropy_bits(const) == [0.0, 0.0]
    assert repetition(const) == [1 - 1 / 37, 1 - 1 / 37]  # 37 identical 4-grams: one is new
    ramp = torch.arange(64).view(1, 64) % 16  # 16 codes, uniform; a 16-frame loop
    assert entropy_bits(ramp) == [4.0]
    rep = repetition(ramp)[0]
    assert rep == 1 - 16 / 61  # after the first cycle every 4-gram repeats
    fresh = torch.arange(64).view(1, 64)
    assert repetition(fresh) == [0.0]
    assert repetition(torch.zeros(1, 3, dtype=torch.long)) == [None]


def test_silent_share():
    wave = torch.cat([torch.zeros(320 * 3), 0.1 * torch.ones(320)])
    assert silent_share(wave) == 0.75


def test_continuation_windows_score_each_continuation_frame_once():
    for T, start, ctx in ((200, 0, 64), (200, 70, 64), (50, 10, 64), (130, 129, 32)):
        scored = []
        for w in continuation_windows(T, start, ctx):
            assert w.end - w.start <= ctx and w.score_from >= w.start
            scored += list(range(w.score_from, w.end))
        assert scored == list(range(start, T))
