"""Extraction, orchestrated: scan → hash → what the cache lacks → decode → model → store.

Every image is identified by the sha256 of its bytes; only keys missing from the cache under the
spec's fingerprint are decoded and run through the network, and the network is only built when
something is missing: a rerun on a cached folder builds nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import locations, ray_engine
from .augment import DEFAULT_AUGMENT, parse_augment
from .dataset_identity import check_moved, check_same_dataset
from .datasets import check_dataset_name
from .decode import DecodeDataset, decoded_batches, loader_batches
from .errors import ExtractError
from .images import READ_FAILED, ImageError, read_failure
from .inference import forward_batch, prepare_model
from .label_files import LabelColumns, scan_input
from .progress import Progress, no_progress
from .runtime import AUTOCAST, auto_precision, cpu_runtime, default_batch_size, resolve_device
from .shards import LAYOUT as SHARDS
from .shards import is_shard_input, read_shards
from .sources import Backbone, build
from .spec import AUTO, ExtractorSpec
from .store import PENDING, ManifestRow, Store, view_key

NOT_FINITE = "the model gave NaN or inf for this image"
DEVICES = ("auto", "cpu", "cuda", "mps")
HASH_THREADS = min(8, (os.cpu_count() or 1) * 2)  # files hashed (or shards listed) at once: I/O and hashlib release the GIL
ENGINES = ("local", "ray")


@dataclass
class ExtractOptions:
    """How to run, not what to compute (that is the ExtractorSpec): none of these changes a vector."""

    batch_size: int | None = None  # None: 256 on CUDA, 16 elsewhere (see runtime.default_batch_size)
    workers: int | None = None  # decode workers (see _batches); None: one per CPU core
    threads: int | None = None  # torch intra-op threads while extracting; None: the torch default
    device: str = "auto"  # auto | cpu | cuda | mps
    progress: Progress | None = None  # called as images are done; None: silent
    compile: bool = False  # torch.compile the backbone (pays off on long GPU runs)
    engine: str = "local"  # local | ray (ray_engine: Ray Data on a cluster; the driver writes the cache)
    address: str | None = None  # --engine ray: the cluster ("auto", HOST:PORT, ray://HOST:PORT); None: a local one
    actors: int = 1  # --engine ray: actors holding the backbone
    cpus_per_actor: int = 1  # its decode and torch threads
    gpus_per_actor: float = 0.0

    def __post_init__(self) -> None:
        for option, value, least in (("batch-size", self.batch_size, 1), ("workers", self.workers, 0),
                                     ("threads", self.threads, 1)):
            if value is not None and value < least:
                raise ExtractError(f"--{option} {value}: must be at least {least}")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ExtractError(f"--device {self.device}: use one of {', '.join(DEVICES)} (or cuda:N)")
        if self.engine not in ENGINES:
            raise ExtractError(f"--engine {self.engine}: use local or ray")
        if self.actors < 1 or self.cpus_per_actor < 1 or self.gpus_per_actor < 0:
            raise ExtractError("--actors and --cpus-per-actor must be at least 1, --gpus-per-actor at least 0")
        if self.engine != "ray" and (self.address is not None or (self.actors, self.cpus_per_actor) != (1, 1)
                                     or self.gpus_per_actor):
            raise ExtractError("--address, --actors, --cpus-per-actor and --gpus-per-actor go with --engine ray")


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
    repaired: int = 0  # cached vectors that failed their checksum and were computed again
    views: int | None = None  # augmented views per image: computed and reused then count views
    precision: str = ""  # how precision auto was decided, when it was
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (row, reason): a label file's unusable rows
    unlabelled: int = 0  # a label file's rows without a label: extracted, for predict; fit leaves them out

    @property
    def found_per_second(self) -> float:
        """Images found (computed or reused) per second of the run: a cached rerun's speed."""
        return self.found / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        unit = f" views ({self.views} per image)" if self.views else ""
        rate = f", {self.computed / self.seconds:.1f} {'views' if self.views else 'images'}/s computed" \
            if self.computed and self.seconds > 0 else ""
        return (
            f"{self.found} images found, {self.computed}{unit} computed, {self.reused} reused from cache, "
            f"{len(self.skipped)} skipped{rate} ({self.seconds:.1f} s on {self.device})"
            + (f"; {self.repaired} damaged vectors computed again" if self.repaired else "")
            + (f"; precision {self.precision}" if self.precision else "")
            + (f"; {len(self.left_out)} rows of the label file left out" if self.left_out else "")
            + (f"; {self.unlabelled} without a label (for predict; fit leaves them out)" if self.unlabelled else "")
        )


