"""The `bottleneck` command: parses options, calls the API (api.py), prints its result; `info`, `models`
and `compact` read the store and the sources directly."""

from __future__ import annotations

import contextlib
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import api
from .errors import BottleneckError
from .progress import Progress
from .store import DEFAULT_CACHE

app = typer.Typer(no_args_is_help=True,
                  help="Frozen pretrained CNN features, cached once; classical heads; honest comparisons.")
console = Console()
stderr = Console(stderr=True)

# Help text is rich markup to typer: escape() keeps `[ray]` and `resnet50[layer3,max]` literal.
CacheOption = typer.Option(DEFAULT_CACHE, "--cache", help="HDF5 cache file.")


@contextlib.contextmanager
def _user_errors(cache: Path | None = None) -> Iterator[None]:
    """A BottleneckError becomes one red line and exit 1; anything else is a bug and keeps its traceback."""
    try:
        yield
    except BottleneckError as exc:
        stderr.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        where = f" in {cache}" if cache else ""
        stderr.print(f"interrupted: everything computed so far is saved{where}; rerun to resume", markup=False)
        raise typer.Exit(130) from None


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[Progress | None]:
    """The library's progress reports drawn as rich bars on stderr, one per task, with rate and ETA."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.progress import Progress as Bars

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
               TextColumn("{task.fields[detail]}"))
    with Bars(*columns, console=stderr) as bars:
        tasks: dict[str, tuple[TaskID, float]] = {}

        def report(task: str, done: int, total: int, detail: str = "") -> None:
            if task not in tasks:  # names are data (a label such as resnet50[layer3,max]), not markup
                tasks[task] = bars.add_task(escape(task), total=total, rate="", detail=""), time.perf_counter()
            bar, start = tasks[task]
            rate = done / max(time.perf_counter() - start, 1e-9)
            bars.update(bar, completed=done, total=total, rate=f"{rate:7.1f}/s" if done else "",
                        detail=escape(detail) if done < total else "")

        yield report


@app.command()
def extract(
    data: str = typer.Argument(..., help="DATA/<class>/<images>, DATA/{train,val,test}/<class>/<images>, a label "
                               "file (.csv, .json, .jsonl, .parquet) with path,label[,split] columns, or WebDataset tar "
                               "shards ('shards/train-{000000..000099}.tar'); a path or a URL (s3://, gs://, https://)."),
    model: str = typer.Option("efficientnet_lite0", "--model", "-m", help="See `bottleneck models`; timm:NAME for any timm model."),
    weights: Optional[str] = typer.Option(None, help="Local state_dict file, or 'random'. Default: the model's pretrained weights."),
    layer: Optional[str] = typer.Option(None, help="Intermediate node to read instead of the penultimate features."),
    pool: str = typer.Option("avg", help="Spatial pooling of feature maps: avg, max, or none (a --layer's whole map, flattened: what --finetune reads)."),
    cache: Path = CacheOption,
    name: Optional[str] = typer.Option(None, help="Dataset name in the cache (default: the folder's name)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per forward pass (default 256 on CUDA, 16 on CPU)."),
    workers: Optional[int] = typer.Option(None, help="Decoders (default: CPU count): processes ahead of a GPU, "
                                          "threads taking turns with the model on a CPU; 0: none."),
    threads: Optional[int] = typer.Option(None, help="torch threads for the model (default: one per core; "
                                          "1 can be faster for light models on large photos)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or mps."),
    precision: str = typer.Option("auto", help="auto: bf16 where the hardware computes it natively (AVX-512 BF16 "
                                  "or AMX CPUs, CUDA 8.0+), fp16 on CUDA 7.x, else fp32; or fp32, fp16, bf16."),
    dtype: str = typer.Option("float32", help="Storage dtype of the vectors: float32 or float16."),
    decode: str = typer.Option("pil", help="pil: decode in the worker processes; torchvision: decode JPEGs "
                               "on the model's device (nvJPEG on a GPU, when the CPU can't keep up)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the backbone."),
    views: Optional[int] = typer.Option(None, "--views", help="Also cache K augmented views of each image "
                                        "(view i is seeded by the image's sha256 and i; compare trains on them)."),
    augment: Optional[str] = typer.Option(None, "--augment", help="Augmentation of the views: crop=S+flip+jitter=J "
                                          "(default crop=0.35+flip+jitter=0.2)."),
    engine: str = typer.Option("local", help=escape("local, or ray: Ray Data on a cluster (pip install "
                               "'bottleneck-features[ray]'); this process still writes the cache.")),
    address: Optional[str] = typer.Option(None, help="--engine ray: auto (the cluster `ray start` runs here), "
                                          "HOST:PORT or ray://HOST:PORT; default: a local Ray instance."),
    actors: int = typer.Option(1, help="--engine ray: actors holding the network."),
    cpus_per_actor: int = typer.Option(1, help="--engine ray: CPUs (decode and torch threads) per actor."),
    gpus_per_actor: float = typer.Option(0.0, help="--engine ray: GPUs per actor (e.g. 1, or 0.5 to share one)."),
    images: Optional[str] = typer.Option(None, "--images", help="Label file: the folder (or URL) its paths or ids "
                                         "are relative to (default: the label file's folder)."),
    id_column: Optional[str] = typer.Option(None, "--id-column", help="Label file: a column of file names under "
                                            "--images instead of a path column (an extension is looked up when an id has none)."),
    label_column: Optional[str] = typer.Option(None, "--label-column", help="Label file: the label column (default label)."),
    label_key: Optional[str] = typer.Option(None, "--label-key", help="Tar shards: the key of each sample's json "
                                            "member holding its label (default: its cls or txt member, else json's label)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Embed every image once with a frozen pretrained network and cache the vectors."""
    with _user_errors(cache), _progress_bars(not quiet) as progress:
        report = api.extract(data, model, cache=cache, weights=weights, layer=layer, pool=pool, precision=precision,
                             dtype=dtype, decode=decode, name=name, batch_size=batch_size, workers=workers,
                             threads=threads, device=device, compile=compile, views=views, augment=augment,
                             engine=engine, address=address, actors=actors, cpus_per_actor=cpus_per_actor,
                             gpus_per_actor=gpus_per_actor, images=images, id_column=id_column,
                             label_column=label_column, label_key=label_key, progress=progress)
    for row, reason in report.left_out[:20]:
        stderr.print(f"[yellow]left out[/yellow] {escape(row)}: {escape(reason)}", highlight=False, soft_wrap=True)
    if len(report.left_out) > 20:
        stderr.print(f"... and {len(report.left_out) - 20} more rows or samples")
    for path, reason in report.skipped[:20]:
        stderr.print(f"[yellow]skipped[/yellow] {escape(str(path))}: {escape(reason)}", highlight=False, soft_wrap=True)
    if len(report.skipped) > 20:
        stderr.print(f"... and {len(report.skipped) - 20} more (see `bottleneck info --skipped`)")
    if report.ignored:
        stderr.print(f"[yellow]ignored[/yellow] {len(report.ignored)} images outside class folders, e.g. {report.ignored[0]}")
    console.print(f"{report.dataset}: {report.summary()} → {cache} ({report.fingerprint})", highlight=False,
                  soft_wrap=True, markup=False)


