"""Logistic regression on many training draws at once, in torch: one batched solve on a GPU.

`compare` fits the same head on R draws of one feature set. `fit_draws` solves the R problems as
one: each draw is standardised on its own training rows (the head's StandardScaler), then the sum
of the R objectives of scikit-learn's multinomial `LogisticRegression(C)`,

    mean_i CE(x_i W_r + b_r, y_i) + ||W_r||^2 / (2 C_r n_r)       (the bias is not penalised)

is minimised by L-BFGS, each draw with its own weights, so the optimum is each draw's own. Tuning
is `heads.PathTunedLogisticRegression`'s rule, the one C path walk (`walk_C_path`) over held-out
parts of each draw (`heads.tuning_splits`): C walked upwards warm-started until it stops
improving, the best C per draw, refitted on all of the draw from there.

The same code runs on the CPU (tests) and on CUDA (where it pays: ~one solve for R draws).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from .heads import PathTunedLogisticRegression, block_weights, tuning_splits
from .heads._tuning import DEFAULT_C, walk_C_path


@dataclass(frozen=True)
class BatchedLogReg:
    """The settings of one batched head: `make_head("logreg", tune=...)` as a torch solve."""

    C: float = 0.1
    tune: bool = False
    Cs: tuple[float, ...] = PathTunedLogisticRegression().Cs
    holdout: float = PathTunedLogisticRegression().holdout
    folds: int | str = PathTunedLogisticRegression().folds
    max_iter: int = 1000
    tol: float = 1e-4
    random_state: int | None = 0
    blocks: tuple[int, ...] = ()  # fused extractions' widths: weighted as `heads.BlockScaler` weights them


@dataclass
class DrawPredictions:
    y_pred: list[np.ndarray]  # per draw, class labels of its test rows
    fit_seconds: float  # the whole solve divided by the number of draws
    predict_seconds: float
    C: list[float]  # per draw, the C used (chosen when tuned)


def fit_draws(head: BatchedLogReg, X: np.ndarray, y: np.ndarray, trains: Sequence[np.ndarray],
              tests: Sequence[np.ndarray], device: str | torch.device) -> DrawPredictions:
    """Fit `head` on each training draw `trains[r]` (row indices into X, y) and predict `tests[r]`."""
    device = torch.device(device)
    start = time.perf_counter()
    classes, y_index = np.unique(np.concatenate([y[t] for t in trains]), return_inverse=True)
    lookup = {c: i for i, c in enumerate(classes)}
    X_t = torch.as_tensor(np.ascontiguousarray(X), dtype=torch.float32, device=device)
    labels = [torch.as_tensor([lookup[c] for c in y[t]], device=device) for t in trains]
    rows = [torch.as_tensor(np.asarray(t), device=device) for t in trains]
    mean = torch.stack([X_t[r].mean(0) for r in rows])
    scale = torch.stack([X_t[r].std(0, correction=0) for r in rows])
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # StandardScaler leaves constant columns be
    if head.blocks:
        scale = scale / torch.as_tensor(block_weights(head.blocks), dtype=torch.float32, device=device)
    standard = [(X_t[r] - m) / s for r, m, s in zip(rows, mean, scale, strict=True)]
    k = len(classes)
    if head.tune:
        C, start_at = _tune(head, standard, labels, k, device)
    else:
        C, start_at = [head.C] * len(trains), _zeros(len(trains), X.shape[1], k, device)
    W, b = _solve(head, standard, labels, C, k, device, start_at)
    fitted = time.perf_counter()
    y_pred = []
    with torch.no_grad():
        for r, test in enumerate(tests):
            logits = ((X_t[torch.as_tensor(np.asarray(test), device=device)] - mean[r]) / scale[r]) @ W[r] + b[r]
            y_pred.append(classes[logits.argmax(1).cpu().numpy()])
    done = time.perf_counter()
    return DrawPredictions(y_pred, (fitted - start) / len(trains), (done - fitted) / len(trains), C)


def _zeros(R: int, d: int, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(R, d, k, device=device), torch.zeros(R, k, device=device)


def _solve(head: BatchedLogReg, Xs: list[torch.Tensor], ys: list[torch.Tensor], C: Sequence[float], k: int,
           device: torch.device, start: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """L-BFGS on the sum of the draws' objectives, from `start`; returns (W [R, d, k], b [R, k])."""
    W = start[0].clone().requires_grad_(True)
    b = start[1].clone().requires_grad_(True)
    # Draws of one size (the usual case) are one batched matmul; others are summed one by one.
    same = len({len(x) for x in Xs}) == 1
    X_all = torch.stack(Xs) if same else None
    y_all = torch.stack(ys) if same else None
    penalty = torch.tensor([1.0 / (2 * c * len(x)) for c, x in zip(C, Xs, strict=True)], device=device)
    optimizer = torch.optim.LBFGS([W, b], lr=1, max_iter=head.max_iter, tolerance_grad=head.tol,
                                  tolerance_change=1e-9, history_size=10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        if X_all is not None and y_all is not None:
            logits = torch.baddbmm(b[:, None, :], X_all, W)
            data = F.cross_entropy(logits.reshape(-1, k), y_all.reshape(-1), reduction="none")
            loss = data.reshape(len(Xs), -1).mean(1).sum()
        else:
            loss = torch.stack([F.cross_entropy(x @ W[r] + b[r], yy) for r, (x, yy) in enumerate(zip(Xs, ys, strict=True))]).sum()
        loss = loss + (penalty * W.square().sum((1, 2))).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return W.detach(), b.detach()


def _tune(head: BatchedLogReg, Xs: list[torch.Tensor], ys: list[torch.Tensor], k: int,
          device: torch.device) -> tuple[list[float], tuple[torch.Tensor, torch.Tensor]]:
    """Per draw, the C `walk_C_path` chooses from its mean held-out accuracies (over the draw's
    `tuning_splits`, all draws' splits in one solve), and that C's solution on the draw's first
    split to start the refit from."""
    problems = []  # (draw, train rows, held-out rows)
    for r, y in enumerate(ys):
        labels = y.cpu().numpy()
        if np.bincount(labels, minlength=k).min() < 2:  # nothing can be held out: the default C
            return [DEFAULT_C] * len(ys), _zeros(len(ys), Xs[0].shape[1], k, device)
        for train, val in tuning_splits(labels, head.folds, head.holdout, head.random_state):
            problems.append((r, torch.as_tensor(train, device=device), torch.as_tensor(val, device=device)))
    X_in = [Xs[r][train] for r, train, _ in problems]
    y_in = [ys[r][train] for r, train, _ in problems]
    first = [next(p for p, (r, _, _) in enumerate(problems) if r == draw) for draw in range(len(Xs))]
    state = _zeros(len(problems), Xs[0].shape[1], k, device)

    def solve(C: float) -> tuple[list[float], tuple[torch.Tensor, torch.Tensor]]:
        """All problems at C from the previous C's solution; each draw's mean held-out accuracy."""
        nonlocal state
        state = W, b = _solve(head, X_in, y_in, [C] * len(problems), k, device, state)
        right = [float(((Xs[r][val] @ W[p] + b[p]).argmax(1) == ys[r][val]).float().mean())
                 for p, (r, _, val) in enumerate(problems)]
        return [float(np.mean([a for a, (d, _, _) in zip(right, problems, strict=True) if d == r]))
                for r in range(len(Xs))], state

    walked = walk_C_path(head.Cs, solve)
    W = torch.stack([solution[0][first[r]] for r, solution in enumerate(walked.start)])
    b = torch.stack([solution[1][first[r]] for r, solution in enumerate(walked.start)])
    return walked.C, (W, b)
