"""The training step. It reads nothing back from the device except one finiteness check per optimizer
step (and the logged scalars on logging steps): every ``.item()``/``.tolist()``/``bool()`` of a
CUDA tensor stalls the host until the queued kernels finish, and across ranks it lines them up."""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import pytest
import torch

from whispergpt.config import RunConfig, load_run_config
from whispergpt.training import trainer

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "whispergpt"
SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__")


def count_syncs(monkeypatch) -> collections.Counter:
    """Counts tensor-to-host reads made by our package's code, by (method, file, line). Not counted:
    the loader's CPU-generator draws (``whispergpt/data``, CPU tensors on any device) and torch's
    own optimizer bookkeeping (CPU step counters)."""
    counts: collections.Counter = collections.Counter()
    for name in SYNCS:
        real = getattr(torch.Tensor, name)

        def patched(self, *args, _real=real, _name=name, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(str(PACKAGE)) and "/data/" not in caller:
                counts[(_name, Path(caller).name, sys._getframe(1).f_lineno)] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, patched)
    return counts


def test_a_non_logging_step_has_at_most_one_host_sync(tiny_dataset, tmp_path, monkeypatch):
    # measured: 10 per optimizer step at grad_accum 4 before (range check + finiteness check per
    # micro-batch, float(grad_norm), float(loss)); 1 now
    overrides = [
        f"data.dir={tiny_dataset}", f"out_dir={tmp_path}", "logging.wandb=false", "logging.progress=false",
        "train.max_steps=4", "train.grad_accum=4", "train.batch_size=1", "train.eval_batches=1", "train.log_every=100",
        "train.eval_every=0", "train.save_every=100", "model.context=32",
    ]  # fmt: skip
    t = trainer.Trainer(load_run_config(REPO / "configs" / "tiny.yaml", overrides))
    counts = count_syncs(monkeypatch)
    snapshots = []
    real_step = t.opt.step  # wrapped on the optimizer: the scheduler's state dict would pickle it

    def step_and_snapshot(*args, **kwargs):
        real_step(*args, **kwargs)
        snapshots.append(counts.copy())

    t.opt.step = step_and_snapshot
    t.run()
    assert len(snapshots) == 4
    # steps 2..3: neither logged, evaluated nor saved (step 4 is the last: it does all three)
    per_step = [snapshots[i] - snapshots[i - 1] for i in range(1, 3)]
    for syncs in per_step:
        assert sum(syncs.values()) <= 1, dict(syncs)
    assert sum(per_step[0].values()) == 1  # the counter does see the finiteness check


@pytest.mark.parametrize("pattern", ["delay", "coarse"])
def test_forward_reads_nothing_back(pattern, monkeypatch):
    from whispergpt.models import WhisperGPT, WhisperGPTConfig

    model = WhisperGPT(WhisperGPTConfig(num_codebooks=2, codebook_size=16, n_mels=8, pattern=pattern,
                                        d_model=32, n_layers=1, n_heads=2, context=8, mel_dim=8,
                                        mel_layers=1, mel_heads=2))  # fmt: skip
    codes, mel = torch.randint(0, 16, (2, 2, 8)), torch.randn(2, 8, 8)
    counts = count_syncs(monkeypatch)
    model(codes, mel).logits.sum().backward()
    assert not counts, dict(counts)


@pytest.mark.parametrize(
    "version,device,expected",
    [("2.3.1", "cpu", False), ("2.4.0", "cpu", True), ("2.13.0+cpu", "cpu", True), ("2.1.0", "cuda", True),
     ("2.13.0", "meta", False)],
)  # fmt: skip
def test_fused_adamw_only_where_torch_supports_it(monkeypatch, version, device, expected):
    monkeypatch.setattr(torch, "__version__", version)
    assert trainer.fused_adamw_supported(torch.device(device)) is expected


def test_fused_adamw_builds_and_steps_on_cpu_params():
    if not trainer.fused_adamw_supported(torch.device("cpu")):
        pytest.skip("this torch has no CPU fused AdamW")
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    torch.optim.AdamW([p], lr=0.1, fused=True).step()
    assert torch.all(p < 1)


def test_loader_workers_default_by_device(monkeypatch):
    monkeypatch.setattr(trainer.os, "cpu_count", lambda: 16)
    assert trainer.loader_workers(None, torch.device("cpu")) == 0
    assert trainer.loader_workers(None, torch.device("cuda")) == 4
    assert trainer.loader_workers(3, torch.device("cuda")) == 3  # an explicit value is kept
    monkeypatch.setattr(trainer.os, "cpu_count", lambda: 2)
    assert trainer.loader_workers(None, torch.device("cuda")) == 2
    from whispergpt.config import DataConfig

    assert DataConfig().num_workers is None  # the default is the device-dependent one
    with pytest.raises(ValueError, match="num_workers must be >= 0 or null"):
        DataConfig(num_workers=-1)


def test_compile_defaults_to_on_for_cuda_only():
    assert RunConfig().train.compile is None
    assert trainer.use_compile(None, torch.device("cuda"), deepspeed=False) is True
    assert trainer.use_compile(None, torch.device("cuda"), deepspeed=True) is False
    assert trainer.use_compile(None, torch.device("cpu"), deepspeed=False) is False
    assert trainer.use_compile(True, torch.device("cpu"), deepspeed=False) is True
    assert trainer.use_compile(False, torch.device("cuda"), deepspeed=False) is False
