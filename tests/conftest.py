import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from tiny_mae import make_mae  # noqa: E402  (tests/ is on sys.path: this conftest's folder)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_codec():
    """A tiny random EnCodec (1.5 kbps -> K=2, V=1024) with filled codebooks; shared, read-only."""
    from whispergpt.codec import Codec

    return Codec.random(bandwidth=1.5, seed=0)


@pytest.fixture(scope="session")
def tiny_codec_dir(tmp_path_factory, tiny_codec):
    """The tiny codec in EncodecModel save_pretrained layout (for CLI tests)."""
    d = tmp_path_factory.mktemp("codec") / "tiny-codec"
    tiny_codec.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, tiny_codec_dir):
    """6 two-second synthetic clips (4 train, 2 val) prepared with the tiny codec (K=2, V=1024)."""
    import numpy as np

    from whispergpt.audio import save_audio
    from whispergpt.data.prepare import prepare

    root = tmp_path_factory.mktemp("tiny-dataset")
    wav = root / "wav"
    wav.mkdir(parents=True)
    rng = np.random.default_rng(0)
    t = np.arange(48000) / 24000
    for i in range(6):
        w = 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.05 * rng.standard_normal(t.size)
        save_audio(wav / f"a{i}.wav", w.astype(np.float32), 24000)
    out = root / "prepared"
    prepare(
        [wav],
        out,
        tiny_codec_dir,
        bandwidth=1.5,
        n_mels=80,
        val_fraction=0.34,
        seed=0,
        device="cpu",
        progress=False,
    )
    return out


# --- EnCodecMAE checkpoints and the semantic tokenizer (semantic/, inference/, evaluation/ tests) ---
@pytest.fixture(scope="session")
def mae_dir(tmp_path_factory, tiny_dataset):
    """A tiny mel EnCodecMAE checkpoint (80 mels, 2 layers, D=32) with a training record."""
    from whispergpt.data.dataset import read_manifest
    from whispergpt.training.record import write_training_record

    d = tmp_path_factory.mktemp("mae") / "mae-mel"
    make_mae("mel", 80).save_pretrained(d)
    write_training_record(d, read_manifest(tiny_dataset), "truth", [tiny_dataset], steps=0)
    return d


@pytest.fixture(scope="session")
def mae_latent_dir(tmp_path_factory, tiny_dataset, tiny_codec):
    """A tiny latent EnCodecMAE reading the tiny codec's latent (its width from the codec)."""
    from whispergpt.data.dataset import read_manifest
    from whispergpt.training.record import write_training_record

    width = int(tiny_codec.model.config.hidden_size)
    d = tmp_path_factory.mktemp("mae") / "mae-latent"
    make_mae("latent", width).save_pretrained(d)
    write_training_record(d, read_manifest(tiny_dataset), "truth", [tiny_dataset], steps=0)
    return d


@pytest.fixture(scope="session")
def semantic_tokenizer(tmp_path_factory, mae_dir, tiny_dataset):
    """A 6-cluster 25 Hz semantic tokenizer fitted on the tiny MAE's layer-1 frames of the tiny dataset."""
    from whispergpt.semantic.tokenizer import fit_semantic

    d = tmp_path_factory.mktemp("semantic") / "tok"
    fit_semantic(mae_dir, [tiny_dataset], d, clusters=6, layer=1, device="cpu", progress=False, threads=1)
    return d


@pytest.fixture(scope="session")
def semantic_dataset(tmp_path_factory, tiny_dataset, tiny_codec_dir, semantic_tokenizer):
    """The tiny dataset's clips prepared again with ``--semantic`` (the stream of ``semantic_tokenizer``)."""
    from whispergpt.data.prepare import prepare
    from whispergpt.semantic.tokenizer import semantic_source

    out = tmp_path_factory.mktemp("semantic-dataset") / "prepared"
    prepare([tiny_dataset.parent / "wav"], out, tiny_codec_dir, bandwidth=1.5, n_mels=80, val_fraction=0.34,
            seed=0, device="cpu", progress=False, semantic=semantic_source(semantic_tokenizer))  # fmt: skip
    return out


class LocalHub:
    """A Hub cache in huggingface_hub's own layout, in a temporary HF_HOME, used offline:

    ``hub/models--org--name/blobs/<sha256>``, ``snapshots/<commit>/<file>`` (symlinks to the
    blobs) and ``refs/main`` (the commit). ``publish(folder, "org/name")`` puts a model folder there.
    """

    def __init__(self, root):
        self.cache = root / "hub"
        self.cache.mkdir(parents=True, exist_ok=True)

    def publish(self, folder, repo_id: str, commit: str | None = None, ref: str = "main") -> str:
        import hashlib

        from whispergpt.hub import HUB_FILES

        commit = (
            commit
            or hashlib.sha1(f"{repo_id}{sorted(p.name for p in folder.iterdir())}".encode()).hexdigest()
        )
        repo = self.cache / ("models--" + repo_id.replace("/", "--"))
        snap = repo / "snapshots" / commit
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        snap.mkdir(parents=True, exist_ok=True)
        for f in sorted(folder.iterdir()):
            if f.name not in HUB_FILES:
                continue
            data = f.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            link = snap / f.name
            if link.exists() or link.is_symlink():
                link.unlink()
            link.symlink_to(f"../../blobs/{blob.name}")
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
        return commit


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    """An offline :class:`LocalHub` in ``tmp_path/hf_home``. huggingface_hub reads HF_HOME and
    HF_HUB_OFFLINE into ``constants`` at import, so the constants are patched as well as the env."""
    from huggingface_hub import constants

    home = tmp_path / "hf_home"
    hub = LocalHub(home)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub.cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub
