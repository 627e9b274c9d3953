"""The backbone and a fitted head as one torch module: a uint8 RGB batch (N, H, W, 3) in, the head's
probabilities out, as `predict_proba` computes them.

Linear heads (logreg, softmax, the temperature-scaled linear SVM) become one matrix after the pooled
features, the standardisation folded in. knn, nb, mlp, cnn and the RBF SVM are rewritten in torch from
their fitted arrays, a soft vote (auto's) as the mean of its members' modules; the trees (et, rf) are
left to skl2onnx (`head_module` returns None for them, and for a vote with a tree among its members,
which `model_export` averages in ONNX), whose graph `model_export` joins after the backbone's.
A fused head's network (`FusedNet`) runs each block's backbone on its own crop and joins the
pooled features in block order before the head.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier, VotingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from torch import nn

from .errors import FitError
from .heads import (
    FineTunedTailClassifier,
    LinearSVMClassifier,
    MLPHeadClassifier,
    PathTunedLogisticRegression,
    RBFSVMClassifier,
    SmallCNNClassifier,
    SoftmaxClassifier,
)
from .spec import Preprocess

# What exports, said once for the errors and the README; the trees only to .onnx (through skl2onnx).
TORCH_HEADS = ("logreg", "softmax", "svm", "knn", "nb", "mlp", "cnn")
SKL2ONNX_HEADS = ("et", "rf")
TREES = (ExtraTreesClassifier, RandomForestClassifier)


def exportable() -> str:
    return f"{', '.join(TORCH_HEADS + SKL2ONNX_HEADS)} ({', '.join(SKL2ONNX_HEADS)} to .onnx only)"


def refuse(what: str) -> FitError:
    return FitError(f"{what}; heads that export: {exportable()}")


@dataclass(frozen=True)
class LinearForm:
    """probabilities = softmax(x @ weight.T + bias) on the pooled features x."""

    weight: np.ndarray  # (K, D), float64
    bias: np.ndarray  # (K,)
    temperature: float | None = None  # the SVM's inverse temperature (already inside weight and bias)


def unwrap(head: Any) -> tuple[list[Any], Any]:
    """(the transforms before the classifier, the classifier) of a head, tuned or not."""
    if isinstance(head, GridSearchCV):
        head = head.best_estimator_
    if isinstance(head, Pipeline):
        return [step for _, step in head.steps[:-1] if step not in (None, "passthrough")], head.steps[-1][1]
    return [], head


def classifier_form(clf: Any) -> LinearForm | None:
    """The classifier's own linear form (on its input), or None when it has none."""
    if isinstance(clf, PathTunedLogisticRegression):
        clf = clf.model_
    if isinstance(clf, LogisticRegression):
        coef, intercept = np.asarray(clf.coef_, float), np.asarray(clf.intercept_, float)
        if len(clf.classes_) == 2:  # sigmoid(z) = softmax([0, z])[1]
            return LinearForm(np.vstack([np.zeros_like(coef), coef]), np.r_[0.0, intercept])
        return LinearForm(coef, intercept)
    if isinstance(clf, SoftmaxClassifier) and isinstance(clf.module_, nn.Linear):
        return LinearForm(clf.module_.weight.detach().double().numpy(), clf.module_.bias.detach().double().numpy())
    if isinstance(clf, CalibratedClassifierCV):
        svm, beta = _temperature_scaled(clf)
        if isinstance(svm, LinearSVMClassifier):
            coef, intercept = np.asarray(svm.coef_, float), np.asarray(svm.intercept_, float)
            if len(svm.classes_) == 2:  # one decision value d; temperature scaling reads it as logits (-d, d)
                coef, intercept = np.vstack([-coef, coef]), np.r_[-intercept, intercept]
            return LinearForm(beta * coef, beta * intercept, beta)
    return None