@dataclass
class FileFeatures:
    """Result of `extract_files`: sha256 (or skip reason) per input path, and the extractor used."""

    fingerprint: str
    shas: dict[str, str]
    skipped: list[tuple[str, str]]
    computed: int


def extract_dataset(
    root: Path | str, extractor: ExtractorSpec | Backbone, cache: Path, *, name: str | None = None,
    options: ExtractOptions | None = None, remember: bool = True, views: int | None = None,
    columns: LabelColumns | None = None,
) -> ExtractReport:
    """Embed every image of the dataset at `root` (a folder, a label file read with `columns`, or tar
    shards named with brace ranges; a path, or an fsspec URL as a str) that the cache does not hold
    yet under `extractor` (a spec, built only if something is missing, or a network already built).

    `remember` makes this the cache's last run, the default of `fit` and `compare`. `views`: for a
    spec with an `augment`, how many augmented views of each image (views 0 .. views-1).
    """
    options = options or ExtractOptions()
    start = time.perf_counter()
    if name is not None:
        check_dataset_name(name)  # first: a bad name is refused before the cache is created or touched
    spec_in = extractor.spec if isinstance(extractor, Backbone) else extractor
    check_views(spec_in.augment, views, spec_in.decode)
    if options.engine == "ray":
        if spec_in.decode != "pil":
            raise ExtractError("--engine ray decodes with PIL: leave out --decode torchvision")
        ray_engine.connect(options.address)  # first: a missing Ray or a wrong address fails in seconds
    extractor, chosen = decide_precision(extractor, options)
    data = locations.local(os.fspath(root))
    dataset = None if is_shard_input(data) else scan_input(locations.path_or_url(data), name, columns)
    with Store.open(cache, writable=True) as store:
        if dataset is None:  # tar shards: listed (hashed) with the cache's listings, each image a byte range
            dataset, addresses, shas = read_shards(store, data, name, columns or LabelColumns(), HASH_THREADS)
            paths, unreadable = [addresses[e.path] for e in dataset.entries], dict[str, str]()
        else:
            root_dir = str(dataset.root)
            paths = [locations.join(root_dir, e.path) for e in dataset.entries]  # str: 20k Path objects cost 0.3 s
        check_same_dataset(store, dataset.name, dataset, cache)
        if dataset.layout != SHARDS:
            listed = {locations.join(str(dataset.root), path): v for path, v in dataset.versions.items()}
            shas, unreadable = _hash_files(store, paths, listed)
        check_moved(store, dataset.name, dataset, cache, set(shas.values()))  # before anything else is written
        spec, fp, backbone = _open_extractor(store, extractor)
        bad = _previous_failures(store, dataset.name)
        keys = _keys(shas, views)
        repaired = _forget_damaged(store, fp, {k: k for ks in keys.values() for k in ks})
        todo = _missing(store, fp, shas, bad, keys)
        device = resolve_device(options.device) if options.engine == "local" else torch.device("cpu")
        computed = 0
        try:
            view_of = {key: (sha, i) for sha, ks in keys.items() for i, key in enumerate(ks)} if views else {}
            compute = _compute if options.engine == "local" else _compute_on_ray
            computed = compute(store, spec, backbone, todo, options, device, bad,
                               [view_of[key] for key, _ in todo] if views else None)
        finally:
            rows = []
            for entry, path in zip(dataset.entries, paths, strict=True):
                sha = shas.get(path, "")
                status = unreadable.get(path) or _status(sha, bad, store, fp, keys.get(sha, [sha]))
                rows.append(ManifestRow(entry.path, entry.label, entry.split, sha, status))
            store.write_manifest(dataset.name, dataset.root, dataset.layout, rows, fp, remember, views=views,
                                 source=dataset.source)
    ok = sum(r.status == "ok" for r in rows)
    report = ExtractReport(
        dataset=dataset.name, fingerprint=fp, found=len(rows), computed=computed, views=views,
        reused=ok * (views or 1) - computed, skipped=[(r.path, r.status) for r in rows if r.status != "ok"],
        ignored=dataset.ignored, seconds=time.perf_counter() - start, device=str(device), repaired=len(repaired),
        precision=chosen, left_out=list(dataset.problems), unlabelled=sum(not r.label for r in rows),
    )
    if ok == 0:
        raise ExtractError(f"{dataset.root}: none of the {len(rows)} images could be used; first: {report.skipped[0][1]}")
    return report


