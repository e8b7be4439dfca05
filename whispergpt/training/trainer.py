"""Training loop: ``python train.py CONFIG.yaml [key=value ...]`` or ``whispergpt train ...``.

Runs on one CPU/GPU, or under ``accelerate launch`` across processes (DDP, or DeepSpeed ZeRO 1/2/3
with ``configs/accelerate/*.yaml``; gloo when there is no CUDA).

Determinism and resume: every training crop is drawn with a fresh generator seeded from
``(train.seed, rank, sample index)``, so the data position is just the step counter; a checkpoint
holds model, optimizer, scheduler and every rank's RNG states. On CPU, one process, a run killed at
any point and restarted reproduces the uninterrupted run's losses and final weights bit for bit
(given the same thread count). The step loop:

    for each of train.grad_accum micro-batches: forward, NLL sum/count reduced across ranks
        (a non-finite value stops the run before anything is updated), backward
    clip gradients, AdamW step, warmup+cosine LR step
    log / evaluate / checkpoint on their schedules

Tokens per second count the codec tokens the model reads (batch x frames x input codebooks, all
ranks; the coarse pattern reads codebook 0 only).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import secrets
import shutil
import struct
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch

from ..config import (  # the run config lives in config.py; re-exported here for old imports
    DataConfig,  # noqa: F401
    LoggingConfig,  # noqa: F401
    RunConfig,
    TrainConfig,
    dump_yaml,
    load_run_config,
    resolve_config,  # noqa: F401
    to_dict,
)
from ..data import PreparedDataset
from ..models import WhisperGPT, nll_per_codebook
from . import checkpoint as ckpt_io
from .record import TRAINING_DATA_FILE, write_training_record  # noqa: F401 (re-export)

# Test hook: make the loss of this (1-based) step NaN, to exercise the non-finite stop.
_NAN_STEP_ENV = "WHISPERGPT_TEST_NAN_AT_STEP"


# --- schedule and data ---------------------------------------------------------------------------


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine to min_lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def sample_seed(*ints: int) -> int:
    """A 63-bit seed hashed from integers (seed, rank, sample index): independent streams."""
    digest = hashlib.blake2b(struct.pack(f"<{len(ints)}q", *ints), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class TrainCrops(torch.utils.data.Dataset):
    """Map-style view whose item ``n`` is the ``n``-th random crop drawn by ``rank``.

    Sample ``n = (step * grad_accum + micro) * batch_size + i`` depends only on
    ``(seed, rank, n)``: resuming at a step is starting the sampler at that index, and any number
    of DataLoader workers gives the same batches."""

    def __init__(self, dataset: PreparedDataset, seed: int, rank: int):
        self.dataset, self.seed, self.rank = dataset, seed, rank

    def __getitem__(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.rank, n))
        return self.dataset.random_crop(g)


def val_indices(num_items: int, eval_batches: int | str, batch_size: int) -> list[int]:
    """The fixed validation set: all tiles ("full") or ``eval_batches * batch_size`` tiles spread
    evenly over the split (so that every file region is represented, independent of world size)."""
    if eval_batches == "full":
        return list(range(num_items))
    n = min(num_items, int(eval_batches) * batch_size)
    return sorted({(i * num_items) // n for i in range(n)}) if n else []


# --- the run ------------------------------------------------------------------------------------


class NonFiniteLossError(RuntimeError):
    pass


def _resolve_wandb_mode(cfg: LoggingConfig) -> str:
    if cfg.wandb_mode is not None:
        return cfg.wandb_mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        import netrc

        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline"


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (linear / embedding weights); never biases, norm gains or pad vectors."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop lines logged after ``last_step`` (by a run that died before its next checkpoint)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                kept.append(line)
        except json.JSONDecodeError:
            break  # a torn last line from a kill mid-write
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(k + "\n" for k in kept))
    os.replace(tmp, path)


class _Loggers:
    """metrics.jsonl + wandb + tensorboard on the main process; no-ops elsewhere."""

    def __init__(self, cfg: RunConfig, out: Path, is_main: bool, start_step: int, wandb_id: str | None):
        self.is_main = is_main
        self.path = out / "metrics.jsonl"
        self.wandb = None
        self.tb = None
        self.wandb_id = wandb_id
        if not is_main:
            return
        _truncate_metrics(self.path, start_step)
        lc = cfg.logging
        mode = _resolve_wandb_mode(lc)
        if lc.wandb and mode != "disabled":
            try:
                import wandb
            except ImportError:
                print("warning: wandb is not installed; logging to metrics.jsonl only", file=sys.stderr)
            else:
                self.wandb_id = wandb_id or secrets.token_hex(4)  # persisted so a resume continues the run
                self.wandb = wandb.init(
                    project=lc.wandb_project,
                    name=lc.wandb_name or out.name,
                    id=self.wandb_id,
                    resume="allow",
                    dir=str(out),
                    mode=mode,
                    config=to_dict(cfg),
                )
        if lc.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print(
                    "warning: tensorboard is not installed (pip install whispergpt[tensorboard])",
                    file=sys.stderr,
                )
            else:
                self.tb = SummaryWriter(str(out / "tensorboard"))

    def log(self, record: dict) -> None:
        if not self.is_main:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        step = record["step"]
        scalars = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
        if self.tb is not None:
            self.tb.close()


class _Logits(torch.nn.Module):
    """``codes, mel -> logits`` around the model: a plain tensor output lets DeepSpeed ZeRO-3 hook
    the backward pass (it does not look inside the model's output dataclass)."""

    def __init__(self, core: WhisperGPT):
        super().__init__()
        self.core = core

    def forward(self, codes: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        return self.core(codes, mel).logits


def _register_zero3_external_params(wrapper: _Logits) -> None:
    """ZeRO-3 gathers a parameter only around its own module's forward; the output projection
    reads ``head.weight`` (or, tied, the embedding table) from the model's top-level forward."""
    import deepspeed

    core = wrapper.core
    head = getattr(core, "head", None)
    weight = head.weight if head is not None else core.tok_emb.weight
    deepspeed.zero.register_external_parameter(wrapper, weight)


class Trainer:
    """One training run (use :func:`train`); holds the accelerator, model and data of a process."""

    def __init__(self, cfg: RunConfig):
        from accelerate import Accelerator
        from accelerate.utils import DistributedType, InitProcessGroupKwargs

        self.cfg = cfg
        tc = cfg.train
        cuda = torch.cuda.is_available()
        mixed = (
            "bf16"
            if (
                tc.precision == "bf16" or (tc.precision == "auto" and cuda and torch.cuda.is_bf16_supported())
            )
            else "no"
        )
        # gloo when launched multi-process without CUDA (only then: a backend makes accelerate
        # expect an initialised process group)
        distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        handlers = []
        if distributed and not cuda:
            handlers.append(InitProcessGroupKwargs(backend="gloo", timeout=timedelta(minutes=30)))
        # Without CUDA, plain multi-process runs must be flagged cpu=True to become MULTI_CPU (DDP
        # over gloo) rather than N independent processes; DeepSpeed picks its CPU accelerator itself.
        deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
        self.acc = Accelerator(
            cpu=not cuda and not deepspeed,
            gradient_accumulation_steps=tc.grad_accum,
            mixed_precision=mixed,
            kwargs_handlers=handlers,
        )
        if self.acc.num_processes > 1 and self.acc.distributed_type.value == "NO":
            raise RuntimeError(
                "several processes but no distributed backend: ranks would train unsynchronised"
            )
        acc = self.acc
        self.is_ds = acc.distributed_type == DistributedType.DEEPSPEED
        self.rank, self.world = acc.process_index, acc.num_processes
        self.out = Path(cfg.out_dir)
        self.precision = mixed
        if self.is_ds:
            # Fill the "auto" entries ourselves: we never hand a DataLoader to accelerate.
            ds = acc.state.deepspeed_plugin.deepspeed_config
            ds["train_micro_batch_size_per_gpu"] = tc.batch_size
            ds["gradient_accumulation_steps"] = tc.grad_accum
            ds["train_batch_size"] = tc.batch_size * tc.grad_accum * self.world
            ds["gradient_clipping"] = tc.grad_clip
            if "optimizer" in ds or "scheduler" in ds:
                raise ValueError(
                    "the DeepSpeed config must not name an optimizer or scheduler: train.py passes AdamW"
                )

        # Same initial weights on every rank (ZeRO-3 partitions each rank's own copy).
        torch.manual_seed(tc.seed)
        self.core = WhisperGPT(cfg.model)
        self.n_params = self.core.num_parameters()  # before ZeRO-3 partitions it away
        self.train_ds = PreparedDataset(
            cfg.data.dir, cfg.data.train_split, frames=cfg.data.frames, mel_source=cfg.data.mel_source
        )
        self.train_ds.random_crop(torch.Generator())  # fails early, with the dataset's reason
        self.val_ds = None
        if cfg.data.val_split in self.train_ds.manifest["splits"]:
            val = PreparedDataset(
                cfg.data.dir, cfg.data.val_split, frames=cfg.data.frames, mel_source=cfg.data.mel_source
            )
            self.val_idx = val_indices(len(val), tc.eval_batches, tc.batch_size)
            self.val_ds = val if self.val_idx else None
        if self.val_ds is None and acc.is_main_process:
            print(
                f"note: no validation crops in split {cfg.data.val_split!r}; skipping evaluation",
                file=sys.stderr,
            )

        model: torch.nn.Module = _Logits(self.core)
        if self.is_ds and acc.state.deepspeed_plugin.zero_stage == 3:
            _register_zero3_external_params(model)
        if tc.compile:
            model = torch.compile(model)
        # Fused AdamW (one kernel for all parameters) on CUDA; DeepSpeed wraps the optimizer itself.
        opt = torch.optim.AdamW(
            _param_groups(self.core, tc.weight_decay),
            lr=tc.lr,
            betas=tuple(tc.betas),
            eps=tc.eps,
            fused=cuda and not self.is_ds,
        )
        # LambdaLR on the raw optimizer: DeepSpeed's ZeRO optimizers keep its param_group dicts.
        self.sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, tc) / tc.lr)
        self.model, self.opt = acc.prepare(model, opt)
        # DeepSpeed bf16 runs the module in bf16 without autocast: feed it bf16 mel
        self.mel_dtype = torch.bfloat16 if (self.is_ds and mixed == "bf16") else torch.float32
        self.step = 0
        self.tokens_seen = 0
        self.best_val: float | None = None
        self.elapsed_before = 0.0
        self.wandb_id: str | None = None

    # -- checkpoints ------------------------------------------------------------------------------
    def _state_dict_for_save(self) -> dict[str, torch.Tensor]:
        if self.is_ds:
            return self.acc.get_state_dict(self.model)  # gathers ZeRO-3 shards (full dict on rank 0)
        return {}

    def _write_hf(self, directory: Path, state: dict[str, torch.Tensor]) -> None:
        """config.json + model.safetensors (main process)."""
        if not self.is_ds:
            self.core.save_pretrained(directory)
            return
        if self.precision == "bf16":
            # The engine's module holds bf16 copies; export the fp32 master weights instead.
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            state = get_fp32_state_dict_from_zero_checkpoint(str(directory / "deepspeed"))
        fresh = WhisperGPT(self.cfg.model)
        # keys of the _Logits wrapper: "core.<name>"
        fresh.load_state_dict({k.removeprefix("core."): v.float().cpu() for k, v in state.items()})
        fresh.save_pretrained(directory)

    def save_checkpoint(self) -> Path | None:
        acc, step = self.acc, self.step
        tmp = ckpt_io.temp_checkpoint_dir(self.out, step)
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        if self.is_ds:
            acc.save_state(str(tmp / "deepspeed"))  # collective: model + optimizer shards
        state = self._state_dict_for_save()  # collective under ZeRO-3
        ckpt_io.save_rng_state(tmp, self.rank)
        acc.wait_for_everyone()
        final = None
        if acc.is_main_process:
            self._write_hf(tmp, state)
            if not self.is_ds:
                torch.save(self.opt.state_dict(), tmp / "optimizer.pt")
            torch.save(self.sched.state_dict(), tmp / "scheduler.pt")
            self._write_record(tmp)
            ckpt_io.write_json_atomic(
                tmp / ckpt_io.TRAINER_STATE,
                dict(
                    step=step,
                    tokens_seen=self.tokens_seen,
                    best_val_nll=self.best_val,
                    elapsed_s=self.elapsed_before + (time.perf_counter() - self.t_start),
                    wandb_run_id=self.wandb_id,
                    world_size=self.world,
                    deepspeed=self.is_ds,
                ),
            )
            final = ckpt_io.publish_checkpoint(tmp, step)
            ckpt_io.prune_checkpoints(self.out, self.cfg.train.keep_last)
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self, path: Path) -> None:
        from safetensors.torch import load_file

        state = ckpt_io.read_trainer_state(path)
        if bool(state.get("deepspeed")) != self.is_ds:
            raise ValueError(
                f"{path} was written by a {'DeepSpeed' if state.get('deepspeed') else 'non-DeepSpeed'} run; "
                f"resume it the same way (or start a new out_dir)"
            )
        if self.is_ds:
            self.acc.load_state(str(path / "deepspeed"))
        else:
            self.core.load_state_dict(load_file(str(path / "model.safetensors")))
            self.opt.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
        self.sched.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        if not ckpt_io.load_rng_state(path, self.rank) and self.acc.is_main_process:
            print(f"warning: {path} has no RNG state for rank {self.rank}", file=sys.stderr)
        self.step = int(state["step"])
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.best_val = state.get("best_val_nll")
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self.wandb_id = state.get("wandb_run_id")

    def _write_record(self, directory: Path) -> None:
        d = self.cfg.data
        write_training_record(
            directory, self.train_ds.manifest, d.mel_source, self.train_ds.directories, self.step
        )

    def save_final(self) -> Path:
        """``out_dir/final``: the HF files of the last checkpoint (always written at max_steps)."""
        final = self.out / "final"
        if self.acc.is_main_process:
            last = ckpt_io.latest_checkpoint(self.out)
            assert last is not None and ckpt_io.read_trainer_state(last)["step"] == self.step, last
            tmp = self.out / ".tmp-final"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            for name in ("config.json", "model.safetensors"):
                shutil.copy2(last / name, tmp / name)
            # what the model was trained on, so eval and sampling can pick the same codec and mel
            self._write_record(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        self.acc.wait_for_everyone()
        return final

    # -- evaluation -------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict | None:
        """Validation NLL = (sum of nats over all ranks) / (token count over all ranks)."""
        if self.val_ds is None:
            return None
        B = self.cfg.train.batch_size
        mine = self.val_idx[self.rank :: self.world]
        # Every rank runs the same number of forwards (ZeRO-3 gathers weights collectively).
        n_batches = math.ceil(math.ceil(len(self.val_idx) / self.world) / B)
        was_training = self.model.training
        self.model.eval()
        total = None
        for b in range(n_batches):
            idx = mine[b * B : (b + 1) * B]
            items = [self.val_ds[i] for i in (idx or self.val_idx[:1])]
            codes = torch.stack([c for c, _ in items]).to(self.acc.device)  # (B, K, T)
            mel = torch.stack([m for _, m in items]).to(self.acc.device, self.mel_dtype)  # (B, M, T)
            with self.acc.autocast():
                logits = self.model(codes, mel)  # (B, Ks, T, V)
            s, c = nll_per_codebook(logits, codes)
            part = torch.stack([s, c.double()])  # (2, Ks)
            if not idx:
                part = torch.zeros_like(part)  # padding batch: run for the collective, count nothing
            total = part if total is None else total + part
        self.model.train(was_training)
        total = self.acc.reduce(total, "sum")
        nll = (total[0] / total[1]).tolist()
        val = float(total[0].sum() / total[1].sum())
        return dict(val_nll=val, val_ppl=math.exp(min(val, 700.0)), val_nll_per_codebook=nll)

    # -- training ---------------------------------------------------------------------------------
    def _loader(self, start_step: int) -> torch.utils.data.DataLoader:
        tc = self.cfg.train
        per_step = tc.grad_accum * tc.batch_size
        return torch.utils.data.DataLoader(
            TrainCrops(self.train_ds, tc.seed, self.rank),
            batch_size=tc.batch_size,
            sampler=range(start_step * per_step, tc.max_steps * per_step),
            num_workers=self.cfg.data.num_workers,
            # its own generator: creating the iterator must not consume the global RNG (resume)
            generator=torch.Generator().manual_seed(tc.seed),
            pin_memory=torch.cuda.is_available(),
        )

    def run(self) -> Path:
        from tqdm.auto import tqdm

        cfg, tc, acc = self.cfg, self.cfg.train, self.acc
        self.t_start = time.perf_counter()
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            ckpt_io.remove_temp_checkpoints(self.out)
        acc.wait_for_everyone()
        if acc.is_main_process:
            print(
                f"{acc.distributed_type.value}: {self.world} process(es) on {acc.device}, "
                f"precision {self.precision}, {self.n_params:,} parameters",
                flush=True,
            )
        latest = ckpt_io.latest_checkpoint(self.out)
        if latest is not None:
            self.load_checkpoint(latest)
            if acc.is_main_process:
                print(f"resuming from {latest} (step {self.step})", flush=True)
        # Dropout etc. differ per rank; set after the shared init, unless restored from a checkpoint.
        if latest is None:
            torch.manual_seed(sample_seed(tc.seed, self.rank, -1))
        loggers = _Loggers(cfg, self.out, acc.is_main_process, self.step, self.wandb_id)
        self.wandb_id = loggers.wandb_id
        nan_step = int(os.environ.get(_NAN_STEP_ENV, "0") or 0)
        tokens_per_step = (
            tc.batch_size * tc.grad_accum * self.world * cfg.data.frames * self.core.num_input_codebooks
        )  # codec tokens the model reads (coarse: codebook 0 only)
        bar = tqdm(
            total=tc.max_steps,
            initial=self.step,
            disable=not (acc.is_main_process and cfg.logging.progress),
            dynamic_ncols=True,
            desc="train",
        )
        batches = iter(self._loader(self.step))
        self.model.train()
        window_tokens, window_time = 0, 0.0
        try:
            while self.step < tc.max_steps:
                t0 = time.perf_counter()
                total = torch.zeros(2, dtype=torch.float64, device=acc.device)
                for _ in range(tc.grad_accum):
                    codes, mel = next(batches)
                    codes = codes.to(acc.device, non_blocking=True)  # (B, K, T)
                    mel = mel.to(acc.device, self.mel_dtype, non_blocking=True)  # (B, M, T)
                    with acc.accumulate(self.model):
                        with acc.autocast():
                            logits = self.model(codes, mel)  # (B, Ks, T, V)
                        nll_sum, count = nll_per_codebook(logits, codes)
                        loss_sum = nll_sum.sum()
                        if nan_step == self.step + 1:
                            loss_sum = loss_sum * float("nan")
                        micro = acc.reduce(torch.stack([loss_sum.detach(), count.sum().double()]), "sum")
                        if not torch.isfinite(micro[0]):
                            raise NonFiniteLossError(
                                f"non-finite training loss ({micro[0].item()} summed nats) at step "
                                f"{self.step + 1}; stopped before the update"
                            )
                        total += micro
                        # Crops have equal length, so the mean of micro-batch sum/count (accelerate
                        # divides by grad_accum) is the accumulated batch's sum/count.
                        acc.backward((loss_sum / count.sum()).float())
                if self.is_ds:
                    gn = acc.clip_grad_norm_(self.model.parameters(), tc.grad_clip)  # already clipped
                else:
                    gn = acc.clip_grad_norm_(
                        self.model.parameters(), tc.grad_clip if tc.grad_clip > 0 else math.inf
                    )
                grad_norm = float(gn) if gn is not None else float("nan")
                if not self.is_ds and not math.isfinite(grad_norm):
                    raise NonFiniteLossError(
                        f"non-finite gradient norm ({grad_norm}) at step {self.step + 1}; stopped before the update"
                    )
                lr = self.sched.get_last_lr()[0]
                self.opt.step()
                self.sched.step()
                self.opt.zero_grad(set_to_none=True)
                self.step += 1
                self.tokens_seen += tokens_per_step
                window_tokens += tokens_per_step
                window_time += time.perf_counter() - t0
                loss = float(total[0] / total[1])
                bar.update(1)
                if self.step % tc.log_every == 0 or self.step == tc.max_steps:
                    tps = window_tokens / max(window_time, 1e-9)
                    loggers.log(
                        dict(
                            step=self.step,
                            loss=loss,
                            lr=lr,
                            tokens_per_s=tps,
                            grad_norm=grad_norm,
                            elapsed_s=self.elapsed_before + time.perf_counter() - self.t_start,
                        )
                    )
                    bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tps:,.0f}")
                    window_tokens, window_time = 0, 0.0
                if (tc.eval_every and self.step % tc.eval_every == 0) or self.step == tc.max_steps:
                    metrics = self.evaluate()
                    if metrics is not None:
                        loggers.log(dict(step=self.step, **metrics))
                        if self.best_val is None or metrics["val_nll"] < self.best_val:
                            self.best_val = metrics["val_nll"]
                        if acc.is_main_process:
                            bar.write(f"step {self.step}: val_nll {metrics['val_nll']:.4f}")
                if self.step % tc.save_every == 0 or self.step == tc.max_steps:
                    self.save_checkpoint()
            final = self.save_final()
        finally:
            bar.close()
            loggers.close()
        if acc.is_main_process:
            print(f"final model: {final}", flush=True)
        return final


