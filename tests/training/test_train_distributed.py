"""Multi-process training on CPU (gloo): DDP, DeepSpeed ZeRO-2 (save, resume, consolidate), ZeRO-1/3.

Every run trains the same tiny model on the same data with 2 processes, so DDP is the reference:
ZeRO only changes where optimizer state and weights live, not the maths (up to float rounding).
The first DeepSpeed run builds its shared-memory op (about a minute, cached afterwards).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train import read_metrics  # the same metrics.jsonl reader as the single-process tests

from whispergpt import checkpoint as ckpt_io

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"
STEPS = 6

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tiny_dataset) -> Path:
    return tiny_dataset


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    accel_config: str, data_dir: Path, out: Path, nan_step: int = 0, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    # nan_step: run through tests/training/nan_fault.py, whose loss is NaN from that step on
    script = [str(REPO / "train.py")]
    if nan_step:
        script = [str(Path(__file__).with_name("nan_fault.py")), str(nan_step), "2"]  # grad_accum 2
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "configs" / "accelerate" / accel_config),
        "--num_processes", "2", "--main_process_port", str(_free_port()),
        *script, str(TINY),
        f"data.dir={data_dir}", f"out_dir={out}", "logging.wandb=false", "logging.progress=false",
        f"train.max_steps={STEPS}", "train.save_every=2", "train.eval_every=3", "train.keep_last=2",
        "train.batch_size=2", "train.grad_accum=2", "train.eval_batches=2", "model.context=32", *extra,
    ]  # fmt: skip
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    # the DeepSpeed JSON path in configs/accelerate/*.yaml is relative to the repo root
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=900)


def assert_close_runs(out: Path, ref: Path, rtol: float = 1e-4) -> None:
    losses, vals = read_metrics(out)
    ref_losses, ref_vals = read_metrics(ref)
    assert sorted(losses) == list(range(1, STEPS + 1)) and sorted(vals) == [3, 6]
    for s in ref_losses:
        assert losses[s] == pytest.approx(ref_losses[s], rel=rtol), s
    for s in ref_vals:
        assert vals[s] == pytest.approx(ref_vals[s], rel=rtol), s
    a, b = (
        load_file(str(out / "final" / "model.safetensors")),
        load_file(str(ref / "final" / "model.safetensors")),
    )
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == torch.float32
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4, msg=k)


@pytest.fixture(scope="module")
def ddp_run(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "run"
    done = launch("ddp_cpu.yaml", data_dir, out)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "MULTI_CPU: 2 process(es)" in done.stdout
    return out


def test_ddp_two_processes_reduce_val_nll_and_save_once(ddp_run, data_dir):
    from whispergpt.data import PreparedDataset
    from whispergpt.models import WhisperGPT, nll_per_codebook
    from whispergpt.training import val_indices

    assert sorted(p.name for p in (ddp_run / "final").iterdir()) == [
        "README.md",  # the model card
        "config.json",
        "files.json",
        "model.safetensors",
        "training_data.json",
    ]
    # files.json covers both ranks' RNG files
    last = ckpt_io.latest_checkpoint(ddp_run)
    assert ckpt_io.verify_checkpoint(last) is None
    assert "rng-1.safetensors" in json.loads((last / ckpt_io.FILES_MANIFEST).read_text())["files"]
    assert not list(ddp_run.glob(".tmp*"))
    assert [s for s, _ in ckpt_io.list_checkpoints(ddp_run)] == [4, 6]
    assert sorted(p.name for p in ckpt_io.latest_checkpoint(ddp_run).glob("rng-*")) == [
        "rng-0.safetensors",
        "rng-1.safetensors",
    ]
    # The logged val NLL covers both ranks' shards: it equals one process evaluating all crops.
    model = WhisperGPT.from_pretrained(ddp_run / "final").eval()
    mel_source = json.loads((ddp_run / "final" / "training_data.json").read_text())["mel_source"]
    assert mel_source == "decoded"  # auto: the tiny dataset stores the decoded mel, pattern delay
    val = PreparedDataset(data_dir, "val", frames=32, mel_source=mel_source)
    idx = val_indices(len(val), 2, 2)
    assert len(idx) == 4
    codes = torch.stack([val[i][0] for i in idx])
    mel = torch.stack([val[i][1] for i in idx])
    with torch.no_grad():
        s, c = nll_per_codebook(model(codes, mel).logits, codes)
    _, vals = read_metrics(ddp_run)
    assert vals[STEPS] == pytest.approx(float(s.sum() / c.sum()), rel=1e-5)
    # ... and not what rank 0 alone saw
    with torch.no_grad():
        s0, c0 = nll_per_codebook(model(codes[::2], mel[::2]).logits, codes[::2])
    assert abs(float(s0.sum() / c0.sum()) - vals[STEPS]) > 1e-4


def test_deepspeed_zero2_save_resume_consolidate(ddp_run, data_dir, tmp_path):
    pytest.importorskip("deepspeed")
    out = tmp_path / "zero2"
    # NaN at step 5: the run stops after checkpoint 4, like a crash; then it resumes from it.
    stopped = launch("zero2.yaml", data_dir, out, nan_step=5)
    assert stopped.returncode != 0
    assert "non-finite training loss" in stopped.stderr
    assert [s for s, _ in ckpt_io.list_checkpoints(out)] == [2, 4]
    assert not (out / "final").exists()
    ckpt = ckpt_io.latest_checkpoint(out)
    assert (ckpt / "deepspeed").is_dir() and (ckpt / "model.safetensors").is_file()

    done = launch("zero2.yaml", data_dir, out)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "DEEPSPEED: 2 process(es)" in done.stdout and "(step 4)" in done.stdout
    assert_close_runs(out, ddp_run)


@pytest.mark.parametrize("stage", ["zero1", "zero3"])
def test_deepspeed_zero_trains_and_consolidates(ddp_run, data_dir, tmp_path, stage):
    pytest.importorskip("deepspeed")
    from whispergpt.models import WhisperGPT

    out = tmp_path / stage
    done = launch(f"{stage}.yaml", data_dir, out)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "DEEPSPEED: 2 process(es)" in done.stdout
    assert_close_runs(out, ddp_run)
    # the gathered weights in the last checkpoint are the final model, in the same HF layout
    last = ckpt_io.latest_checkpoint(out)
    a, b = load_file(str(last / "model.safetensors")), load_file(str(out / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    WhisperGPT.from_pretrained(out / "final")


@pytest.fixture(scope="module")
def lora_parent(data_dir, tmp_path_factory) -> Path:
    from whispergpt.cli.train import main

    out = tmp_path_factory.mktemp("lora-parent") / "run"
    argv = [str(TINY), f"data.dir={data_dir}", f"out_dir={out}", "logging.wandb=false", "logging.progress=false",
            "train.max_steps=2", "train.save_every=2", "model.context=32"]  # fmt: skip
    assert main(argv) == 0
    return out / "final"


def test_lora_under_ddp_and_deepspeed_zero2_over_gloo(data_dir, tmp_path, lora_parent):
    """train.lora in two processes: DDP and ZeRO-2 give the same merged final/ and adapter, the
    frozen weights stay the parent's."""
    pytest.importorskip("deepspeed")
    extra = (f"train.init_from={lora_parent}", "train.lora.r=4")
    runs = {}
    for name, accel in (("ddp", "ddp_cpu.yaml"), ("zero2", "zero2.yaml")):
        done = launch(accel, data_dir, tmp_path / name, extra=extra)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
        assert "LoRA r=4" in done.stdout
        runs[name] = tmp_path / name
    assert_close_runs(runs["zero2"], runs["ddp"])
    parent = load_file(str(lora_parent / "model.safetensors"))
    for out in runs.values():
        final = load_file(str(out / "final" / "model.safetensors"))
        assert torch.equal(final["decoder.blocks.0.ln1.weight"], parent["decoder.blocks.0.ln1.weight"])
        assert not torch.equal(
            final["decoder.blocks.0.attn.qkv.weight"], parent["decoder.blocks.0.attn.qkv.weight"]
        )
        assert (out / "final" / "adapter" / "adapter_model.safetensors").is_file()
