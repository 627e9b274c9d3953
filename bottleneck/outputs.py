"""Where a command may write: never over the cache (or its lock file), an input, or another of its
own outputs, and only where a file can be made. Checked before any work; a write that fails anyway
(the disk filled meanwhile) is one line too (`writing`)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from .errors import OutputError
from .images import is_image_file
from .store import lock_file

Named = Sequence[tuple[str, Path]]  # (what it is, for the message; where it is)


def check_outputs(outputs: Named, *, option: str = "--out", cache: Path | None = None, inputs: Named = (),
                  folder: Path | None = None) -> None:
    """Refuse, with one line, an output that is the cache or its lock, an input, an image inside an
    input folder, another output, or that cannot be written. `folder`: the folder the user named for
    them; `option`: what the user changes to fix it."""
    cached: list[tuple[Path, str]] = []
    if cache is not None:
        lock = lock_file(_real(Path(cache)))
        cached = [(Path(cache), f"the cache {cache}"), (lock, f"the cache's lock file {lock}")]
    if folder is not None:
        _check_same(Path(folder), "the report folder", cached, option)
        _check_place(Path(folder), "the report folder", option, folder=True)
    seen: list[tuple[Path, str]] = []
    for what, path in outputs:
        path = Path(path)
        _check_same(path, what, [*cached, *((Path(p), f"{which} {p}") for which, p in inputs), *seen], option)
        for which, other in inputs:
            if is_image_file(path) and _real(Path(other)) in _real(path).parents:
                raise OutputError(f"{path}: {what} would write an image into {which} {other}; "
                                  f"choose another {option}")
        _check_place(path, what, option, folder=False)
        seen.append((path, what))


@contextlib.contextmanager
def writing(path: Path, option: str = "--out") -> Iterator[None]:
    """An OSError while writing `path` becomes one line naming it; what was computed before is kept."""
    try:
        yield
    except OSError as exc:
        reason = " ".join(str(exc.strerror or exc).split())
        raise OutputError(f"{path}: could not write it ({reason}); choose another {option} or free space") from None


def _check_same(path: Path, what: str, kept: Sequence[tuple[Path, str]], option: str) -> None:
    for other, which in kept:
        if _same(path, other):
            raise OutputError(f"{path}: {what} would overwrite {which}; choose another {option}")


def _check_place(path: Path, what: str, option: str, *, folder: bool) -> None:
    """A folder where a file belongs (or the reverse), a parent that is a file, or a place no file can be made."""
    if not folder and path.is_dir():
        raise OutputError(f"{path}: {what} is a folder; give a file path as {option}")
    if folder and path.exists() and not path.is_dir():
        raise OutputError(f"{path}: {what} is a file, not a folder; give a folder as {option}")
    absolute = Path(os.path.abspath(path))
    start = [absolute] if folder else []
    ancestor = next(p for p in [*start, *absolute.parents] if p.exists())
    if not ancestor.is_dir():
        raise OutputError(f"{path}: {ancestor} is a file, not a folder; choose another {option}")
    try:  # access() says yes to root everywhere, /proc included: only making a file tells
        tempfile.TemporaryFile(dir=ancestor).close()
    except OSError as exc:
        raise OutputError(f"{path}: no file can be written in {ancestor} ({exc.strerror or exc}); "
                          f"choose another {option}") from None


def _real(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return Path(os.path.abspath(path))


def _same(a: Path, b: Path) -> bool:
    """One file, through symlinks, hard links or `..`."""
    if _real(a) == _real(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
