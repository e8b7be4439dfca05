"""Training loop: ``python train.py CONFIG.yaml [key=value ...]`` or ``whispergpt train ...``.

Runs on one CPU/GPU, or under ``accelerate launch`` across processes (DDP, or DeepSpeed ZeRO 1/2/3
with ``configs/accelerate/*.yaml``; gloo when there is no CUDA).

Determinism and resume: every training crop is drawn with a fresh generator seeded from
``(train.seed, rank, sample index)``, so the data position is just the step counter; a checkpoint
holds model, optimizer, scheduler and every rank's RNG states. On CPU, one process, a run killed at
any point and restarted reproduces the uninterrupted run's losses and final weights bit for bit
given the same thread count (see ``runtime.reproducibility_note``). The step loop:

    for each of train.grad_accum micro-batches: forward, NLL sum/count added up on the device, backward
    NLL sum/count reduced across ranks, clip gradients; one host sync checks loss and gradient
        norm (a non-finite value stops the run before anything is updated)
    AdamW step, warmup+cosine LR step (scalars are read to the host on logging steps only)
    log / evaluate / checkpoint on their schedules

Tokens per second count the codec tokens the model reads (batch x frames x input codebooks, all
ranks; the coarse pattern reads codebook 0 only).
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from whispergpt import checkpoint as ckpt_io
from whispergpt.config import RunConfig
from whispergpt.config_io import dump_yaml, to_dict
from whispergpt.data import PreparedDataset
from whispergpt.errors import WhisperGPTError
from whispergpt.hub.card import write_card
from whispergpt.models.blocks import set_grad_checkpointing
from whispergpt.runtime import (
    choose_precision,
    main_process_lock,
    make_accelerator,
    reproducibility_note,
    seed_everything,
    write_atomic,
    write_json_atomic,
    writing,
)
from whispergpt.training import lora
from whispergpt.training.init import check_resume_config, prepare_weights
from whispergpt.training.loggers import Loggers
from whispergpt.training.record import write_training_record
from whispergpt.training.schedule import (
    lr_at,
    param_groups,
    sample_seed,
    train_loader,
    val_indices,
)
from whispergpt.training.tasks import TaskModule, get_task

# --- the run ------------------------------------------------------------------------------------


class NonFiniteLossError(WhisperGPTError, RuntimeError):
    """Training diverged; raised before the update, so the last checkpoint is still good. Exit 3."""

    exit_code = 3

    def __init__(self, what: str, out_dir: Path):
        hint = (
            "the last good checkpoint is kept; lower train.lr or raise train.warmup_steps and rerun to resume"
        )
        super().__init__(what, Path(out_dir) / ckpt_io.CHECKPOINTS, hint)


def fused_adamw_supported(device: torch.device) -> bool:
    """Whether ``AdamW(fused=True)`` runs on ``device``: CUDA always; CPU from torch 2.4 on (older
    versions reject CPU parameters). One kernel over all parameters instead of a loop of
    per-tensor ops: on CPU at tiny size the optimizer step is ~6x faster than the foreach one."""
    if device.type == "cuda":
        return True
    if device.type == "cpu":
        major, minor = (int(x) for x in torch.__version__.split(".")[:2])
        return (major, minor) >= (2, 4)
    return False


def use_compile(requested: bool | None, device: torch.device, deepspeed: bool) -> bool:
    """``train.compile``; null: on for CUDA (the step is launch-bound at small sizes and fuses
    well), off on CPU and under DeepSpeed (its engine wraps the module; not measured here)."""
    if requested is not None:
        return requested
    return device.type == "cuda" and not deepspeed


def loader_workers(requested: int | None, device: torch.device) -> int:
    """``data.num_workers``; null: 0 on CPU (the crops are memmap slices, cheaper than a worker's
    IPC), ``min(4, CPU cores)`` on CUDA so crops are cut while the GPU runs the step."""
    if requested is not None:
        return requested
    return min(4, os.cpu_count() or 1) if device.type == "cuda" else 0


def _register_zero3_external_params(wrapper: TaskModule) -> None:
    """ZeRO-3 gathers a parameter only around its own module's forward; tell it about the ones a
    model reads elsewhere (e.g. the decoder's output projection, read from its top-level forward)."""
    import deepspeed

    for weight in wrapper.task.external_parameters(wrapper.core):
        deepspeed.zero.register_external_parameter(wrapper, weight)


class Trainer:
    """One training run (use :func:`train`); holds the accelerator, model and data of a process."""

    def __init__(self, cfg: RunConfig, command: str | None = None):
        from accelerate.utils import DistributedType

        self.cfg = cfg
        tc = cfg.train
        mixed = choose_precision(tc.precision)
        self.acc = make_accelerator(tc.grad_accum, mixed)
        acc = self.acc
        self.is_ds = acc.distributed_type == DistributedType.DEEPSPEED
        self.rank, self.world = acc.process_index, acc.num_processes
        self.out = Path(cfg.out_dir)
        self.precision = mixed
        self.lock = main_process_lock(acc, self.out, "train")  # one writer per out_dir; train() releases it
        try:
            self._build(cfg, mixed, command)
        except BaseException:
            self.lock.close()  # an in-process caller may start again into the same folder
            raise

    def _build(self, cfg: RunConfig, mixed: str, command: str | None) -> None:
        tc, acc = cfg.train, self.acc
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
        seed_everything(tc.seed)
        self.task = get_task(cfg.task)
        self.core = self.task.build(cfg)
        # train.init_from (weights only), then train.lora (adapters, the rest frozen): training/init.py
        stage = acc.state.deepspeed_plugin.zero_stage if self.is_ds else None
        self.parent, self.lora = prepare_weights(self.core, tc, stage, mixed, acc.is_main_process)
        self.n_params = self.core.num_parameters()  # before ZeRO-3 partitions it away
        if tc.grad_checkpointing:
            set_grad_checkpointing(self.core)
        self.train_ds = self._dataset(cfg.data.train_split)
        self.train_ds.random_crop(torch.Generator())  # fails early, with the dataset's reason
        self.val_ds = None
        if cfg.data.val_split in self.train_ds.manifest["splits"]:
            val = self._dataset(cfg.data.val_split)
            self.val_idx = val_indices(len(val), tc.eval_batches, tc.batch_size)
            self.val_ds = val if self.val_idx else None
        if self.val_ds is None and acc.is_main_process:
            print(
                f"note: no validation crops in split {cfg.data.val_split!r}; skipping evaluation",
                file=sys.stderr,
            )

        model: torch.nn.Module = TaskModule(self.core, self.task)
        if self.is_ds and acc.state.deepspeed_plugin.zero_stage == 3:
            _register_zero3_external_params(model)
        if use_compile(tc.compile, acc.device, self.is_ds):
            model = torch.compile(model)
        fused = not self.is_ds and fused_adamw_supported(acc.device)  # DeepSpeed wraps its own
        if fused:
            self.core.to(acc.device)  # torch < 2.4 checks the parameters' device when it is built
        opt = torch.optim.AdamW(
            param_groups(self.core, tc.weight_decay),
            lr=tc.lr,
            betas=tuple(tc.betas),
            eps=tc.eps,
            fused=fused,
        )
        # LambdaLR on the raw optimizer: DeepSpeed's ZeRO optimizers keep its param_group dicts.
        self.sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, tc) / tc.lr)
        self.model, self.opt = acc.prepare(model, opt)
        # DeepSpeed bf16 runs the module in bf16 without autocast: feed it bf16 mel
        self.mel_dtype = torch.bfloat16 if (self.is_ds and mixed == "bf16") else torch.float32
        self.step = 0
        self.tokens_seen = 0
        self.best_val: float | None = None
        self.evals_since_best = 0  # evaluations in a row without a new best (train.early_stop_patience)
        self.best_step: int | None = None
        # early stopping keeps the best weights (out_dir/best/, then final/): the last ones overfit
        self.keep_best = bool(cfg.train.early_stop_patience)
        self.elapsed_before = 0.0
        self.wandb_id: str | None = None
        self.command = command  # recorded in training_data.json and the model card
        self.last_eval: dict | None = None  # {step, val_nll, val_nll_per_codebook}
        self.best_eval: dict | None = None

    def _dataset(self, split: str) -> PreparedDataset:
        d = self.cfg.data
        streams = self.task.streams(self.cfg)
        kwargs = {} if streams == ("codes", "mel") else {"streams": streams}
        return PreparedDataset(d.dir, split, frames=d.frames, mel_source=d.mel_source, **kwargs)

    def _to_device(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Integer streams as they are; float streams (mel, latent) in the module's input dtype."""
        dev = self.acc.device
        return tuple(
            x.to(dev, self.mel_dtype, non_blocking=True)
            if x.is_floating_point()
            else x.to(dev, non_blocking=True)
            for x in batch
        )

    # -- checkpoints ------------------------------------------------------------------------------
    def _state_dict_for_save(self) -> dict[str, torch.Tensor]:
        if self.is_ds:
            return self.acc.get_state_dict(self.model)  # gathers ZeRO-3 shards (full dict on rank 0)
        return {}

    def _write_hf(self, directory: Path, state: dict[str, torch.Tensor]) -> None:
        """config.json + model.safetensors (main process)."""
        if self.lora is not None:  # the merged model in HF layout, the adapter beside it
            lora.save_merged(self.core, lambda: self.task.build(self.cfg), directory)
            return
        if not self.is_ds:
            self.core.save_pretrained(directory)
            return
        if self.precision == "bf16":
            # The engine's module holds bf16 copies; export the fp32 master weights instead.
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            state = get_fp32_state_dict_from_zero_checkpoint(str(directory / "deepspeed"))
        with torch.random.fork_rng(devices=[]):  # its random init must not move the run's RNG
            fresh = self.task.build(self.cfg)
        # keys of the TaskModule wrapper: "core.<name>"
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
        what, hint = f"the step-{step} checkpoint", ckpt_io.resume_hint(self.out)
        with writing(tmp, what, hint, cleanup=tmp):
            ckpt_io.save_rng_state(tmp, self.rank)
        acc.wait_for_everyone()
        final = None
        if acc.is_main_process:
            with writing(tmp, what, hint, cleanup=tmp):  # the previous checkpoints are untouched
                self._write_checkpoint_files(tmp, state)
            final = ckpt_io.publish_checkpoint(tmp, step)
            ckpt_io.prune_checkpoints(self.out, self.cfg.train.keep_last)
        acc.wait_for_everyone()
        return final

    def _write_checkpoint_files(self, tmp: Path, state: dict[str, torch.Tensor]) -> None:
        """The main process's files of a checkpoint; ``files.json`` (sizes + sha256) comes last."""
        self._write_hf(tmp, state)
        if not self.is_ds:
            torch.save(self.opt.state_dict(), tmp / "optimizer.pt")
        torch.save(self.sched.state_dict(), tmp / "scheduler.pt")
        self._write_record(tmp)
        write_json_atomic(
            tmp / ckpt_io.TRAINER_STATE,
            dict(
                step=self.step,
                tokens_seen=self.tokens_seen,
                best_val_nll=self.best_val,
                best_step=self.best_step,
                evals_since_best=self.evals_since_best,
                elapsed_s=self.elapsed_before + (time.perf_counter() - self.t_start),
                wandb_run_id=self.wandb_id,
                world_size=self.world,
                deepspeed=self.is_ds,
                num_threads=torch.get_num_threads(),
            ),
        )
        ckpt_io.write_files_manifest(tmp)

    def _resume_checkpoint(self) -> Path | None:
        """What ``train.resume_from`` picks (see TrainConfig). Only the main process verifies and
        moves broken checkpoints aside; the others then read the surviving newest one."""
        choice, acc = self.cfg.train.resume_from, self.acc
        if choice is not None and choice.lower() == "none":
            existing = ckpt_io.latest_checkpoint(self.out)
            if existing is not None:
                raise WhisperGPTError(
                    "train.resume_from=none but out_dir already holds checkpoints",
                    existing,
                    "use a new out_dir, or drop train.resume_from to continue that run",
                )
            return None
        if choice is not None:
            return ckpt_io.resolve_resume_from(choice)
        if acc.is_main_process:
            ckpt_io.select_resume_checkpoint(self.out)
        acc.wait_for_everyone()
        return ckpt_io.latest_checkpoint(self.out)

    def load_checkpoint(self, path: Path) -> None:
        from safetensors.torch import load_file

        check_resume_config(path, self.core)
        state = ckpt_io.read_trainer_state(path)
        if bool(state.get("deepspeed")) != self.is_ds:
            raise ValueError(
                f"{path} was written by a {'DeepSpeed' if state.get('deepspeed') else 'non-DeepSpeed'} run; "
                f"resume it the same way (or start a new out_dir)"
            )
        if self.is_ds:
            self.acc.load_state(str(path / "deepspeed"))
        else:  # LoRA: the frozen base is rebuilt as at the start; only the adapter is loaded
            if self.lora is not None:
                lora.load_adapter(self.core, path)
            else:
                self.core.load_state_dict(load_file(str(path / "model.safetensors")))
            self.opt.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
        self.sched.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        if not ckpt_io.load_rng_state(path, self.rank) and self.acc.is_main_process:
            print(f"warning: {path} has no RNG state for rank {self.rank}", file=sys.stderr)
        self.step = int(state["step"])
        threads = state.get("num_threads", torch.get_num_threads())
        if threads != torch.get_num_threads() and self.acc.is_main_process:
            print(
                f"note: {path} was written with {threads} threads; {reproducibility_note()}", file=sys.stderr
            )
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.best_val = state.get("best_val_nll")
        self.evals_since_best = int(state.get("evals_since_best", 0))
        self.best_step = state.get("best_step")
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self.wandb_id = state.get("wandb_run_id")

    def _write_record(self, directory: Path, step: int | None = None) -> None:
        d = self.cfg.data
        step = self.step if step is None else step
        # the evaluation of these weights (the best one for best/ and an early-stopped final/)
        val = self.best_eval if self.best_eval and self.best_eval["step"] == step else self.last_eval
        extra = dict(
            task=self.cfg.task, command=self.command, val=val if val and val["step"] == step else None
        )
        if self.parent is not None:
            extra["parent"] = self.parent
        if self.lora is not None:
            extra["lora"] = self.lora
        write_training_record(
            directory, self.train_ds.manifest, d.mel_source, self.train_ds.directories, step, extra
        )

    def save_final(self) -> Path:
        """``out_dir/final``: the HF files of the last checkpoint (always written at max_steps or an
        early stop), or with early stopping on, of ``out_dir/best`` (the best val NLL's weights)."""
        src, step = None, self.step
        if self.acc.is_main_process:
            src = ckpt_io.latest_checkpoint(self.out)
            assert src is not None and ckpt_io.read_trainer_state(src)["step"] == self.step, src
            best = self.out / "best"
            if self.keep_best and (best / "model.safetensors").is_file():
                src, step = best, self.best_step
        return self._export(src, "final", step)

    def _export(self, src: Path | None, name: str, step: int) -> Path:
        """``out_dir/<name>``, atomically: the model files of checkpoint ``src`` (main process;
        every rank calls it) with the training record of ``step``."""
        out = self.out / name
        if self.acc.is_main_process:
            tmp = self.out / f".tmp-{name}"
            shutil.rmtree(tmp, ignore_errors=True)
            hint = f"free disk space and rerun: it resumes from {src} and writes {name}/ again"
            with writing(tmp, f"{name}/", hint, cleanup=tmp):
                tmp.mkdir()
                for f in ("config.json", "model.safetensors"):
                    shutil.copy2(src / f, tmp / f)
                if (src / lora.ADAPTER_DIR).is_dir():  # LoRA: the adapter alone, in peft's format
                    shutil.copytree(src / lora.ADAPTER_DIR, tmp / lora.ADAPTER_DIR)
                # what the model was trained on, so eval and sampling can pick the same codec and mel
                self._write_record(tmp, step)
                write_card(tmp)  # README.md from that record (whispergpt push adds the licence)
                ckpt_io.write_files_manifest(tmp)
            ckpt_io.replace_dir(tmp, out)
        self.acc.wait_for_everyone()
        return out

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
            batch = self._to_device(tuple(torch.stack(xs) for xs in zip(*items)))  # e.g. (B,K,T), (B,M,T)
            with self.acc.autocast():
                out = self.model(*batch)
            _, s, c = self.task.loss(out, *batch)
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
    def _stop_non_finite(self, total: torch.Tensor, grad_norm: torch.Tensor) -> None:
        nats, norm = total[0].item(), grad_norm.item()
        what = (
            f"non-finite training loss ({nats} summed nats)"
            if not math.isfinite(nats)
            else f"non-finite gradient norm ({norm})"
        )
        raise NonFiniteLossError(f"{what} at step {self.step + 1}; stopped before the update", self.out)

    def stopped_early(self) -> bool:
        """``train.early_stop_patience`` evaluations in a row without a new best val NLL."""
        patience = self.cfg.train.early_stop_patience
        return bool(patience) and self.evals_since_best >= patience

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
                f"precision {self.precision}, {self.n_params:,} parameters"
                + (f"; {reproducibility_note()}" if acc.device.type == "cpu" else ""),
                flush=True,
            )
        latest = self._resume_checkpoint()
        if latest is not None:
            self.load_checkpoint(latest)
            if acc.is_main_process:
                print(f"resuming from {latest} (step {self.step})", flush=True)
        # Dropout etc. differ per rank; set after the shared init, unless restored from a checkpoint.
        if latest is None:
            torch.manual_seed(sample_seed(tc.seed, self.rank, -1))
        loggers = Loggers(cfg.logging, to_dict(cfg), self.out, acc.is_main_process, self.step, self.wandb_id)
        self.wandb_id = loggers.wandb_id
        tokens_per_step = (
            tc.batch_size * tc.grad_accum * self.world * self.task.tokens_per_crop(self.core, cfg.data.frames)
        )
        bar = tqdm(
            total=tc.max_steps,
            initial=self.step,
            disable=not (acc.is_main_process and cfg.logging.progress),
            dynamic_ncols=True,
            desc="train",
        )
        workers = loader_workers(self.cfg.data.num_workers, acc.device)
        batches = iter(train_loader(self.train_ds, tc, workers, self.rank, self.step))
        self.model.train()
        window_tokens, window_time = 0, 0.0
        try:
            while self.step < tc.max_steps and not self.stopped_early():
                t0 = time.perf_counter()
                total = torch.zeros(2, dtype=torch.float64, device=acc.device)  # (nats, tokens)
                for _ in range(tc.grad_accum):
                    batch = self._to_device(next(batches))  # lm: codes (B, K, T), mel (B, M, T)
                    with acc.accumulate(self.model):
                        with acc.autocast():
                            out = self.model(*batch)  # lm: logits (B, Ks, T, V)
                        objective, nll_sum, count = self.task.loss(out, *batch)
                        # accumulated on the device: no host sync and no collective per micro-batch
                        total += torch.stack([nll_sum.sum().detach(), count.sum().double()])
                        # Crops have equal length, so the mean of micro-batch sum/count (accelerate
                        # divides by grad_accum) is the accumulated batch's sum/count.
                        acc.backward(objective.float())
                total = acc.reduce(total, "sum")  # one collective per optimizer step
                if self.is_ds:
                    gn = acc.clip_grad_norm_(self.model.parameters(), tc.grad_clip)  # already clipped
                else:
                    gn = acc.clip_grad_norm_(
                        self.model.parameters(), tc.grad_clip if tc.grad_clip > 0 else math.inf
                    )
                # DeepSpeed may give a float or None, and handles overflow itself: loss only then
                gn = torch.as_tensor(math.nan if gn is None else gn, dtype=torch.float64, device=acc.device)
                watched = total[:1] if self.is_ds else torch.stack([total[0], gn.double()])
                # The one host sync of a non-logging step: nothing is updated past a non-finite value.
                if not bool(torch.isfinite(watched).all()):
                    self._stop_non_finite(total, gn)
                lr = self.sched.get_last_lr()[0]
                self.opt.step()
                self.sched.step()
                self.opt.zero_grad(set_to_none=True)
                self.step += 1
                self.tokens_seen += tokens_per_step
                window_tokens += tokens_per_step
                window_time += time.perf_counter() - t0
                bar.update(1)
                if self.step % tc.log_every == 0 or self.step == tc.max_steps:
                    loss, grad_norm = torch.stack([total[0] / total[1], gn.double()]).tolist()
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
                new_best = False
                if (tc.eval_every and self.step % tc.eval_every == 0) or self.step == tc.max_steps:
                    metrics = self.evaluate()
                    if metrics is not None:
                        loggers.log(dict(step=self.step, **metrics))
                        self.last_eval = dict(step=self.step, val_nll=metrics["val_nll"],
                                              val_nll_per_codebook=metrics["val_nll_per_codebook"])  # fmt: skip
                        if self.best_val is None or metrics["val_nll"] < self.best_val:
                            self.best_eval = self.last_eval
                        if self.best_val is None or metrics["val_nll"] < self.best_val:
                            self.best_val, self.evals_since_best = metrics["val_nll"], 0
                            self.best_step, new_best = self.step, self.keep_best
                        else:
                            self.evals_since_best += 1
                        if acc.is_main_process:
                            bar.write(f"step {self.step}: val_nll {metrics['val_nll']:.4f}")
                stop = self.stopped_early()  # val NLL is reduced over ranks: all ranks agree
                if self.step % tc.save_every == 0 or self.step == tc.max_steps or stop or new_best:
                    self.save_checkpoint()
                if new_best:
                    self._export(ckpt_io.latest_checkpoint(self.out), "best", self.step)
                if stop:
                    loggers.log(dict(step=self.step, early_stop=True, best_val_nll=self.best_val))
                    if acc.is_main_process:
                        bar.write(
                            f"step {self.step}: early stop, val NLL has not improved on "
                            f"{self.best_val:.4f} for {tc.early_stop_patience} evaluations"
                        )
            final = self.save_final()
        finally:
            bar.close()
            loggers.close()
        if acc.is_main_process:
            print(f"final model: {final}", flush=True)
        return final


def train(cfg: RunConfig, command: str | None = None) -> Path:
    """Train (resuming from the newest checkpoint in ``cfg.out_dir``); returns ``out_dir/final``.
    ``command``: the command line that started it, for the training record and the model card."""
    trainer = Trainer(cfg, command)
    try:
        if trainer.acc.is_main_process:
            out = Path(cfg.out_dir)
            out.mkdir(parents=True, exist_ok=True)
            text = dump_yaml(cfg)
            print("resolved config:\n" + text, flush=True)
            with writing(out / "config.yaml", "the resolved config", "free disk space and rerun"):
                write_atomic(out / "config.yaml", text)
        return trainer.run()
    finally:
        trainer.lock.close()
        trainer.acc.end_training()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
