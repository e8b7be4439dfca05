"""runtime: device resolution, precision choice, atomic writes, seeding, the accelerator rule."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch

from whispergpt import runtime


def test_resolve_device():
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    assert runtime.resolve_device(None) == runtime.resolve_device("auto")
    assert runtime.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="not a device: 'gpu0'"):
        runtime.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            runtime.resolve_device("cuda:0")


def test_choose_precision():
    assert runtime.choose_precision("fp32") == "no"
    assert runtime.choose_precision("bf16") == "bf16"
    assert runtime.choose_precision("auto", torch.device("cpu")) == "no"
    with pytest.raises(ValueError, match="auto, fp32 or bf16"):
        runtime.choose_precision("fp16")
    x = torch.ones(2, 2)
    with runtime.autocast(torch.device("cpu"), "bf16"):
        assert (x @ x).dtype == torch.bfloat16
    with runtime.autocast(torch.device("cpu"), "no"):
        assert (x @ x).dtype == torch.float32


def test_write_atomic_replaces_and_leaves_no_temp(tmp_path, monkeypatch):
    p = tmp_path / "a.json"
    runtime.write_json_atomic(p, {"x": 1})
    runtime.write_atomic(tmp_path / "b.bin", b"\x00\x01")
    assert json.loads(p.read_text()) == {"x": 1} and (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    # a failure before the rename keeps the old file and removes the temp file
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        runtime.write_json_atomic(p, {"x": 2})
    assert json.loads(p.read_text()) == {"x": 1}
    assert sorted(f.name for f in tmp_path.iterdir()) == ["a.json", "b.bin"]


def test_checkpoint_write_json_atomic_is_the_runtime_one():
    from whispergpt import checkpoint

    assert checkpoint.write_json_atomic is runtime.write_json_atomic


def test_seed_everything():
    runtime.seed_everything(3)
    a = (random.random(), float(np.random.rand()), float(torch.rand(())))
    runtime.seed_everything(3)
    assert a == (random.random(), float(np.random.rand()), float(torch.rand(())))


def test_reproducibility_note_names_the_thread_count():
    n = torch.get_num_threads()
    assert runtime.reproducibility_note().endswith(f"same thread count: {n} thread{'s' * (n != 1)}")


def test_single_process_accelerator_on_cpu(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    acc = runtime.make_accelerator(grad_accum=2, precision="no")
    assert acc.num_processes == 1 and acc.gradient_accumulation_steps == 2
    if not torch.cuda.is_available():
        assert acc.device.type == "cpu" and acc.distributed_type.value == "NO"
