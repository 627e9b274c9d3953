"""Files → decoded batches (DataLoader workers) → frozen backbone → the HDF5 cache.

Every image is identified by the sha256 of its bytes; only keys missing from the cache under the
extractor's fingerprint are decoded and run through the network.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from bottleneck import __version__
from bottleneck.backbones import Backbone
from bottleneck.datasets import scan_dataset
from bottleneck.images import ImageError, decode_rgb, sha256_file
from bottleneck.store import ManifestRow, Store, fingerprint

PENDING = "pending: the run stopped before this image was computed"
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
STORAGE_DTYPES = ("float32", "float16")


@dataclass
class ExtractOptions:
    batch_size: int | None = None  # None: 256 on CUDA, 32 elsewhere
    workers: int | None = None  # None: one decode worker per CPU core
    device: str = "auto"  # auto | cpu | cuda | mps
    precision: str = "fp32"  # fp32 | fp16 | bf16 (autocast)
    dtype: str = "float32"  # storage dtype of the vectors
    progress: bool = True
    compile: bool = False  # torch.compile the backbone (pays off on long GPU runs)


@dataclass
class ExtractReport:
    dataset: str
    fingerprint: str
    found: int
    computed: int
    reused: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    ignored: tuple[str, ...] = ()
    seconds: float = 0.0
    device: str = "cpu"

    @property
    def images_per_second(self) -> float:
        return self.found / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (
            f"{self.found} images found, {self.computed} computed, {self.reused} reused from cache, "
            f"{len(self.skipped)} skipped, {self.images_per_second:.1f} images/s "
            f"({self.seconds:.1f} s on {self.device})"
        )


@dataclass
class FileFeatures:
    """Result of `extract_files`: sha256 (or skip reason) per input path, and the extractor used."""

    fingerprint: str
    shas: dict[str, str]
    skipped: list[tuple[str, str]]
    computed: int


class ExtractError(Exception):
    """The run cannot go on (e.g. no image could be used); the message says why."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ExtractError("--device cuda: no CUDA GPU visible to torch; use --device auto or cpu")
    return torch.device(device)


def extractor_spec(backbone: Backbone, options: ExtractOptions) -> dict:
    """Everything that changes the stored vectors; its hash names the cache group."""
    return {**backbone.spec(), "precision": options.precision, "dtype": options.dtype}


def extract_dataset(
    root: Path, backbone: Backbone, cache: Path, *, name: str | None = None,
    options: ExtractOptions | None = None,
) -> ExtractReport:
    """Embed every image of the dataset at `root` that the cache does not hold yet."""
    options = options or ExtractOptions()
    start = time.perf_counter()
    dataset = scan_dataset(root, name)
    paths = [dataset.root / e.path for e in dataset.entries]
    with Store.open(cache, writable=True) as store:
        fp, dim = _prepare_extractor(store, backbone, options)
        bad = _previous_failures(store, dataset.name)
        shas, unreadable = _hash_files(store, paths)
        todo = _missing(store, fp, shas, bad)
        device = resolve_device(options.device)
        computed = 0
        try:
            computed = _compute(store, fp, backbone, todo, options, device, bad)
        finally:
            rows = []
            for entry, path in zip(dataset.entries, paths):
                sha = shas.get(str(path), "")
                status = unreadable.get(str(path)) or _status(sha, bad, store, fp)
                rows.append(ManifestRow(entry.path, entry.label, entry.split, sha, status))
            store.write_manifest(dataset.name, dataset.root, dataset.layout, rows, fp)
    ok = sum(r.status == "ok" for r in rows)
    report = ExtractReport(
        dataset=dataset.name, fingerprint=fp, found=len(rows), computed=computed,
        reused=ok - computed, skipped=[(r.path, r.status) for r in rows if r.status != "ok"],
        ignored=dataset.ignored, seconds=time.perf_counter() - start, device=str(device),
    )
    if ok == 0:
        raise ExtractError(f"{dataset.root}: none of the {len(rows)} images could be used; first: {report.skipped[0][1]}")
    return report


def extract_files(paths: Sequence[Path], backbone: Backbone, cache: Path,
                  options: ExtractOptions | None = None) -> FileFeatures:
    """Embed loose files (for `predict`): same cache, no dataset manifest."""
    options = options or ExtractOptions()
    paths = [Path(p).resolve() for p in paths]
    with Store.open(cache, writable=True) as store:
        fp, _ = _prepare_extractor(store, backbone, options)
        shas, unreadable = _hash_files(store, paths)
        bad: dict[str, str] = {}
        todo = _missing(store, fp, shas, bad)
        computed = _compute(store, fp, backbone, todo, options, resolve_device(options.device), bad)
        ok = {p: s for p, s in shas.items() if store.has(fp, s)}
    skipped = sorted(unreadable.items()) + [(p, bad[s]) for p, s in sorted(shas.items()) if s in bad]
    return FileFeatures(fp, ok, skipped, computed)


def _prepare_extractor(store: Store, backbone: Backbone, options: ExtractOptions) -> tuple[str, int]:
    if options.precision not in PRECISIONS:
        raise ExtractError(f"--precision {options.precision}: use one of {', '.join(PRECISIONS)}")
    if options.dtype not in STORAGE_DTYPES:
        raise ExtractError(f"--dtype {options.dtype}: use one of {', '.join(STORAGE_DTYPES)}")
    spec = extractor_spec(backbone, options)
    fp = fingerprint(spec)
    attrs = {
        "model": backbone.name, "weights": backbone.weights_id, "layer": backbone.layer or "",
        "pool": backbone.pool, "preprocess": backbone.preprocess.to_dict(), "precision": options.precision,
        "spec": spec, "bottleneck_version": __version__, "torch_version": torch.__version__,
    }
    store.ensure_extractor(fp, backbone.feature_dim, options.dtype, attrs)
    return fp, backbone.feature_dim


