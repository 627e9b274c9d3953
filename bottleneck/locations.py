"""Where image bytes are: a local path, an fsspec URL (s3://, gs://, https://, memory://, ...), or a
byte range of a tar shard at either; one reader for all of them, in whichever process decodes.

An address is a string: an absolute local path, a URL, or `range:OFFSET:SIZE:SHARD` for one member
of an uncompressed tar shard (SHARD a path or URL). Remote reads go through fsspec's own protocols
(s3fs, gcsfs, HTTP), which take credentials from the usual environment; none is stored anywhere.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from .errors import DatasetError
from .images import ImageError, read_bytes, read_failure, sha256_file, sha256_stream

REMOTE_HINT = "pip install 'bottleneck-features[remote]'"
_RANGE = "range:"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_url(text: str) -> bool:
    return bool(_URL.match(text))


def local(text: str) -> str:
    """`text` with a file:// URL turned into its local path, which the local code reads faster."""
    if text.startswith("file://"):
        return unquote(urlsplit(text).path)
    return text


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path on it) for `url`; a one-line DatasetError when fsspec or the
    protocol's package (s3fs, gcsfs, aiohttp) is missing."""
    try:
        import fsspec
    except ImportError:
        raise DatasetError(f"{url}: reading URLs needs fsspec: {REMOTE_HINT}") from None
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:  # fsspec names the package the protocol needs
        raise DatasetError(f"{url}: {str(exc).splitlines()[0]}") from None
    except ValueError as exc:
        raise DatasetError(f"{url}: {str(exc).splitlines()[0]}") from None


def list_files(url: str) -> dict[str, tuple[int, int]]:
    """Every file under the folder at `url` (hidden ones too): its POSIX path relative to the folder →
    (size, version). One listing gives both the names a scan needs and the versions that spare a
    rerun from reading unchanged files: a request per thousand files, not one per file."""
    fs, path = filesystem(url)
    top = path.rstrip("/")
    try:
        found = fs.find(top, detail=True)
    except OSError as exc:
        raise DatasetError(f"{url}: cannot list it ({exc})") from None
    return {name[len(top) + 1:]: (int(info.get("size") or 0), _digest(info)) for name, info in sorted(found.items())
            if name.startswith(top + "/")}


def path_or_url(text: str) -> Path | str:
    """A path as a Path; a URL kept as its str (a Path would fold its "//")."""
    return text if is_url(text) else Path(text)


def join(root: str, path: str) -> str:
    return f"{root.rstrip('/')}/{path}" if is_url(root) else os.path.join(root, path)


def member(shard: str, offset: int, size: int) -> str:
    """The address of `size` bytes at `offset` in `shard`."""
    return f"{_RANGE}{offset}:{size}:{shard}"


def version(address: str) -> tuple[int, int]:
    """(size, version) of a file: the mtime in ns locally; elsewhere a 63-bit digest of what the store
    says changes with the content (ETag, generation, md5, modification time). OSError if it cannot
    be asked; ImageError if it is no regular file (a FIFO or device would block or never end)."""
    if not is_url(address):
        st = os.stat(address)
        if not stat.S_ISREG(st.st_mode):
            raise ImageError("not a regular file (a pipe, device or socket); skipped")
        return st.st_size, st.st_mtime_ns
    fs, path = filesystem(address)
    info = fs.info(path)
    return int(info.get("size") or 0), _digest(info)


def _digest(info: dict[str, Any]) -> int:
    tag = next((info[k] for k in ("ETag", "etag", "generation", "md5Hash", "LastModified", "mtime", "created",
                                  "last_modified") if info.get(k) is not None), "")
    return int.from_bytes(hashlib.sha256(str(tag).encode()).digest()[:8], "big") >> 1


def read(address: str) -> bytes:
    """The bytes at `address`; ImageError (its reason starting with READ_FAILED) when they cannot be read."""
    try:
        if address.startswith(_RANGE):
            offset, size, shard = address[len(_RANGE):].split(":", 2)
            return _read_range(shard, int(offset), int(size))
        if is_url(address):
            fs, path = filesystem(address)
            return bytes(fs.cat_file(path))
        return read_bytes(Path(address))
    except (OSError, ValueError, DatasetError) as exc:
        raise ImageError(read_failure(exc)) from None


def _read_range(shard: str, offset: int, size: int) -> bytes:
    if is_url(shard):
        fs, path = filesystem(shard)
        data = bytes(fs.cat_file(path, start=offset, end=offset + size))
    else:
        with open(shard, "rb") as handle:
            handle.seek(offset)
            data = handle.read(size)
    if len(data) != size:
        raise OSError(f"the shard ends {size - len(data)} bytes early: changed since it was listed")
    return data


def sha256(address: str) -> str:
    """The sha256 of the bytes at `address`, read in blocks; OSError when they cannot be read."""
    if not is_url(address):
        return sha256_file(Path(address))
    fs, path = filesystem(address)
    with fs.open(path, "rb") as handle:
        return sha256_stream(handle)
