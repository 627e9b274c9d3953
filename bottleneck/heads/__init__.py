"""Classifier heads on cached embeddings: each one a plain scikit-learn estimator.

``make_head(name)`` returns ``Pipeline([("scale", StandardScaler()), ("l2", Normalizer())?,
("clf", <classifier>)])``; ``tune=True`` wraps it in a ``GridSearchCV`` that only ever sees the
data passed to ``fit``; ``make_head("auto")`` is the search among them (`AutoHeadClassifier`). Defaults are chosen for small data: tens of images per class, ~1000-d
features.
"""

from ._auto import AutoHeadClassifier, make_head
from ._blocks import BlockScaler, block_weights
from ._classical import FastGaussianNB, LinearSVMClassifier, RBFSVMClassifier, labels_from_scores
from ._factory import HEADS, input_params, param_grid
from ._tail import FineTunedTailClassifier, FrozenNorm, start_from_probe
from ._torch import EarlyStopping, holdout_split, seeded_rng, torch_threads, train_epochs
from ._torch_heads import MLPHeadClassifier, SmallCNNClassifier, SoftmaxClassifier
from ._tuning import PathTunedLogisticRegression, tuning_splits

__all__ = ["HEADS", "AutoHeadClassifier", "BlockScaler", "EarlyStopping", "FastGaussianNB", "FineTunedTailClassifier", "FrozenNorm", "LinearSVMClassifier",
           "MLPHeadClassifier", "PathTunedLogisticRegression", "RBFSVMClassifier", "SmallCNNClassifier",
           "SoftmaxClassifier", "block_weights", "holdout_split", "input_params", "labels_from_scores", "make_head", "param_grid",
           "seeded_rng", "start_from_probe", "torch_threads", "train_epochs", "tuning_splits"]
