"""YAML recipes + dotted ``key=value`` overrides onto nested dataclasses, and the run config.

One ``@dataclass`` per concern; a run config is a dataclass whose fields are other dataclasses.
``load_config(CodecTrainConfig, "codec/small-cpu.yaml", ["train.max_steps=10"])``:

- a recipe is a path, or the name of a recipe shipped with the package (``tiny.yaml``; found from
  any working directory, see :func:`recipe_path`);
- ``extends: base.yaml`` (or a list of them) deep-merges the named recipes under this one, the
  child winning; a name is looked up next to the recipe first, then among the shipped recipes;
- YAML is read with ``yaml.safe_load``; unknown keys (in the file or an override) are errors that
  list the valid keys;
- override values are parsed as YAML scalars (``10`` -> int, ``1e-3`` -> float, ``true`` -> bool,
  ``null`` -> None, ``[1, 2]`` -> list) and type-checked against the field's annotation;
- each dataclass's ``__post_init__`` runs on the final values, so validation sees overrides.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import typing
from dataclasses import dataclass, field
from typing import Literal

from whispergpt.config_io import (
    ConfigError,
    apply_overrides,
    check_keys,
    from_dict,
    load_recipe,
)
from whispergpt.models.config import WhisperGPTConfig
from whispergpt.models.encodecmae import EnCodecMAEConfig
from whispergpt.models.fine import FineConfig
from whispergpt.models.semantic_lm import SemanticLMConfig

# --- the run config (train.py / whispergpt train) ---------------------------------------------


@dataclass
class DataConfig:
    # a `whispergpt prepare` output, or a list of them read as one dataset (same codec and grid)
    dir: str | list[str] = "data/demo/prepared"
    frames: int | None = None  # crop length in frames; null -> model.context
    num_workers: int | None = None  # DataLoader workers per process; null: 0 on CPU, min(4, cpus) on CUDA
    train_split: str = "train"
    val_split: str = "val"
    # mel the hybrid reads: "truth" (original audio, the paper's setting), "decoded" (audio decoded
    # from all codebooks: what delay/parallel sampling feeds back), "decoded_coarse" (from codebook
    # 0 alone: what coarse sampling feeds back); "auto" = the decoded mel the pattern samples
    # (decoded_coarse for coarse) when the dataset stores it, else truth; "codec_latent": not a mel
    # but the codec's dequantised latent of each frame's tokens (codec.codec_latent: table lookups,
    # no decode; computed from the stored codes), fed through the same branch (model.mel_input
    # and model.n_mels = the codebook width follow from it)
    mel_source: Literal["auto", "truth", "decoded", "decoded_coarse", "codec_latent"] = "auto"

    def __post_init__(self) -> None:
        if self.frames is not None and self.frames < 1:
            raise ValueError(f"data.frames must be >= 1 or null, got {self.frames}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0 or null, got {self.num_workers}")


LORA_TARGETS = ("qkv", "proj", "fc", "out")  # a Block's attention (qkv, proj) and MLP (fc, out) linears


@dataclass
class LoraSettings:
    """``train.lora``: low-rank adapters (peft LoRA) on every transformer block's projections."""

    r: int = 0  # adapter rank; 0: off (every weight trains)
    alpha: float = 16.0  # scaling alpha / r
    dropout: float = 0.0  # on the adapter's input
    targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))

    def __post_init__(self) -> None:
        if self.r < 0 or self.alpha <= 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"train.lora needs r >= 0, alpha > 0, 0 <= dropout < 1; got {self}")
        unknown = sorted(set(self.targets) - set(LORA_TARGETS))
        if unknown or not self.targets:
            raise ValueError(
                f"train.lora.targets must be a non-empty subset of {list(LORA_TARGETS)}, got {self.targets}"
            )