def decide_precision(extractor: ExtractorSpec | Backbone, options: ExtractOptions
                     ) -> tuple[ExtractorSpec | Backbone, str]:
    """`extractor` with precision auto decided for where `options` run it (this machine's device, or
    the Ray nodes), and how it was decided ("" when the precision was given). Every path that
    extracts comes through here, so one folder gets one precision on one host, whoever asks."""
    spec = extractor.spec if isinstance(extractor, Backbone) else extractor
    if spec.precision != AUTO:
        return extractor, ""
    if options.engine == "ray":
        precision, why = ray_engine.worker_precision(spec.model, cpus_per_actor=options.cpus_per_actor,
                                                     gpus_per_actor=options.gpus_per_actor)
    else:
        precision, why = auto_precision(resolve_device(options.device), model=spec.model)
    decided = extractor.using(precision=precision) if isinstance(extractor, Backbone) else \
        extractor.replace(precision=precision)
    return decided, f"{precision}, auto: {why}"


def check_views(augment: str | None, views: int | None, decode: str) -> None:
    """One-line errors for a bad --views / --augment / --decode combination, before any work."""
    if views is not None and views < 1:
        raise ExtractError(f"--views {views}: give the number of augmented views per image, 1 or more")
    if augment is not None and views is None:
        raise ExtractError("--augment needs --views K, the number of augmented views per image")
    if views is not None and augment is None:
        raise ExtractError(f"--views needs an augmentation: pass --augment (default {DEFAULT_AUGMENT})")
    if augment is not None and decode != "pil":
        raise ExtractError("--views works with --decode pil only")


def extract_files(paths: Sequence[Path], extractor: ExtractorSpec | Backbone, cache: Path,
                  options: ExtractOptions | None = None, weights_file: str | None = None) -> FileFeatures:
    """Embed loose files (for `predict`): same cache, no dataset manifest. `weights_file` is where
    the spec's weights file is now, if it moved."""
    options = options or ExtractOptions()
    resolved = [str(Path(p).resolve()) for p in paths]
    extractor, _ = decide_precision(extractor, options)
    with Store.open(cache, writable=True) as store:
        spec, fp, backbone = _open_extractor(store, extractor, weights_file)
        shas, unreadable = _hash_files(store, resolved)
        if spec.augment:
            raise ExtractError(f"{spec.label()}: augmented views are extracted per dataset (`bottleneck extract "
                               "DATA --views K`), not for loose files")
        _forget_damaged(store, fp, shas)
        bad: dict[str, str] = {}
        todo = _missing(store, fp, shas, bad, _keys(shas, None))
        computed = _compute(store, spec, backbone, todo, options, resolve_device(options.device), bad)
        ok = {p: s for p, s in shas.items() if store.has(fp, s)}
    skipped = sorted(unreadable.items()) + [(p, bad[s]) for p, s in sorted(shas.items()) if s in bad]
    return FileFeatures(fp, ok, skipped, computed)


def _open_extractor(store: Store, extractor: ExtractorSpec | Backbone, weights_file: str | None = None
                    ) -> tuple[ExtractorSpec, str, Backbone | Callable[[], Backbone]]:
    """(the spec with its feature width, its fingerprint, the network or how to build it when needed),
    with the spec's group in the cache. A spec whose width only a build can tell (a `layer`) takes it
    from a matching group already in the cache."""
    spec, backbone = _complete(store, extractor, weights_file)
    fp = spec.fingerprint()
    store.ensure_extractor(fp, spec, torch_version=torch.__version__)
    return spec, fp, backbone


def _forget_damaged(store: Store, fp: str, shas: dict[str, str]) -> list[str]:
    """Hide the cached vectors among `shas` that fail their checksum, so they are computed again."""
    damaged = store.damaged(fp, list(set(shas.values())))
    store.forget(fp, damaged)
    return damaged


