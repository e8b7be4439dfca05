"""System side of ``whispergpt data demo``: finding tools, modules and Debian data files, the
install commands, and ``--install`` (apt-get download + dpkg -x into the cache, no root).

``which``, ``find_module`` and ``data_roots`` are looked up through this module at call time, so
tests patch them here (``monkeypatch.setattr(demo.system, "which", ...)``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "whispergpt"


# ----------------------------------------------------------------------------------------------
# requirements and install commands


@dataclass
class Requirement:
    """One thing a source needs. ``kind``: ``binary`` (on PATH), ``module`` (python import),
    ``apt-data`` (files from a Debian package; also found in the cache after ``--install``)."""

    name: str  # what is looked for: binary name, module name, or a description of the files
    kind: str
    package: str  # the apt or pip package that provides it
    found: str | None = None  # where it was found (path/version) or None

    @property
    def install_command(self) -> str:
        if self.kind == "module":
            return f"pip install {self.package}"
        return f"sudo apt-get install -y {self.package}"


def which(binary: str) -> str | None:
    """``shutil.which`` (a module-level hook so tests can pretend a tool is missing)."""
    return shutil.which(binary)


def find_module(name: str) -> str | None:
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return None if spec is None else (spec.origin or name)


def data_roots(cache: Path) -> list[Path]:
    """Filesystem roots searched for Debian data files: ``/`` and the ``--install`` unpack root."""
    return [Path("/"), cache / "root"]


def find_data(relpaths: Sequence[str], cache: Path) -> Path | None:
    """The first of ``relpaths`` (relative to a data root) that exists."""
    for rel in relpaths:  # the order of relpaths is the preference (FluidR3 before TimGM6mb)
        for root in data_roots(cache):
            p = root / rel
            if p.exists():
                return p
    return None


def install_hint(missing: Sequence[Requirement]) -> str:
    """The exact command(s) that install ``missing``: one apt line and/or one pip line."""
    apt = sorted({r.package for r in missing if r.kind != "module"})
    pip = sorted({r.package for r in missing if r.kind == "module"})
    cmds = []
    if apt:
        cmds.append("sudo apt-get install -y " + " ".join(apt))
    if pip:
        cmds.append("pip install " + " ".join(pip))
    return " && ".join(cmds)


def run_tool(cmd: list[str], stdin: str | None = None, timeout: float = 300) -> None:
    try:
        subprocess.run(cmd, input=stdin, text=True, check=True, capture_output=True, timeout=timeout)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(
            f"{' '.join(cmd[:3])} ... failed ({e.returncode}): {e.stderr.strip()[-300:]}"
        ) from e


# ----------------------------------------------------------------------------------------------
# --install: apt-get download + dpkg -x into the cache (no root), apt-get install for tools


def _apt_download_extract(package: str, cache: Path, members: Sequence[str] = ()) -> float:
    """Fetch ``package``'s .deb into ``cache/debs`` (kept) and unpack it into ``cache/root``.
    ``members``: tar wildcards to extract (default: everything). Returns the .deb size in MB."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    deb = next(iter(sorted(debs.glob(f"{package}_*.deb"))), None)
    if deb is None:
        r = subprocess.run(["apt-get", "download", package], cwd=debs, capture_output=True, text=True)
        if r.returncode != 0 and os.geteuid() == 0:  # a fresh image has no package lists yet
            subprocess.run(["apt-get", "update"], capture_output=True, text=True)
            r = subprocess.run(["apt-get", "download", package], cwd=debs, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(
                f"apt-get download {package} failed: {r.stderr.strip()[-300:]} "
                f"(run `sudo apt-get update` first, or `sudo apt-get install -y {package}`)"
            )
        deb = next(iter(sorted(debs.glob(f"{package}_*.deb"))))
    root = cache / "root"
    root.mkdir(parents=True, exist_ok=True)
    tar = ["tar", "-x", "-C", str(root)] + (["--wildcards", *members] if members else [])
    p1 = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    r = subprocess.run(tar, stdin=p1.stdout, capture_output=True, text=True)
    p1.stdout.close()
    if p1.wait() != 0 or r.returncode != 0:
        raise RuntimeError(f"unpacking {deb} failed: {r.stderr.strip()[-300:]}")
    return deb.stat().st_size / 1e6


def install(missing: Sequence[Requirement], cache: Path, log=print) -> list[Requirement]:
    """Install what ``missing`` names; returns what could not be installed (with the reason logged).
    Data packages are unpacked into the cache (no root); tools need root or passwordless sudo."""
    failed = []
    tools = sorted({r.package for r in missing if r.kind == "binary"})
    if tools:
        prefix = [] if os.geteuid() == 0 else (["sudo", "-n"] if which("sudo") else None)
        if prefix is None or (
            prefix and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode
        ):
            log(
                f"  cannot install {' '.join(tools)} without root: run `sudo apt-get install -y {' '.join(tools)}`"
            )
            failed += [r for r in missing if r.kind == "binary"]
        else:
            t = time.time()
            cmd = prefix + ["apt-get", "install", "-y", "--no-install-recommends", *tools]
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            r = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if r.returncode != 0:  # maybe no package lists yet
                subprocess.run(prefix + ["apt-get", "update"], capture_output=True, text=True)
                r = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if r.returncode != 0:
                log(f"  {' '.join(cmd)} failed: {r.stderr.strip()[-300:]}")
                failed += [r_ for r_ in missing if r_.kind == "binary"]
            else:
                log(f"  apt-get install {' '.join(tools)}: {time.time() - t:.1f} s")
    for req in missing:
        if req.kind == "module":
            t = time.time()
            r = subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", f"{req.package}>=9"],
                capture_output=True,
                text=True,
            )
            if r.returncode != 0:
                log(f"  pip install {req.package} failed: {r.stderr.strip()[-300:]}")
                failed.append(req)
            else:
                import importlib

                importlib.invalidate_caches()
                log(f"  pip install {req.package}: {time.time() - t:.1f} s")
        elif req.kind == "apt-data":
            # tuxpaint: only the spoken descriptions and their transcripts, not 200 MB of images
            members = ["*_desc*.ogg", "*.txt"] if req.package == "tuxpaint-stamps-default" else []
            t = time.time()
            try:
                mb = _apt_download_extract(req.package, cache, members)
                log(
                    f"  {req.package}: {mb:.0f} MB .deb, fetched+unpacked into {cache / 'root'} in {time.time() - t:.1f} s"
                )
            except (RuntimeError, OSError) as e:
                log(f"  {e}")
                failed.append(req)
    return failed
