"""Classifier heads on cached embeddings: each one a plain scikit-learn estimator.

``make_head(name)`` returns ``Pipeline([("scale", StandardScaler()), ("l2", Normalizer())?,
("clf", <classifier>)])``; ``tune=True`` wraps it in a ``GridSearchCV`` that only ever sees the
data passed to ``fit``. Defaults are chosen for small data: tens of images per class, ~1000-d
features.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from scipy import sparse
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import BaseCrossValidator, GridSearchCV, StratifiedKFold, StratifiedShuffleSplit
from sklearn.model_selection import train_test_split
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import SVC
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn
from torch.nn import functional as F

from .errors import BottleneckError, FitError

HEADS: dict[str, str] = {
    "softmax": "linear layer + softmax trained with torch (AdamW, early stopping)",
    "logreg": "multinomial logistic regression (L2, C=0.1)",
    "svm": "support vector machine: linear one-vs-rest (C=0.0005); RBF (C=1) on raw pixels; temperature-scaled probabilities",
    "et": "extremely randomised trees, 300 (sqrt features per split; log2 on raw pixels)",
    "rf": "random forest, 300 trees",
    "knn": "k nearest neighbours (k=5, cosine distance, distance-weighted)",
    "mlp": "Dense(64) + batch-norm + ReLU + dropout + softmax, trained with torch",
    "nb": "Gaussian naive Bayes",
    "cnn": "small CNN trained from scratch on raw pixels (rawN features), torch",
}


class UnknownHeadError(BottleneckError, ValueError):
    """A head name that is not in ``HEADS``."""


def _check_name(name: str) -> None:
    if name not in HEADS:
        raise UnknownHeadError(f"unknown head {name!r}; known heads: {', '.join(HEADS)}")


# ---------------------------------------------------------------------------------------------
# torch heads


@contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's RNGs for one fit and restore them afterwards.

    Weight init and dropout draw from torch's global generators (they take no generator
    argument), so a fit forks them rather than moving the caller's random streams.
    """
    cuda = []
    if device.type == "cuda":
        cuda = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
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


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
        stopping = EarlyStopping(self.patience)
        for epoch in range(1, self.max_epochs + 1):
            module.train()
            # array_split keeps batches near-equal, so none has the single sample BatchNorm rejects
            for batch in np.array_split(rng.permutation(train), n_batches):
                index = torch.as_tensor(batch, device=device)
                optimizer.zero_grad()
                F.cross_entropy(module(X_t[index]), y_t[index]).backward()
                optimizer.step()
            if val is None:
                continue
            module.eval()
            index = torch.as_tensor(val, device=device)
            with torch.no_grad():
                loss = F.cross_entropy(module(X_t[index]), y_t[index]).item()
            if stopping.update(loss, module):
                break
        stopping.restore(module)
        return epoch

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


