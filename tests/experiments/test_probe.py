"""``whispergpt probe``: seeded stratified splits, the MIDI writer, a tiny synthetic task end to end
(table, JSON, PNG), tasks with a missing tool listed and skipped; rendering of the real tasks (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from whispergpt.audio import SAMPLE_RATE
from whispergpt.cli.probe import main
from whispergpt.experiments import probe_tasks
from whispergpt.experiments.demo import system
from whispergpt.experiments.probe import REPRESENTATIONS, linear_probe, run_probe
from whispergpt.experiments.probe_tasks import ProbeTask, _vlq, load_task, write_midi


def _task(name="t", per_class=(10, 7, 4)):
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(per_class)])
    return ProbeTask(name, [f"c{c}" for c in range(len(per_class))], [torch.zeros(1)] * len(labels), labels)


def test_split_is_stratified_and_seeded_per_task():
    t = _task()
    train, test = t.split(0)
    assert set(train).isdisjoint(test) and len(train) + len(test) == 21
    assert np.bincount(t.labels[test]).tolist() == [3, 2, 1]  # 30% of each class, at least one
    assert all(a.tolist() == b.tolist() for a, b in zip(t.split(0), t.split(0)))
    assert t.split(0)[1].tolist() != t.split(1)[1].tolist()
    assert _task("other").split(0)[1].tolist() != test.tolist()


def test_midi_writer():
    assert [_vlq(n).hex() for n in (0, 127, 128, 8192)] == ["00", "7f", "8100", "c000"]


def test_midi_file_layout(tmp_path):
    write_midi(tmp_path / "a.mid", [(0.5, bytes([0x90, 60, 100])), (0.0, bytes([0xC0, 40]))])
    data = (tmp_path / "a.mid").read_bytes()
    assert data[:4] == b"MThd" and data[14:18] == b"MTrk"
    track = data[22:]
    assert track == bytes([0x00, 0xC0, 40]) + _vlq(480) + bytes([0x90, 60, 100]) + b"\x00\xff\x2f\x00"


def test_linear_probe_separates_separable_data():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    x = rng.standard_normal((60, 5)) + 3 * np.eye(3, 5)[y]
    train, test = _task(per_class=(20, 20, 20)).split(0)
    assert linear_probe(x, y, train, test, seed=0) >= 0.9
    assert linear_probe(rng.standard_normal((60, 5)), y, train, test, seed=0) < 0.7


def _toy_argv(ckpt, tmp_path, *extra):
    return [str(ckpt), "--tasks", "toy", "--seeds", "0", "1", "--clips-per-class", "8", "--out",
            str(tmp_path / "probe"), "--cache", str(tmp_path / "cache"), "--device", "cpu", *extra]  # fmt: skip


def test_toy_task_end_to_end(tmp_path, mae_dir, capsys):
    assert main(_toy_argv(mae_dir, tmp_path, "--representations", "encodecmae,random-mae,log-mel")) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "probe"
    report = json.loads((out / "probe.json").read_text())
    assert (out / "probe.png").stat().st_size > 1000 and (out / "probe.md").read_text() in printed
    toy = report["tasks"]["toy"]
    assert report["seeds"] == [0, 1] and report["layer"] == 2 and toy["clips"] == 16
    assert list(toy["results"]) == ["encodecmae", "random-mae", "log-mel"]
    assert all(len(r["accuracy"]) == 2 for r in toy["results"].values())
    assert toy["results"]["log-mel"]["mean"] == 1.0  # low- vs high-pass noise: separable
    assert "| log-mel | 100.0 ± 0.0 |" in printed and "| chance | 50.0 |" in printed
    # the task audio is cached: a second build reads it back
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 1 and (cached[0] / "clips.safetensors").is_file()
    again = load_task("toy", 8, cache=tmp_path / "cache")
    assert again.labels.tolist() == [0] * 8 + [1] * 8 and again.clips[0].shape == (int(0.6 * SAMPLE_RATE),)
    # so are the baseline embeddings, and the next run reads them (a blanked copy scores chance)
    emb = cached[0] / "emb-log-mel-80.npy"
    assert np.load(emb).shape == (16, 80)
    np.save(emb, np.zeros((16, 80)))
    report = run_probe(mae_dir, ["toy"], seeds=[0], per_class=8, cache=tmp_path / "cache", device="cpu",
                       representations=["log-mel"], log=lambda m: None)  # fmt: skip
    assert report["tasks"]["toy"]["results"]["log-mel"]["mean"] <= 0.6


@pytest.mark.slow
def test_toy_task_with_every_representation(tmp_path, mae_latent_dir, tiny_codec_dir, capsys):
    # a latent MAE: its codec serves the latent baseline too
    assert main(_toy_argv(mae_latent_dir, tmp_path)) == 0
    report = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert report["mae_input"] == "latent" and report["codec"] == str(tiny_codec_dir)
    assert list(report["tasks"]["toy"]["results"]) == list(REPRESENTATIONS)
    assert "| codec-latent |" in capsys.readouterr().out


def test_missing_tool_skips_the_task_with_the_install_command(tmp_path, mae_dir, monkeypatch):
    monkeypatch.setattr(system, "which", lambda name: None)
    monkeypatch.setattr(system, "data_roots", lambda cache: [tmp_path / "empty"])
    report = run_probe(mae_dir, ["toy", "pitch"], seeds=[0], per_class=4, cache=tmp_path / "c",
                       device="cpu", representations=["log-mel"], log=lambda m: None)  # fmt: skip
    assert list(report["tasks"]) == ["toy"]
    assert "fluidsynth" in report["not_run"]["pitch"] and "apt-get install -y" in report["not_run"]["pitch"]
    with pytest.raises(ValueError, match="no probe task could run"):
        run_probe(mae_dir, ["pitch"], seeds=[0], cache=tmp_path / "c", device="cpu", log=lambda m: None)
    with pytest.raises(ValueError, match="unknown probe task 'nope'"):
        run_probe(mae_dir, ["nope"], seeds=[0], device="cpu")
    with pytest.raises(ValueError, match="unknown representations"):
        run_probe(mae_dir, ["toy"], seeds=[0], device="cpu", representations=["mfcc"])


def test_bad_checkpoint_or_layer_exits_2(tmp_path, mae_dir, tiny_codec_dir, capsys):
    assert main([str(tiny_codec_dir), "--tasks", "toy", "--out", str(tmp_path)]) == 2
    assert "not an EnCodecMAE checkpoint" in capsys.readouterr().err
    assert main([str(mae_dir), "--tasks", "toy", "--layer", "9", "--out", str(tmp_path)]) == 2
    assert "expected 1..2" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(system.which("fluidsynth") is None, reason="needs fluidsynth")
def test_rendered_tasks_hold_audible_clips_of_the_stated_length(tmp_path):
    if probe_tasks.soundfont(system.default_cache_dir()) is None:
        pytest.skip("needs a GM soundfont")
    pitch = load_task("pitch", 2, cache=tmp_path)
    assert (
        len(pitch.clips) == 24 and pitch.classes[0] == "C" and pitch.labels.tolist() == sorted(pitch.labels)
    )
    inst = load_task("instrument", 2, cache=tmp_path)
    assert inst.classes == ["piano", "organ", "guitar", "bass", "strings", "brass", "reed", "pipe"]
    for task, seconds in ((pitch, 1.5), (inst, 3.0)):
        for clip in task.clips:
            assert clip.shape == (int(seconds * SAMPLE_RATE),) and clip.abs().max() > 1e-3
