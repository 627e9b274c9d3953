"""Fitted compare cells kept on disk, so that rerunning `compare` with one more head, N or model
fits only the new cells.

A cell run is keyed by everything that decides its predictions: the features' fingerprint, the
head with all its parameters, the training and test images (by sha256) with their labels, and the
versions of this package and scikit-learn. One small `.npz` per run under `<cache dir>/cells/`;
delete the folder to start afresh.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import joblib
import numpy as np
import sklearn

from ._version import __version__
from .evaluate import CellRun, Split


class CellCache:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    @staticmethod
    def key(fingerprint: str, head: str, shas: Sequence[str], labels: np.ndarray, split: Split) -> str:
        """`head`: joblib.hash of the unfitted estimator (all its parameters)."""
        train = [(shas[i], str(labels[i])) for i in split.train]
        test = [(shas[i], str(labels[i])) for i in split.test]
        return joblib.hash((fingerprint, head, train, test, __version__, sklearn.__version__))

    def get(self, key: str) -> CellRun | None:
        path = self.folder / f"{key}.npz"
        try:
            with np.load(path, allow_pickle=False) as z:
                return CellRun(z["y_pred"], float(z["fit_seconds"]), float(z["predict_seconds"]))
        except (OSError, KeyError, ValueError):  # absent, or a damaged file: fit again
            return None

    def put(self, key: str, run: CellRun) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.folder / f"{key}.partial.npz"
        try:
            np.savez(partial, y_pred=np.asarray(run.y_pred).astype(str), fit_seconds=run.fit_seconds,
                     predict_seconds=run.predict_seconds)
            os.replace(partial, self.folder / f"{key}.npz")
        except OSError:  # a full or read-only disk only costs the next compare a refit
            partial.unlink(missing_ok=True)
