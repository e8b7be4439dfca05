"""The CLI convention: examples in every --help, exit 2 + one line for usage/input errors, --debug,
exit 1 + traceback for bugs, one error path (``whispergpt.cli.run_command``) for every command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import whispergpt.cli as cli
from whispergpt.errors import CommandFailed, InputError, WhisperGPTError

REPO = Path(__file__).resolve().parents[1]

HELP = [
    pytest.param(argv, id=" ".join(argv[:-1]))
    for argv in [[c, "--help"] for c in cli.COMMANDS]
    + [["codec", "train", "--help"], ["codec", "eval", "--help"], ["data", "demo", "--help"]]  # fmt: skip
]


def error_lines(err: str, cmd: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(f"whispergpt {cmd}: error:")]


@pytest.mark.parametrize("argv", HELP)
def test_every_help_exits_0_with_an_example(argv, capsys):
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "usage:" in out and "example" in out.lower()
    assert f"whispergpt {' '.join(argv[:-1])}" in out.split("example", 1)[1]


def test_top_level_help_and_unknown_command(capsys):
    assert cli.main([]) == 0 and cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in cli.COMMANDS) and "--debug" in out and "Exit codes" in out
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", list(cli.COMMANDS))
def test_bad_flag_exits_2(cmd, capsys):
    argv = [cmd, "--no-such-flag"] if cmd not in ("codec", "data") else [cmd, "no-such-subcommand"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and ("unrecognized arguments" in err or "error:" in err)


def test_input_error_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    assert cli.main(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith(f"whispergpt inspect: error: {tmp_path}: not a prepared dataset")
    # a missing file through OSError: names the file and says what to do
    assert cli.run_command("x", lambda argv: open(tmp_path / "nope.yaml"), []) == 2
    err = capsys.readouterr().err
    assert (
        err.strip()
        == f"whispergpt x: error: No such file or directory ({tmp_path / 'nope.yaml'}): check the path"
    )


def test_whispergpt_error_formats_what_file_hint(capsys):
    def fail(argv):
        raise InputError("codebook_size mismatch", "runs/a/config.json", "retrain or use the matching codec")

    assert cli.run_command("eval", fail, []) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "whispergpt eval: error: codebook_size mismatch (runs/a/config.json): retrain or use the matching codec"
    )
    assert isinstance(InputError("x"), ValueError)  # callers catching ValueError keep working


def test_error_exit_code_is_the_errors_own(capsys):
    class Diverged(WhisperGPTError, RuntimeError):
        exit_code = 3

    def fail(argv):
        raise Diverged("loss is nan at step 7", hint="lower train.lr and rerun to resume")

    assert cli.run_command("train", fail, []) == 3
    assert error_lines(capsys.readouterr().err, "train") == [
        "whispergpt train: error: loss is nan at step 7: lower train.lr and rerun to resume"
    ]
    assert cli.run_command("quickstart", lambda a: (_ for _ in ()).throw(CommandFailed("step", 2)), []) == 2
    assert cli.run_command("compare", lambda a: (_ for _ in ()).throw(CommandFailed("step", -9)), []) == 1


def test_debug_shows_the_traceback_of_input_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    assert cli.main(["--debug", "inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "read_manifest" in err and error_lines(err, "inspect")
    assert cli.DEBUG_ENV not in os.environ  # --debug does not leak past the command
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    assert cli.main(["inspect", str(tmp_path)]) == 2
    assert "Traceback" in capsys.readouterr().err


def _boom(argv):
    raise RuntimeError("boom")


def test_unexpected_error_exits_1_with_traceback(monkeypatch, capsys):
    import whispergpt.cli.prepare as data_cli

    monkeypatch.setattr(data_cli, "summarize", lambda *a: _boom(a))  # a decorated command
    assert cli.main(["inspect", "x"]) == 1
    err = capsys.readouterr().err
    assert (
        "Traceback" in err and "RuntimeError: boom" in err and "whispergpt inspect: unexpected error" in err
    )
    monkeypatch.setattr(data_cli, "main_inspect", _boom)  # a plain main: the dispatcher wraps it
    assert cli.main(["inspect", "x"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_interrupt_exits_130(capsys):
    def stop(argv):
        raise KeyboardInterrupt

    assert cli.run_command("train", stop, []) == 130
    assert "interrupted" in capsys.readouterr().err


def test_truncated_safetensors_names_the_file(tmp_path, tiny_dataset, capsys, monkeypatch):
    from whispergpt.models import WhisperGPT, WhisperGPTConfig

    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    cfg = WhisperGPTConfig(num_codebooks=2, codebook_size=1024, n_mels=80, d_model=32, n_layers=1, n_heads=2,
                           context=16, mel_dim=8, mel_layers=1, mel_heads=2)  # fmt: skip
    WhisperGPT(cfg).save_pretrained(tmp_path / "ck")
    weights = tmp_path / "ck" / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "ck"), "--data", str(tiny_dataset)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert error_lines(err, "eval") == [
        f"whispergpt eval: error: corrupt or truncated safetensors file ({weights}): "
        "Error while deserializing header: incomplete metadata, file not fully covered: "
        "re-download or re-save the checkpoint"
    ]


def test_truncated_shard_ends_train_in_one_line(tmp_path, tiny_dataset):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    codes = data / "shards" / "train-00000" / "codes.npy"
    os.truncate(codes, codes.stat().st_size // 2)
    env = {k: v for k, v in os.environ.items() if k != cli.DEBUG_ENV}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    r = subprocess.run(
        [sys.executable, "-m", "whispergpt", "train", str(REPO / "configs" / "tiny.yaml"), f"data.dir={data}",
         f"out_dir={tmp_path / 'run'}", "logging.wandb=false", "logging.progress=false"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    lines = error_lines(r.stderr, "train")
    assert len(lines) == 1 and str(codes.parent) in lines[0] and "codes.npy is truncated" in lines[0]


def test_scripts_go_through_the_same_wrapper(tmp_path):
    r = subprocess.run(
        [sys.executable, str(REPO / "train.py"), str(tmp_path / "missing.yaml")],
        env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(error_lines(r.stderr, "train")) == 1 and "missing.yaml" in r.stderr
