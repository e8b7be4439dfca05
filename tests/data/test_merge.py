"""Sharded prepare: ``--shard I/N`` parts, ``prepare --merge``, resume of one rank, ``accelerate launch``."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_prepare import by_key, run_prepare, tone, write

import whispergpt.data.prepare as prep
from whispergpt.cli import main as cli_main
from whispergpt.data import PreparedDataset
from whispergpt.data.merge import (
    LAUNCHER_ENV,
    launcher_shard,
    merge_parts,
    part_path,
    parts_finished,
    shard_of,
)
from whispergpt.data.sources import HFOptions
from whispergpt.data.summary import summarize

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # codes are compared bit for bit (see test_prepare.single_thread)
    yield
    torch.set_num_threads(n)


IDS = HFOptions(id_column="id")
# ids (not paths, which vary with the tmp folder) fix which rank takes which file: utt1, utt2, utt5
# and utt7 (train) and the broken one hash to rank 1 of 2, the others to rank 0
MINE = ["utt1", "utt2", "utt5", "utt7"]


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    """A JSON-lines manifest of 8 files (0.3-1.0 s) and a broken one, with ids."""
    root = tmp_path_factory.mktemp("src")
    rows = [dict(id=f"utt{i}", path=str(write(root / f"x{i}.wav", tone(0.3 + 0.1 * i, 120 + 25 * i, seed=i)))) for i in range(8)]  # fmt: skip
    (root / "broken.wav").write_bytes(b"RIFF nothing")
    rows.append(dict(id="broken", path=str(root / "broken.wav")))
    (root / "list.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [k for k in (r["id"] for r in rows) if shard_of(k, 2) == 1] == [*MINE, "broken"]
    return root / "list.jsonl"


@pytest.fixture(scope="module")
def single(tmp_path_factory, src, tiny_codec_dir) -> Path:
    out = tmp_path_factory.mktemp("single") / "ds"
    run_prepare([src], out, tiny_codec_dir, val_fraction=0.25, shard_seconds=1.0, hf=IDS)
    return out


def assert_same_dataset(a: Path, b: Path) -> None:
    """Same files, split, codes and frames (shard boundaries may differ)."""
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert ma["splits"] == mb["splits"] and ma["skipped"] == mb["skipped"]
    ka, kb = by_key(a), by_key(b)
    assert sorted(ka) == sorted(kb)
    for k, (split, codes, mel) in ka.items():
        assert kb[k][0] == split, k
        np.testing.assert_array_equal(kb[k][1], codes)
        np.testing.assert_array_equal(kb[k][2], mel)


def test_two_shards_merged_equal_the_single_process_dataset(tmp_path, src, single, tiny_codec_dir, capsys):
    out = tmp_path / "ds"
    parts = [run_prepare([src], out, tiny_codec_dir, val_fraction=0.25, shard_seconds=1.0, shard=(i, 2), hf=IDS) for i in (0, 1)]  # fmt: skip
    for i, part in enumerate(parts):
        assert {k: v for k, v in part["part"].items() if k != "updated"} == dict(
            index=i, count=2, finished=True
        )
        assert all(f"-s0000{i}of00002-" in sh["name"] for sh in part["shards"])
    assert not (out / "manifest.json").exists()  # not a dataset until merged
    assert parts_finished(out, 2) and not parts_finished(out, 3)
    assert not parts_finished(out, 2, since=time.time() + 1)  # parts left by an earlier launch do not count
    with pytest.raises(ValueError, match="sharded prepare, not yet merged.*prepare --merge"):
        PreparedDataset(out)
    assert cli_main(["prepare", "--merge", str(out)]) == 0
    assert "merged 2 parts" in capsys.readouterr().out
    assert "(merged from 2 parts)" in summarize(out)
    assert_same_dataset(single, out)
    assert (
        len(PreparedDataset(out).files)
        == json.loads((single / "manifest.json").read_text())["splits"]["train"]["files"]
    )


def test_merge_refuses_missing_unfinished_and_disagreeing_parts(tmp_path, src, tiny_codec_dir, capsys):
    out = tmp_path / "ds"
    assert cli_main(["prepare", "--merge", str(out)]) == 2
    run_prepare([src], out, tiny_codec_dir, val_fraction=0.25, shard=(0, 2), hf=IDS)
    assert cli_main(["prepare", "--merge", str(out)]) == 2
    assert "parts [1] of 2 are missing" in capsys.readouterr().err
    run_prepare([src], out, tiny_codec_dir, val_fraction=0.25, shard=(1, 2), hf=IDS)
    p1 = part_path(out, 1, 2)
    good = json.loads(p1.read_text())
    p1.write_text(json.dumps(dict(good, part=dict(good["part"], finished=False))))  # a rank still writing
    assert cli_main(["prepare", "--merge", str(out)]) == 2
    assert "part 1 of 2 is unfinished" in capsys.readouterr().err
    p1.write_text(json.dumps(dict(good, n_mels=32)))
    assert cli_main(["prepare", "--merge", str(out)]) == 2
    err = capsys.readouterr().err
    assert "parts disagree on n_mels: 16 in part-00000-of-00002.json, 32 in part-00001-of-00002.json" in err
    p1.write_text(json.dumps(good))
    assert merge_parts(out)["merged_parts"] == 2


def test_killed_rank_resumes_only_its_own_work(tmp_path, src, single, tiny_codec_dir, monkeypatch):
    out = tmp_path / "ds"
    run_prepare([src], out, tiny_codec_dir, val_fraction=0.25, shard_seconds=0.5, shard=(0, 2), hf=IDS)
    saves = []
    real_save = np.save

    def dying_save(path, arr):  # rank 1 dies in its second shard
        saves.append(path)
        real_save(path, arr)
        if len(saves) == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(prep.np, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        run_prepare([src], out, tiny_codec_dir, val_fraction=0.25, shard_seconds=0.5, shard=(1, 2), hf=IDS)
    monkeypatch.undo()
    assert json.loads(part_path(out, 1, 2).read_text())["part"]["finished"] is False
    before0 = part_path(out, 0, 2).read_text()
    shards0 = {d.name: d.stat().st_mtime_ns for d in (out / "shards").iterdir() if "-s00000of" in d.name}
    done = {e["path"] for sh in json.loads(part_path(out, 1, 2).read_text())["shards"]
            for e in json.loads((out / "shards" / sh["name"] / "index.json").read_text())}  # fmt: skip
    counted = []
    real = prep.encode_batch
    monkeypatch.setattr(prep, "encode_batch", lambda c, w, **k: counted.extend(w) or real(c, w, **k))
    run_prepare([src], out, tiny_codec_dir, val_fraction=0.25, shard_seconds=0.5, shard=(1, 2), hf=IDS)
    assert 0 < len(done) < len(MINE) and len(counted) == len(MINE) - len(
        done
    )  # only rank 1's remaining files
    assert part_path(out, 0, 2).read_text() == before0
    assert shards0 == {
        d.name: d.stat().st_mtime_ns for d in (out / "shards").iterdir() if "-s00000of" in d.name
    }
    merge_parts(out)
    assert_same_dataset(single, out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(src: Path, out: Path, codec: Path, shard_seconds: float, script: list[str] | None = None):
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        str(REPO / "configs" / "accelerate" / "ddp_cpu.yaml"), "--num_processes", "2",
        "--main_process_port", str(_free_port()), *(script or ["-m", "whispergpt"]), "prepare", str(src),
        "--out", str(out), "--codec", str(codec), "--bandwidth", "1.5", "--n-mels", "16", "--val-fraction",
        "0.25", "--shard-seconds", str(shard_seconds), "--device", "cpu", "--no-progress", "--id-column", "id",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_accelerate_launch_two_processes_equals_single(tmp_path, src, single, tiny_codec_dir):
    """Rank and world come from the launcher (no --shard); rank 0 merges at the end."""
    run = launch(src, tmp_path / "ds", tiny_codec_dir, 1.0)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "rank 0 merged 2 parts" in run.stdout
    assert_same_dataset(single, tmp_path / "ds")


@pytest.mark.slow
def test_launched_rank_killed_then_relaunched_resumes_only_its_work(tmp_path, src, single, tiny_codec_dir):
    out = tmp_path / "ds"
    run = launch(src, out, tiny_codec_dir, 0.5, script=[str(Path(__file__).with_name("prepare_fault.py"))])
    assert run.returncode != 0  # rank 1 was killed in its second shard; the launcher stopped rank 0
    part0, part1 = (json.loads(part_path(out, i, 2).read_text()) for i in (0, 1))
    assert part0["part"]["finished"] and not part1["part"]["finished"] and part1["shards"]
    assert any(d.name.startswith(".tmp-") for d in (out / "shards").iterdir())  # the killed write
    before = {d.name: d.stat().st_mtime_ns for d in (out / "shards").iterdir() if "-s00000of" in d.name}
    run = launch(src, out, tiny_codec_dir, 0.5)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    n0 = sum(sh["files"] for sh in part0["shards"])
    n1 = sum(sh["files"] for sh in part1["shards"])
    assert f"({n0} already done, 0 to encode)" in run.stdout  # rank 0: nothing
    assert re.search(rf"\({n1} already done, [1-9]\d* to encode\) -> \S+ \(shard 1/2\)", run.stdout)
    assert before == {
        d.name: d.stat().st_mtime_ns for d in (out / "shards").iterdir() if "-s00000of" in d.name
    }
    assert not any(d.name.startswith(".tmp-") for d in (out / "shards").iterdir())
    assert_same_dataset(single, out)


def test_shard_and_merge_usage_errors_exit_2(tmp_path, src, tiny_codec_dir, capsys):
    base = ["prepare", str(src), "--out", str(tmp_path / "ds"), "--codec", str(tiny_codec_dir)]
    assert cli_main([*base, "--shard", "2/2"]) == 2
    assert "need 0 <= I < N" in capsys.readouterr().err
    assert cli_main([*base, "--shard", "one"]) == 2
    assert "--shard must be I/N" in capsys.readouterr().err
    assert cli_main([*base, "--merge", str(tmp_path / "ds")]) == 2
    assert "--merge DIR takes no SRC" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()


def test_rank_and_world_come_from_the_launcher_env(monkeypatch):
    for rank, size in LAUNCHER_ENV:
        monkeypatch.delenv(rank, raising=False)
        monkeypatch.delenv(size, raising=False)
    assert launcher_shard() is None
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "3")
    assert launcher_shard() == (3, 4)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert launcher_shard() == (1, 2)
