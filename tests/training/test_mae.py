"""The mae task: config resolution, the task's loss, training through train.py, exact resume."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_train import quiet, read_metrics  # a sibling module: pytest puts tests/training on sys.path
from test_train_distributed import _free_port

from whispergpt import checkpoint as ckpt_io
from whispergpt.cli.train import main
from whispergpt.config import ConfigError, load_run_config
from whispergpt.config_io import dump_yaml
from whispergpt.models import EnCodecMAE, load_pretrained
from whispergpt.training.tasks import TaskModule, get_task

REPO = Path(__file__).resolve().parents[2]
MAE_TINY = REPO / "configs" / "mae_tiny.yaml"


def test_config_takes_the_input_width_and_targets_from_the_dataset(tiny_dataset, tmp_path):
    cfg = load_run_config(MAE_TINY, quiet(tiny_dataset, tmp_path))
    assert cfg.task == "mae" and cfg.data.mel_source == "truth"
    assert (cfg.mae.in_dim, cfg.mae.num_codebooks, cfg.mae.codebook_size) == (80, 2, 1024)
    assert cfg.data.frames == cfg.mae.context == 64
    saved = yaml.safe_load(dump_yaml(cfg))
    assert "mae" in saved and "model" not in saved  # only the active task's section
    assert get_task("mae").streams(cfg) == ("codes", "mel")
    with pytest.raises(ConfigError, match="does not match the dataset"):
        load_run_config(MAE_TINY, quiet(tiny_dataset, tmp_path, "mae.in_dim=64"))
    with pytest.raises(ConfigError, match="prepare it with --latent"):
        load_run_config(MAE_TINY, quiet(tiny_dataset, tmp_path, "mae.input=latent"))
    with pytest.raises(ConfigError, match="exceeds mae.context"):
        load_run_config(MAE_TINY, quiet(tiny_dataset, tmp_path, "data.frames=65"))


@pytest.mark.parametrize("targets", ["kmeans", "both"])
def test_semantic_targets_need_the_semantic_stream(tiny_dataset, tmp_path, targets):
    with pytest.raises(ConfigError, match="prepare it with --semantic"):
        load_run_config(MAE_TINY, quiet(tiny_dataset, tmp_path, f"mae.targets={targets}"))


def test_mae_task_loss_is_the_model_loss(tiny_dataset, tmp_path):
    cfg = load_run_config(MAE_TINY, quiet(tiny_dataset, tmp_path))
    task = get_task("mae")
    torch.manual_seed(0)
    model = task.build(cfg).eval()
    assert isinstance(model, EnCodecMAE)
    codes = torch.randint(0, 1024, (2, 2, 64))
    mel = torch.randn(2, 80, 64)
    out = TaskModule(model, task)(codes, mel)
    assert isinstance(out, tuple) and all(isinstance(t, torch.Tensor) for t in out)
    objective, nll_sum, count = task.loss(out, codes, mel)
    ref = model(mel, codes)  # eval: the fixed masks
    assert all(torch.equal(a, b) for a, b in zip((objective, nll_sum, count), ref))
    assert count.tolist() == [2 * 32, 2 * 32]  # masked frames only: half of 64, per codebook
    assert task.tokens_per_crop(model, 64) == 64


def _args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    # dropout > 0 and masks from the global RNG: resuming must restore the RNG to match
    return [str(MAE_TINY)] + quiet(
        data_dir,
        out,
        "train.max_steps=4",
        "train.save_every=2",
        "train.eval_every=2",
        "train.batch_size=2",
        "train.grad_accum=2",
        "train.eval_batches=1",
        "train.keep_last=0",
        "mae.context=32",
        "mae.dropout=0.1",
        *extra,
    )


@pytest.fixture(scope="module")
def mae_run(tiny_dataset, tmp_path_factory) -> Path:
    """A finished 4-step run (checkpoints at steps 2 and 4)."""
    out = tmp_path_factory.mktemp("mae-run") / "run"
    assert main(_args(tiny_dataset, out)) == 0
    return out


def _interrupted_copy(run: Path, dst: Path) -> Path:
    """``run`` as if killed before its step-4 checkpoint: a copy without it and without final/."""
    shutil.copytree(run, dst)
    shutil.rmtree(ckpt_io.checkpoints_dir(dst) / ckpt_io.checkpoint_name(4))
    shutil.rmtree(dst / "final")
    return dst


def test_train_checkpoints_metrics_and_exact_resume(tiny_dataset, mae_run, tmp_path):
    losses, vals = read_metrics(mae_run)
    assert sorted(losses) == [1, 2, 3, 4] and sorted(vals) == [2, 4]
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    model = load_pretrained(mae_run / "final")
    assert isinstance(model, EnCodecMAE) and model.config.in_dim == 80
    assert (mae_run / "final" / "training_data.json").is_file()
    assert [s for s, _ in ckpt_io.list_checkpoints(mae_run)] == [2, 4]

    cut = _interrupted_copy(mae_run, tmp_path / "cut")
    assert main(_args(tiny_dataset, cut)) == 0  # the same command resumes from step 2
    assert read_metrics(cut) == (losses, vals)  # every step and validation, bit for bit
    a = load_file(str(mae_run / "final" / "model.safetensors"))
    b = load_file(str(cut / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_needs_the_rng_state(tiny_dataset, mae_run, tmp_path):
    # the test above can fail: without the saved RNG states the resumed run draws other masks
    cut = _interrupted_copy(mae_run, tmp_path / "cut")
    step2 = ckpt_io.checkpoints_dir(cut) / ckpt_io.checkpoint_name(2)
    for f in step2.glob("rng-*.safetensors"):
        f.unlink()
    (step2 / "files.json").unlink()  # its checksums would (rightly) reject the edited checkpoint
    assert main(_args(tiny_dataset, cut)) == 0
    assert read_metrics(cut)[0][3] != read_metrics(mae_run)[0][3]


def _launch(accel_config: str, data_dir: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "configs" / "accelerate" / accel_config),
        "--num_processes", "2", "--main_process_port", str(_free_port()),
        str(REPO / "train.py"), *_args(data_dir, out, "train.eval_every=4", "mae.dropout=0.0"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_ddp_and_deepspeed_zero3_train_the_same_mae(tiny_dataset, tmp_path):
    pytest.importorskip("deepspeed")
    runs = {}
    for config in ("ddp_cpu.yaml", "zero3.yaml"):
        out = tmp_path / config.removesuffix(".yaml")
        done = _launch(config, tiny_dataset, out)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
        assert "2 process(es)" in done.stdout
        runs[config] = out
    (ddp_losses, ddp_vals), (z3_losses, z3_vals) = (read_metrics(out) for out in runs.values())
    assert sorted(ddp_losses) == [1, 2, 3, 4] and sorted(ddp_vals) == [4]
    for s in ddp_losses:  # the same masks (each rank draws from its own seeded RNG) and maths
        assert z3_losses[s] == pytest.approx(ddp_losses[s], rel=1e-4), s
    assert z3_vals[4] == pytest.approx(ddp_vals[4], rel=1e-4)
    a = load_file(str(runs["ddp_cpu.yaml"] / "final" / "model.safetensors"))
    b = load_file(str(runs["zero3.yaml"] / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4, msg=k)
    assert isinstance(load_pretrained(runs["zero3.yaml"] / "final"), EnCodecMAE)


@pytest.mark.slow
def test_self_training_on_the_latent_and_semantic_streams(tiny_dataset, tiny_codec_dir, mae_run, tmp_path):
    # the paper's setting: the codec latent in, and (second stage) k-means tokens of a trained
    # MAE's features as targets next to the codes
    from whispergpt.data import read_manifest
    from whispergpt.data.prepare import prepare
    from whispergpt.semantic.tokenizer import fit_semantic, semantic_source

    tok = tmp_path / "tok"
    fit_semantic(mae_run / "final", [tiny_dataset], tok, clusters=6, layer=1, device="cpu", progress=False)
    data = tmp_path / "semantic-ds"
    prepare([tiny_dataset.parent / "wav"], data, tiny_codec_dir, bandwidth=1.5, n_mels=80, val_fraction=0.34,
            seed=0, device="cpu", progress=False, latent=True, semantic=semantic_source(tok))  # fmt: skip
    over = ["mae.input=latent", "mae.targets=both"]
    cfg = load_run_config(MAE_TINY, quiet(data, tmp_path, *over))
    assert cfg.mae.kmeans_clusters == 6 and cfg.mae.in_dim == read_manifest(data)["latent_dim"]
    assert get_task("mae").streams(cfg) == ("codes", "latent", "semantic")
    with pytest.raises(ConfigError, match="does not match the dataset"):
        load_run_config(MAE_TINY, quiet(data, tmp_path, *over, "mae.kmeans_clusters=7"))
    out = tmp_path / "st"
    assert main([str(MAE_TINY), *quiet(data, out, *over, "train.max_steps=2", "train.eval_every=2",
                 "train.save_every=2", "train.batch_size=2", "train.eval_batches=1", "mae.context=32")]) == 0  # fmt: skip
    last = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if "val_nll" in x][-1]
    assert len(last["val_nll_per_codebook"]) == 3  # 2 codebooks + the cluster stream
    model = load_pretrained(out / "final")
    assert model.config.input == "latent" and model.kmeans_head.out_features == 6