def linear_form(head: Any) -> LinearForm:
    """A linear head (standardisation + logreg, softmax or the calibrated linear SVM) as one matrix
    on the pooled features: the scaler's shift and scale folded into the classifier's weights."""
    steps, clf = unwrap(head)
    form = classifier_form(clf)
    if form is None:
        raise refuse(f"{type(clf).__name__} has no linear form")
    weight, bias = form.weight, form.bias
    for step in reversed(steps):
        if not isinstance(step, StandardScaler):
            raise FitError(f"a {type(step).__name__} sits before the classifier: no single matrix folds it")
        mean = np.zeros(weight.shape[1]) if step.mean_ is None else np.asarray(step.mean_, float)
        scale = np.ones(weight.shape[1]) if step.scale_ is None else np.asarray(step.scale_, float)
        weight = weight / scale  # w · (x - m) / s = (w / s) · x - (w / s) · m
        bias = bias - weight @ mean
    return LinearForm(weight, bias, form.temperature)


def _temperature_scaled(clf: CalibratedClassifierCV) -> tuple[Any, float]:
    """(the SVM, its inverse temperature β) of a head calibrated by temperature on one SVM
    (`ensemble=False`): probabilities = softmax(β · decision values), a binary d read as (-d, d)."""
    calibrated = getattr(clf, "calibrated_classifiers_", [])
    if clf.method != "temperature":
        raise refuse(f"a {clf.method}-calibrated classifier (one calibrator per class) does not export")
    if len(calibrated) != 1 or len(calibrated[0].calibrators) != 1:
        raise refuse(f"a calibration that averages {len(calibrated)} models (ensemble=True) does not export")
    return calibrated[0].estimator, float(calibrated[0].calibrators[0].beta_)


# --- head modules: pooled features (N, D) float32 -> probabilities (N, K) ---------------------------


