"""How the library reports progress: it calls a function; the CLI draws it (with rich)."""

import inspect
from collections.abc import Callable

# progress(task, done, total): `task` names what is counted ("extract efficientnet_lite0", "fits"),
# `done` how many of `total` are finished so far. A callable that also takes `detail` hears what is
# being worked on (compare: the cell now fitting).
Progress = Callable[..., None]


def no_progress(task: str, done: int, total: int, detail: str = "") -> None:
    pass


def with_detail(progress: Progress | None) -> Callable[[str, int, int, str], None]:
    """`progress` called as (task, done, total, detail), dropping `detail` where it takes only three."""
    if progress is None:
        return no_progress
    try:
        inspect.signature(progress).bind("", 0, 0, detail="")
    except (TypeError, ValueError):  # ValueError: no signature to read; the documented three arguments
        return lambda task, done, total, detail: progress(task, done, total)
    return lambda task, done, total, detail: progress(task, done, total, detail=detail)