@dataclass
class TrainConfig:
    max_steps: int = 1000  # optimizer steps
    batch_size: int = 8  # crops per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 3e-4  # peak learning rate
    min_lr: float = 3e-5  # end of the cosine
    warmup_steps: int = 100  # linear warmup from lr/warmup_steps
    weight_decay: float = 0.1  # decoupled (AdamW); matrices only, not biases / norms
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    save_every: int = 500  # checkpoint period in steps (a checkpoint is also written at the end)
    eval_every: int = 500  # validation period in steps (0: only at the end)
    eval_batches: int | str = 20  # validation crops = eval_batches * batch_size, or "full"
    keep_last: int = 3  # checkpoints kept (0 keeps all)
    seed: int = 0
    log_every: int = 10  # metrics.jsonl / wandb period in steps
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    # torch.compile the model; null: on for CUDA without DeepSpeed (one warm-up compile, then faster
    # steps), off on CPU (the compile costs more than a short CPU run saves)
    compile: bool | None = None
    # null: the newest checkpoint of out_dir that verifies (broken newer ones are moved aside);
    # PATH: that checkpoint (or that run's newest valid one); "none": never resume (an error if
    # out_dir already holds checkpoints, so a script cannot silently continue an old run)
    resume_from: str | None = None
    # PATH_OR_HUB_ID of a trained model (a model folder, a run out_dir or a Hub id org/name[@rev])
    # whose weights start this run: weights only, so the optimizer, schedule and step counter start
    # fresh (fine-tuning). A run that already has checkpoints resumes from them instead (resume_from
    # keeps its meaning). The config must match the model's (K, V, M, width, pattern, ...): a
    # mismatch is an error naming both sides, unless init_strict is false: then the tensors whose
    # name and shape match are loaded and the others listed (e.g. a new codebook count).
    init_from: str | None = None
    init_strict: bool = True
    # recompute each transformer block in the backward pass: less activation memory, ~1/3 more compute
    grad_checkpointing: bool = False
    # LoRA (peft): only the adapters train; checkpoints hold them (adapter/) next to the merged
    # model, final/ is the merged model and final/adapter/ the adapter alone in peft's format
    lora: LoraSettings = field(default_factory=LoraSettings)
    # stop once val NLL has not improved on its best for this many evaluations in a row (every
    # eval_every steps); 0: off, train to max_steps. With it on, every new best is checkpointed and
    # copied to out_dir/best/, and final/ holds those best weights (the last ones stay in
    # checkpoints/); a stopped run does not train further when rerun.
    early_stop_patience: int = 0

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "keep_last", "early_stop_patience"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise ValueError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"train.betas must be two numbers in [0, 1), got {self.betas}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError(
                f"train.weight_decay and train.grad_clip must be >= 0, got {self.weight_decay}, {self.grad_clip}"
            )
        if isinstance(self.eval_batches, str) and self.eval_batches != "full":
            raise ValueError(f"train.eval_batches must be an integer or 'full', got {self.eval_batches!r}")
        if isinstance(self.eval_batches, int) and self.eval_batches < 0:
            raise ValueError(f"train.eval_batches must be >= 0, got {self.eval_batches}")
        if self.early_stop_patience and not self.eval_every:
            raise ValueError("train.early_stop_patience needs periodic validation: set train.eval_every > 0")
        if self.resume_from is not None and (not isinstance(self.resume_from, str) or not self.resume_from):
            raise ValueError(f"train.resume_from must be null, none or a path, got {self.resume_from!r}")
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from):
            raise ValueError(f"train.init_from must be null, a path or a Hub id, got {self.init_from!r}")


@dataclass
class LoggingConfig:
    wandb: bool = True
    wandb_project: str = "whispergpt"
    wandb_name: str | None = None  # default: the out_dir name
    # null: $WANDB_MODE if set, "online" if you ran `wandb login`, else "offline" (no account needed)
    wandb_mode: Literal["online", "offline", "disabled"] | None = None
    tensorboard: bool = False  # out_dir/tensorboard (needs the `tensorboard` extra)
    progress: bool = True  # tqdm bar on the main process


# What a run trains (training/tasks.py) -> the section holding that model's config. Only the
# active task's section is printed and saved with the run; the others keep their defaults.
TASK_SECTIONS = {"lm": "model", "fine": "fine", "mae": "mae", "semantic": "semantic_lm"}


