"""What the torch heads share: seeded and threaded runs, the epoch loop with early stopping (the
whole-network fine-tune runs it too), a held-out part, and `_TorchClassifier`, the scikit-learn
estimator they all are."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn
from torch.nn import functional as F

from ..runtime import resolve_device


@contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's RNGs for one fit and restore them afterwards.

    Weight init and dropout draw from torch's global generators (they take no generator
    argument), so a fit forks them rather than moving the caller's random streams.
    """
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index], device_type="cuda"):
            torch.default_generator.manual_seed(seed)
            torch.cuda.default_generators[index].manual_seed(seed)
            yield
    elif device.type == "mps":  # one generator, whatever the index
        with torch.random.fork_rng(devices=[0], device_type="mps"):
            torch.default_generator.manual_seed(seed)
            torch.mps.manual_seed(seed)
            yield
    else:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            yield


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run torch on `threads` CPU threads, restoring the caller's setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class EarlyStopping:
    """Keeps a copy of the weights at the lowest validation loss seen; says when `patience` updates
    in a row brought none lower."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best_loss, self.waited = math.inf, 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def update(self, loss: float, module: nn.Module) -> bool:
        """Record `module`'s loss; True when training should stop."""
        if loss < self.best_loss:
            self.best_loss, self.waited = loss, 0
            self.best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            return False
        self.waited += 1
        return self.waited >= self.patience

    def restore(self, module: nn.Module) -> None:
        """Load the best weights seen (nothing when no loss was recorded)."""
        if self.best_state is not None:
            module.load_state_dict(self.best_state)


def train_epochs(
    module: nn.Module,
    run_epoch: Callable[[int], None],
    validation_loss: Callable[[], float] | None,
    max_epochs: int,
    patience: int,
    *,
    start_is_candidate: bool = False,
) -> int:
    """Train `module` for up to `max_epochs` epochs and return how many ran.

    `run_epoch(epoch)` trains epoch 1, 2, ... (the module in train mode). With a
    `validation_loss` (called with the module in eval mode) it stops after `patience` epochs in a
    row without a lower loss and restores the best weights seen; `start_is_candidate`: the weights
    before training are scored first, so an epoch must beat them to be kept. Without one it runs
    all `max_epochs`."""
    stopping = EarlyStopping(patience)

    def stop() -> bool:
        if validation_loss is None:
            return False
        module.eval()
        return stopping.update(validation_loss(), module)

    if start_is_candidate:
        stop()
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        module.train()
        run_epoch(epoch)
        if stop():
            break
    stopping.restore(module)
    return epoch


def holdout_split(y: np.ndarray, fraction: float, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray | None]:
    """(train, validation) row indices of class indices `y` for early stopping; validation is None
    when no stratified split fits (or `fraction` is 0)."""
    rows = np.arange(len(y))
    n_classes = int(y.max()) + 1
    n_val = math.ceil(fraction * len(y))
    if fraction <= 0 or np.bincount(y).min() < 2 or n_val < n_classes or len(y) - n_val < n_classes:
        return rows, None
    train, val = train_test_split(rows, test_size=n_val, stratify=y, random_state=rng)
    return train, val


class _TorchClassifier(ClassifierMixin, BaseEstimator):
    """Shared trainer: subclasses define ``__init__`` (hyperparameters) and ``_build_module``.

    Training: AdamW on cross-entropy in shuffled minibatches. Early stopping watches the loss on
    a stratified ``validation_fraction`` of the training data, stops after ``patience`` epochs
    without improvement and restores the best weights; when the data is too small for a split
    with every class on both sides (or ``validation_fraction=0``) it trains ``max_epochs``.

    The fitted ``module_`` lives on the CPU in eval mode and prediction runs there: the module
    is tiny, and a head fitted on a GPU then pickles and loads anywhere. ``n_iter_`` is the
    number of epochs run.
    """

    def _build_module(self, n_features: int, n_classes: int) -> nn.Module:
        raise NotImplementedError

    def fit(self, X: Any, y: Any) -> _TorchClassifier:
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_, y_index = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 classes; got 1 class")
        rng = check_random_state(self.random_state)
        device = resolve_device(self.device)
        seed = int(rng.randint(np.iinfo(np.int32).max))
        # tiny modules: more intra-op threads only add synchronisation, and under CPU contention
        # (search workers, a random forest, other processes) they made fits 10-20x slower
        with torch_threads(1), seeded_rng(seed, device):
            module = self._build_module(X.shape[1], len(self.classes_)).to(device)
            self._initialise(module, X, y_index, device)
            self.n_iter_ = self._train(module, X, y_index, rng, device)
        self.module_ = module.cpu().eval()
        return self

    def _train(
        self,
        module: nn.Module,
        X: np.ndarray,
        y: np.ndarray,
        rng: np.random.RandomState,
        device: torch.device,
    ) -> int:
        """Train in place; return the number of epochs run."""
        X_t = torch.tensor(X, device=device)
        y_t = torch.tensor(y, device=device)
        train, val = holdout_split(y, self.validation_fraction, rng)
        n_batches = math.ceil(len(train) / self.batch_size)
        optimizer = torch.optim.AdamW(module.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)

        def run_epoch(epoch: int) -> None:
            # array_split keeps batches near-equal, so none has the single sample BatchNorm rejects
            for batch in np.array_split(rng.permutation(train), n_batches):
                index = torch.as_tensor(batch, device=device)
                optimizer.zero_grad()
                F.cross_entropy(module(X_t[index]), y_t[index]).backward()
                optimizer.step()

        def validation_loss(rows: np.ndarray) -> float:
            index = torch.as_tensor(rows, device=device)
            with torch.no_grad():
                return F.cross_entropy(module(X_t[index]), y_t[index]).item()

        return train_epochs(module, run_epoch, None if val is None else functools.partial(validation_loss, val),
                            self.max_epochs, self.patience)

    def _initialise(self, module: nn.Module, X: np.ndarray, y: np.ndarray, device: torch.device) -> None:
        """Set weights before training (the default: the modules' own random init)."""

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, reset=False)
        with torch_threads(1), torch.no_grad():
            logits = self.module_(torch.tensor(X))
        return torch.softmax(logits.double(), dim=1).numpy()

    def predict(self, X: Any) -> np.ndarray:
        proba = self.predict_proba(X)  # first: it raises NotFittedError
        return self.classes_[np.argmax(proba, axis=1)]
