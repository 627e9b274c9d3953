"""The whole pretrained network fine-tuned on its images: compare's expensive reference
(`--finetune all`), the seeds' fine-tuned classifiers, against which the cached rows read.

Unlike every other head it reads image files, not cached vectors: each row of X is an image's
(sha256, path), and each epoch decodes and augments every training image again. Epoch e trains on
augmented view e - 1 of each image, drawn as `extract --views` draws it (seeded by sha256 and view),
so its first K epochs see exactly the views a `+viewsK` row caches.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted
from torch import nn
from torch.nn import functional as F

from .augment import DEFAULT_AUGMENT, parse_augment
from .decode import DecodeDataset, decoded_batches
from .errors import FitError
from .heads import FrozenNorm, holdout_split, seeded_rng, start_from_probe, torch_threads, train_epochs
from .inference import forward_batch
from .runtime import resolve_device
from .sources import build
from .spec import ExtractorSpec, Preprocess


class FineTunedNetworkClassifier(ClassifierMixin, BaseEstimator):
    """`spec`'s network (pretrained, batch-norm statistics kept) and a linear layer, all trained.

    Linear probe, then fine-tune: the linear layer starts as the tuned logreg on the frozen
    features of the training images, then everything trains with AdamW at `learning_rate` (1e-5:
    1e-4 and 3e-5 scored 1-2.5 points lower on hymenoptera, and no better on openclipart22) on
    augmented views (`augment`), with early stopping on the plain views of a `validation_fraction`
    of the training images. X: rows of (sha256, path). `threads`: torch's CPU threads during the
    fit (default one per core); the fit runs where `device` says ("auto": CUDA, else Apple's MPS,
    else the CPU).
    """

    def __init__(
        self,
        spec: ExtractorSpec | None = None,
        augment: str = DEFAULT_AUGMENT,
        *,
        learning_rate: float = 1e-5,
        weight_decay: float = 1e-2,
        batch_size: int = 32,
        max_epochs: int = 8,
        validation_fraction: float = 0.1,
        patience: int = 2,
        device: str = "auto",
        threads: int | None = None,
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.spec = spec
        self.augment = augment
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.device = device
        self.threads = threads
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> FineTunedNetworkClassifier:
        items = _items(X)
        y = np.asarray(y)
        check_classification_targets(y)
        self.classes_, y_index = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 classes; got 1 class")
        if self.spec is None:
            raise FitError("a fine-tuned network needs the ExtractorSpec of the model to train")
        augment = parse_augment(self.augment)
        rng = check_random_state(self.random_state)
        device = resolve_device(self.device)
        backbone = build(self.spec.replace(precision="fp32"))
        preprocess = self.preprocess_ = backbone.preprocess
        train, val = holdout_split(y_index, self.validation_fraction, rng)
        seed = int(rng.randint(np.iinfo(np.int32).max))
        with torch_threads(self.threads or os.cpu_count() or 1), seeded_rng(seed, device):
            network = FrozenNorm(backbone.model.requires_grad_(True)).to(device)
            network.to(memory_format=torch.channels_last)
            # the probe sees every training image: held out from it, a tenth of 30 images cost 2 points
            features = _forward(network.eval(), items, preprocess, device)
            linear = nn.Linear(features.shape[1], len(self.classes_)).to(device)
            start_from_probe(linear, features.astype(np.float64), y_index)
            module = nn.Sequential(network, linear)
            optimizer = torch.optim.AdamW(module.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
            target = torch.as_tensor(y_index, device=device)

            def run_epoch(epoch: int) -> None:
                order = rng.permutation(train)
                views = DecodeDataset(items[order].tolist(), preprocess, augment,
                                      [(sha, epoch - 1) for sha in items[order, 0]])
                for indices, batch, failed in decoded_batches(views, self.batch_size, os.cpu_count() or 1, device):
                    _check_decoded(failed, items[order])
                    if batch is None:
                        continue
                    optimizer.zero_grad()
                    logits = forward_batch(module, preprocess, batch, device, None)
                    F.cross_entropy(logits, target[torch.as_tensor(order[indices], device=device)]).backward()
                    optimizer.step()

            validation_loss = None if val is None else functools.partial(
                self._validation_loss, module, items, val, target, preprocess, device)
            # the probe itself is the first candidate: an epoch must beat it to be kept
            self.n_iter_ = train_epochs(module, run_epoch, validation_loss, self.max_epochs, self.patience,
                                        start_is_candidate=True)
        self.module_ = module.cpu().eval()
        return self

    def _validation_loss(self, module: nn.Module, items: np.ndarray, val: np.ndarray, target: torch.Tensor,
                         preprocess: Preprocess, device: torch.device) -> float:
        """Cross-entropy on the plain views of the validation images."""
        logits = torch.as_tensor(_forward(module.eval(), items[val], preprocess, device), device=device)
        return F.cross_entropy(logits, target[torch.as_tensor(val, device=device)]).item()

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        device = resolve_device(self.device)
        with torch_threads(self.threads or os.cpu_count() or 1):
            logits = _forward(self.module_.to(device), _items(X), self.preprocess_, device)
        self.module_.cpu()  # it pickles and loads anywhere
        return torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=1).numpy()

    def predict(self, X: Any) -> np.ndarray:
        proba = self.predict_proba(X)  # first: it raises NotFittedError
        return self.classes_[np.argmax(proba, axis=1)]


def _items(X: Any) -> np.ndarray:
    items = np.asarray(X, dtype=object)
    if items.ndim != 2 or items.shape[1] != 2:
        raise FitError(f"a fine-tuned network reads image files: X must be rows of (sha256, path), "
                       f"not an array of shape {items.shape}")
    return items


def _check_decoded(failed: list[tuple[int, str]], items: np.ndarray) -> None:
    if failed:
        i, reason = failed[0]
        raise FitError(f"{items[i, 1]}: {reason}; it was readable when extracted: run `bottleneck extract` "
                       "again to update the cache")


def _forward(module: nn.Module, items: np.ndarray, preprocess: Preprocess, device: torch.device) -> np.ndarray:
    """`module` on the plain view of each image, in eval mode, as float32 rows in `items`' order."""
    dataset = DecodeDataset(items.tolist(), preprocess)
    outputs = []
    with torch.no_grad():
        for _, batch, failed in decoded_batches(dataset, 64, os.cpu_count() or 1, device):
            _check_decoded(failed, items)
            if batch is not None:
                outputs.append(forward_batch(module, preprocess, batch, device, None).float().cpu())
    return torch.cat(outputs).numpy()
