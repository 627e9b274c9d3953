"""How the library reports progress: it calls a function; the CLI draws it (with rich)."""

from collections.abc import Callable

# progress(task, done, total): `task` names what is counted ("extract efficientnet_lite0", "fits"),
# `done` how many of `total` are finished so far.
Progress = Callable[[str, int, int], None]


def no_progress(task: str, done: int, total: int) -> None:
    pass
