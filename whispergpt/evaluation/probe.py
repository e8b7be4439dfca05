"""The linear-probe protocol: a standardised logistic regression (``C`` by 3-fold CV) on mean-pooled clip
embeddings of each representation (EnCodecMAE, a random MAE, log-mel, the codec latent).

``experiments.probe`` runs it on the probe tasks (``whispergpt probe``); ``evaluation.consistency``
judges continuations with it."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from whispergpt.audio import N_MELS, log_mel
from whispergpt.errors import InputError
from whispergpt.semantic.features import MAEInput, check_layer, embed_clips, load_mae, random_mae

REPRESENTATIONS = ("encodecmae", "random-mae", "log-mel", "codec-latent")


CS = (0.01, 0.1, 1.0, 10.0)


def require_sklearn():
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold
        from sklearn.preprocessing import StandardScaler
    except ImportError as e:
        raise InputError(
            "probe needs scikit-learn", hint="pip install 'whispergpt[mae-tools]' (scikit-learn)"
        ) from e
    return LogisticRegression, StratifiedKFold, StandardScaler


def fit_probe(x: np.ndarray, y: np.ndarray, train: np.ndarray, seed: int):
    """A standardised logistic regression fitted on ``x[train]``: ``(scaler, classifier, C, cv_accuracy)``.

    ``C`` is the one of ``CS`` with the best mean accuracy over (up to) 3 stratified folds of the
    train clips (the smallest ``C``, i.e. the strongest regularisation, on a tie); ``cv_accuracy``
    is that mean (None when a class has a single train clip: then ``C`` = 1)."""
    LogisticRegression, StratifiedKFold, StandardScaler = require_sklearn()

    def fit(c: float, rows: np.ndarray):
        scaler = StandardScaler().fit(x[rows])
        return scaler, LogisticRegression(C=c, max_iter=2000).fit(scaler.transform(x[rows]), y[rows])

    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    folds = min(3, int(np.bincount(y[train]).min()))
    best, cv_accuracy = 1.0, None
    # one BLAS thread: these problems are tiny, and threads cost ~15x here on a busy 2-core machine
    with threadpool_limits(1):
        if folds >= 2:  # else a class has a single train clip: no folds to pick C with
            cv = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(x[train], y[train]))
            scores = [np.mean([_accuracy(fit(c, train[a]), x, y, train[b]) for a, b in cv]) for c in CS]
            best, cv_accuracy = CS[int(np.argmax(scores))], float(np.max(scores))
        scaler, clf = fit(best, train)
    return scaler, clf, best, cv_accuracy


def _accuracy(model, x: np.ndarray, y: np.ndarray, rows: np.ndarray) -> float:
    scaler, clf = model
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return float((clf.predict(scaler.transform(x[rows])) == y[rows]).mean())


def linear_probe(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int) -> float:
    """Test accuracy of ``fit_probe`` on ``x[train]``."""
    scaler, clf, _, _ = fit_probe(x, y, train, seed)
    return _accuracy((scaler, clf), x, y, test)


class Embedder:
    """Mean-pooled clip embeddings of each representation (see the module docstring)."""

    def __init__(self, checkpoint, layer: int | None, codec: str | None, device: torch.device):
        self.device = device
        self.model, directory = load_mae(checkpoint, device)
        self.layer = check_layer(self.model, layer)
        self.inputs = MAEInput.from_checkpoint(self.model, directory, device)
        self.checkpoint = directory
        self.n_mels = self.inputs.dim if self.inputs.kind == "mel" else N_MELS
        self.codec_name = codec
        self._codec = None

    def codec(self):
        if self._codec is None:
            if self.codec_name is None and self.inputs.kind == "latent":
                self._codec = self.inputs.codec_model()
            else:
                from whispergpt.codec import open_codec
                from whispergpt.training.record import training_codec

                name, bandwidth = self.codec_name, None
                if name is None:
                    name, bandwidth = training_codec(self.checkpoint) or ("default", None)
                self._codec = open_codec(name, bandwidth=bandwidth, device=self.device)[0]
            self.codec_name = self._codec.name
        return self._codec

    def baseline_key(self, rep: str) -> str | None:
        """What a baseline's embeddings depend on besides the clips (None: not cached, the MAEs)."""
        if rep == "log-mel":
            return f"log-mel-{self.n_mels}"
        if rep == "codec-latent":
            digest = hashlib.sha256()
            for p in self.codec().model.encoder.parameters():  # the weights, wherever they came from
                digest.update(p.detach().cpu().float().numpy().tobytes())
            return f"codec-latent-{digest.hexdigest()[:16]}"
        return None

    @torch.inference_mode()
    def embed(self, rep: str, clips: Sequence[torch.Tensor], seed: int = 0) -> np.ndarray:
        """``(N, D)`` float64 embeddings of ``clips`` under ``rep``."""
        if rep == "log-mel":
            rows = [log_mel(c.to(self.device), n_mels=self.n_mels).mean(-1) for c in clips]  # (M,)
        elif rep == "codec-latent":
            from whispergpt.evaluation.embed import encode_clips  # batches clips of equal length

            rows = [
                z.mean(-1) for z in encode_clips(self.codec(), [c.to(self.device) for c in clips])
            ]  # (D,)
        elif rep in ("encodecmae", "random-mae"):
            model = self.model if rep == "encodecmae" else random_mae(self.model.config, seed).to(self.device)
            rows = embed_clips(model, self.inputs, list(clips), self.layer)  # (D,) each
        else:
            raise ValueError(f"unknown representation {rep!r}, expected one of {REPRESENTATIONS}")
        return torch.stack([r.double().cpu() for r in rows]).numpy()
