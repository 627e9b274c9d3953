"""`compare`'s fits: the grid as (row, head, draw) jobs, each read from cells/ when fitted before, else
fitted now and kept there: logreg cells batched in torch, whole networks one at a time, the rest in
parallel with joblib."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np

from .batched_logreg import BatchedLogReg, fit_draws
from .cells import CellCache
from .compare_plan import Plan, Row
from .errors import CompareError
from .evaluate import CellRun, Split, run_cell
from .finetune import FineTunedNetworkClassifier
from .progress import Progress, with_detail

CellKey = tuple[Row, str, int | None, int | None]  # (row, head, N per class, K folds)
Estimators = dict[tuple[Row, str], object]  # (row, head) → its unfitted estimator


@dataclass(frozen=True, eq=False)
class Job:
    """One fit, as scikit-learn's `_fit_and_score` under `cross_validate`: a row's head on one draw."""

    row: Row
    head: str
    per_class: int | None
    cv: int | None
    draw: int  # within its cell, from 0
    split: Split

    @property
    def cell(self) -> CellKey:
        return self.row, self.head, self.per_class, self.cv

    def cell_name(self) -> str:
        return f"{self.row.name} + {self.head}, " + (f"{self.cv}-fold" if self.cv else f"N={self.per_class}")


def by_cell(jobs: list[Job]) -> dict[CellKey, list[Job]]:
    cells: dict[CellKey, list[Job]] = {}
    for job in jobs:
        cells.setdefault(job.cell, []).append(job)
    return cells


def run_fits(jobs: list[Job], estimators: Estimators, plan: Plan, cells: Path, *, torch_device: str | None,
             n_jobs: int, progress: Progress | None) -> dict[Job, CellRun]:
    """Every job's run: from the `cells` folder when fitted before, else fitted now (and kept there)."""
    fitted = CellCache(cells)
    hashes = {key: joblib.hash(estimator) for key, estimator in estimators.items()}
    keys = {job: fitted.key(job.row.fingerprint, hashes[job.row, job.head], plan.shas, plan.labels, job.split)
            for job in jobs}
    return _run_grid(jobs, estimators, plan.labels, torch_device, n_jobs, with_detail(progress), fitted, keys)


def _run_grid(jobs: list[Job], estimators: Estimators, labels: np.ndarray, torch_device: str | None, n_jobs: int,
              report: Callable[[str, int, int, str], None], cells: CellCache, keys: dict[Job, str]
              ) -> dict[Job, CellRun]:
    """Every job not cached yet: batched logreg cells in torch on `torch_device`, whole networks one at a
    time in this process, the rest in parallel with `n_jobs` joblib workers."""
    done: dict[Job, CellRun] = {}
    tasks = []
    for job in jobs:
        cached = cells.get(keys[job])
        if cached is None:
            tasks.append(job)
        else:
            done[job] = cached
    total = len(done) + len(tasks)
    batched = [job for job in tasks if isinstance(estimators[job.row, job.head], BatchedLogReg)]
    serial = [job for job in tasks if isinstance(estimators[job.row, job.head], FineTunedNetworkClassifier)]
    taken = set(batched + serial)
    pending = [job for job in tasks if job not in taken]
    order = batched + pending + serial

    def show() -> None:  # the current cell: the first unfinished one in the order fits start
        report("fits", len(done), total, next((job.cell_name() for job in order if job not in done), ""))

    def finished(job: Job, run: CellRun) -> None:
        done[job] = run
        cells.put(keys[job], run)
        show()

    show()
    _fit_batched(batched, estimators, labels, torch_device, finished)
    _fit_parallel(pending, estimators, labels, n_jobs, finished)
    for job in serial:  # a whole network takes every core (or the GPU) for itself
        _, run = _fit(0, estimators[job.row, job.head], job.row.X, job.row.tta, labels, job.split)
        finished(job, _succeeded(job, run))
    return done


def _fit(index: int, estimator: object, X: np.ndarray, tta: bool, y: np.ndarray,
         split: Split) -> tuple[int, CellRun | str]:
    """One fit in a worker; a failure comes back as its message so the grid can name the cell."""
    try:
        return index, run_cell(estimator, X, y, split, tta)
    except Exception as exc:  # noqa: BLE001 - any estimator error becomes a CompareError naming the cell
        return index, f"{type(exc).__name__}: {exc}".splitlines()[0]


def _succeeded(job: Job, run: CellRun | str) -> CellRun:
    if isinstance(run, str):
        raise CompareError(f"{job.cell_name()}, draw {job.draw + 1} failed: {run}")
    return run


def _fit_batched(tasks: list[Job], estimators: Estimators, labels: np.ndarray, device: str | None,
                 finished: Callable[[Job, CellRun], None]) -> None:
    """Each batched logreg cell's draws in one torch solve on `device`."""
    for draws in by_cell(tasks).values():
        first = draws[0]
        head = estimators[first.row, first.head]
        assert isinstance(head, BatchedLogReg) and device is not None
        try:
            result = fit_draws(head, first.row.X, labels, [job.split.train for job in draws],
                               [job.split.test for job in draws], device)
        except (RuntimeError, ValueError) as exc:  # CUDA out of memory, a solver failure...
            raise CompareError(f"{first.cell_name()} failed on {device}: {str(exc).splitlines()[0]}; "
                               "pass --device sklearn to fit it on the CPU") from None
        for job, y_pred in zip(draws, result.y_pred, strict=True):
            finished(job, CellRun(y_pred, result.fit_seconds, result.predict_seconds))


def _fit_parallel(tasks: list[Job], estimators: Estimators, labels: np.ndarray, n_jobs: int,
                  finished: Callable[[Job, CellRun], None]) -> None:
    """The other fits, in parallel across cells with `n_jobs` joblib workers."""
    with tempfile.TemporaryDirectory(prefix="bottleneck-") as tmp:
        X_of = {row: row.X for row in dict.fromkeys(job.row for job in tasks)}
        if n_jobs != 1:  # memory-map the features once instead of shipping (and hashing) them per fit
            shared: dict[int, np.ndarray] = {}  # a views row and its +tta twin share one array
            for i, X in enumerate(X_of.values()):
                if id(X) not in shared:
                    shared[id(X)] = joblib.load(joblib.dump(X, f"{tmp}/{i}.joblib")[0], mmap_mode="r")
            X_of = {row: shared[id(X)] for row, X in X_of.items()}
        calls = (joblib.delayed(_fit)(i, estimators[job.row, job.head], X_of[job.row], job.row.tta, labels, job.split)
                 for i, job in enumerate(tasks))
        for i, run in joblib.Parallel(n_jobs=n_jobs, return_as="generator_unordered")(calls):
            finished(tasks[i], _succeeded(tasks[i], run))