@dataclass
class RunConfig:
    out_dir: str = "runs/default"
    # lm: the Whisper-GPT decoder (section `model`); fine: the fine stage (`fine`); mae: EnCodecMAE
    # (`mae`); semantic: the semantic LM (`semantic_lm`)
    task: str = "lm"
    model: WhisperGPTConfig = field(default_factory=WhisperGPTConfig)
    fine: FineConfig = field(default_factory=FineConfig)
    mae: EnCodecMAEConfig = field(default_factory=EnCodecMAEConfig)
    semantic_lm: SemanticLMConfig = field(default_factory=SemanticLMConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def trim_dict(self, data: dict) -> None:
        """``config_io.to_dict``: keep only the task's model section."""
        for name in TASK_SECTIONS.values():
            if name != TASK_SECTIONS.get(self.task) and name in data:
                del data[name]


# model fields that must agree with the prepared dataset (manifest key == field name); null in a
# recipe = take them from the dataset
DATA_SHAPE_KEYS = ("num_codebooks", "codebook_size", "n_mels")
# the semantic LM's fields that must agree with the dataset's semantic tokenizer (section field ->
# key of the manifest's semantic_tokenizer); null in a recipe = the tokenizer's
SEMANTIC_SHAPE_KEYS = {"clusters": "clusters", "rate": "rate"}


def _data_shape(name: str, section_cls: type, section: dict, manifest: dict, data_dir: str) -> dict[str, int]:
    """The dataset's value of each shape field the section has (``DATA_SHAPE_KEYS``; EnCodecMAE's
    ``in_dim``, the width of the stream it reads, and ``kmeans_clusters``, its semantic tokenizer's)."""
    fields = {f.name: f for f in dataclasses.fields(section_cls)}
    want = {k: int(manifest[k]) for k in DATA_SHAPE_KEYS if k in fields}
    if "in_dim" in fields:
        kind = section.get("input", fields["input"].default)
        key = "latent_dim" if kind == "latent" else "n_mels"
        if key not in manifest:
            raise ConfigError(
                f"{name}.input={kind} reads the codec latent, and the dataset {data_dir} stores none "
                "(no latent_dim in its manifest): prepare it with --latent, or use input=mel"
            )
        want["in_dim"] = int(manifest[key])
    semantic_keys = [k for k in SEMANTIC_SHAPE_KEYS if k in fields]
    kmeans = "kmeans_clusters" in fields and section.get("targets", fields["targets"].default) != "codes"
    if semantic_keys or kmeans:
        tokenizer = manifest.get("semantic_tokenizer")  # prepare --semantic: the tokenizer's settings
        if not isinstance(tokenizer, dict) or "clusters" not in tokenizer:
            what = f"{name}.targets={section.get('targets')}" if kmeans else f"the {name} section"
            raise ConfigError(
                f"{what} trains on the semantic stream, and the dataset {data_dir} stores none: "
                "prepare it with --semantic TOKENIZER_DIR (whispergpt semantic fit)"
            )
        if kmeans:
            want["kmeans_clusters"] = int(tokenizer["clusters"])
        for key in semantic_keys:
            want[key] = tokenizer[SEMANTIC_SHAPE_KEYS[key]]
    if "semantic_vocab" in fields and section.get("semantic", fields["semantic"].default) != "none":
        tokenizer = manifest.get("semantic_tokenizer")  # the acoustic model conditioned on it
        if not isinstance(tokenizer, dict) or "clusters" not in tokenizer:
            raise ConfigError(
                f"{name}.semantic={section.get('semantic')} reads the semantic stream, and the dataset "
                f"{data_dir} stores none: prepare it with --semantic TOKENIZER_DIR (whispergpt semantic fit)"
            )
        want["semantic_vocab"] = int(tokenizer["clusters"])
        want["semantic_rate"] = tokenizer.get("rate", 25)
    return want


def resolve_config(data: dict) -> RunConfig:
    """Raw (YAML + overrides) mapping -> validated RunConfig, model shape filled from the dataset."""
    check_keys(RunConfig, data)  # before the dataset is even opened
    data = json.loads(json.dumps(data))
    section = data.get("data") or {}
    data_dir = section.get("dir", DataConfig.dir) if isinstance(section, dict) else DataConfig.dir
    if isinstance(data_dir, list):  # several datasets: PreparedDataset checks that they agree
        if not data_dir:
            raise ConfigError("data.dir: expected a dataset directory or a non-empty list of them, got []")
        data_dir = data_dir[0]
    from whispergpt.data import read_manifest  # lazy: the data package needs the codec

    manifest = read_manifest(data_dir)  # ValueError naming the directory if it is not a dataset
    task = data.get("task", RunConfig.task)
    if task not in TASK_SECTIONS:
        raise ConfigError(f"task: expected one of {sorted(TASK_SECTIONS)}, got {task!r}")
    name = TASK_SECTIONS[task]
    for other in set(TASK_SECTIONS.values()) - {name}:  # unused: its null shape keys keep their defaults
        if isinstance(data.get(other), dict):
            shape = (*DATA_SHAPE_KEYS, *SEMANTIC_SHAPE_KEYS)
            data[other] = {k: v for k, v in data[other].items() if not (k in shape and v is None)}
    section_cls = typing.get_type_hints(RunConfig)[name]
    model = data.get(name)
    if model is None:
        model = data[name] = {}
    if not isinstance(model, dict):
        raise ConfigError(f"{name}: expected a mapping, got {model!r}")
    shape = _data_shape(name, section_cls, model, manifest, data_dir)
    latent = section.get("mel_source") == "codec_latent" if isinstance(section, dict) else False
    if latent and task != "lm":
        raise ConfigError("data.mel_source=codec_latent is the decoder's continuous input (task lm)")
    if task == "lm":
        want_input = "codec_latent" if latent else "log_mel"
        if model.get("mel_input") == "codec_latent" and not latent:
            raise ConfigError(
                f"model.mel_input={model['mel_input']!r} does not match data.mel_source="
                f"{section.get('mel_source', 'auto')!r}: set data.mel_source (mel_input follows from it)"
            )
        model["mel_input"] = want_input
        if latent:
            from whispergpt.data.dataset import codec_latent_table

            shape["n_mels"] = int(codec_latent_table(manifest).shape[-1])  # the stream's width C
    for key, want in shape.items():
        have = model.get(key)
        if have is None or (key == "semantic_vocab" and have == 0):
            model[key] = want
        elif have != want:
            raise ConfigError(
                f"{name}.{key}={have!r} does not match the dataset {data_dir} ({key}={want}); "
                f"set {name}.{key}={want} or null to take it from the dataset"
            )
    cfg = from_dict(RunConfig, data)
    # the crop in codec frames (the semantic LM's context counts tokens at its own rate)
    context = getattr(getattr(cfg, name), "context_frames", getattr(cfg, name).context)
    coarse = cfg.task == "lm" and cfg.model.pattern == "coarse"
    if cfg.task != "lm":
        # only the decoder feeds a decoded mel back while sampling; other tasks read the truth
        cfg.data.mel_source = "truth" if cfg.data.mel_source == "auto" else cfg.data.mel_source
    elif cfg.data.mel_source == "auto":
        cfg.data.mel_source = _auto_mel_source(manifest, coarse, cfg.model.fusion != "none", data_dir)
    if cfg.task == "lm" and cfg.data.mel_source == "decoded" and coarse:
        raise ConfigError(
            "data.mel_source=decoded needs a pattern that generates all codebooks (delay, parallel or depth): "
            "the stored decoded mel uses every codebook, a coarse model only samples codebook 0; "
            "use decoded_coarse"
        )
    if cfg.task == "lm" and cfg.data.mel_source == "codec_latent" and coarse:
        raise ConfigError(
            "data.mel_source=codec_latent sums every codebook's vector, and a coarse model samples "
            "codebook 0 only: use a pattern that generates all codebooks (delay, parallel or depth)"
        )
    if cfg.task == "lm" and cfg.data.mel_source == "decoded_coarse" and not coarse:
        raise ConfigError(
            f"data.mel_source=decoded_coarse is the mel of codebook 0 alone, what a coarse model samples; "
            f"a {cfg.model.pattern} model samples every codebook: use decoded"
        )
    if cfg.data.frames is None:
        cfg.data.frames = context
    elif cfg.data.frames > context:
        tokens = getattr(cfg, name).context
        frames = f" ({context} codec frames)" if tokens != context else ""
        raise ConfigError(f"data.frames={cfg.data.frames} exceeds {name}.context={tokens}{frames}")
    return cfg


def _auto_mel_source(manifest: dict, coarse: bool, hybrid: bool, data_dir) -> str:
    """``data.mel_source: auto``: the decoded mel the pattern's sampler feeds back, when stored."""
    from whispergpt.data.streams import stored_streams

    stored = stored_streams(manifest)
    want = "mel_decoded_coarse" if coarse else "mel_decoded"
    if hybrid and want in stored:
        return "decoded_coarse" if coarse else "decoded"
    if hybrid and coarse:
        print(
            f"warning: data.mel_source auto -> truth: {data_dir} stores no coarse-decoded mel, so this model "
            "trains on the original audio's mel while sampling will feed it the mel of audio decoded from "
            "codebook 0; prepare the data again (this version's `whispergpt prepare` stores it) to match",
            file=sys.stderr,
        )
    return "truth"


def load_run_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> RunConfig:
    """Recipe (path or shipped name) + ``key=value`` overrides -> RunConfig (:func:`resolve_config`)."""
    data = load_recipe(path) if path is not None else {}
    return resolve_config(apply_overrides(data, overrides or []))