def _complete(store: Store, extractor: ExtractorSpec | Backbone,
              weights_file: str | None) -> tuple[ExtractorSpec, Backbone | Callable[[], Backbone]]:
    if isinstance(extractor, Backbone):
        return extractor.spec, extractor
    spec = extractor if extractor.feature_dim is not None else store.find_extractor(extractor)
    if spec is None:
        backbone = build(extractor, weights_file)
        return backbone.spec, backbone
    return spec, lambda: build(spec, weights_file)


def _previous_failures(store: Store, name: str) -> dict[str, str]:
    """sha256 → reason for content that failed to decode last time: not worth decoding again. I/O
    failures say nothing about the bytes and are tried again."""
    if name not in store.datasets():
        return {}
    return {r.sha256: r.status for r in store.read_manifest(name)
            if r.status not in ("ok", PENDING) and r.sha256 and not r.status.startswith(READ_FAILED)}


def _hash_files(store: Store, paths: Sequence[str], listed: dict[str, tuple[int, int]] | None = None
                ) -> tuple[dict[str, str], dict[str, str]]:
    """sha256 per path (or URL), re-reading only files whose size or version (mtime, ETag) changed
    since the last run; `listed`: the (size, version) of URLs, known from listing their folder."""
    index = store.read_path_index()
    shas: dict[str, str] = {}
    stale: list[tuple[str, int, int]] = []
    unreadable: dict[str, str] = {}
    for key in paths:
        try:
            size, version = (listed or {}).get(key) or locations.version(key)
        except OSError as exc:
            unreadable[key] = read_failure(exc)
            continue
        except ImageError as exc:
            unreadable[key] = str(exc)
            continue
        known = index.get(key)
        if known and known[0] == size and known[1] == version:
            shas[key] = known[2]
        else:
            stale.append((key, size, version))

    def digest(item: tuple[str, int, int]) -> tuple[tuple[str, int, int], str | None, str]:
        try:
            return item, locations.sha256(item[0]), ""
        except OSError as exc:
            return item, None, read_failure(exc)

    if stale:
        with ThreadPoolExecutor(max_workers=HASH_THREADS) as pool:
            for (key, size, mtime), sha, error in pool.map(digest, stale):
                if sha is None:
                    unreadable[key] = error
                else:
                    shas[key] = sha
                    index[key] = (size, mtime, sha)
        store.write_path_index(index)
    return shas, unreadable


def _keys(shas: dict[str, str], views: int | None) -> dict[str, list[str]]:
    """Image sha256 → the cache keys of its vectors: itself, or its `views` augmented views."""
    return {sha: [view_key(sha, i) for i in range(views)] if views else [sha] for sha in set(shas.values())}


def _missing(store: Store, fp: str, shas: dict[str, str], bad: dict[str, str],
             keys: dict[str, list[str]]) -> list[tuple[str, str]]:
    """(key, path) pairs to compute, one per distinct content and view; known-bad content is not retried."""
    path_of: dict[str, str] = {}
    for path, sha in shas.items():
        path_of.setdefault(sha, path)
    return [(key, path) for sha, path in path_of.items() if sha not in bad
            for key in keys[sha] if not store.has(fp, key)]


def _status(sha: str, bad: dict[str, str], store: Store, fp: str, keys: list[str]) -> str:
    for key in (sha, *keys):
        if key in bad:
            return bad[key]
    if all(store.has(fp, key) for key in keys):
        return "ok"
    return PENDING


