"""Process-level set-up shared by every entry point: device, precision, accelerator, atomic
writes, seeding and the reproducibility condition. Written once here; trainers, prepare and the tools import it."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import inspect
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch

from whispergpt.errors import FolderInUse, WhisperGPTError

Precision = Literal["bf16", "no"]
F = TypeVar("F", bound=Callable[..., Any])


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None) -> CUDA when available, else CPU; anything else is checked.

    ValueError for a string torch cannot parse and for a CUDA device on a machine without CUDA."""
    if name is None or str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device: not a device: {name!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return dev


def choose_precision(requested: str, device: torch.device | None = None) -> Precision:
    """``auto``: bf16 autocast on a bf16-capable CUDA device, else fp32 (``"no"``, accelerate's
    spelling); ``bf16`` / ``fp32`` are taken as asked. ValueError for anything else."""
    if requested not in ("auto", "fp32", "bf16", "no"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {requested!r}")
    if requested == "bf16":
        return "bf16"
    if requested == "auto":
        cuda = torch.cuda.is_available() if device is None else device.type == "cuda"
        if cuda and torch.cuda.is_bf16_supported():
            return "bf16"
    return "no"


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when ``precision`` is bf16, else a no-op context."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def deepspeed_requested() -> bool:
    """True under ``accelerate launch`` with a DeepSpeed config."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def make_accelerator(grad_accum: int = 1, precision: Precision = "no", **kwargs: Any):
    """An ``accelerate.Accelerator`` that is right on CPU and GPU, one or many processes.

    Multi-process without CUDA: gloo, and ``cpu=True`` so plain DDP becomes MULTI_CPU instead of
    N independent processes (DeepSpeed picks its CPU accelerator itself, so not then). Raises
    when several processes end up with no distributed backend (ranks would silently diverge)."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    cuda = torch.cuda.is_available()
    handlers = list(kwargs.pop("kwargs_handlers", []))
    # only when multi-process: a backend makes accelerate expect an initialised process group
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not cuda:
        handlers.append(InitProcessGroupKwargs(backend="gloo", timeout=timedelta(minutes=30)))
    acc = Accelerator(
        cpu=not cuda and not deepspeed_requested(),
        gradient_accumulation_steps=grad_accum,
        mixed_precision=precision,
        kwargs_handlers=handlers,
        **kwargs,
    )
    if acc.num_processes > 1 and acc.distributed_type.value == "NO":
        raise RuntimeError("several processes but no distributed backend: ranks would run unsynchronised")
    return acc


# --- atomic files --------------------------------------------------------------------------------


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """A temp path beside ``path`` to write to (any writer: text, audio, a PNG); renamed over
    ``path`` when the block succeeds, removed when it raises, so readers see the old file or the
    new one, never a torn one. The temp name keeps the suffix (writers pick the format from it)
    and carries the pid (no clashes)."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


RERUN_HINT = "free some space (or move the folder to a disk with room) and re-run the same command"


def write_atomic(path: str | os.PathLike, data: str | bytes, what: str | None = None) -> Path:
    """Write ``data`` through ``replacing``, fsynced before the rename. With ``what`` (e.g. "the
    report"), a failed write is the one-line error of ``writing`` instead of the library's."""
    with writing(path, what, RERUN_HINT) if what else contextlib.nullcontext():
        with replacing(path) as tmp, open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


# programming errors stay tracebacks; anything else a writer raises is a failed write
_BUGS = (TypeError, AttributeError, NameError, KeyError, IndexError, AssertionError, ImportError)


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free space on the filesystem of ``path`` (its nearest existing ancestor); None if unknown."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


@contextlib.contextmanager
def writing(
    path: str | os.PathLike, what: str, hint: str, cleanup: str | os.PathLike | None = None
) -> Iterator[None]:
    """Turn a failed write in the block into one ``WhisperGPTError`` naming ``path`` and the free
    space on its disk, whatever the library raised: Python's ``OSError(ENOSPC)``, torch's zip
    writer's ``RuntimeError`` ("unexpected pos ..."), safetensors' own error. ``cleanup`` (a temp
    folder) is removed first, so that what was there before stays the last good state."""
    try:
        yield
    except (WhisperGPTError, *_BUGS):
        raise
    except Exception as e:
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)
        free = free_bytes(path)
        if isinstance(e, OSError) and e.strerror:
            reason = e.strerror
        elif free is not None and free < 1 << 20:
            reason = "the disk is full"
        else:
            reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}"
        room = "unknown space" if free is None else f"{free / 2**20:.1f} MiB"
        raise WhisperGPTError(f"could not write {what} ({reason}; {room} free there)", path, hint) from e


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    return write_atomic(path, json.dumps(obj, indent=indent) + "\n")


def move_aside(path: str | os.PathLike, prefix: str = ".bad-") -> Path:
    """Rename a broken ``path`` to ``<prefix><name>[-i]`` beside it (hidden from listings that skip
    dot names): kept for inspection, never deleted. Returns the new path."""
    path = Path(path)
    target, i = path.parent / f"{prefix}{path.name}", 1
    while target.exists():
        target, i = path.parent / f"{prefix}{path.name}-{i}", i + 1
    os.replace(path, target)
    return target


# --- one writer per output folder ----------------------------------------------------------------

LOCK_NAME = ".whispergpt.lock"
# filesystems without flock (some network mounts) say so with one of these
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


@contextlib.contextmanager
def folder_lock(directory: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``directory/.whispergpt.lock`` for the block: a second
    process that asks for it gets ``FolderInUse`` naming the holder (pid, host, start time). The
    OS drops the lock when its process dies, however it dies, so a lock is never stale; the file
    stays (removing it would race with a waiter that opened it). Where the filesystem has no
    locks the block runs unlocked, with a warning."""
    directory = Path(directory)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    ok = False
    try:
        if _lock(fd, path, directory):
            holder = dict(command=command, pid=os.getpid(), host=socket.gethostname(),
                          started=time.strftime("%Y-%m-%d %H:%M:%S %Z"))  # fmt: skip
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        yield directory
        ok = True
    finally:
        try:
            if not ok and created and [p.name for p in directory.iterdir()] == [LOCK_NAME]:
                path.unlink()  # a command that failed before writing anything leaves no folder behind
                directory.rmdir()
        except OSError:  # the folder went away under us (a temp dir removed first): nothing to tidy
            pass
        finally:
            os.close(fd)  # releases the lock


def _lock(fd: int, path: Path, directory: Path) -> bool:
    """Take the lock on ``fd``: True, or False with a warning where the filesystem has no locks;
    ``FolderInUse`` naming the holder when another process has it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        raise FolderInUse(
            f"{directory} is in use by {_holder(path)}",
            None,
            "wait for it to finish, or write into another folder",
        ) from None
    except OSError as e:
        if e.errno not in _NO_LOCKS:
            raise
        warnings.warn(f"cannot lock {directory} ({e.strerror}): a second writer into it would not be detected",
                      RuntimeWarning, stacklevel=4)  # fmt: skip
        return False


def holds_folder(
    command: str, param: str = "out", where: Callable[[dict], Any] | None = None
) -> Callable[[F], F]:
    """Decorate a single-process command's library function: it runs under ``folder_lock`` on
    its argument ``param`` (the output folder), or on ``where(arguments)`` when given."""

    def wrap(fn: F) -> F:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args: Any, **kwargs: Any) -> Any:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            folder = where(bound.arguments) if where else bound.arguments[param]
            with folder_lock(folder, command):
                return fn(*args, **kwargs)

        return locked  # type: ignore[return-value]

    return wrap


def main_process_lock(acc: Any, directory: str | os.PathLike, command: str) -> contextlib.ExitStack:
    """``folder_lock`` for a launched job: the main process takes it, the other ranks wait for its
    go-ahead and fail with the same ``FolderInUse`` when it has none. Close the stack to release."""
    from accelerate.utils import broadcast_object_list

    stack, failed = contextlib.ExitStack(), [None]
    if acc.is_main_process:
        try:
            stack.enter_context(folder_lock(directory, command))
        except FolderInUse as e:
            failed = [e.message()]
    if acc.num_processes > 1:
        broadcast_object_list(failed, from_process=0)
    if failed[0] is not None:
        stack.close()
        if acc.num_processes > 1 and torch.distributed.is_initialized():
            # every rank leaves now: a gloo group left open while its peer exits can abort the
            # process (SIGABRT) after the error line, instead of the clean exit 2
            torch.distributed.destroy_process_group()
        raise FolderInUse(failed[0])
    return stack


def _holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text())
        return f"whispergpt {h['command']} (pid {h['pid']} on {h['host']}, since {h['started']})"
    except (OSError, ValueError, KeyError, TypeError):  # the holder has not written it yet
        return "another process"