class SoftmaxClassifier(_TorchClassifier):
    """One linear layer + softmax (the tutorials' ``Dense(n_classes, softmax)`` top)."""

    def __init__(
        self,
        *,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-2,
        batch_size: int = 32,
        max_epochs: int = 200,
        validation_fraction: float = 0.1,
        patience: int = 10,
        device: str = "auto",
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.device = device
        self.random_state = random_state

    def _build_module(self, n_features: int, n_classes: int) -> nn.Module:
        return nn.Linear(n_features, n_classes)


class MLPHeadClassifier(_TorchClassifier):
    """Dense(hidden_units) + BatchNorm1d + ReLU + Dropout + Dense(n_classes) + softmax."""

    def __init__(
        self,
        *,
        hidden_units: int = 64,
        dropout: float = 0.5,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-2,
        batch_size: int = 32,
        max_epochs: int = 200,
        validation_fraction: float = 0.1,
        patience: int = 10,
        device: str = "auto",
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.hidden_units = hidden_units
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.device = device
        self.random_state = random_state

    def _build_module(self, n_features: int, n_classes: int) -> nn.Module:
        return nn.Sequential(
            nn.Linear(n_features, self.hidden_units),
            nn.BatchNorm1d(self.hidden_units),
            nn.ReLU(),
            nn.Dropout(self.dropout),
            nn.Linear(self.hidden_units, n_classes),
        )


class SmallCNNClassifier(_TorchClassifier):
    """A small CNN trained from scratch on raw pixels: the seeds' from-scratch baseline.

    It reads a rawN vector (3 x N x N pixels, as `raw32` caches them) back into an image: three
    conv + batch-norm + ReLU blocks (32, 64, 128 channels; the first two max-pooled), global
    average pooling, dropout and a linear layer. Any other input width is an error naming the fix.
    """

    def __init__(
        self,
        *,
        dropout: float = 0.3,
        learning_rate: float = 3e-3,
        weight_decay: float = 1e-3,
        batch_size: int = 32,
        max_epochs: int = 100,
        validation_fraction: float = 0.1,
        patience: int = 10,
        device: str = "auto",
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.device = device
        self.random_state = random_state

    def _build_module(self, n_features: int, n_classes: int) -> nn.Module:
        side = math.isqrt(n_features // 3)
        if 3 * side * side != n_features:
            raise FitError(f"the cnn head trains on raw pixels (3 x N x N values, e.g. raw32), not {n_features} "
                           "features: pass --model raw32, or another head")

        def block(inputs: int, outputs: int, pool: bool) -> list[nn.Module]:
            return [nn.Conv2d(inputs, outputs, 3, padding=1), nn.BatchNorm2d(outputs), nn.ReLU(),
                    *([nn.MaxPool2d(2)] if pool else [])]

        return nn.Sequential(nn.Unflatten(1, (3, side, side)), *block(3, 32, True), *block(32, 64, True),
                             *block(64, 128, False), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(self.dropout),
                             nn.Linear(128, n_classes))


class FrozenNorm(nn.Module):
    """A pretrained part whose batch-norm layers keep their ImageNet statistics in training: with
    tens of images per class, batch statistics would replace them with noise."""

    def __init__(self, part: nn.Module) -> None:
        super().__init__()
        self.part = part

    def train(self, mode: bool = True) -> FrozenNorm:
        super().train(mode)
        for layer in self.part.modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                layer.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.part(x)


class FineTunedTailClassifier(_TorchClassifier):
    """The last layers of a pretrained network, trained with a new linear layer on cached maps.

    The bottleneck way to fine-tune: `tail` (from `sources.build_tail`) maps a layer's output of
    shape `map_shape`, which the cache holds flattened (`--pool none`), to the network's features.
    Each fit trains a copy of it (batch-norm statistics frozen) and a linear layer on top, so no
    image is decoded or run through the frozen part again: linear probe, then fine-tune, with small
    steps (AdamW at 1e-4) from the probe.
    """

    def __init__(
        self,
        tail: nn.Module | None = None,
        map_shape: tuple[int, ...] = (),
        *,
        probe_first: bool = True,
        learning_rate: float = 1e-4,
        weight_decay: float = 1e-2,
        batch_size: int = 32,
        max_epochs: int = 30,
        validation_fraction: float = 0.1,
        patience: int = 5,
        device: str = "auto",
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.tail = tail
        self.map_shape = map_shape
        self.probe_first = probe_first
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.device = device
        self.random_state = random_state

    def _build_module(self, n_features: int, n_classes: int) -> nn.Module:
        if self.tail is None or math.prod(self.map_shape) != n_features:
            raise FitError(f"a fine-tuned tail reads a layer's whole map ({math.prod(self.map_shape)} values, "
                           f"shape {self.map_shape}), not {n_features} features: pass the --pool none extraction")
        tail = FrozenNorm(copy.deepcopy(self.tail).requires_grad_(True))
        with torch.no_grad():
            width = tail.eval()(torch.zeros(1, *self.map_shape)).shape[1]
        return nn.Sequential(nn.Unflatten(1, self.map_shape), tail, nn.Linear(width, n_classes))

    def _initialise(self, module: Any, X: np.ndarray, y: np.ndarray, device: torch.device) -> None:
        """Linear probe, then fine-tune: the linear layer starts as compare's tuned `logreg` fitted
        on the pretrained tail's output (the frozen embedding), so training begins from the frozen
        features' best linear head instead of from noise."""
        if not self.probe_first:
            return
        frozen, linear = module[:2].eval(), module[2]
        with torch.no_grad():
            features = torch.cat([frozen(torch.as_tensor(X[i:i + 256], device=device))
                                  for i in range(0, len(X), 256)]).cpu().numpy().astype(np.float64)
        start_from_probe(linear, features, y)


def start_from_probe(linear: nn.Linear, features: np.ndarray, y: np.ndarray) -> None:
    """Set `linear` to compare's tuned logreg fitted on `features` (class indices `y`), the
    standardisation folded in: fine-tuning then starts from the frozen features' best linear head."""
    probe = make_head("logreg", tune=True, random_state=0).fit(features, y)
    scaler, logreg = probe[0], probe[-1].model_
    coef = logreg.coef_ / scaler.scale_
    intercept = logreg.intercept_ - coef @ scaler.mean_
    if len(coef) == 1:  # two classes: one logit difference
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.r_[0.0, intercept]
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(coef, dtype=torch.float32))
        linear.bias.copy_(torch.as_tensor(intercept, dtype=torch.float32))


# ---------------------------------------------------------------------------------------------
# registry


class _StratifiedKFoldUpTo(BaseCrossValidator):
    """Shuffled StratifiedKFold with ``min(max_splits, smallest class count)`` folds, fixed at
    split time, so one splitter suits any training set.

    Deliberately has no ``n_splits`` attribute: CalibratedClassifierCV would read it as a fixed
    fold count.
    """

    def __init__(self, max_splits: int = 5, random_state: int | None = None) -> None:
        self.max_splits = max_splits
        self.random_state = random_state

    def _kfold(self, y: Any) -> StratifiedKFold:
        smallest = int(np.unique(np.asarray(y), return_counts=True)[1].min())
        if smallest < 2:
            raise ValueError(
                "cross-validation needs at least 2 samples of every class; "
                f"the smallest class has {smallest}"
            )
        n_splits = min(self.max_splits, smallest)
        return StratifiedKFold(n_splits, shuffle=True, random_state=self.random_state)

    def split(self, X: Any, y: Any, groups: Any = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self._kfold(y).split(X, y)

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        # without y only the upper bound is known
        return self.max_splits if y is None else self._kfold(y).get_n_splits()


def tuning_splits(y: np.ndarray, folds: int | str, holdout: float,
                  random_state: int | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (train, held-out) row splits a C path is scored on: one stratified held-out part of
    `holdout` (at least one image per class), or stratified k-fold. folds="auto": 5 folds below
    250 images, where a held-out fifth (under 50 images) measures accuracy in steps of 2 points or
    more, coarser than the differences between Cs; one held-out part above, where each fold costs."""
    classes, counts = np.unique(y, return_counts=True)
    k = (5 if len(y) < 250 else 1) if folds == "auto" else int(folds)
    if k > 1:
        kfold = StratifiedKFold(min(k, int(counts.min())), shuffle=True, random_state=random_state)
        return list(kfold.split(np.zeros(len(y)), y))
    held = StratifiedShuffleSplit(1, test_size=max(holdout, len(classes) / len(y)), random_state=random_state)
    return list(held.split(np.zeros(len(y)), y))


class PathTunedLogisticRegression(ClassifierMixin, BaseEstimator):
    """Logistic regression whose C is chosen on held-out parts of the training data
    (`tuning_splits`), along a warm-started path of Cs (small to large, stopping at the first C
    whose mean held-out score is no better than a smaller one's: larger Cs cost most), then
    refitted on all of it from the chosen C's solution: a few untuned fits, where a 5 C x 5-fold
    grid search costs 25 cold ones. On CNN embeddings the C curve is
    flat (FIELD_NOTES), so one held-out part chooses as well as five folds once it holds 50 images.

    With fewer than 2 images in some class nothing can be held out, and `default_C` is used.
    """

    def __init__(self, Cs: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0), holdout: float = 0.2,
                 folds: int | str = "auto", default_C: float = 0.1, max_iter: int = 5000,
                 random_state: int | None = 0) -> None:
        self.Cs = Cs
        self.holdout = holdout
        self.folds = folds
        self.default_C = default_C
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> PathTunedLogisticRegression:
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        classes, counts = np.unique(y, return_counts=True)
        self.scores_: dict[float, float] = {}
        start: tuple[np.ndarray, np.ndarray] | None = None
        if counts.min() >= 2 and len(classes) > 1:
            splits = tuning_splits(y, self.folds, self.holdout, self.random_state)
            paths = [LogisticRegression(max_iter=self.max_iter, warm_start=True, random_state=self.random_state)
                     for _ in splits]
            solutions = {}
            for C in sorted(self.Cs):
                best = max(self.scores_.values(), default=-1.0)
                self.scores_[C] = float(np.mean([path.set_params(C=C).fit(X[train], y[train]).score(X[val], y[val])
                                                 for path, (train, val) in zip(paths, splits)]))
                solutions[C] = (paths[0].coef_.copy(), paths[0].intercept_.copy())
                if self.scores_[C] <= best:  # no better than a smaller C: stop, larger Cs cost most
                    break
            self.C_ = max(self.scores_, key=lambda C: self.scores_[C])  # the smallest of equals
            start = solutions[self.C_]
        else:
            self.C_ = self.default_C
        self.model_ = LogisticRegression(C=self.C_, max_iter=self.max_iter, warm_start=True,
                                         random_state=self.random_state)
        if start is not None:  # sklearn's warm start begins from whatever coef_ holds
            self.model_.classes_ = classes
            self.model_.coef_, self.model_.intercept_ = start
        self.model_.fit(X, y)
        self.classes_, self.n_iter_ = self.model_.classes_, self.model_.n_iter_
        self.best_params_ = {"C": self.C_}
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return self.model_.decision_function(validate_data(self, X, reset=False))

    def predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return self.model_.predict(validate_data(self, X, reset=False))

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return self.model_.predict_proba(validate_data(self, X, reset=False))


class FastGaussianNB(GaussianNB):
    """GaussianNB whose log-likelihoods are two matrix products (the square expanded) instead of a
    loop over classes over (n, d) arrays: 8.7 s → 0.1 s for 7,650 raw32 images at 102 classes."""

    def _joint_log_likelihood(self, X: Any) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        precision = 1.0 / self.var_
        quadratic = (X * X) @ precision.T - 2 * X @ (self.theta_ * precision).T \
            + (self.theta_ ** 2 * precision).sum(axis=1)
        constant = np.log(self.class_prior_) - 0.5 * np.log(2.0 * np.pi * self.var_).sum(axis=1)
        return constant - 0.5 * quadratic


def _labels(classes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Labels from decision values: a binary SVM's one column is positive for classes[1]."""
    return classes[(scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)]


class LinearSVMClassifier(ClassifierMixin, BaseEstimator):
    """A linear SVM, one class against the rest, each a libsvm problem on one shared Gram matrix.

    One-vs-rest came within a point of logistic regression where libsvm's one-vs-one did not
    (openclipart22, Lite0, 15 / 30 per class: 0.655 / 0.750 against logreg's 0.661 / 0.760 and
    one-vs-one's 0.644 / 0.741), and liblinear's one-vs-rest LinearSVC took 35-58 s a fit at 102
    classes. Here the Gram matrix X Xᵀ is one BLAS product shared by the k problems, each of which
    libsvm solves in milliseconds at a small C, and predictions come from the primal weights.
    Beyond `gram_max_rows` training rows (a 2 GiB Gram matrix) each problem uses libsvm's own
    linear kernel instead.
    """

    gram_max_rows = 16384

    def __init__(self, C: float = 0.0005) -> None:
        self.C = C

    def fit(self, X: Any, y: Any) -> LinearSVMClassifier:
        X, y = validate_data(self, X, y, dtype=np.float64, order="C")
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ValueError(f"LinearSVMClassifier needs at least 2 classes; got {len(self.classes_)} class")
        gram = X @ X.T if len(X) <= self.gram_max_rows else None
        targets = self.classes_[1:] if len(self.classes_) == 2 else self.classes_
        coefs, intercepts = [], []
        for target in targets:
            svm = SVC(kernel="precomputed" if gram is not None else "linear", C=self.C)
            svm.fit(gram if gram is not None else X, y == target)
            # decision = dual_coef_ · K(support vectors, x) + intercept_, positive for `target`
            coefs.append(svm.dual_coef_[0] @ X[svm.support_])
            intercepts.append(svm.intercept_[0])
        self.coef_, self.intercept_ = np.array(coefs), np.array(intercepts)
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        scores = X @ self.coef_.T + self.intercept_
        return scores.ravel() if len(self.classes_) == 2 else scores

    def predict(self, X: Any) -> np.ndarray:
        scores = self.decision_function(X)  # first: it raises NotFittedError
        return _labels(self.classes_, scores)


class RBFSVMClassifier(ClassifierMixin, BaseEstimator):
    """libsvm's one-vs-one RBF SVM on a kernel matrix computed with BLAS.

    The same solution as ``SVC(kernel="rbf", break_ties=True)``, whose kernel rows libsvm computes
    one dot product at a time: 10x slower on 3,072-d raw pixels (openclipart22, 30 per class: 0.24 s
    a fit against 2.4 s). Predictions are the argmax of the one-vs-rest decision values (votes plus
    scaled confidences, as scikit-learn's), here two sparse products instead of a loop over the
    k(k-1)/2 pairs (3.1 s → 0.6 s for 6,000 images at 102 classes). Beyond `gram_max_rows` training
    rows (a 2 GiB kernel matrix) it is libsvm's own RBF kernel.
    """

    gram_max_rows = 16384
    _block_elements = 2**24  # test rows x training rows of kernel at a time: 128 MiB

    def __init__(self, C: float = 1.0, gamma: float | str = "scale") -> None:
        self.C = C
        self.gamma = gamma

    def _kernel(self, A: np.ndarray, B: np.ndarray) -> np.ndarray:
        distances = (A * A).sum(axis=1)[:, None] + (B * B).sum(axis=1)[None, :] - 2 * A @ B.T
        return np.exp(-self.gamma_ * np.maximum(distances, 0, out=distances))

    def fit(self, X: Any, y: Any) -> RBFSVMClassifier:
        X, y = validate_data(self, X, y, dtype=np.float64, order="C")
        check_classification_targets(y)
        if self.gamma == "scale":  # as SVC: 1 / (n_features * X.var())
            variance = X.var()
            self.gamma_ = 1.0 / (X.shape[1] * variance) if variance > 0 else 1.0
        elif self.gamma == "auto":
            self.gamma_ = 1.0 / X.shape[1]
        elif isinstance(self.gamma, str):
            raise ValueError(f"gamma={self.gamma!r}: use 'scale', 'auto' or a positive number")
        else:
            self.gamma_ = float(self.gamma)
        options = {"C": self.C, "decision_function_shape": "ovo"}
        if len(X) <= self.gram_max_rows:
            self.svc_ = SVC(kernel="precomputed", **options).fit(self._kernel(X, X), y)
            self.support_vectors_ = X[self.svc_.support_]
        else:
            self.svc_ = SVC(kernel="rbf", gamma=self.gamma_, **options).fit(X, y)
        self.classes_ = self.svc_.classes_
        # +1 for each pair's first class, -1 for its second, in libsvm's order of the pairs
        first, second = np.triu_indices(len(self.classes_), 1)
        pairs = np.arange(len(first))
        self.pair_signs_ = sparse.csr_matrix((np.r_[np.ones(len(pairs)), -np.ones(len(pairs))],
                                              (np.r_[pairs, pairs], np.r_[first, second])),
                                             shape=(len(pairs), len(self.classes_)))
        return self

    def _pairwise(self, X: Any) -> np.ndarray:
        """libsvm's one-vs-one decision values, a block of rows at a time; with a precomputed kernel,
        the support vectors' columns computed and the others zero (libsvm reads only those)."""
        X = validate_data(self, X, dtype=np.float64, reset=False)
        if self.svc_.kernel != "precomputed":
            return self.svc_.decision_function(X)
        n_train, support = self.svc_.shape_fit_[0], self.svc_.support_
        block = max(1, self._block_elements // n_train)
        values = []
        for start in range(0, len(X), block):
            rows = np.zeros((len(X[start:start + block]), n_train))
            rows[:, support] = self._kernel(X[start:start + block], self.support_vectors_)
            values.append(self.svc_.decision_function(rows))
        return np.concatenate(values)

    def decision_function(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        pairwise = self._pairwise(X)
        if len(self.classes_) == 2:
            return pairwise.ravel()
        # a pair's positive value is a vote for its first class, a negative one for its second;
        # class c is the second class of c pairs. Confidences summed per class, squashed below 1/3.
        votes = (pairwise >= 0).astype(np.float64) @ self.pair_signs_ + np.arange(len(self.classes_))
        confidence = pairwise @ self.pair_signs_
        return votes + confidence / (3 * (np.abs(confidence) + 1))

    def predict(self, X: Any) -> np.ndarray:
        scores = self.decision_function(X)  # first: it raises NotFittedError
        return _labels(self.classes_, scores)


def _svm(random_state: int | None, params: dict[str, Any], probabilities: bool = True) -> BaseEstimator:
    """A linear SVM, one class against the rest, C = 0.0005 (`LinearSVMClassifier`); kernel="rbf"
    gives `RBFSVMClassifier` (one-vs-one, C = 1), another kernel libsvm's SVC with it.

    Probabilities: temperature scaling of cross-validated decision values, one SVM fitted on all
    the data. It keeps the SVM's own ranking, so the calibrated head predicts exactly what the bare
    SVM does: compare fits the bare one (probabilities=False), 4-5x cheaper. Per-class sigmoids
    (Platt) reorder classes: on openclipart22 (Lite0, 10 per class) they cost 13 points."""
    kernel = params.get("kernel")
    svm: BaseEstimator
    if kernel is None:
        svm = LinearSVMClassifier(**params)
    elif kernel == "rbf" and set(params) <= {"kernel", "C", "gamma"}:
        svm = RBFSVMClassifier(**{k: v for k, v in params.items() if k != "kernel"})
    else:
        svm = SVC(**{"break_ties": True, **params})  # predict = argmax of decision values
    if not probabilities:
        return svm
    return CalibratedClassifierCV(svm, method="temperature", cv=_StratifiedKFoldUpTo(3, random_state),
                                  ensemble=False)


_Builder = Callable[[int | None, dict[str, Any]], BaseEstimator]

_BUILDERS: dict[str, _Builder] = {
    "softmax": lambda rs, p: SoftmaxClassifier(random_state=rs, **p),
    "logreg": lambda rs, p: LogisticRegression(
        **{"C": 0.1, "max_iter": 5000, "random_state": rs, **p}
    ),
    "svm": _svm,
    # Extremely randomised trees, √d features per split (log2(d) on raw pixels, see input_params):
    # on openclipart22 and photo_vs_drawing (Lite0 and raw32, 15 / 30 per class) above the 300-tree
    # random forest in 7 of 8 cells and faster (0.7x its fit time there, 1/17 at 102 classes; RESULTS.md 9).
    "et": lambda rs, p: ExtraTreesClassifier(
        **{"n_estimators": 300, "max_features": "sqrt", "n_jobs": -1, "random_state": rs, **p}
    ),
    "rf": lambda rs, p: RandomForestClassifier(
        **{"n_estimators": 300, "n_jobs": -1, "random_state": rs, **p}
    ),
    # Cosine: the direction of a CNN embedding carries the class, its norm mostly image
    # contrast/content amount, and in ~1000 dimensions euclidean distances concentrate.
    # Distance weights: with a handful of images per class, k=5 reaches into other classes.
    "knn": lambda rs, p: KNeighborsClassifier(
        **{"n_neighbors": 5, "metric": "cosine", "weights": "distance", **p}
    ),
    "mlp": lambda rs, p: MLPHeadClassifier(random_state=rs, **p),
    "nb": lambda rs, p: FastGaussianNB(**p),
    "cnn": lambda rs, p: SmallCNNClassifier(random_state=rs, **p),
}

# In the classifier's own parameter names; param_grid() adds the pipeline prefix.
_GRIDS: dict[str, dict[str, list[Any]]] = {
    "softmax": {"weight_decay": [1e-4, 1e-3, 1e-2, 1e-1, 1.0]},
    "logreg": {"C": [0.001, 0.01, 0.1, 1.0, 10.0]},
    # gamma="scale" is 1/n_features on standardised data, right for embeddings of any width; a
    # gamma grid made tuned SVMs 4x slower (each point costs folds x calibration fits) for no gain.
    "svm": {"C": [0.0001, 0.0005, 0.001, 0.01]},  # linear; param_grid gives the RBF grid for kernel="rbf"
    "et": {"max_features": ["sqrt", "log2"], "min_samples_leaf": [1, 2, 4]},
    "rf": {"max_depth": [None, 8, 16], "max_features": ["sqrt", "log2"]},
    "knn": {"n_neighbors": [1, 3, 5, 7, 11, 15]},
    "mlp": {"dropout": [0.2, 0.5], "weight_decay": [1e-3, 1e-2, 1e-1]},
    "nb": {"var_smoothing": [1e-9, 1e-7, 1e-5, 1e-3, 1e-1]},
    "cnn": {"weight_decay": [1e-4, 1e-3, 1e-2]},
}


def input_params(name: str, raw_pixels: bool) -> dict[str, Any]:
    """Parameters that depend on what the head reads (openclipart22 and photo_vs_drawing, raw32 and
    Lite0, 15 / 30 per class; benchmarks/RESULTS.md 9). On raw pixels the svm head is an RBF SVM:
    the linear kernel that suits embeddings lost 1-6 points to it there. The trees draw log2(d)
    features per split on pixels, where √d lost 1.4-1.6 points on openclipart22 (and gained 1.8-2.1
    on its embeddings)."""
    if raw_pixels and name == "svm":
        return {"kernel": "rbf"}
    if raw_pixels and name == "et":
        return {"max_features": "log2"}
    return {}


def param_grid(name: str, **params: Any) -> dict[str, list[Any]]:
    """The grid ``make_head(name, tune=True, **params)`` searches, in pipeline parameter names.

    ``params`` matter only where they change what is worth searching (``svm`` with
    ``kernel="linear"`` has no gamma).
    """
    _check_name(name)
    grid = {key: list(values) for key, values in _GRIDS[name].items()}
    if name == "svm" and "kernel" in params and params["kernel"] != "linear":
        grid = {"C": [0.1, 1.0, 10.0, 100.0], "gamma": ["scale"]}
    prefix = "clf__estimator__" if name == "svm" else "clf__"  # the calibrated SVC
    return {prefix + key: values for key, values in grid.items()}


def make_head(
    name: str,
    *,
    tune: bool = False,
    l2_normalize: bool = False,
    random_state: int | None = 0,
    probabilities: bool = True,
    **params: Any,
) -> Pipeline | GridSearchCV:
    """A fresh, unfitted head; ``params`` go to the classifier (for ``svm``, to the SVC).

    ``probabilities=False``: only labels will be asked for (compare); ``svm`` then skips its
    calibration, which changes no prediction. Tuning keeps it (the grid names the calibrated SVC).

    ``tune=True`` wraps the pipeline in a GridSearchCV over ``param_grid(name, **params)`` with
    stratified k-fold (k = min(5, smallest class count), at least 2) on the data given to
    ``fit`` alone, then refits the best candidate on all of it.
    """
    _check_name(name)
    steps: list[tuple[str, BaseEstimator]] = [("scale", StandardScaler())]
    if l2_normalize:
        steps.append(("l2", Normalizer()))
    if tune and name == "logreg":  # its own cheaper search (see PathTunedLogisticRegression)
        steps.append(("clf", PathTunedLogisticRegression(random_state=random_state, **params)))
        return Pipeline(steps)
    if name == "svm":
        steps.append(("clf", _svm(random_state, params, probabilities or tune)))
    else:
        steps.append(("clf", _BUILDERS[name](random_state, params)))
    pipeline = Pipeline(steps)
    if not tune:
        return pipeline
    return GridSearchCV(
        pipeline, param_grid(name, **params), cv=_StratifiedKFoldUpTo(5, random_state)
    )