def _previous_failures(store: Store, name: str) -> dict[str, str]:
    """sha256 → reason for content that failed to decode last time: not worth decoding again."""
    if name not in store.datasets():
        return {}
    return {r.sha256: r.status for r in store.read_manifest(name) if r.status not in ("ok", PENDING) and r.sha256}


def _hash_files(store: Store, paths: Sequence[Path]) -> tuple[dict[str, str], dict[str, str]]:
    """sha256 per path, re-reading only files whose size or mtime changed since the last run."""
    index = store.read_path_index()
    shas: dict[str, str] = {}
    stale: list[tuple[str, int, int]] = []
    unreadable: dict[str, str] = {}
    for p in paths:
        key = str(p)
        try:
            st = os.stat(p)
        except OSError as exc:
            unreadable[key] = f"cannot read file ({exc.strerror})"
            continue
        known = index.get(key)
        if known and known[0] == st.st_size and known[1] == st.st_mtime_ns:
            shas[key] = known[2]
        else:
            stale.append((key, st.st_size, st.st_mtime_ns))

    def digest(item: tuple[str, int, int]) -> tuple[tuple[str, int, int], str | None, str]:
        try:
            return item, sha256_file(Path(item[0])), ""
        except OSError as exc:
            return item, None, f"cannot read file ({exc.strerror})"

    if stale:
        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
            for (key, size, mtime), sha, error in pool.map(digest, stale):
                if sha is None:
                    unreadable[key] = error
                else:
                    shas[key] = sha
                    index[key] = (size, mtime, sha)
        store.write_path_index(index)
    return shas, unreadable


def _missing(store: Store, fp: str, shas: dict[str, str], bad: dict[str, str]) -> list[tuple[str, str]]:
    """(sha, path) pairs to compute, one per distinct content; known-bad content is not retried."""
    todo: dict[str, str] = {}
    for path, sha in shas.items():
        if not store.has(fp, sha) and sha not in bad:
            todo.setdefault(sha, path)
    return list(todo.items())


def _status(sha: str, bad: dict[str, str], store: Store, fp: str) -> str:
    if sha in bad:
        return bad[sha]
    if store.has(fp, sha):
        return "ok"
    return PENDING


class _DecodeDataset(TorchDataset):
    """Reads, decodes and resizes one image in a worker; returns uint8 so the copy stays small."""

    def __init__(self, items: Sequence[tuple[str, str]], backbone: Backbone) -> None:
        self.items = items
        self.preprocess = backbone.preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            image = decode_rgb(Path(self.items[i][1]), draft_to=self.preprocess.resize_size)
            return i, self.preprocess.resize_crop(image), ""
        except ImageError as exc:
            return i, None, str(exc)


def _collate(batch: list[tuple[int, torch.Tensor | None, str]]) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    good = [(i, t) for i, t, _ in batch if t is not None]
    bad = [(i, err) for i, t, err in batch if t is None]
    tensor = torch.stack([t for _, t in good]) if good else None
    return [i for i, _ in good], tensor, bad


def _compute(store: Store, fp: str, backbone: Backbone, todo: list[tuple[str, str]], options: ExtractOptions,
             device: torch.device, bad: dict[str, str]) -> int:
    """Run the backbone over `todo`, appending each batch to the store as soon as it is done."""
    if not todo:
        return 0
    batch_size = options.batch_size or (256 if device.type == "cuda" else 32)
    workers = (os.cpu_count() or 1) if options.workers is None else options.workers
    if len(todo) <= batch_size:
        workers = 0  # forking workers costs more than decoding one batch in-process
    loader = DataLoader(
        _DecodeDataset(todo, backbone), batch_size=batch_size, num_workers=workers, collate_fn=_collate,
        pin_memory=device.type == "cuda", persistent_workers=False, prefetch_factor=4 if workers else None,
    )
    model = _prepare_model(backbone, device, options)
    autocast_dtype = PRECISIONS[options.precision]
    computed = 0
    with _progress(len(todo), options.progress, backbone.name) as advance, torch.inference_mode():
        for indices, batch, failed in loader:
            for i, reason in failed:
                bad[todo[i][0]] = reason
            if batch is not None:
                x = backbone.preprocess.normalize(batch.to(device, non_blocking=True))
                if device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    vectors = model(x)
                store.add_vectors(fp, [todo[i][0] for i in indices], vectors.float().cpu().numpy())
                computed += len(indices)
            advance(len(indices) + len(failed))
    return computed


def _prepare_model(backbone: Backbone, device: torch.device, options: ExtractOptions) -> torch.nn.Module:
    model = backbone.model.eval().to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if options.compile:
        model = torch.compile(model)
    return model


@contextlib.contextmanager
def _progress(total: int, enabled: bool, label: str) -> Iterator:
    """A rich progress bar with images/s and ETA, or a no-op."""
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(f"extract {label}", total=total, rate="")
        start = time.perf_counter()
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            rate = done / max(time.perf_counter() - start, 1e-9)
            progress.update(task, advance=n, rate=f"{rate:6.1f} img/s")

        yield advance