@app.command()
def models() -> None:
    """The models you can use, and which of them work offline right now."""
    from .sources import list_models, weights_cache_dir

    table = Table("model", "source", "offline now", "note")
    for info in list_models():
        table.add_row(info.name, info.source, "yes" if info.offline else "no", info.note)
    console.print(table)
    console.print(f"Downloaded weights are cached in {weights_cache_dir()}. Any timm model works as timm:NAME.")


@app.command()
def info(cache: Path = CacheOption,
         skipped: bool = typer.Option(False, "--skipped", help="List every skipped file."),
         verify: bool = typer.Option(False, "--verify", help="Check every stored vector against its checksum; "
                                     "damaged ones are computed again by the next extract.")) -> None:
    """What the cache holds: datasets, extractors, and skipped files."""
    from .store import Store, verify_cache

    if verify:
        with _user_errors(cache):
            damage = verify_cache(cache)
        for fp, checked, paths in damage:
            line = f"{fp}: {checked} vectors checked, {len(paths)} damaged"
            console.print(line + (f" ({', '.join(paths[:5])}{', ...' if len(paths) > 5 else ''}); the next "
                                  "extract computes them again" if paths else ""), markup=False, soft_wrap=True)
        if any(paths for _, _, paths in damage):
            raise typer.Exit(1)
        return
    with _user_errors(), Store.open(cache) as store:
        table = Table("dataset", "root", "images", "ok", "skipped", "classes", "extractors", title=escape(str(cache)))
        bad: list[tuple[str, str, str]] = []
        for name in store.datasets():
            rows = store.read_manifest(name)
            ok = [r for r in rows if r.status == "ok"]
            bad += [(name, r.path, r.status) for r in rows if r.status != "ok"]
            table.add_row(escape(name), escape(str(store.dataset_root(name))), str(len(rows)), str(len(ok)),
                          str(len(rows) - len(ok)), str(len({r.label for r in rows})),
                          ", ".join(store.dataset_extractors(name)))
        console.print(table)
        ext = Table("extractor", "label", "weights", "dim", "vectors", "updated")
        ext.columns[1].overflow = "fold"
        for fp in store.extractors():
            a, spec = store.extractor_attrs(fp), store.extractor_spec(fp)
            ext.add_row(fp, escape(spec.label()), spec.weights, str(spec.feature_dim), str(store.count(fp)),
                        str(a.get("updated")))
        console.print(ext)
        last = store.last_run()
        if last:
            console.print(f"last run: dataset {last[0]}, extractor {last[1]}", markup=False)
    for name, path, reason in bad if skipped else bad[:10]:
        console.print(f"[yellow]skipped[/yellow] {escape(name)}/{escape(path)}: {escape(reason)}", highlight=False, soft_wrap=True)