# --- child processes -------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


@functools.cache
def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def run_child(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, **kwargs)`` for a step of a pipeline (quickstart, compare): the child
    gets SIGTERM when this process dies, however it dies (Linux). Otherwise a killed pipeline
    leaves its running step behind, still holding that step's folder lock, and the rerun fails on
    it. SIGTERM, not SIGKILL, so that a launcher child (``accelerate launch``) stops its ranks."""
    prctl, parent = _prctl(), os.getpid()

    def die_with_parent() -> None:  # in the child, between fork and exec
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return subprocess.run(cmd, preexec_fn=die_with_parent if prctl else None, **kwargs)


# --- seeding and reproducibility -----------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def reproducibility_note() -> str:
    """The condition for bit-exact CPU reruns and resumes, with this process's value.

    Measured on the tiny recipe (torch 2.13, CPU): two runs, or a run killed and resumed, at the
    same thread count give identical weights; 1 vs 2 threads differ from the first steps (~1e-6)
    because the intra-op kernels split their reductions by thread count.
    ``torch.use_deterministic_algorithms(True)`` changes neither result: it does not pin the
    thread partitioning, so there is no switch that makes runs exact across thread counts."""
    n = torch.get_num_threads()
    return f"bit-exact reruns/resumes need the same thread count: {n} thread{'s' * (n != 1)}"