class Linear(nn.Module):
    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, form: LinearForm) -> None:
        super().__init__()
        self.register_buffer("weight", torch.tensor(form.weight, dtype=torch.float32))
        self.register_buffer("bias", torch.tensor(form.bias, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(torch.addmm(self.bias, x, self.weight.t()), dim=1)


class Standardise(nn.Module):
    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, scaler: StandardScaler, width: int) -> None:
        super().__init__()
        mean = np.zeros(width) if scaler.mean_ is None else scaler.mean_
        scale = np.ones(width) if scaler.scale_ is None else scaler.scale_
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


class L2Normalise(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        return x / torch.where(norm == 0, torch.ones_like(norm), norm)  # sklearn leaves zero rows as they are


class Softmaxed(nn.Module):
    """A torch head's own module (mlp, cnn), in eval mode, then softmax."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.module(x), dim=1)


class Neighbours(nn.Module):
    """k nearest neighbours by cosine or euclidean distance, votes uniform or weighted by 1 / distance."""

    points: torch.Tensor
    onehot: torch.Tensor

    def __init__(self, knn: KNeighborsClassifier) -> None:
        super().__init__()
        metric = knn.effective_metric_
        if metric not in ("cosine", "euclidean") or knn.weights not in ("uniform", "distance") or knn.outputs_2d_:
            raise refuse(f"knn with metric={metric!r}, weights={knn.weights!r} does not export")
        self.cosine, self.weighted, self.k = metric == "cosine", knn.weights == "distance", int(knn.n_neighbors)
        points = torch.tensor(np.asarray(knn._fit_X, float), dtype=torch.float32)
        if self.cosine:
            points = points / torch.linalg.vector_norm(points, dim=1, keepdim=True).clamp_min(1e-30)
        self.register_buffer("points", points)
        self.register_buffer("onehot", torch.eye(len(knn.classes_))[torch.as_tensor(knn._y)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cosine:
            x = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-30)
            distance = (1 - x @ self.points.t()).clamp(0, 2)
        else:
            distance = ((x * x).sum(1, keepdim=True) - 2 * x @ self.points.t()
                        + (self.points * self.points).sum(1)).clamp_min(0).sqrt()
        nearest, index = torch.topk(distance, self.k, dim=1, largest=False)
        weight = torch.ones_like(nearest)
        if self.weighted:  # a point at distance 0 takes all the weight (sklearn's rule)
            exact = (nearest == 0).to(nearest.dtype)
            has_exact = exact.amax(dim=1, keepdim=True) > 0
            weight = torch.where(has_exact, exact, 1 / nearest.clamp_min(1e-30))
        votes = (weight.unsqueeze(2) * self.onehot[index]).sum(dim=1)
        return votes / votes.sum(dim=1, keepdim=True)


class NaiveBayes(nn.Module):
    precision: torch.Tensor
    linear: torch.Tensor
    constant: torch.Tensor

    def __init__(self, nb: GaussianNB) -> None:
        super().__init__()
        precision = 1.0 / nb.var_
        self.register_buffer("precision", torch.tensor(precision.T, dtype=torch.float32))
        self.register_buffer("linear", torch.tensor((nb.theta_ * precision).T, dtype=torch.float32))
        constant = (np.log(nb.class_prior_) - 0.5 * np.log(2.0 * np.pi * nb.var_).sum(axis=1)
                    - 0.5 * (nb.theta_ ** 2 * precision).sum(axis=1))
        self.register_buffer("constant", torch.tensor(constant, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.constant - 0.5 * ((x * x) @ self.precision) + x @ self.linear, dim=1)


class KernelSVM(nn.Module):
    """`RBFSVMClassifier`'s decision values (one-vs-one, then votes + confidences), temperature-scaled.

    libsvm's pairwise decision values are linear in the kernel values of the support vectors:
    A · k(x) + c, read back from the fitted SVC itself on unit kernel rows, so its sign conventions
    come with them."""

    points: torch.Tensor
    A: torch.Tensor
    c: torch.Tensor
    signs: torch.Tensor

    def __init__(self, svm: RBFSVMClassifier, beta: float) -> None:
        super().__init__()
        svc, support = svm.svc_, svm.svc_.support_
        if svc.kernel != "precomputed":
            raise refuse("an RBF SVM fitted on more than 16,384 images (libsvm's own kernel)")
        rows = np.zeros((len(support) + 1, svc.shape_fit_[0]))
        rows[np.arange(1, len(support) + 1), support] = 1.0
        values = svc.decision_function(rows).reshape(len(rows), -1)
        self.register_buffer("points", torch.tensor(svm.support_vectors_, dtype=torch.float32))
        self.register_buffer("A", torch.tensor((values[1:] - values[0]).T, dtype=torch.float32))
        self.register_buffer("c", torch.tensor(values[0], dtype=torch.float32))
        self.register_buffer("signs", torch.tensor(svm.pair_signs_.toarray(), dtype=torch.float32))
        self.gamma, self.beta, self.binary = float(svm.gamma_), beta, len(svm.classes_) == 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squared = ((x * x).sum(1, keepdim=True) - 2 * x @ self.points.t() + (self.points * self.points).sum(1))
        pairwise = torch.exp(-self.gamma * squared.clamp_min(0)) @ self.A.t() + self.c
        if self.binary:
            scores = torch.cat([-pairwise, pairwise], dim=1)
        else:
            confidence = pairwise @ self.signs
            votes = (pairwise >= 0).to(x.dtype) @ self.signs + torch.arange(self.signs.shape[1], dtype=x.dtype)
            scores = votes + confidence / (3 * (confidence.abs() + 1))
        return torch.softmax(self.beta * scores, dim=1)


class MeanOf(nn.Module):
    """A soft vote: the (weighted) mean of its members' probabilities."""

    def __init__(self, members: list[nn.Module], weights: list[float] | None = None) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.shares = vote_shares(weights, len(members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(share * member(x) for share, member in zip(self.shares, self.members, strict=True))


def vote_shares(weights: list[float] | None, members: int) -> list[float]:
    """Each member's share of a soft vote (VotingClassifier's `weights`, None: equal), summing to 1."""
    raw = [1.0] * members if weights is None else [float(w) for w in weights]
    return [w / sum(raw) for w in raw]


def head_module(head: Any, width: int) -> nn.Module | None:
    """`head.predict_proba` as a torch module on `width`-d pooled features; None for the trees (and a
    vote with a tree), which skl2onnx converts. Heads with no export are a one-line FitError."""
    if isinstance(head, VotingClassifier):
        if head.voting != "soft":
            raise refuse("only a soft vote exports")
        members = [head_module(member, width) for member in head.estimators_]
        return None if any(m is None for m in members) else MeanOf([m for m in members if m is not None], head.weights)
    steps, clf = unwrap(head)
    if isinstance(clf, TREES):
        return None
    if all(isinstance(step, StandardScaler) for step in steps) and classifier_form(clf) is not None:
        return Linear(linear_form(head))
    layers: list[nn.Module] = []
    for step in steps:
        if isinstance(step, StandardScaler):
            layers.append(Standardise(step, width))
        elif isinstance(step, Normalizer) and step.norm == "l2":
            layers.append(L2Normalise())
        else:
            raise refuse(f"a {type(step).__name__} step does not export")
    layers.append(_classifier_module(clf))
    return nn.Sequential(*layers)


def _classifier_module(clf: Any) -> nn.Module:
    form = classifier_form(clf)
    if form is not None:
        return Linear(form)
    if isinstance(clf, KNeighborsClassifier):
        return Neighbours(clf)
    if isinstance(clf, GaussianNB):
        return NaiveBayes(clf)
    if isinstance(clf, FineTunedTailClassifier):
        raise refuse("a fine-tuned tail reads a layer's whole maps, not pooled features: it does not export yet")
    if isinstance(clf, (SoftmaxClassifier, MLPHeadClassifier, SmallCNNClassifier)):
        return Softmaxed(copy.deepcopy(clf.module_).float().eval())
    if isinstance(clf, CalibratedClassifierCV):
        svm, beta = _temperature_scaled(clf)
        if isinstance(svm, RBFSVMClassifier):
            return KernelSVM(svm, beta)
        raise refuse(f"a calibrated {type(svm).__name__} does not export")
    raise refuse(f"a {type(clf).__name__} head does not export")


def tree_count(head: Any) -> int | None:
    """The trees in a head (or among a vote's members), whose probabilities move in steps of 1/trees."""
    heads = head.estimators_ if isinstance(head, VotingClassifier) else [head]
    counts = [getattr(unwrap(h)[1], "n_estimators", 0) for h in heads]
    return max(counts) or None


class ClassifierNet(nn.Module):
    """uint8 RGB (N, S, S, 3), already resized and cropped → /255, (x - mean) / std → NCHW → the
    backbone's pooled features → `head` (None: the features themselves, for a head skl2onnx adds)."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, backbone: nn.Module, preprocess: Preprocess, head: nn.Module | None) -> None:
        super().__init__()
        self.backbone, self.head = backbone.eval(), head
        # (x / 255 - mean) / std as x * scale + shift, per channel (decode.normalize's arithmetic)
        self.register_buffer("scale", torch.tensor([1 / (255 * s) for s in preprocess.std], dtype=torch.float32))
        self.register_buffer("shift", torch.tensor(
            [-m / s for m, s in zip(preprocess.mean, preprocess.std, strict=True)], dtype=torch.float32))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.to(torch.float32) * self.scale + self.shift).permute(0, 3, 1, 2)
        features = self.backbone(x)
        return features if self.head is None else self.head(features)


class FusedNet(nn.Module):
    """A fused head's network (`fit --model a+b`): one uint8 batch per block, each through its own
    `ClassifierNet` (no head), the pooled features side by side in block order → `head` (None: the
    features themselves). Each block takes its own crop: the networks' resize and crop differ."""

    def __init__(self, blocks: list[ClassifierNet], head: nn.Module | None) -> None:
        super().__init__()
        self.blocks, self.head = nn.ModuleList(blocks), head

    def forward(self, *images: torch.Tensor) -> torch.Tensor:
        features = torch.cat([block(x) for block, x in zip(self.blocks, images, strict=True)], dim=1)
        return features if self.head is None else self.head(features)
