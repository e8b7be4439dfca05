"""Training: config resolution, schedule, sampling, checkpoint files, non-finite stop, exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from nan_fault import nan_from_step  # a sibling module: pytest puts tests/training on sys.path
from safetensors.torch import load_file

from whispergpt import checkpoint as ckpt_io
from whispergpt.cli.train import main
from whispergpt.config import ConfigError, TrainConfig, load_run_config
from whispergpt.training import TrainCrops, lr_at, sample_seed, tasks, val_indices

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def data_dir(tiny_dataset) -> Path:
    return tiny_dataset


def quiet(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.dir={data_dir}", f"out_dir={out}", "logging.wandb=false", "logging.progress=false", *extra]


def read_metrics(out: Path) -> tuple[dict[int, float], dict[int, float]]:
    """(step -> loss, step -> val_nll); a step logged twice keeps its last value."""
    losses, vals = {}, {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            losses[rec["step"]] = rec["loss"]
        if "val_nll" in rec:
            vals[rec["step"]] = rec["val_nll"]
    return losses, vals


# --- config -------------------------------------------------------------------------------------


def test_config_fills_model_shape_from_dataset(data_dir, tmp_path):
    cfg = load_run_config(
        TINY, quiet(data_dir, tmp_path, "model.num_codebooks=null", "model.n_mels=null", "train.max_steps=7")
    )
    assert (cfg.model.num_codebooks, cfg.model.codebook_size, cfg.model.n_mels) == (2, 1024, 80)
    assert cfg.train.max_steps == 7
    assert cfg.data.frames == cfg.model.context  # null -> model.context


@pytest.mark.parametrize(
    "extra,expected",
    [
        ([], "decoded"),  # auto: the dataset stores the decoded mel and delay samples every codebook
        (["model.pattern=coarse"], "decoded_coarse"),  # coarse samples codebook 0 only: its own decoded mel
        (["model.fusion=none"], "truth"),
        (["data.mel_source=truth"], "truth"),
    ],
)
def test_mel_source_resolution(data_dir, tmp_path, extra, expected):
    cfg = load_run_config(TINY, quiet(data_dir, tmp_path, *extra))
    assert cfg.data.mel_source == expected


def test_decoded_mel_with_coarse_is_an_error(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="mel_source=decoded needs"):
        load_run_config(TINY, quiet(data_dir, tmp_path, "model.pattern=coarse", "data.mel_source=decoded"))


def test_several_datasets_and_training_data_record(data_dir, tmp_path):
    out = tmp_path / "run"
    rc = main(
        [str(TINY), *quiet(f"[{data_dir}, {data_dir}]", out, "train.max_steps=2", "train.save_every=2")]
    )
    assert rc == 0
    rec = json.loads((out / "final" / "training_data.json").read_text())
    assert rec["mel_source"] == "decoded" and rec["num_codebooks"] == 2 and len(rec["data_dirs"]) == 2
    assert rec["codec"] and rec["bandwidth"] == 1.5


@pytest.mark.parametrize("recipe", ["tiny", "paper_gpt_s", "paper_gpt_l", "paper_hybrid", "gpt_100m"])
def test_recipes_resolve(recipe, data_dir, tmp_path):
    # shapes from the (K=2) test dataset: every recipe's keys and types must be valid
    shape = ["model.num_codebooks=null", "model.codebook_size=null", "model.n_mels=null"]
    cfg = load_run_config(REPO / "configs" / f"{recipe}.yaml", quiet(data_dir, tmp_path, *shape))
    assert cfg.model.num_codebooks == 2 and cfg.data.frames == cfg.model.context
    assert cfg.train.max_steps >= 1 and cfg.data.dir == str(data_dir)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.max_stepz=3", "valid keys under train"),
        ("trian.max_steps=3", "unknown config key"),
        ("train.max_steps=abc", "expected an integer"),
        ("train.precision=fp16", "expected one of"),
        ("train.eval_batches=some", "'full'"),
        ("model.num_codebooks=8", "does not match the dataset"),
        ("model.codebook_size=2048", "does not match the dataset"),
        ("data.frames=100000", "exceeds model.context"),
        ("train.min_lr=1.0", "min_lr"),
    ],
)
def test_config_errors(data_dir, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(TINY, quiet(data_dir, tmp_path, override))


def test_config_errors_missing_dataset_and_cli_exit_code(tmp_path, capsys):
    with pytest.raises(ValueError, match="not a prepared dataset"):
        load_run_config(TINY, [f"data.dir={tmp_path / 'nothing'}"])
    with pytest.raises(ConfigError, match="not found"):
        load_run_config(tmp_path / "missing.yaml", [])
    # the unknown key is reported before the (missing) dataset is looked at
    assert main([str(TINY), f"data.dir={tmp_path}", "train.bogus=1"]) == 2
    err = capsys.readouterr().err
    assert "train.bogus" in err and "max_steps" in err


# --- schedule, sampling -------------------------------------------------------------------------


def test_lr_schedule_warmup_then_cosine():
    tc = TrainConfig(max_steps=110, lr=1.0, min_lr=0.1, warmup_steps=10)
    lrs = [lr_at(s, tc) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))  # warmup rises
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # cosine falls
    assert lrs[60] == pytest.approx(0.55)  # half way: midpoint of lr and min_lr
    assert lr_at(110, tc) == pytest.approx(0.1)


def test_crops_are_a_function_of_seed_rank_and_index(data_dir):
    from whispergpt.data import PreparedDataset

    ds = PreparedDataset(data_dir, "train", frames=32)
    a, b = TrainCrops(ds, seed=0, rank=0), TrainCrops(ds, seed=0, rank=1)
    c0, m0 = a[5]
    torch.manual_seed(123)  # the global RNG plays no part
    c1, m1 = a[5]
    assert torch.equal(c0, c1) and torch.equal(m0, m1)
    assert c0.shape == (2, 32) and m0.shape == (80, 32)
    draws = {tuple(a[i][0][0, :8].tolist()) for i in range(20)}
    assert len(draws) > 10  # different indices -> different crops
    assert any(not torch.equal(a[i][0], b[i][0]) for i in range(5))  # ranks draw different crops
    assert sample_seed(0, 0, 1) != sample_seed(0, 1, 0)


def test_val_indices_fixed_and_spread():
    assert val_indices(10, "full", 4) == list(range(10))
    idx = val_indices(100, 2, 4)
    assert idx == [0, 12, 25, 37, 50, 62, 75, 87]
    assert val_indices(3, 5, 4) == [0, 1, 2]
    assert val_indices(0, 5, 4) == []


# --- checkpoint files ---------------------------------------------------------------------------


def test_checkpoint_listing_ignores_temp_and_prunes(tmp_path):
    for step in (2, 4, 6):
        tmp = ckpt_io.temp_checkpoint_dir(tmp_path, step)
        tmp.mkdir(parents=True)
        ckpt_io.write_json_atomic(tmp / ckpt_io.TRAINER_STATE, {"step": step})
        ckpt_io.publish_checkpoint(tmp, step)
    ckpt_io.temp_checkpoint_dir(tmp_path, 8).mkdir()  # a save killed mid-way
    (ckpt_io.checkpoints_dir(tmp_path) / "step-0000010").mkdir()  # no state file: not complete
    assert [s for s, _ in ckpt_io.list_checkpoints(tmp_path)] == [2, 4, 6]
    assert ckpt_io.latest_checkpoint(tmp_path).name == "step-0000006"
    ckpt_io.prune_checkpoints(tmp_path, keep_last=2)
    assert [s for s, _ in ckpt_io.list_checkpoints(tmp_path)] == [4, 6]
    ckpt_io.remove_temp_checkpoints(tmp_path)
    assert not ckpt_io.temp_checkpoint_dir(tmp_path, 8).exists()


def test_rng_state_roundtrip_without_pickle(tmp_path):
    import random

    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in the python state
    ckpt_io.save_rng_state(tmp_path, rank=0)
    expected = (torch.rand(3), random.random(), random.gauss(0, 1), np.random.rand(2))
    torch.manual_seed(9), random.seed(9), np.random.seed(9)
    assert ckpt_io.load_rng_state(tmp_path, rank=0)
    got = (torch.rand(3), random.random(), random.gauss(0, 1), np.random.rand(2))
    assert torch.equal(expected[0], got[0]) and expected[1:3] == got[1:3]
    assert np.array_equal(expected[3], got[3])
    assert not ckpt_io.load_rng_state(tmp_path, rank=1)


# --- runs ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint_then_resumes_with_wandb(
    data_dir, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    args = [
        str(TINY),
        f"data.dir={data_dir}",
        f"out_dir={out}",
        "logging.progress=false",
        "logging.wandb=true",
        "logging.wandb_mode=offline",
        "train.max_steps=4",
        "train.save_every=2",
        "train.eval_every=2",
        "train.batch_size=2",
        "train.eval_batches=1",
        "model.context=32",
    ]
    with monkeypatch.context() as m:
        m.setattr(tasks, "nll_per_codebook", nan_from_step(3))
        assert main(args) == 3
    err = capsys.readouterr().err
    assert "non-finite training loss" in err and "step 3" in err
    assert [s for s, _ in ckpt_io.list_checkpoints(out)] == [2]
    assert not (out / "final").exists()
    state = ckpt_io.read_trainer_state(ckpt_io.latest_checkpoint(out))
    run_id = state["wandb_run_id"]
    assert run_id and list((out / "wandb").glob(f"offline-run-*-{run_id}"))
    good = load_file(str(ckpt_io.latest_checkpoint(out) / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in good.values())

    assert main([*args, "logging.tensorboard=true"]) == 0
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert "resuming from" in capsys.readouterr().out
    assert ckpt_io.read_trainer_state(ckpt_io.latest_checkpoint(out))["wandb_run_id"] == run_id
    losses, vals = read_metrics(out)
    assert sorted(losses) == [1, 2, 3, 4] and sorted(vals) == [2, 4]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "loss", "lr", "tokens_per_s", "grad_norm", "elapsed_s"} <= set(lines[0])
    assert all(len(x["val_nll_per_codebook"]) == 2 for x in lines if "val_nll" in x)
    assert (out / "config.yaml").is_file()
    from whispergpt.models import WhisperGPT

    WhisperGPT.from_pretrained(out / "final")


def _train_cmd(data_dir: Path, out: Path) -> list[str]:
    # dropout > 0 so that restoring the RNG state matters; 2 micro-batches per step
    return [sys.executable, str(REPO / "train.py"), str(TINY)] + quiet(
        data_dir,
        out,
        "train.max_steps=24",
        "train.save_every=4",
        "train.eval_every=8",
        "train.keep_last=2",
        "train.batch_size=2",
        "train.grad_accum=2",
        "train.eval_batches=1",
        "model.context=32",
        "model.dropout=0.1",
    )


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_exact(data_dir, tmp_path):
    # 2 threads: intra-op parallel kernels are deterministic at a fixed thread count (the
    # condition the run prints); two runs, one of them killed and resumed, end bit-identical
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "WANDB_MODE": "offline"}
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    subprocess.run(_train_cmd(data_dir, ref), env=env, cwd=REPO, check=True, capture_output=True)

    proc = subprocess.Popen(
        _train_cmd(data_dir, cut), env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    first = ckpt_io.checkpoints_dir(cut) / ckpt_io.checkpoint_name(4)
    deadline = time.monotonic() + 300
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (cut / "final").exists()
    killed_at = max(s for s, _ in ckpt_io.list_checkpoints(cut))
    assert killed_at < 24

    done = subprocess.run(_train_cmd(data_dir, cut), env=env, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"(step {killed_at})" in done.stdout
    assert "bit-exact reruns/resumes need the same thread count: 2 threads" in done.stdout

    ref_losses, ref_vals = read_metrics(ref)
    cut_losses, cut_vals = read_metrics(cut)
    assert sorted(ref_losses) == list(range(1, 25))
    assert cut_losses == ref_losses  # every step, bit for bit
    assert cut_vals == ref_vals
    # metrics.jsonl was truncated to the checkpoint on resume: no step logged twice
    steps = [json.loads(x)["step"] for x in (cut / "metrics.jsonl").read_text().splitlines()]
    loss_steps = [s for s, x in zip(steps, (cut / "metrics.jsonl").read_text().splitlines()) if '"loss"' in x]
    assert loss_steps == list(range(1, 25))
    a, b = (
        load_file(str(ref / "final" / "model.safetensors")),
        load_file(str(cut / "final" / "model.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [s for s, _ in ckpt_io.list_checkpoints(cut)] == [20, 24]  # keep_last=2


def _scripted_val(monkeypatch, by_step: dict[int, float], crash_at: int | None = None) -> None:
    """Trainer.evaluate returns ``by_step[step]`` (raises at ``crash_at``: a run killed mid-way)."""

    def evaluate(self):
        if self.step == crash_at:
            raise KeyboardInterrupt("killed")
        v = by_step[self.step]
        return dict(val_nll=v, val_ppl=float(np.exp(v)), val_nll_per_codebook=[v, v])

    from whispergpt.training.trainer import Trainer

    monkeypatch.setattr(Trainer, "evaluate", evaluate)


def test_early_stop_writes_final_and_a_rerun_does_not_train_further(data_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    args = [str(TINY), *quiet(data_dir, out, "train.max_steps=8", "train.eval_every=1", "train.save_every=4",
            "train.early_stop_patience=2", "train.batch_size=2", "model.context=16")]  # fmt: skip
    # best 4.0 at step 2, then two evaluations without a new best (an equal value is no improvement)
    _scripted_val(monkeypatch, {1: 5.0, 2: 4.0, 3: 4.5, 4: 4.0, 5: 3.0})
    assert main(args) == 0
    assert (
        "step 4: early stop, val NLL has not improved on 4.0000 for 2 evaluations" in capsys.readouterr().out
    )
    kept = [s for s, _ in ckpt_io.list_checkpoints(out)]
    assert kept[-1] == 4 and set(kept) <= {1, 2, 4}  # each new best (1, 2) is checkpointed too
    state = ckpt_io.read_trainer_state(ckpt_io.latest_checkpoint(out))
    assert (state["step"], state["best_val_nll"], state["evals_since_best"], state["best_step"]) == (
        4,
        4.0,
        2,
        2,
    )
    # final/ holds the best weights (step 2), not the last ones (step 4)
    final, best = (
        load_file(out / "final" / "model.safetensors"),
        load_file(out / "best" / "model.safetensors"),
    )
    last_w = load_file(ckpt_io.latest_checkpoint(out) / "model.safetensors")
    assert all(torch.equal(final[k], best[k]) for k in final)
    assert any(not torch.equal(final[k], last_w[k]) for k in final)
    for d in ("final", "best"):
        assert json.loads((out / d / "training_data.json").read_text())["steps"] == 2
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last == dict(step=4, early_stop=True, best_val_nll=4.0)
    losses, _ = read_metrics(out)
    assert sorted(losses) == [1, 2, 3, 4]

    assert main(args) == 0  # the stopped run is complete: resumed at step 4, nothing trained
    assert "resuming from" in capsys.readouterr().out
    assert sorted(read_metrics(out)[0]) == [1, 2, 3, 4]
    assert [s for s, _ in ckpt_io.list_checkpoints(out)] == kept

    # patience 0 (off) never stops: the same values train to max_steps
    off = tmp_path / "off"
    _scripted_val(monkeypatch, dict.fromkeys(range(1, 9), 4.0))
    assert main([str(TINY), *quiet(data_dir, off, "train.max_steps=3", "train.eval_every=1", "train.batch_size=2",
                 "model.context=16")]) == 0  # fmt: skip
    assert sorted(read_metrics(off)[0]) == [1, 2, 3]


def test_early_stop_counter_survives_a_resume(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = [str(TINY), *quiet(data_dir, out, "train.max_steps=8", "train.eval_every=1", "train.save_every=2",
            "train.early_stop_patience=2", "train.batch_size=2", "model.context=16")]  # fmt: skip
    vals = {1: 5.0, 2: 6.0, 3: 6.5, 4: 1.0}
    _scripted_val(monkeypatch, vals, crash_at=3)  # killed after the step-2 checkpoint (1 eval without a best)
    assert main(args) != 0
    assert ckpt_io.read_trainer_state(ckpt_io.latest_checkpoint(out))["evals_since_best"] == 1
    _scripted_val(monkeypatch, vals)
    assert main(args) == 0  # stops at step 3, as the uninterrupted run would (not at 4)
    assert ckpt_io.read_trainer_state(ckpt_io.latest_checkpoint(out))["step"] == 3
    assert (out / "final" / "model.safetensors").is_file()


def test_early_stop_needs_periodic_validation(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="early_stop_patience needs periodic validation"):
        load_run_config(TINY, quiet(data_dir, tmp_path, "train.early_stop_patience=3", "train.eval_every=0"))
