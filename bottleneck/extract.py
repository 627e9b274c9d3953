"""Files → decoded batches (DataLoader workers) → frozen backbone → the HDF5 cache.

Every image is identified by the sha256 of its bytes; only keys missing from the cache under the
extractor's fingerprint are decoded and run through the network.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import functools
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from timm.layers import BatchNormAct2d
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from bottleneck import __version__
from bottleneck.backbones import Backbone
from bottleneck.datasets import scan_dataset
from bottleneck.images import ImageError, decode_rgb, read_bytes, sha256_file
from bottleneck.store import ManifestRow, Store, fingerprint

PENDING = "pending: the run stopped before this image was computed"
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
STORAGE_DTYPES = ("float32", "float16")
DECODERS = ("pil", "torchvision")  # PIL in the decode workers | torchvision.io on the model's device


@dataclass
class ExtractOptions:
    batch_size: int | None = None  # None: 256 on CUDA, 16 elsewhere (see default_batch_size)
    workers: int | None = None  # decode workers (see _batches); None: one per CPU core
    threads: int | None = None  # torch intra-op threads while extracting; None: the torch default
    device: str = "auto"  # auto | cpu | cuda | mps
    precision: str = "fp32"  # fp32 | fp16 | bf16 (autocast)
    dtype: str = "float32"  # storage dtype of the vectors
    progress: bool = True
    compile: bool = False  # torch.compile the backbone (pays off on long GPU runs)
    decode: str = "pil"  # see DECODERS and bottleneck.device_decode


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
    spec = {**backbone.spec(), "precision": options.precision, "dtype": options.dtype}
    if options.decode != "pil":  # other decoders and resizers give slightly different pixels
        spec["decode"] = options.decode
    return spec


def extract_dataset(
    root: Path, backbone: Backbone, cache: Path, *, name: str | None = None,
    options: ExtractOptions | None = None, remember: bool = True,
) -> ExtractReport:
    """Embed every image of the dataset at `root` that the cache does not hold yet.

    `remember` makes this the cache's last run, the default of `fit` and `compare`.
    """
    options = options or ExtractOptions()
    start = time.perf_counter()
    dataset = scan_dataset(root, name)
    root_dir = str(dataset.root)
    paths = [os.path.join(root_dir, e.path) for e in dataset.entries]  # str: 20k Path objects cost 0.3 s
    with Store.open(cache, writable=True) as store:
        fp = _prepare_extractor(store, backbone, options)
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
                sha = shas.get(path, "")
                status = unreadable.get(path) or _status(sha, bad, store, fp)
                rows.append(ManifestRow(entry.path, entry.label, entry.split, sha, status))
            store.write_manifest(dataset.name, dataset.root, dataset.layout, rows, fp, remember)
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
    resolved = [str(Path(p).resolve()) for p in paths]
    with Store.open(cache, writable=True) as store:
        fp = _prepare_extractor(store, backbone, options)
        shas, unreadable = _hash_files(store, resolved)
        bad: dict[str, str] = {}
        todo = _missing(store, fp, shas, bad)
        computed = _compute(store, fp, backbone, todo, options, resolve_device(options.device), bad)
        ok = {p: s for p, s in shas.items() if store.has(fp, s)}
    skipped = sorted(unreadable.items()) + [(p, bad[s]) for p, s in sorted(shas.items()) if s in bad]
    return FileFeatures(fp, ok, skipped, computed)


def _prepare_extractor(store: Store, backbone: Backbone, options: ExtractOptions) -> str:
    if options.precision not in PRECISIONS:
        raise ExtractError(f"--precision {options.precision}: use one of {', '.join(PRECISIONS)}")
    if options.dtype not in STORAGE_DTYPES:
        raise ExtractError(f"--dtype {options.dtype}: use one of {', '.join(STORAGE_DTYPES)}")
    if options.decode not in DECODERS:
        raise ExtractError(f"--decode {options.decode}: use one of {', '.join(DECODERS)}")
    spec = extractor_spec(backbone, options)
    fp = fingerprint(spec)
    attrs = {
        "model": backbone.name, "weights": backbone.weights_id, "layer": backbone.layer or "",
        "pool": backbone.pool, "preprocess": backbone.preprocess.to_dict(), "precision": options.precision,
        "spec": spec, "bottleneck_version": __version__, "torch_version": torch.__version__,
    }
    store.ensure_extractor(fp, backbone.feature_dim, options.dtype, attrs)
    return fp


def _previous_failures(store: Store, name: str) -> dict[str, str]:
    """sha256 → reason for content that failed to decode last time: not worth decoding again."""
    if name not in store.datasets():
        return {}
    return {r.sha256: r.status for r in store.read_manifest(name) if r.status not in ("ok", PENDING) and r.sha256}


def _hash_files(store: Store, paths: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """sha256 per path, re-reading only files whose size or mtime changed since the last run."""
    index = store.read_path_index()
    shas: dict[str, str] = {}
    stale: list[tuple[str, int, int]] = []
    unreadable: dict[str, str] = {}
    for key in paths:
        try:
            st = os.stat(key)
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


class DecodeDataset(TorchDataset):
    """Reads, decodes and resizes one image in a worker process or decode thread; returns uint8 so
    the copy stays small."""

    def __init__(self, items: Sequence[tuple[str, str]], backbone: Backbone) -> None:
        self.items = items
        self.preprocess = backbone.preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        return self.decode(i, self.read(i))

    def read(self, i: int) -> bytes | ImageError:
        try:
            return read_bytes(Path(self.items[i][1]))
        except ImageError as exc:
            return exc

    def decode(self, i: int, data: bytes | ImageError) -> tuple[int, torch.Tensor | None, str]:
        try:
            if isinstance(data, ImageError):
                raise data
            return i, self.preprocess.resize_crop(decode_rgb(data, draft_to=self.preprocess.resize_size)), ""
        except ImageError as exc:
            return i, None, str(exc)


def _collate(batch: list[tuple[int, torch.Tensor | None, str]]) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    good = [(i, t) for i, t, _ in batch if t is not None]
    bad = [(i, err) for i, t, err in batch if t is None]
    # Stacked as (B, H, W, C) and viewed as NCHW: a channels_last batch, which the model wants, and a
    # plain copy of resize_crop's (C, H, W) view of a (H, W, C) buffer.
    tensor = torch.stack([t.permute(1, 2, 0) for _, t in good]).permute(0, 3, 1, 2) if good else None
    return [i for i, _ in good], tensor, bad


def default_batch_size(device: torch.device) -> int:
    """256 on CUDA; 16 on CPU, as fast per image as 32 there (faster for efficientnet_lite0) and
    half the wait for the first batch."""
    return 256 if device.type == "cuda" else 16


def _compute(store: Store, fp: str, backbone: Backbone, todo: list[tuple[str, str]], options: ExtractOptions,
             device: torch.device, bad: dict[str, str]) -> int:
    """Run the backbone over `todo`, appending each batch to the store as soon as it is done."""
    if not todo:
        return 0
    batches = _batches(todo, backbone, options, device)
    model = _prepare_model(backbone, device, options)
    autocast_dtype = PRECISIONS[options.precision]
    computed = 0
    # One batch stays in flight: batch k is written to HDF5 while the device runs batch k + 1, so a
    # GPU never idles on an HDF5 flush or on the loader (on a CPU this is just a reordering).
    pending: tuple[list[str], torch.Tensor, torch.cuda.Event | None] | None = None
    with _progress(len(todo), options.progress, backbone.name) as advance, torch.inference_mode(), \
            _cpu_runtime(device, options.threads) as settle:
        try:
            for indices, batch, failed in batches:
                for i, reason in failed:
                    bad[todo[i][0]] = reason
                queued = None
                if batch is not None:
                    vectors = _forward(model, backbone, batch, device, autocast_dtype)
                    queued = ([todo[i][0] for i in indices], *_to_host(vectors))
                written, pending = pending, queued
                if written is not None:
                    computed += _write(store, fp, *written)
                settle()
                advance(len(indices) + len(failed))
        finally:  # also on Ctrl-C or a failure: a computed batch is kept
            if pending is not None:
                computed += _write(store, fp, *pending)
    return computed


def _batches(todo: list[tuple[str, str]], backbone: Backbone, options: ExtractOptions,
             device: torch.device) -> Iterator[tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]]:
    """Decoded batches from `options.workers` decode workers (None: one per core; 0: none, this thread):
    DataLoader processes that run ahead of a GPU, or, on a CPU, threads that take turns with the model.

    `--decode torchvision` batches are finished on `device`."""
    batch_size = options.batch_size or default_batch_size(device)
    workers = (os.cpu_count() or 1) if options.workers is None else options.workers
    if options.decode == "torchvision":
        from bottleneck import device_decode

        loader = _loader_batches(device_decode.JpegBytesDataset(todo, backbone), device_decode.collate,
                                 batch_size, workers, device)
        return (device_decode.finish_batch(batch, backbone.preprocess, device) for batch in loader)
    if device.type == "cpu":
        return _alternating_batches(DecodeDataset(todo, backbone), batch_size, workers)
    return _loader_batches(DecodeDataset(todo, backbone), _collate, batch_size, workers, device)


def _loader_batches(dataset: TorchDataset, collate: Callable, batch_size: int, workers: int,
                    device: torch.device) -> Iterator:
    """Batches from DataLoader worker processes, which start decoding at once, while the model is prepared."""
    if len(dataset) <= batch_size:
        workers = 0  # forking workers costs more than decoding one batch in-process
    # torch's default of 2 batches ahead per worker: with 16 workers x 256 images that is already
    # 1.2 GB of shared memory, more than many containers' /dev/shm.
    return iter(DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                           pin_memory=device.type == "cuda"))


def _alternating_batches(dataset: DecodeDataset, batch_size: int,
                         threads: int) -> Iterator[tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]]:
    """CPU: each batch is decoded by `threads` threads while the model waits, and the model then runs
    on every core while they wait; only the next batch's files are read meanwhile.

    Decode workers running beside the model take cores from its threads, which wait for each other
    after every op, so each stolen millisecond stalls them all. Taking turns was 1.1-1.2x faster on 2
    cores, on small JPEGs and 12 MP photos alike (benchmarks/RESULTS.md, section 2)."""
    starts = range(0, len(dataset), batch_size)

    def read(start: int) -> list[bytes | ImageError]:
        return [dataset.read(i) for i in range(start, min(start + batch_size, len(dataset)))]

    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(max(threads, 1)) as decoders:
        ahead = reader.submit(read, starts[0])
        for k, start in enumerate(starts):
            data = ahead.result()
            if k + 1 < len(starts):
                ahead = reader.submit(read, starts[k + 1])
            indices = range(start, start + len(data))
            if threads:
                yield _collate(list(decoders.map(dataset.decode, indices, data)))
            else:
                yield _collate([dataset.decode(i, d) for i, d in zip(indices, data)])


def _forward(model: nn.Module, backbone: Backbone, batch: torch.Tensor, device: torch.device,
            autocast_dtype: torch.dtype | None) -> torch.Tensor:
    """A uint8 (B, 3, S, S) batch → (B, D) vectors on `device`, exactly as extraction runs the model."""
    x = backbone.preprocess.normalize(batch.to(device, non_blocking=True))
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        return model(x)


def _to_host(vectors: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """Start copying `vectors` to CPU memory; on CUDA the copy is asynchronous until the event fires."""
    if vectors.device.type != "cuda":
        return vectors.float().cpu(), None
    host = torch.empty(vectors.shape, dtype=torch.float32, pin_memory=True)
    host.copy_(vectors.float(), non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    return host, ready


def _write(store: Store, fp: str, shas: list[str], host: torch.Tensor, ready: torch.cuda.Event | None) -> int:
    if ready is not None:
        ready.synchronize()
    store.add_vectors(fp, shas, host.numpy())
    return len(shas)


def _prepare_model(backbone: Backbone, device: torch.device, options: ExtractOptions) -> nn.Module:
    """Inference-only speed-ups that keep the vectors (to float rounding): BatchNorm folded into
    convolutions, and channels_last on every device (oneDNN and cuDNN run convolutions faster in it)."""
    model = _fold_batchnorm(backbone.model.eval(), backbone.preprocess.input_size)
    model = model.to(device, memory_format=torch.channels_last)
    if options.compile:
        model = torch.compile(model)
    return model


def _fold_batchnorm(model: nn.Module, input_size: int) -> nn.Module:
    """A copy of `model` in which every BatchNorm2d fed by a Conv2d alone is folded into that conv's
    weights and bias (one op fewer per conv: 7-45 % more images/s on CPU), or `model` itself when
    nothing folds or the model cannot be traced on the meta device."""
    if not any(type(m) in _NORM_REPLACEMENTS for m in model.modules()):
        return model
    try:
        pairs = _conv_norm_pairs(model, input_size)
    except Exception:  # noqa: BLE001 -- any model that can't be traced this way just stays unfolded
        return model
    if not pairs:
        return model
    folded = copy.deepcopy(model)
    modules = dict(folded.named_modules())
    for conv_name, norm_name in pairs:
        norm = modules[norm_name]
        _fold_into(modules[conv_name], norm)
        parent, _, attr = norm_name.rpartition(".")
        setattr(modules[parent], attr, _NORM_REPLACEMENTS[type(norm)](norm))
    return folded


def _conv_norm_pairs(model: nn.Module, input_size: int) -> list[tuple[str, str]]:
    """(conv, norm) module names where the norm is the next module called, on the conv's output,
    and nothing else uses that output (once folded, it comes out normalised).

    Read from one forward pass on the meta device (shapes only, no arithmetic): module order from
    hooks, and the uses of each output from the autograd graph."""
    memo: dict[int, object] = {id(t): nn.Parameter(t.to("meta"), t.requires_grad) for t in model.parameters()}
    memo.update({id(t): t.to("meta") for t in model.buffers()})
    meta = copy.deepcopy(model, memo)  # weights are not copied, only their shapes
    calls: list[tuple[nn.Module, object]] = []  # (module, grad_fn of its first input), in call order
    made_by: dict[nn.Module, object] = {}  # conv -> grad_fn of its output

    def before(module: nn.Module, args: tuple) -> None:
        calls.append((module, args[0].grad_fn if args and isinstance(args[0], torch.Tensor) else None))

    hooks = [m.register_forward_pre_hook(before) for m in meta.modules()]
    hooks += [m.register_forward_hook(lambda m, args, out: made_by.__setitem__(m, out.grad_fn))
              for m in meta.modules() if isinstance(m, nn.Conv2d)]
    x = torch.zeros(1, 3, input_size, input_size, device="meta", requires_grad=True)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            out = meta(x)
    finally:
        for hook in hooks:
            hook.remove()
    uses = Counter(_graph_inputs(out.grad_fn))
    called = Counter(m for m, _ in calls)
    names = {m: name for name, m in meta.named_modules()}
    return [(names[conv], names[norm]) for (conv, _), (norm, source) in zip(calls, calls[1:])
            if type(norm) in _NORM_REPLACEMENTS and isinstance(conv, nn.Conv2d) and norm.running_var is not None
            and source is not None and source is made_by.get(conv) and uses[source] == 1
            and called[conv] == called[norm] == 1]


def _graph_inputs(root: object) -> Iterator[object]:
    """Each autograd node that feeds another, once per use, walking back from `root`."""
    seen, stack = {root}, [root]
    while stack:
        for node, _ in stack.pop().next_functions:
            if node is not None:
                yield node
                if node not in seen:
                    seen.add(node)
                    stack.append(node)


def _fold_into(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    with torch.no_grad():
        scale = norm.running_var.add(norm.eps).rsqrt()
        if norm.weight is not None:
            scale = scale * norm.weight
        shift = -norm.running_mean * scale
        if norm.bias is not None:
            shift = shift + norm.bias
        if conv.bias is not None:
            shift = shift + conv.bias * scale
        conv.weight.mul_(scale.view(-1, 1, 1, 1))
        conv.bias = nn.Parameter(shift, requires_grad=False)


# What is left of a norm module once its affine transform lives in the conv before it.
_NORM_REPLACEMENTS: dict[type, Callable[[nn.Module], nn.Module]] = {
    nn.BatchNorm2d: lambda norm: nn.Identity(),
    BatchNormAct2d: lambda norm: nn.Sequential(norm.drop, norm.act),  # timm: norm, dropout, activation
}


@contextlib.contextmanager
def _cpu_runtime(device: torch.device, threads: int | None) -> Iterator[Callable[[], None]]:
    """Torch intra-op threads and heap-only malloc for the run, both restored afterwards.

    glibc serves each allocation above its mmap threshold (every layer's output) with a fresh mmap
    and unmaps it when freed, so each batch page-faults all its activations in again: 45 % of CPU
    time went to the kernel. Served from the heap, the pages are reused: 1.2-1.9x images/s.
    But torch's aligned allocations leave holes that the heap reuses badly, so it grows by tens of
    MB a batch; the callable this yields, run after each batch, hands free heap pages back to the OS
    whenever resident memory is _HEAP_SLACK above what it was after the first batch."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    libc = _glibc() if device.type == "cpu" else None
    if libc is not None:
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)

    baseline: int | None = None

    def settle() -> None:
        nonlocal baseline
        if libc is None:
            return
        resident = _resident_bytes()
        if baseline is None:
            baseline = resident
        elif resident > baseline + _HEAP_SLACK:
            libc.malloc_trim(0)

    try:
        yield settle
    finally:
        torch.set_num_threads(before)
        if libc is not None:
            # mallopt can't give glibc back its self-tuning thresholds; these are where they settle
            # in any process that has freed a large tensor: mmap above 32 MiB, trim above 64 MiB.
            libc.mallopt(_M_MMAP_MAX, 65536)
            libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
            libc.mallopt(_M_TRIM_THRESHOLD, 64 << 20)
            libc.malloc_trim(0)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4  # mallopt parameters, from glibc's malloc.h
_HEAP_SLACK = 128 << 20


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """glibc (mallopt, malloc_trim), or None on other C libraries and systems."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


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
