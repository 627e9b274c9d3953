"""The cache file on disk: one writer at a time, room held before every write, HDF5 failing inside
the file as one line that names the fix."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
import shutil
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import CacheBusyError, DiskFullError, StoreError

# Free space kept for HDF5's own bookkeeping: a write that would leave less is refused before it
# starts, because HDF5 cannot survive running out of space mid-write (it leaves a file it can't open).
RESERVE = 4 << 20


def _size(nbytes: int) -> str:
    """MiB with one decimal, or whole KiB below 100 MiB, where two sizes of one message may round alike."""
    return f"{nbytes / (1 << 20):,.1f} MiB" if nbytes >= 100 << 20 else f"{nbytes / 1024:,.0f} KiB"


_FALLOC_FL_KEEP_SIZE = 1  # from linux/falloc.h


@functools.cache
def _fallocate() -> Any:
    """glibc's fallocate(2), or None where there is none (then only the free-space check guards)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.fallocate
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return function


def _hold_space(path: Path, nbytes: int) -> bool:
    """Allocate `nbytes` of disk past the end of `path` without changing its size (HDF5 writes
    there next); False when the disk cannot give them."""
    fallocate = _fallocate()
    if fallocate is None or not path.exists():
        return True
    fd = os.open(path, os.O_WRONLY)
    try:
        if fallocate(fd, _FALLOC_FL_KEEP_SIZE, os.fstat(fd).st_size, nbytes) == 0:
            return True
        return ctypes.get_errno() not in (errno.ENOSPC, errno.EDQUOT)  # unsupported here: the check alone
    finally:
        os.close(fd)


def check_room(path: Path, nbytes: int, reserve: int = RESERVE) -> None:
    """Refuse a write of about `nbytes` to `path` that would leave less than `reserve` bytes free, and
    hold that much disk past the file's end before HDF5 writes anything: another process that fills
    the disk meanwhile cannot make HDF5 run out mid-write (it would leave a file it can't open)."""
    free = shutil.disk_usage(path.parent).free
    if free < nbytes + reserve or not _hold_space(path, nbytes + reserve):
        raise DiskFullError(
            f"{path}: the disk is full ({_size(free)} free; the next write needs {_size(nbytes + reserve)}); "
            "free some space or pass --cache on another disk, then rerun: everything computed so far is kept")


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def repair_hint(path: Path) -> str:
    return f"`bottleneck repair --cache {path}` rebuilds it from everything still readable"


@contextmanager
def one_line_errors(path: Path) -> Iterator[None]:
    """HDF5 failing inside the cache (its own structures damaged, or the disk full under it) as one
    line naming the fix, instead of h5py's traceback."""
    try:
        yield
    except (OSError, KeyError, RuntimeError, ValueError) as exc:
        if not any("h5py" in frame.filename for frame in traceback.extract_tb(exc.__traceback__)):
            raise
        if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "no space left" in str(exc).lower():
            raise DiskFullError(f"{path}: the disk filled up during a write; free some space or pass --cache on "
                                "another disk, then rerun") from None
        raise StoreError(f"{path}: the cache's HDF5 structures are damaged ({first_line(exc)}); "
                         f"{repair_hint(path)}") from None


def lock_file(real: Path) -> Path:
    """The lock file of the cache whose resolved path is `real`: beside it, so that every path or link
    to one file shares one lock."""
    return real.with_name(real.name + ".lock")


@contextmanager
def cache_lock(path: Path, exclusive: bool) -> Iterator[None]:
    """One writer at a time: a second writer, or a reader during a write, fails at once with a message
    naming the holder. The lock belongs to the file itself, whatever path or link it is reached by."""
    with open(lock_file(path.resolve()), "a+") as handle:
        try:
            fcntl.flock(handle, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise CacheBusyError(
                f"{path} is in use by {holder}; wait for it to finish or pass another --cache"
            ) from None
        if exclusive:
            handle.seek(0)
            handle.truncate()
            handle.write(f"bottleneck pid {os.getpid()}")
            handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
