"""The C path's walk (`walk_C_path`), shared by PathTunedLogisticRegression and batched logreg: which Cs
it solves, where each draw stops, which C it chooses and which solution the refit starts from."""

from __future__ import annotations

from collections.abc import Callable
from unittest.mock import patch

import numpy as np
import pytest

from bottleneck_features.batched_logreg import BatchedLogReg, fit_draws
from bottleneck_features.heads import PathTunedLogisticRegression, _tuning
from bottleneck_features.heads._tuning import DEFAULT_C, CPath, walk_C_path

CS = (10.0, 0.001, 1.0, 0.1, 0.01)  # unsorted: the walk goes from small to large anyway


def fake(scores: dict[float, list[float]]) -> tuple[Callable[[float], tuple[list[float], str]], list[float]]:
    """A scorer: per C, each draw's score from `scores`, and the state 'solved at C'; and the Cs it was asked."""
    asked: list[float] = []

    def solve(C: float) -> tuple[list[float], str]:
        asked.append(C)
        return scores[C], f"solved at {C}"

    return solve, asked


def walk(scores: dict[float, list[float]]) -> tuple[CPath[str], list[float]]:
    solve, asked = fake(scores)
    return walk_C_path(CS, solve), asked


def test_one_draw_stops_at_the_first_c_no_better_and_chooses_the_best() -> None:
    path, asked = walk({0.001: [0.5], 0.01: [0.6], 0.1: [0.7], 1.0: [0.65], 10.0: [0.9]})
    assert asked == [0.001, 0.01, 0.1, 1.0]  # 10 never solved: 1.0 was worse than 0.1
    assert path.scores == [{0.001: 0.5, 0.01: 0.6, 0.1: 0.7, 1.0: 0.65}]
    assert path.C == [0.1] and path.start == ["solved at 0.1"]


def test_a_tie_stops_the_walk_and_chooses_the_smaller_c() -> None:
    path, asked = walk({0.001: [0.5], 0.01: [0.7], 0.1: [0.7], 1.0: [0.8], 10.0: [0.9]})
    assert asked == [0.001, 0.01, 0.1]
    assert path.C == [0.01] and path.start == ["solved at 0.01"]


def test_a_tie_with_an_earlier_best_after_a_rise_still_chooses_the_smallest() -> None:
    path, _ = walk({0.001: [0.7], 0.01: [0.6], 0.1: [0.7], 1.0: [0.8], 10.0: [0.9]})
    assert path.scores == [{0.001: 0.7, 0.01: 0.6}] and path.C == [0.001]


def test_a_path_that_keeps_improving_walks_every_c() -> None:
    path, asked = walk({0.001: [0.1], 0.01: [0.2], 0.1: [0.3], 1.0: [0.4], 10.0: [0.5]})
    assert asked == sorted(CS) and path.C == [10.0] and path.start == ["solved at 10.0"]


def test_draws_stop_at_different_cs_and_choose_on_their_own_scores() -> None:
    path, asked = walk({0.001: [0.5, 0.4, 0.3],
                        0.01: [0.5, 0.6, 0.4],   # draw 0 stops here (a tie)
                        0.1: [0.9, 0.6, 0.5],    # draw 1 stops here (a tie); draw 0's 0.9 comes too late
                        1.0: [0.9, 0.9, 0.45],   # draw 2 stops here: all stopped
                        10.0: [1.0, 1.0, 1.0]})
    assert asked == [0.001, 0.01, 0.1, 1.0]  # solved while any draw goes on
    assert path.scores == [{0.001: 0.5, 0.01: 0.5},
                           {0.001: 0.4, 0.01: 0.6, 0.1: 0.6},
                           {0.001: 0.3, 0.01: 0.4, 0.1: 0.5, 1.0: 0.45}]
    assert path.C == [0.001, 0.01, 0.1]
    assert path.start == ["solved at 0.001", "solved at 0.01", "solved at 0.1"]


def test_scores_below_zero_still_walk() -> None:
    """The first C never stops a draw, whatever its score (a log-loss, say)."""
    path, asked = walk({0.001: [-3.0], 0.01: [-2.0], 0.1: [-2.5], 1.0: [0.0], 10.0: [0.0]})
    assert asked == [0.001, 0.01, 0.1] and path.C == [0.01]


def test_the_default_c_is_one_fact() -> None:
    assert PathTunedLogisticRegression().default_C == DEFAULT_C


@pytest.mark.parametrize("Cs", [(0.01,), (1.0, 0.01)])
def test_both_logregs_walk_the_path_through_it(Cs: tuple[float, ...]) -> None:
    """PathTunedLogisticRegression's C_ and scores_ and batched logreg's C are the walk's."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    X = (rng.normal(size=(3, 8))[y] + rng.normal(size=(60, 8))).astype(np.float32)
    walks: list[CPath[object]] = []

    def spy(cs: tuple[float, ...], solve: Callable[[float], tuple[list[float], object]]) -> CPath[object]:
        walks.append(walk_C_path(cs, solve))
        return walks[-1]

    with patch.object(_tuning, "walk_C_path", spy):
        tuned = PathTunedLogisticRegression(Cs=Cs).fit(X, y)
    assert len(walks) == 1
    assert (tuned.C_, tuned.scores_) == (walks[0].C[0], walks[0].scores[0])
    with patch("bottleneck_features.batched_logreg.walk_C_path", spy):
        rows = np.arange(len(y))
        result = fit_draws(BatchedLogReg(tune=True, Cs=Cs), X, y, [rows[::2], rows[1::2]], [rows[1::2], rows[::2]], "cpu")
    assert len(walks) == 2 and result.C == walks[1].C and len(walks[1].C) == 2
