"""`auto`: the head chosen by cross-validation on the data it is fitted on (`AutoHeadClassifier`).

Each candidate (a head and a value of its key parameter, or a soft vote: the weighted mean of several
heads' probabilities) is scored on the training data alone, fold by fold, the default first and then the
cheapest, until the candidates or the time budget run out; the first in order of preference (the
votes, best scored first, then the order scored) within one standard error of the best is refitted
on all of it. With several fused extractions (`block_sets`), every
candidate is tried on each set of blocks. Inside a compare draw it chooses again for every draw
(nested), so its cell estimates what `fit --head auto` delivers."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import VotingClassifier
from sklearn.utils.validation import check_is_fitted

from ._factory import input_params, make_pipeline
from ._tuning import _StratifiedKFoldUpTo

# (head, its key parameter's values): the default first (logreg with its C tuned, as compare and
# `fit --tune` fit it; "tune" goes to make_pipeline), then the cheapest: the budget cuts from the end.
CANDIDATES: tuple[tuple[str, str, tuple[Any, ...]], ...] = (
    ("logreg", "tune", (True,)),
    ("knn", "n_neighbors", (5, 1, 11)),
    ("nb", "var_smoothing", (1e-9,)),
    ("svm", "C", (0.0005, 0.005)),
    ("et", "min_samples_leaf", (1,)),
)
# Soft votes (the weighted mean of the members' probabilities), scored from the members' out-of-fold
# probabilities at no further cost, and preferred to any single head within the noise of the best:
# the tuned logreg and the trees err on different images. The second adds the svm, the best fixed head
# of openclipart22's fused rows.
VOTERS: tuple[tuple[tuple[str, dict[str, Any]], ...], ...] = (
    (("logreg", {"tune": True}), ("et", {"min_samples_leaf": 1})),
    (("logreg", {"tune": True}), ("svm", {"C": 0.0005}), ("et", {"min_samples_leaf": 1})),
)
# The trees weigh more than a linear head: they were the best single head in most cells of 2- to
# 22-class sets of 30-660 training images, and an equal vote, siding with the logreg on most images
# where the two disagreed, gave half their lead away. The weights were chosen on sets apart from
# auto.py's (benchmarks/auto_votes.py, RESULTS.md 27-28): on 10 and 17 classes the weight hardly
# mattered from 1 to 8 (6: 11 of 12 cells within 0.5 points of the best fixed head) and the trees
# alone did worse; on six two-class sets the trees wanted nearly the whole say (24: 35 of 36 cells;
# 6: 32; trees alone: 33), the logreg deciding only where the trees are split.
ET_WEIGHT = 6.0
ET_WEIGHT_TWO_CLASSES = 24.0


def soft_votes(n_classes: int) -> tuple[tuple[tuple[tuple[str, dict[str, Any]], ...], tuple[float, ...]], ...]:
    """auto's soft votes for a task of `n_classes`: (members, weights), the trees weighing most."""
    trees = ET_WEIGHT_TWO_CLASSES if n_classes <= 2 else ET_WEIGHT
    return tuple((members, tuple(trees if head == "et" else 1.0 for head, _ in members)) for members in VOTERS)


@dataclass(frozen=True)
class Candidate:
    members: tuple[tuple[str, dict[str, Any]], ...]  # one (head, params), or the heads of a soft vote
    blocks: tuple[int, ...]  # the indices of the feature blocks it reads; () all
    views: bool = False  # trained on every view of each image, not its plain vector alone
    weights: tuple[float, ...] = ()  # a vote's, one per member

    def __hash__(self) -> int:  # its params are dicts
        return hash(repr(self))

    @property
    def head(self) -> str:
        return "+".join(head for head, _ in self.members)

    @property
    def params(self) -> dict[str, Any]:
        return self.members[0][1] if len(self.members) == 1 else {head: p for head, p in self.members}


def make_head(name: str, *, tune: bool = False, l2_normalize: bool = False, random_state: int | None = 0,
              probabilities: bool = True, blocks: tuple[int, ...] = (), **params: Any) -> Any:
    """A fresh, unfitted head of any name: `auto` (`params` its own), else `make_pipeline`'s."""
    if name == "auto":  # a search already: each candidate is a whole head of its own
        return AutoHeadClassifier(random_state=random_state, blocks=blocks, **params)
    return make_pipeline(name, tune=tune, l2_normalize=l2_normalize, random_state=random_state,
                         probabilities=probabilities, blocks=blocks, **params)


