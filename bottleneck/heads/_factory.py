"""The head catalogue and factory: `HEADS`, `make_pipeline` (every head but `auto`, the search among
them in `heads._auto`, whose `make_head` makes any head), their defaults and grids."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sklearn.base import BaseEstimator
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

from ..errors import UnknownHeadError
from ._blocks import BlockScaler
from ._classical import FastGaussianNB, _svm
from ._torch_heads import MLPHeadClassifier, SmallCNNClassifier, SoftmaxClassifier
from ._tuning import PathTunedLogisticRegression, _StratifiedKFoldUpTo

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
    "auto": "the head and key parameter (tuned logreg, knn k, nb, svm C, et; votes of logreg + et and logreg + svm + et, the trees weighing most) best by cross-validation on the training data",
}


def check_head(name: str) -> None:
    """The one check of a head name (fit, compare and the factory)."""
    if name not in HEADS:
        raise UnknownHeadError(f"unknown head {name!r}; known heads: {', '.join(HEADS)}")


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
    if name == "auto":  # passed on to each candidate
        return {"raw_pixels": raw_pixels}
    if raw_pixels and name == "svm":
        return {"kernel": "rbf"}
    if raw_pixels and name == "et":
        return {"max_features": "log2"}
    return {}


def param_grid(name: str, **params: Any) -> dict[str, list[Any]]:
    """The grid ``make_pipeline(name, tune=True, **params)`` searches, in pipeline parameter names.

    ``params`` matter only where they change what is worth searching (``svm`` with
    ``kernel="linear"`` has no gamma).
    """
    check_head(name)
    grid = {key: list(values) for key, values in _GRIDS[name].items()}
    if name == "svm" and "kernel" in params and params["kernel"] != "linear":
        grid = {"C": [0.1, 1.0, 10.0, 100.0], "gamma": ["scale"]}
    prefix = "clf__estimator__" if name == "svm" else "clf__"  # the calibrated SVC
    return {prefix + key: values for key, values in grid.items()}


def make_pipeline(
    name: str,
    *,
    tune: bool = False,
    l2_normalize: bool = False,
    random_state: int | None = 0,
    probabilities: bool = True,
    blocks: tuple[int, ...] = (),
    **params: Any,
) -> Pipeline | GridSearchCV:
    """A fresh, unfitted head; ``params`` go to the classifier (for ``svm``, to the SVC).

    ``blocks``: the widths of fused extractions side by side in the features; each block is then
    standardised and weighted to the same total variance (`BlockScaler`).

    ``probabilities=False``: only labels will be asked for (compare); ``svm`` then skips its
    calibration, which changes no prediction. Tuning keeps it (the grid names the calibrated SVC).

    ``tune=True`` wraps the pipeline in a GridSearchCV over ``param_grid(name, **params)`` with
    stratified k-fold (k = min(5, smallest class count), at least 2) on the data given to
    ``fit`` alone, then refits the best candidate on all of it.
    """
    check_head(name)
    if name == "auto":
        raise UnknownHeadError("auto is a search among the heads: make it with heads.make_head")
    steps: list[tuple[str, BaseEstimator]] = [("scale", BlockScaler(blocks=blocks) if blocks else StandardScaler())]
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