@app.command()
def fit(
    head: str = typer.Option("logreg", "--head", help="softmax, logreg, svm, et, rf, knn, mlp, nb, or auto: the head "
                             "and key parameter best by cross-validation on the training split."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset name in the cache (default: the last extracted)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=escape("Use these features: a model name, a label "
                                        "such as resnet50[layer3,max], or a fingerprint (default: the last extracted; --head auto: "
                                        "each of the dataset's extractions and all of them fused); a+b: two "
                                        "extractions side by side, each block weighted alike; an augmented "
                                        "extraction (extract --views K) trains on the plain and K augmented views "
                                        "of each image, predict reading the plain ones.")),
    tune: bool = typer.Option(False, "--tune", help="Search the key hyperparameter by stratified CV on the training split."),
    test_size: float = typer.Option(0.25, help="Held-out fraction when the dataset has no split folders."),
    seed: int = typer.Option(0, help="Seed of the content-hash split and of the head."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to save the head (default cache/heads/<data>-<head>.joblib)."),
    budget: Optional[str] = typer.Option(None, "--budget", help="--head auto: time for the search (90, 90s, 2m); "
                                         "default: every candidate."),
    cache: Path = CacheOption,
) -> None:
    """Train a classifier head on cached embeddings and report its held-out accuracy."""
    with _user_errors():
        result = api.fit(head, data=data, model=model, cache=cache, tune=tune, test_size=test_size, seed=seed,
                         out=out, budget=budget)
    meta = result.sidecar
    console.print(result.report, highlight=False, markup=False, soft_wrap=True)
    sizes = meta["sizes"]
    console.print(escape(
        f"{meta['head']} on {meta['dataset']} ({'+'.join(e['label'] for e in meta.get('fused', [meta['extractor']]))}): "
        f"test accuracy "
        f"{meta['metrics']['test_accuracy']:.3f}, balanced {meta['metrics']['balanced_accuracy']:.3f} "
        f"(train {sizes['train']}, val {sizes['val']}, test {sizes['test']}; fit {meta['fit_seconds']:.2f} s) "
        f"→ {result.head_path}"), highlight=False, soft_wrap=True)
    if "views" in meta:
        console.print(escape(f"trained on each training image's plain vector and {meta['views']['per_image']} augmented "
                             f"views ({', '.join(meta['views']['extractions'])})"), highlight=False, soft_wrap=True)
    if "auto" in meta:
        auto = meta["auto"]
        weights = auto["choice"].get("weights")
        weighted = f" weighted {':'.join(f'{w:g}' for w in weights)}" if weights else ""
        console.print(escape(f"auto chose {auto['choice']['head']} {auto['choice']['params']}{weighted} on "
                             f"{auto['choice']['model']} (cross-validated accuracy "
                             f"{auto['cv_accuracy']:.3f} on the training split; {auto['candidates_scored']} candidates "
                             f"in {auto['seconds']:.1f} s)"), highlight=False, soft_wrap=True)


@app.command()
def predict(
    inputs: list[Path] = typer.Argument(..., help="Image files or folders."),
    head: Optional[Path] = typer.Option(None, "--head", help="A .joblib head written by `bottleneck fit` (its .json "
                                        "sidecar beside it)."),
    model_file: Optional[Path] = typer.Option(None, "--model-file", help="Or a .onnx / .pt2 file written by "
                                              "`bottleneck export-model` (no cache, no head file)."),
    out_file: Optional[Path] = typer.Option(None, "--out", help="Write predictions here (.csv or .json)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="csv or json (default: from --out's suffix, else csv)."),
    top_k: int = typer.Option(1, "--top-k", help="Also write the k best classes and their probabilities."),
    weights: Optional[str] = typer.Option(None, help="The weights file the head's features were made with, if it "
                                          "has moved since (checked by sha256)."),
    cache: Path = CacheOption,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Label new images with a fitted head (images already in the cache cost nothing)."""
    from .training import predictions_format, write_predictions

    with _user_errors(cache), _progress_bars(not quiet) as progress:  # --format and --out checked before any work
        result = api.predict(inputs, head, model_file=model_file, cache=cache, top_k=top_k, weights=weights,
                             out=out_file, format=fmt, progress=progress)
    predictions, skipped = result.items, result.skipped
    for path, reason in skipped:
        stderr.print(f"[yellow]skipped[/yellow] {escape(str(path))}: {escape(reason)}", highlight=False, soft_wrap=True)
    if not predictions:
        stderr.print(f"[red]error:[/red] none of the {len(skipped)} inputs could be used", highlight=False)
        raise typer.Exit(1)
    if not out_file:  # api.predict wrote --out
        sys.stdout.write(write_predictions(predictions, predictions_format(None, fmt), top_k))
    counts = Counter(p.labels[0] for p in predictions)
    summary = ", ".join(f"{label} {n}" for label, n in counts.most_common())
    stderr.print(escape(f"{len(predictions)} images labelled ({summary}), {len(skipped)} skipped"
                        + (f" → {out_file}" if out_file else "")), highlight=False, soft_wrap=True)


@app.command("export-model")
def export_model(
    out: Path = typer.Argument(..., help="The file to write: .onnx (onnxruntime) or .pt2 (torch.export)."),
    head: Path = typer.Option(..., "--head", help="A .joblib head written by `bottleneck fit`."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="int8: onnxruntime's static quantisation of the "
                                           "backbone (.onnx), its accuracy change, size and speed printed."),
    weights: Optional[str] = typer.Option(None, help="The weights file the head's features were made with, if it "
                                          "has moved since (checked by sha256)."),
    check: bool = typer.Option(True, "--check/--no-check", help="Run the file on the head's dataset against predict "
                               "before it replaces anything (same top-1, probabilities within 1e-4)."),
    cache: Path = CacheOption,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """One network: uint8 RGB crops in, class probabilities out (normalisation, backbone and head inside)."""
    with _user_errors(cache), _progress_bars(not quiet) as progress:
        result = api.export_model(head, out, cache=cache, weights=weights, quantize=quantize, check=check,
                                  progress=progress)
    console.print(result.summary(), highlight=False, markup=False, soft_wrap=True)


def _csv(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _ints(value: str | None, option: str) -> list[int] | None:
    try:
        return None if value is None else [int(v) for v in _csv(value) or []]
    except ValueError:
        raise typer.BadParameter(f"{value!r}: give whole numbers separated by commas, e.g. 15,30",
                                 param_hint=option) from None


@app.command()
def compare(
    models: Optional[str] = typer.Option(None, "--models", help=escape("Comma list of model names, labels such as "
                                         "resnet50[layer3,max], or fingerprints (default: every extraction of the dataset).")),
    heads: str = typer.Option("logreg,svm,et", "--heads", help="Comma list of heads."),
    per_class: Optional[str] = typer.Option(None, "--per-class", help="Training images per class, comma list (default 15,30)."),
    cv: Optional[int] = typer.Option(None, "--cv", help="Stratified K-fold instead of --per-class draws."),
    repeats: int = typer.Option(5, help="Random draws per N."),
    seed: int = typer.Option(0, help="Seed of the draws."),
    pixels: int = typer.Option(32, help="Raw-pixel baseline size (0: no baseline)."),
    metric: str = typer.Option("accuracy", help="accuracy, balanced_accuracy or mean_class_accuracy."),
    tune: str = typer.Option("logreg", help="Heads whose key hyperparameter is tuned inside each draw ('none')."),
    cap: bool = typer.Option(False, "--cap", help="Cap N at what each class can spare."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset name in the cache (default: the last extracted)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Report folder (default reports/<dataset>/)."),
    jobs: Optional[int] = typer.Option(None, help="Fits run in parallel (default: one per core)."),
    device: str = typer.Option("auto", help="Where logreg trains: auto (torch on CUDA, a cell's draws in one "
                               "solve, when present; else scikit-learn), sklearn, cuda[:N] or cpu."),
    finetune: Optional[str] = typer.Option(None, "--finetune", help="Layers (comma list, e.g. blocks.5) to cut "
                                           "each model at: a row that trains the rest of the network and a linear "
                                           "layer on that layer's cached maps; 'all': the whole network trained on "
                                           "augmented images decoded each epoch (minutes a draw on a CPU)."),
    cache: Path = CacheOption,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    embedding_map: bool = typer.Option(True, "--map/--no-map", help="report.html shows each extraction's 2-D "
                                       "map (needs pip install 'bottleneck-features[map]')."),
) -> None:
    """Benchmark table: heads × extractions × raw pixels, N images per class, mean ± std over draws."""
    counts = _ints(per_class, "--per-class")
    with _user_errors(cache), _progress_bars(not quiet) as progress:
        result = api.compare(
            data=data, models=_csv(models), heads=_csv(heads) or [], per_class=counts, cv=cv, repeats=repeats,
            seed=seed, pixels=pixels or None, metric=metric, tune=[] if tune == "none" else _csv(tune) or [],
            cap=cap, out=out_dir, jobs=jobs, device=device, finetune=_csv(finetune), cache=cache,
            progress=progress, embedding_map=embedding_map,
        )
    console.print(result.table())
    for note in result.notes:
        console.print(note, highlight=False, markup=False, soft_wrap=True)
    for kind, path in result.files.items():
        console.print(f"{kind}: {path}", highlight=False, markup=False, soft_wrap=True)


@app.command()
def compact(cache: Path = CacheOption) -> None:
    """Rewrite the cache without the space that replaced manifests and path indexes left behind."""
    from .store import compact_cache

    with _user_errors(cache):
        before, after = compact_cache(cache)
    console.print(f"{cache}: {before / 2**20:.1f} MiB → {after / 2**20:.1f} MiB", markup=False)


@app.command()
def repair(cache: Path = CacheOption) -> None:
    """Rebuild a cache whose HDF5 structures are damaged from everything still readable (every intact
    vector, manifest and the path index); the damaged file is kept beside it."""
    with _user_errors(cache):
        report = api.repair(cache=cache)
    console.print(report.summary(), highlight=False, markup=False, soft_wrap=True)


@app.command()
def export(
    out: Path = typer.Argument(..., help="File to write; its suffix picks the format unless --format is given."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset name in the cache (default: the last extracted)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=escape("A model name, a label such as "
                                        "resnet50[layer3,max], or a fingerprint (default: the dataset's last); "
                                        "a+b: the extractions side by side.")),
    fmt: Optional[str] = typer.Option(None, "--format", help="npz, csv or parquet (parquet needs pyarrow)."),
    cache: Path = CacheOption,
) -> None:
    """Write cached vectors with paths, labels, splits and sha256 for other tools."""
    with _user_errors():
        written = api.export(out, data=data, model=model, format=fmt, cache=cache)
    console.print(f"wrote {written}", highlight=False, markup=False, soft_wrap=True)


@app.command()
def audit(
    data: Optional[str] = typer.Option(None, "--data", help="Dataset name in the cache (default: the last extracted)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="A model name, a label or a fingerprint "
                                        "(default: the dataset's last extraction)."),
    threshold: Optional[float] = typer.Option(None, help="Cosine similarity from which two files are "
                                              "near-duplicates (default 0.95)."),
    folds: int = typer.Option(5, help="Cross-validation folds for the out-of-fold probabilities of label checks."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Report folder (default reports/<dataset>/audit/)."),
    cache: Path = CacheOption,
    embedding_map: bool = typer.Option(True, "--map/--no-map", help="audit.html shows the 2-D map with the "
                                       "findings marked (needs pip install 'bottleneck-features[map]')."),
) -> None:
    """Duplicates, train/test leakage, likely label errors and outliers, from the cached embeddings."""
    from .dataset_audit import ISSUES

    with _user_errors(cache):
        result = api.audit(data=data, model=model, threshold=threshold, folds=folds, out=out_dir, cache=cache,
                           embedding_map=embedding_map)
    table = Table("class", "images", *ISSUES, title=escape(f"{result.dataset}: audit ({result.extractor})"))
    for c in result.classes:
        table.add_row(escape(c.label), str(c.images), *(str(n) for n in c.counts.values()))
    console.print(table)
    for issue in ISSUES:
        found = [f for f in result.findings if f.issue == issue]
        for f in found[:5]:
            detail = f" → {f.suggested}" if f.suggested else f" ~ {f.related[0]}" if f.related else ""
            flag = f" [{f.flag}]" if f.flag else ""
            console.print(f"{issue}{flag} {f.score:.3f} {f.path} ({f.label}){detail}", markup=False, highlight=False,
                          soft_wrap=True)
        if len(found) > 5:
            console.print(f"... {len(found) - 5} more {issue} findings", markup=False)
    for kind, path in result.files.items():
        console.print(f"{kind}: {path}", markup=False, highlight=False, soft_wrap=True)


@app.command("map")
def embedding_map(
    data: Optional[str] = typer.Argument(None, help="Dataset name in the cache (default: the last extracted)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="A model name, a label or a fingerprint "
                                        "(default: the dataset's last extraction)."),
    out: Optional[Path] = typer.Option(None, "--out", help="The page to write (default reports/<dataset>/map.html)."),
    cache: Path = CacheOption,
) -> None:
    """One self-contained page: the dataset's embeddings in 2-D (openTSNE), a point per image coloured by
    class; hover for the thumbnail, click to open the image. The layout is kept in the cache."""
    with _user_errors(cache):
        written = api.embedding_map(data, model=model, out=out, cache=cache)
    console.print(f"wrote {written}", highlight=False, markup=False, soft_wrap=True)


if __name__ == "__main__":  # pragma: no cover
    app()
