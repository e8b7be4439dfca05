"""Recipes: extends merging, by-name lookup from any directory, key checks, old recipes, the wheel."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from whispergpt.config import (
    DATA_SHAPE_KEYS,
    SEMANTIC_SHAPE_KEYS,
    TASK_SECTIONS,
    ConfigError,
    RunConfig,
    load_recipe,
    load_run_config,
)
from whispergpt.config_io import load_config, recipe_path, recipes_dir

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ["tiny", "quickstart", "paper_gpt_s", "paper_gpt_l", "paper_hybrid", "gpt_100m"]

# configs/tiny.yaml as it was before recipes could extend base.yaml: every key spelled out, K/V/M
# pinned to the tiny codec. Such recipes must keep loading, to the same config.
OLD_TINY = """
model:
  num_codebooks: 2
  codebook_size: 1024
  n_mels: 80
  pattern: delay
  fusion: concat
  d_model: 64
  n_layers: 2
  n_heads: 4
  mlp_ratio: 4.0
  dropout: 0.0
  context: 64
  mel_dim: 16
  mel_layers: 1
  mel_heads: 2
  pos_emb: rope
  tie_weights: false
  bias: true
out_dir: runs/tiny
data:
  dir: data/demo/prepared
  frames: null  # = model.context
  num_workers: null  # the default became device-dependent (issue 22)
train:
  max_steps: 20
  batch_size: 4
  grad_accum: 1
  lr: 3.0e-3
  min_lr: 3.0e-4
  warmup_steps: 5
  weight_decay: 0.1
  betas: [0.9, 0.95]
  grad_clip: 1.0
  save_every: 10
  eval_every: 10
  eval_batches: 4
  keep_last: 2
  seed: 0
  log_every: 1
  precision: auto
  compile: false
logging:
  wandb: true
  wandb_project: whispergpt
  tensorboard: false
  progress: true