def train(cfg: RunConfig) -> Path:
    """Train (resuming from the newest checkpoint in ``cfg.out_dir``); returns ``out_dir/final``."""
    trainer = Trainer(cfg)
    try:
        if trainer.acc.is_main_process:
            out = Path(cfg.out_dir)
            out.mkdir(parents=True, exist_ok=True)
            text = dump_yaml(cfg)
            print("resolved config:\n" + text, flush=True)
            tmp = out / "config.yaml.tmp"
            tmp.write_text(text)
            os.replace(tmp, out / "config.yaml")
        return trainer.run()
    finally:
        trainer.acc.end_training()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="whispergpt train",
        description="Train a WhisperGPT model; resumes automatically from the newest checkpoint in out_dir. "
        "Multi-process: accelerate launch [--config_file configs/accelerate/...] train.py CONFIG.yaml ...",
    )
    parser.add_argument(
        "config", help="YAML recipe: a path, or a shipped recipe's name (tiny.yaml, paper_hybrid.yaml, ...)"
    )
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.max_steps=100")
    args = parser.parse_args(argv)
    try:
        cfg = load_run_config(args.config, args.overrides)
    except ValueError as e:
        print(f"whispergpt train: error: {e}", file=sys.stderr)
        return 2
    try:
        train(cfg)
    except NonFiniteLossError as e:
        print(
            f"whispergpt train: {e}. The last good checkpoint in {Path(cfg.out_dir) / ckpt_io.CHECKPOINTS} "
            "is kept; lower train.lr or raise train.warmup_steps and rerun to resume from it.",
            file=sys.stderr,
        )
        return 3
    return 0