class AutoHeadClassifier(ClassifierMixin, BaseEstimator):
    """Chooses among `CANDIDATES` and `soft_votes` by cross-validation on the data given to `fit`.

    `budget`: seconds for the whole fit, the final refit included; a candidate expected to end past
    it is not scored, and the first (always scored) stops after the folds that fit in it. `blocks`:
    the widths of fused extractions side by side in the features; `block_sets`: which sets of them
    (block indices) to try, default all together. `raw_pixels`: what the features are, passed on to
    each candidate (`make_pipeline`). `views` V > 1: `fit` gets V rows per image, and every
    candidate trains on all of them, on the block sets among `view_blocks` (default all: the blocks
    whose views are augmented, the others repeating their plain vector); with `try_plain`, each is
    also tried on the plain vectors alone, and the views preferred within the noise."""

    def __init__(self, *, budget: float | None = None, folds: int = 5, random_state: int | None = 0,
                 blocks: tuple[int, ...] = (), raw_pixels: bool = False,
                 block_sets: tuple[tuple[int, ...], ...] | None = None, views: int = 1,
                 view_blocks: tuple[int, ...] | None = None, try_plain: bool = False) -> None:
        self.budget = budget
        self.folds = folds
        self.random_state = random_state
        self.blocks = blocks
        self.raw_pixels = raw_pixels
        self.block_sets = block_sets
        self.views = views
        self.view_blocks = view_blocks
        self.try_plain = try_plain

    def candidates(self, n_classes: int) -> list[Candidate]:
        """In the order they are scored: each head's values on each block set, then the votes (for
        `n_classes`); with views, on the plain vectors (`try_plain`), then trained on every view (on the
        block sets that have views)."""
        found = []
        for views in ((False, True) if self.try_plain else (True,)) if self.views > 1 else (False,):
            sets = [b for b in self.block_sets or ((),) if not views or self._has_views(b)]
            found += [Candidate(((head, {**input_params(head, self.raw_pixels), name: value}),), blocks, views)
                      for head, name, values in CANDIDATES for value in values for blocks in sets]
            found += [Candidate(tuple((head, {**input_params(head, self.raw_pixels), **p}) for head, p in vote), blocks,
                                views, weights) for vote, weights in soft_votes(n_classes) for blocks in sets]
        return found

    def _has_views(self, blocks: tuple[int, ...]) -> bool:
        return self.view_blocks is None or bool(set(blocks or range(len(self.blocks) or 1)) & set(self.view_blocks))

    def fit(self, X: Any, y: Any) -> AutoHeadClassifier:
        """`X`: with `views` V > 1, V rows per image, its plain vector first then its augmented views (as
        compare's views rows flatten them); folds split images, and every candidate is scored on the
        plain vectors of the held-out images."""
        start = time.perf_counter()
        X, y = np.asarray(X), np.asarray(y)
        if len(y) % self.views:
            raise ValueError(f"{len(y)} rows are not {self.views} views of each image")
        y = y[::self.views]  # one label per image
        splits = list(_StratifiedKFoldUpTo(self.folds, self.random_state).split(y, y))
        smallest_fold_train = min(len(train) for train, _ in splits)
        self.classes_ = np.unique(y)
        self.results_: list[dict[str, Any]] = []
        self._scored: list[Candidate] = []  # results_'s candidates
        self._scores: dict[Candidate, np.ndarray] = {}  # out-of-fold probabilities, for the votes
        candidates = self.candidates(len(self.classes_))
        members = {Candidate((m,), c.blocks, c.views) for c in candidates if len(c.members) > 1 for m in c.members}
        for candidate in candidates:
            if any(p.get("n_neighbors", 0) > smallest_fold_train for _, p in candidate.members):
                continue  # more neighbours than a fold has images
            if len(candidate.members) > 1:
                self._score_vote(candidate, splits, y, start)
                continue
            if self.results_ and self._past_budget(start, self._expected(candidate)):
                continue  # would end past the budget (a cheaper one further on may not)
            self._score(candidate, splits, X, y, start, candidate in members)
        best = self._one_standard_error()
        chosen: dict[str, Any] = {k: self.results_[best][k] for k in ("head", "params", "weights") if k in self.results_[best]}
        self.choice_ = chosen | ({"views": True} if self._scored[best].views else {})
        self.cv_score_ = self.results_[best]["cv_accuracy"]
        self.chosen_ = self._scored[best]
        self.columns_ = self._columns(self.chosen_.blocks)
        rows = self._rows(np.arange(len(y)), self.chosen_)
        self.estimator_ = self._build(self.chosen_).fit(X[rows][:, self.columns_], y[rows // self.views])
        self.n_features_in_ = int(X.shape[1])
        self.seconds_ = time.perf_counter() - start
        del self._scores, self._scored
        return self

    def _rows(self, images: np.ndarray, candidate: Candidate | None = None) -> np.ndarray:
        """The rows of X a candidate trains on for these images: every view, or the plain vectors
        (`candidate` None: the plain vectors, which every candidate is scored on)."""
        if candidate is not None and candidate.views:
            return (images[:, None] * self.views + np.arange(self.views)).ravel()
        return images * self.views

    def _score(self, candidate: Candidate, splits: list[tuple[np.ndarray, np.ndarray]], X: np.ndarray,
               y: np.ndarray, start: float, member: bool) -> None:
        """Cross-validates one head; the first candidate stops after the folds that fit in the budget.
        `member` of a vote: its out-of-fold probabilities are kept (the svm's calibration costs 4-5 fits
        and changes no label, so it is calibrated only then)."""
        began = time.perf_counter()
        (head, _), = candidate.members
        columns = self._columns(candidate.blocks)
        probabilities = head != "svm" or member
        out_of_fold = np.zeros((len(y), len(self.classes_)))
        folds = []
        for train, held in splits:
            rows = self._rows(train, candidate)
            model = self._build(candidate, probabilities=probabilities).fit(X[rows][:, columns], y[rows // self.views])
            if probabilities:
                out_of_fold[held] = _aligned(model, X[self._rows(held)][:, columns], self.classes_)
                predicted = self.classes_[out_of_fold[held].argmax(1)]
            else:
                predicted = model.predict(X[self._rows(held)][:, columns])
            folds.append(float(np.mean(predicted == y[held])))
            per_fold = (time.perf_counter() - began) / len(folds)
            if len(folds) < len(splits) and not self.results_ and \
                    self._past_budget(start, per_fold + self._refit_seconds(per_fold, len(y), train)):
                break  # the default alone: the folds that fit, then its refit
        if member and len(folds) == len(splits):
            self._scores[candidate] = out_of_fold
        self._record(candidate, folds, len(y), time.perf_counter() - began, len(train))

    def _score_vote(self, candidate: Candidate, splits: list[tuple[np.ndarray, np.ndarray]], y: np.ndarray,
                    start: float) -> None:
        """A soft vote's folds from its members' out-of-fold probabilities; skipped when one was not scored,
        or when refitting them all would end past the budget."""
        members = [Candidate((member,), candidate.blocks, candidate.views) for member in candidate.members]
        if not all(m in self._scores for m in members):
            return
        refit = sum(r["refit_seconds"] for r, c in zip(self.results_, self._scored, strict=True) if c in members)
        if self.budget is not None and time.perf_counter() - start + refit > self.budget:
            return
        mean = np.average([self._scores[m] for m in members], axis=0, weights=candidate.weights)
        folds = [float(np.mean(self.classes_[mean[held].argmax(1)] == y[held])) for _, held in splits]
        self._record(candidate, folds, len(y), 0.0, len(splits[0][0]), refit=refit)

    def _record(self, candidate: Candidate, folds: list[float], n: int, seconds: float, fold_rows: int,
                refit: float | None = None) -> None:
        self.results_.append({"head": candidate.head, "params": candidate.params,
                              **({"weights": list(candidate.weights)} if candidate.weights else {}),
                              "blocks": list(candidate.blocks), "views": candidate.views,
                              "cv_accuracy": float(np.mean(folds)), "cv_se": cv_standard_error(folds, n),
                              "folds": len(folds), "seconds": seconds,
                              "refit_seconds": refit if refit is not None else
                              self._refit_seconds(seconds / len(folds), n, np.empty(fold_rows))})
        self._scored.append(candidate)

    def _one_standard_error(self) -> int:
        accuracies = [r["cv_accuracy"] for r in self.results_]
        order = preference(accuracies, [len(c.members) > 1 for c in self._scored], [c.views for c in self._scored])
        return first_within_one_se(accuracies, [r["cv_se"] for r in self.results_], order)

    def _expected(self, candidate: Candidate) -> float:
        """Seconds a candidate should take, its refit included: as the last of its head did, else as the
        slowest so far."""
        same = [r for r in self.results_ if r["head"] == candidate.head and r["views"] == candidate.views]
        last = same[-1] if same else max(self.results_, key=lambda r: r["seconds"])
        scale = self.views if candidate.views and not last["views"] else 1  # each view a training row
        return float(last["seconds"] + last["refit_seconds"]) * scale

    def _past_budget(self, start: float, more: float) -> bool:
        if self.budget is None:
            return False
        reserve = max([r["refit_seconds"] for r in self.results_], default=0.0)  # the refit of what may be chosen
        return time.perf_counter() - start + more + reserve > self.budget

    @staticmethod
    def _refit_seconds(per_fold: float, n: int, train: np.ndarray) -> float:
        return per_fold * n / max(len(train), 1)

    def _columns(self, blocks: tuple[int, ...]) -> np.ndarray | slice:
        if not blocks or len(blocks) == len(self.blocks):
            return slice(None)
        edges = np.cumsum((0, *self.blocks))
        return np.concatenate([np.arange(edges[b], edges[b + 1]) for b in blocks])

    def _build(self, candidate: Candidate, probabilities: bool = True) -> Any:
        widths = tuple(self.blocks[b] for b in candidate.blocks) if candidate.blocks else self.blocks
        widths = widths if len(widths) > 1 else ()
        heads = [make_pipeline(head, random_state=self.random_state, blocks=widths, probabilities=probabilities,
                           **_settings(params)) for head, params in candidate.members]
        if len(heads) == 1:
            return heads[0]
        return VotingClassifier([(head, h) for (head, _), h in zip(candidate.members, heads, strict=True)],
                                voting="soft", weights=list(candidate.weights))

    def narrow(self) -> AutoHeadClassifier:
        """The fitted head, now taking only the chosen blocks' columns (what `fit` saves once it keeps just
        the extractions chosen)."""
        check_is_fitted(self, "estimator_")
        self.columns_ = slice(None)
        self.n_features_in_ = int(self.estimator_.n_features_in_)
        return self

    def predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "estimator_")
        return np.asarray(self.estimator_.predict(np.asarray(X)[:, self.columns_]))

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "estimator_")
        return np.asarray(self.estimator_.predict_proba(np.asarray(X)[:, self.columns_]))


def cv_standard_error(folds: Sequence[float], n: int) -> float:
    """The standard error of a CV score, at least one image of a fold: folds that all score 1.0 do
    not make a lead certain."""
    se = float(np.std(folds, ddof=1) / np.sqrt(len(folds))) if len(folds) > 1 else 0.0
    return max(se, len(folds) / n)


def preference(accuracies: Sequence[float], votes: Sequence[bool], views: Sequence[bool]) -> list[int]:
    """auto's order of preference among scored candidates: trained on views, then the votes (the best
    scored first), then the order scored. Views first: augmented copies of the training images rarely
    cost accuracy and often add it, by more than CV on so few images can show; votes next: the tuned
    logreg and the trees err on different images."""
    return sorted(range(len(accuracies)), key=lambda i: (not views[i], not votes[i], -accuracies[i] if votes[i] else 0.0))


def first_within_one_se(accuracies: Sequence[float], errors: Sequence[float], order: Sequence[int]) -> int:
    """The first candidate in `order` whose CV accuracy is within one standard error of the best's: on
    a few dozen images the best of a dozen noisy scores is partly luck, and a lead smaller than the
    noise does not repay leaving the preferred (benchmarks/RESULTS.md 23-27)."""
    top = max(range(len(accuracies)), key=lambda i: accuracies[i])
    return next(i for i in order if accuracies[i] >= accuracies[top] - errors[top])


def _aligned(model: Any, X: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """predict_proba over all of `classes` (a fold's training part can lack one)."""
    out = np.zeros((len(X), len(classes)))
    out[:, np.searchsorted(classes, model.classes_)] = model.predict_proba(X)
    return out


def _settings(params: dict[str, Any]) -> dict[str, Any]:
    """A candidate's parameters as make_pipeline takes them: "tune" is its own argument, the rest the classifier's."""
    return {"tune": bool(params.get("tune"))} | {k: v for k, v in params.items() if k != "tune"}
