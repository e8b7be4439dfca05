"""``whispergpt eval`` of a fine stage (NLL per fine codebook given the true coarse ones, each
frame once) and the bits-per-second table that ranks strategies over all K codebooks."""

from __future__ import annotations

import math

import pytest
import torch

from whispergpt.data import PreparedDataset
from whispergpt.evaluation import teacher_forced as ev
from whispergpt.evaluation.bits import bits_markdown, bits_per_second, bits_rows
from whispergpt.models import FineConfig, FineModel, WhisperGPT, WhisperGPTConfig, nll_per_codebook


class _SingleProcess:
    device = torch.device("cpu")
    process_index, num_processes, is_main_process = 0, 1, True


def run_eval(checkpoints, data, **kw) -> dict:
    return ev.evaluate([str(c) for c in checkpoints], str(data), accelerator=_SingleProcess(), **kw)


def fine_dir(root, name: str, context: int):
    torch.manual_seed(0)
    cfg = FineConfig(num_codebooks=2, codebook_size=1024, d_model=32, n_layers=1, n_heads=2, context=context)
    model = FineModel(cfg)
    with torch.no_grad():
        model.head.weight.mul_(20.0)  # sharper, so that context changes move the NLL visibly
    model.save_pretrained(root / name / "final")
    return root / name / "final"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("fine-eval")
    out = {"whole": fine_dir(root, "whole", 160), "tiled": fine_dir(root, "tiled", 32)}
    for name, pattern in (("coarse", "coarse"), ("delay", "delay")):
        torch.manual_seed(1)
        cfg = WhisperGPTConfig(num_codebooks=2, codebook_size=1024, pattern=pattern, fusion="none", d_model=32,
                               n_layers=1, n_heads=2, context=32)  # fmt: skip
        WhisperGPT(cfg).save_pretrained(root / name / "final")
        out[name] = root / name / "final"
    return out


def test_fine_nll_is_per_fine_codebook_given_the_true_coarse(tiny_dataset, checkpoints):
    ds = PreparedDataset(tiny_dataset, "val")
    frames = sum(f["frames"] for f in ds.files)
    report = run_eval([checkpoints["whole"], checkpoints["tiled"]], tiny_dataset)
    whole, tiled = (e["evaluations"][0]["metrics"] for e in report["checkpoints"])
    assert report["checkpoints"][0]["config"]["pattern"] == "fine"
    for m in (whole, tiled):  # every frame's codebook 1 scored once
        assert m["tokens"] == frames and [p["codebook"] for p in m["per_codebook"]] == [1]
    # one window covers each 150-frame file: the plain forward over the file, written out
    model = FineModel.from_pretrained(checkpoints["whole"]).eval()
    total = 0.0
    with torch.no_grad():
        for i in range(len(ds.files)):
            codes = ds.file_arrays(i)[0][None]  # (1, K, N)
            total += float(nll_per_codebook(model(codes).logits, codes[:, 1:])[0].sum())
    assert whole["nll"] == pytest.approx(total / frames, rel=1e-6)
    assert report["checkpoints"][1]["tiling"] == dict(context=32, overlap=8, stride=24)


def test_bits_table_ranks_all_k_and_pairs_coarse_with_fine(tiny_dataset, checkpoints):
    report = run_eval([checkpoints[n] for n in ("coarse", "whole", "delay")], tiny_dataset)
    rows = {r["name"]: r for r in report["bits_per_second"]}
    assert set(rows) == {"coarse", "whole", "delay", "coarse + whole"}
    m = {e["name"]: e["evaluations"][0]["metrics"] for e in report["checkpoints"]}
    assert not rows["coarse"]["complete"] and rows["coarse"]["codebooks"] == [0]
    assert not rows["whole"]["complete"] and rows["whole"]["codebooks"] == [1]
    assert rows["delay"]["complete"] and rows["delay"]["bits_per_second"] == pytest.approx(
        m["delay"]["bits_per_second"], rel=1e-9
    )  # all K scored: the summed NLLs x 75 / ln 2 equal total nats / ln 2 / seconds
    stack = rows["coarse + whole"]
    assert stack["complete"] and stack["codebooks"] == [0, 1] and stack["strategy"] == "coarse+fine"
    nll0, nll1 = m["coarse"]["per_codebook"][0]["nll"], m["whole"]["per_codebook"][0]["nll"]
    assert stack["bits_per_second"] == pytest.approx((nll0 + nll1) * 75 / math.log(2), rel=1e-9)
    table = ev.markdown_table(report)
    assert "| coarse + whole | coarse+fine |" in table and "partial (" in table


def test_bits_arithmetic():
    assert bits_per_second(1.0) == pytest.approx(75 / math.log(2))  # 108.2 bits/s per nat/frame
    assert bits_per_second(2.0, frame_rate=50) == pytest.approx(100 / math.log(2))
    per = lambda *nlls, first=0: [dict(codebook=first + k, nll=n) for k, n in enumerate(nlls)]  # noqa: E731
    report = dict(
        checkpoints=[
            dict(name="d", config=dict(pattern="delay", fusion="none", num_codebooks=3),
                 evaluations=[dict(mel_source="n/a", metrics=dict(per_codebook=per(3.0, 2.0, 1.0)))]),
            dict(name="c", config=dict(pattern="coarse", fusion="concat", num_codebooks=3),
                 evaluations=[dict(mel_source="truth", metrics=dict(per_codebook=per(3.5)))]),
            dict(name="f", config=dict(pattern="fine", fusion="none", num_codebooks=3),
                 evaluations=[dict(mel_source="n/a", metrics=dict(per_codebook=per(1.5, 0.5, first=1)))]),
            dict(name="f2", config=dict(pattern="fine", fusion="none", num_codebooks=3),  # Kc=2: no pair with c
                 evaluations=[dict(mel_source="n/a", metrics=dict(per_codebook=per(0.5, first=2)))]),
        ]
    )  # fmt: skip
    rows = {r["name"]: r for r in bits_rows(report)}
    assert set(rows) == {"d", "c", "f", "f2", "c + f"}
    assert rows["d"]["nats_per_frame"] == 6.0 and rows["d"]["complete"]
    assert rows["c + f"]["nats_per_frame"] == 5.5 and rows["c + f"]["mel_source"] == "truth"
    assert rows["c + f"]["bits_per_second"] == pytest.approx(5.5 * 75 / math.log(2))
    lines = bits_markdown(list(rows.values())).splitlines()
    order = [line.split("|")[1].strip() for line in lines[4:]]
    assert order[:2] == ["c + f", "d"]  # complete rows first, fewest bits first; partial ones after


def test_summarize_totals_labels_the_scored_codebooks():
    t = torch.tensor([[20.0, 10.0], [1.0, 2.0], [10.0, 10.0]], dtype=torch.float64)  # nats, hits, tokens
    m = ev.summarize_totals(t, 75, first_codebook=3)
    assert [p["codebook"] for p in m["per_codebook"]] == [3, 4] and m["nats_per_frame"] == pytest.approx(3.0)