def _compute(store: Store, spec: ExtractorSpec, backbone: Backbone | Callable[[], Backbone],
             todo: list[tuple[str, str]], options: ExtractOptions, device: torch.device, bad: dict[str, str],
             views: list[tuple[str, int]] | None = None) -> int:
    """Run the backbone over `todo`, appending each batch to the store as soon as it is done. With an
    augmented spec, `views[i]` is the (image sha256, view) that todo[i] is."""
    if not todo:
        return 0
    fp = spec.fingerprint()
    batches = _batches(todo, spec, options, device, views)  # first: GPU decode workers start while the model is built
    if not isinstance(backbone, Backbone):
        backbone = backbone()
    model = prepare_model(backbone, device, options.compile)
    autocast_dtype = AUTOCAST[spec.precision]
    progress = options.progress or no_progress
    task, done = f"extract {spec.label()}", 0
    computed = 0
    # One batch stays in flight: batch k is written to HDF5 while the device runs batch k + 1, so a
    # GPU never idles on an HDF5 flush or on the loader (on a CPU this is just a reordering).
    pending: tuple[list[str], torch.Tensor, torch.cuda.Event | None] | None = None
    progress(task, 0, len(todo))
    with torch.inference_mode(), cpu_runtime(device, options.threads) as settle:
        try:
            for indices, batch, failed in batches:
                for i, reason in failed:
                    bad[todo[i][0]] = reason
                queued = None
                if batch is not None:
                    vectors = forward_batch(model, backbone.preprocess, batch, device, autocast_dtype)
                    queued = ([todo[i][0] for i in indices], *_to_host(vectors))
                written, pending = pending, queued
                if written is not None:
                    computed += _write(store, fp, *written, bad)
                settle()
                done += len(indices) + len(failed)
                progress(task, done, len(todo))
        finally:  # also on Ctrl-C or a failure: a computed batch is kept (unless the disk is full)
            if pending is not None and not store.full:
                computed += _write(store, fp, *pending, bad)
    return computed


def _compute_on_ray(store: Store, spec: ExtractorSpec, backbone: Backbone | Callable[[], Backbone],
                    todo: list[tuple[str, str]], options: ExtractOptions, device: torch.device, bad: dict[str, str],
                    views: list[tuple[str, int]] | None = None) -> int:
    """`_compute` on the Ray cluster `ray_engine.connect` joined: this process only writes."""
    if not todo:
        return 0
    if not isinstance(backbone, Backbone):
        backbone = backbone()
    fp, computed = spec.fingerprint(), 0
    task, progress = f"extract {spec.label()} on ray", options.progress or no_progress

    def write(keys: list[str], vectors: np.ndarray) -> None:
        nonlocal computed
        computed += _write(store, fp, keys, torch.from_numpy(vectors), None, bad)

    progress(task, 0, len(todo))
    ray_engine.embed(todo, views, backbone, batch_size=options.batch_size or 64, actors=options.actors,
                     cpus_per_actor=options.cpus_per_actor, gpus_per_actor=options.gpus_per_actor,
                     write=write, fail=bad.__setitem__, progress=lambda done: progress(task, done, len(todo)))
    return computed


def _batches(todo: list[tuple[str, str]], spec: ExtractorSpec, options: ExtractOptions, device: torch.device,
             views: list[tuple[str, int]] | None) -> Iterator[tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]]:
    """Decoded batches from `options.workers` decode workers (None: one per core; 0: none, this thread):
    DataLoader processes that run ahead of a GPU, or, on a CPU, threads that take turns with the model.

    `--decode torchvision` batches are finished on `device`."""
    batch_size = options.batch_size or default_batch_size(device)
    workers = (os.cpu_count() or 1) if options.workers is None else options.workers
    if spec.decode == "torchvision":
        from . import device_decode

        loader = loader_batches(device_decode.JpegBytesDataset(todo, spec.preprocess), device_decode.collate,
                                batch_size, workers, device)
        return (device_decode.finish_batch(batch, spec.preprocess, device) for batch in loader)
    dataset = DecodeDataset(todo, spec.preprocess, parse_augment(spec.augment) if spec.augment else None, views or ())
    return decoded_batches(dataset, batch_size, workers, device)


def _to_host(vectors: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """Start copying `vectors` to CPU memory; on CUDA the copy is asynchronous until the event fires."""
    if vectors.device.type != "cuda":
        return vectors.float().cpu(), None
    host = torch.empty(vectors.shape, dtype=torch.float32, pin_memory=True)
    host.copy_(vectors.float(), non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    return host, ready


def _write(store: Store, fp: str, shas: list[str], host: torch.Tensor, ready: torch.cuda.Event | None,
           bad: dict[str, str]) -> int:
    if ready is not None:
        ready.synchronize()
    rejected = store.add_vectors(fp, shas, host.numpy())
    bad.update((sha, NOT_FINITE) for sha in rejected)
    return len(shas) - len(rejected)