"""


@dataclasses.dataclass
class Inner:
    a: int = 1
    b: list[int] = dataclasses.field(default_factory=lambda: [1])
    c: str | None = "x"


@dataclasses.dataclass
class Outer:
    name: str = "n"
    inner: Inner = dataclasses.field(default_factory=Inner)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_extends_deep_merges_child_wins(tmp_path):
    write(tmp_path / "grand.yaml", "name: grand\ninner: {a: 5, b: [1, 2], c: y}\n")
    write(tmp_path / "sub" / "parent.yaml", "extends: ../grand.yaml\ninner: {a: 7}\n")
    write(tmp_path / "sub" / "other.yaml", "name: other\n")
    child = write(
        tmp_path / "sub" / "child.yaml", "extends: [parent.yaml, other.yaml]\ninner: {b: [3], c: null}\n"
    )
    # later parents win over earlier ones, the child over all; lists and nulls replace
    assert load_recipe(child) == {"name": "other", "inner": {"a": 7, "b": [3], "c": None}}
    cfg = load_config(Outer, child, ["inner.a=9"])
    assert cfg == Outer(name="other", inner=Inner(a=9, b=[3], c=None))


def test_extends_a_shipped_recipe_by_name(tmp_path):
    mine = write(tmp_path / "mine.yaml", "extends: tiny.yaml\nmodel: {d_model: 128}\n")
    data = load_recipe(mine)
    tiny = load_recipe("tiny")
    assert data["model"]["d_model"] == 128 and data["train"] == tiny["train"]
    assert "extends" not in data and {k: v for k, v in data["model"].items() if k != "d_model"} == {
        k: v for k, v in tiny["model"].items() if k != "d_model"
    }


def test_extends_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", "extends: b.yaml\nname: a\n")
    write(tmp_path / "b.yaml", "extends: c.yaml\n")
    write(tmp_path / "c.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")
    write(tmp_path / "self.yaml", "extends: self.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_recipe(tmp_path / "self.yaml")
    write(tmp_path / "bad.yaml", "extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load_recipe(tmp_path / "bad.yaml")


def test_unknown_keys_name_the_valid_ones(tmp_path):
    p = write(tmp_path / "r.yaml", "extends: tiny.yaml\ntrain: {max_stepz: 3}\n")
    # reported before the (missing) dataset is opened
    with pytest.raises(ConfigError, match=r"train\.max_stepz.*valid keys under train: .*'max_steps'"):
        load_run_config(p, [f"data.dir={tmp_path / 'none'}"])
    with pytest.raises(ConfigError, match=r"model\.widht.*'d_model'"):
        load_run_config("tiny.yaml", ["model.widht=3"])
    with pytest.raises(ConfigError, match=r"inner\.z.*valid keys under inner: \['a', 'b', 'c'\]"):
        load_config(Outer, None, ["inner.z=1"])
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(Outer, None, ["inner.a=x"])


def test_recipes_found_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = recipes_dir() / "tiny.yaml"
    assert shipped.is_file()
    for name in ("tiny.yaml", "tiny", "configs/tiny.yaml"):
        assert recipe_path(name) == shipped
    assert recipe_path("compare/tiny/paper_hybrid.yaml") == recipes_dir() / "compare/tiny/paper_hybrid.yaml"
    from whispergpt.experiments import compare, quickstart

    assert quickstart.default_recipe() == recipes_dir() / "quickstart.yaml"
    assert compare.scales() == ["paper", "tiny"]
    local = write(tmp_path / "tiny.yaml", "out_dir: mine\n")  # a path that exists wins
    assert recipe_path("tiny.yaml") == Path("tiny.yaml") and load_recipe("tiny.yaml") == {"out_dir": "mine"}
    local.unlink()
    with pytest.raises(ConfigError, match=r"not found.*'tiny.yaml'"):
        recipe_path("tinny.yaml")


def test_base_yaml_is_the_dataclass_defaults():
    defaults = dataclasses.asdict(RunConfig())  # every task's section
    for section in TASK_SECTIONS.values():
        for key in (*DATA_SHAPE_KEYS, *SEMANTIC_SHAPE_KEYS):  # null in base.yaml: from the dataset
            if key in defaults[section]:
                defaults[section][key] = None
    assert load_recipe("base.yaml") == defaults


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipes_extend_and_take_the_shape_from_the_data(name):
    raw = yaml.safe_load(recipe_path(name).read_text())
    assert "extends" in raw
    for key in DATA_SHAPE_KEYS:
        assert key not in raw.get("model", {})
        assert load_recipe(name)["model"][key] is None


def test_old_full_recipe_loads_to_the_same_config(tiny_dataset, tmp_path):
    old = write(tmp_path / "old_tiny.yaml", OLD_TINY)
    overrides = [f"data.dir={tiny_dataset}", "train.compile=false"]  # its default became null (auto)
    assert load_run_config(old, overrides) == load_run_config(recipe_path("tiny.yaml"), overrides)


@pytest.mark.slow
def test_wheel_ships_recipes_and_finds_them_by_name(tmp_path, tiny_dataset):
    # built from a copy: an in-tree build/ folder would be reused (and left behind)
    src, wheels, site = tmp_path / "src", tmp_path / "wheels", tmp_path / "site"
    skip = {".git", ".venv", "build", "dist", "runs", "data", "wandb", "whispergpt.egg-info"}
    shutil.copytree(
        REPO, src, ignore=lambda d, names: skip & set(names) if Path(d) == REPO else {"__pycache__"}
    )
    pip = [sys.executable, "-m", "pip"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(src)]
    subprocess.run(build, check=True, cwd=tmp_path, capture_output=True)
    (wheel,) = wheels.glob("whispergpt-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = {f"whispergpt/configs/{n}.yaml" for n in [*SHIPPED, "base", "compare/tiny/paper_hybrid"]}
    assert recipes <= names
    assert "whispergpt/assets/codec/whispergpt-small-24khz/model.safetensors" in names
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "whispergpt").rglob("*.py")}
    assert modules <= names, f"not in the wheel (pyproject packages list?): {sorted(modules - names)}"
    install = [*pip, "install", "-q", "--no-deps", "--target", str(site), str(wheel)]
    subprocess.run(install, check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    work = tmp_path / "elsewhere"
    work.mkdir()
    probe = "from whispergpt.config_io import recipe_path; print(recipe_path('tiny.yaml'))"
    r = subprocess.run([sys.executable, "-c", probe], cwd=work, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert Path(r.stdout.strip()) == site / "whispergpt" / "configs" / "tiny.yaml"
    train = [sys.executable, "-m", "whispergpt", "train", "tiny.yaml", f"data.dir={tiny_dataset}"]
    train += [
        f"out_dir={tmp_path / 'run'}",
        "train.max_steps=1",
        "logging.wandb=false",
        "logging.progress=false",
    ]
    r = subprocess.run(train, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["d_model"] == 64 and saved["model"]["num_codebooks"] == 2
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


def test_pyproject_lists_every_package_of_the_source_tree():
    """The package list is explicit (configs/ is mapped in): a new folder left out of it would be
    missing from the wheel while every test run from the checkout still passes."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    repo = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(repo).parts) for p in (repo / "whispergpt").rglob("__init__.py")}
    assert found | {"whispergpt.configs"} == listed
