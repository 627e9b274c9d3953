"""Comparison tables (rich, Markdown, CSV, JSON), PNG pictures and report.html from result cells.

Pictures use matplotlib's `Figure` with the Agg canvas directly (no pyplot, no global state).
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.markup import escape
from rich.table import Table

from .evaluate import Cell, check_metric
from .images import ImageError, decode_rgb
from .locations import read
from .map_page import EmbeddingMap, map_section

GALLERY_CAP = 24
FILES = {
    "markdown": "results.md", "csv": "results.csv", "json": "results.json", "confusion": "confusion.png",
    "mistakes": "mistakes.png", "curve": "accuracy_vs_n.png", "html": "report.html",
}


@dataclass(frozen=True)
class Mistake:
    path: str  # relative to the dataset root
    true: str
    predicted: str


@dataclass
class BestRun:
    """What the pictures show: the best cell's confusion (summed over draws) and some mistakes."""

    cell: Cell
    classes: list[str]
    confusion: np.ndarray  # counts, rows = true class, columns = predicted
    mistakes: list[Mistake] = field(default_factory=list)


def setting(cell: Cell) -> str:
    return f"{cell.cv}-fold" if cell.cv else f"N={cell.per_class}"


def describe(cell: Cell) -> str:
    return f"{cell.features} + {cell.head}, {setting(cell)}"


def _grid(cells: Sequence[Cell]) -> tuple[list[tuple[str, int | None]], dict[str, dict[tuple[str, int | None], Cell]]]:
    """Columns (head, N) in head order of first appearance then N; rows by features."""
    heads = list(dict.fromkeys(c.head for c in cells))
    sizes = sorted({c.per_class for c in cells}, key=lambda n: -1 if n is None else n)
    present = {(c.head, c.per_class) for c in cells}
    columns = [(h, n) for h in heads for n in sizes if (h, n) in present]
    rows: dict[str, dict[tuple[str, int | None], Cell]] = {}
    for c in cells:
        rows.setdefault(c.features, {})[(c.head, c.per_class)] = c
    return columns, rows


def _best_per_column(cells: Sequence[Cell], metric: str) -> set[int]:
    """ids of the best cell of each column that has more than one."""
    columns: dict[tuple[str, int | None], list[Cell]] = {}
    for c in cells:
        columns.setdefault((c.head, c.per_class), []).append(c)
    return {id(max(group, key=lambda c: c.mean_std(metric)[0])) for group in columns.values() if len(group) > 1}


def _score_text(cell: Cell, metric: str) -> str:
    mean, std = cell.mean_std(metric)
    return f"{mean:.3f} ± {std:.3f}"


def _seconds(s: float) -> str:
    return f"{s:.2f} s" if s >= 0.1 else f"{s * 1000:.0f} ms"


def _text_tables(cells: Sequence[Cell], metric: str) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """Header, score rows and fit-time rows as plain strings (best per column marked with **)."""
    columns, rows = _grid(cells)
    best = _best_per_column(cells, metric)
    title = {key: f"{key[0]} {setting(cell)}" for row in rows.values() for key, cell in row.items()}
    header = ["features"] + [title[key] for key in columns]
    scores, times = [], []
    for features, row in rows.items():
        got = [row.get(key) for key in columns]
        scores.append([features] + ["—" if c is None else
                                    (f"**{_score_text(c, metric)}**" if id(c) in best else _score_text(c, metric))
                                    for c in got])
        times.append([features] + ["—" if c is None else _seconds(c.mean_fit_seconds) for c in got])
    return header, scores, times


def rich_table(cells: Sequence[Cell], metric: str, title: str) -> Table:
    """For the terminal: a row per features + head, a column per N (or the K-fold), so the table
    reads at 80 columns; mean ± std of `metric` over draws with the mean fit time beneath; the best
    of each column in bold."""
    settings = sorted({c.per_class for c in cells}, key=lambda n: -1 if n is None else n)
    by_row: dict[tuple[str, str], dict[int | None, Cell]] = {}
    for c in cells:
        by_row.setdefault((c.features, c.head), {})[c.per_class] = c
    best = {id(max((c for c in cells if c.per_class == n), key=lambda c: c.mean_std(metric)[0])) for n in settings}
    table = Table(title=escape(title), caption=f"{metric}: mean ± std over draws; fit time per draw")
    table.add_column("features", overflow="fold")  # names are data (labels such as resnet50[layer3,max])
    table.add_column("head")
    for n in settings:
        table.add_column(setting(next(c for c in cells if c.per_class == n)), justify="right")
    for (features, head), row in by_row.items():
        texts = []
        for n in settings:
            cell = row.get(n)
            if cell is None:
                texts.append("—")
                continue
            score = _score_text(cell, metric)
            texts.append((f"[bold]{score}[/bold]" if id(cell) in best else score)
                         + f"\n[dim]{_seconds(cell.mean_fit_seconds)}[/dim]")
        table.add_row(escape(features), escape(head), *texts)
    return table


def markdown(cells: Sequence[Cell], metric: str, title: str, notes: Sequence[str] = ()) -> str:
    """Names (features, classes in the notes) are data: HTML is escaped and a `|` cannot end a cell."""
    header, scores, times = _text_tables(cells, metric)

    def table(rows: list[list[str]]) -> list[str]:
        lines = ["| " + " | ".join(map(_md, header)) + " |", "|" + " --- |" * len(header)]
        return lines + ["| " + " | ".join([_md(r[0]), *r[1:]]) + " |" for r in rows]

    lines = [f"# {_md(title)}", "", f"{metric}, mean ± std over draws (best per column in bold):", ""]
    lines += table(scores) + ["", "Fit time per draw (mean):", ""] + table(times)
    if notes:
        lines += [""] + [f"- {_md(n)}" for n in notes]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return html.escape(text, quote=False).replace("|", "\\|")


def records(cells: Sequence[Cell]) -> list[dict]:
    return [row for c in cells for row in c.records()]


def write_csv(path: Path, cells: Sequence[Cell]) -> None:
    rows = records(cells)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "values": " ".join(f"{v:.6g}" for v in row["values"]),
                             "per_class": "" if row["per_class"] is None else row["per_class"],
                             "cv": "" if row["cv"] is None else row["cv"]})


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def plot_confusion(path: Path, best: BestRun) -> None:
    """Row-normalised confusion matrix; figure and font scale with the class count (~100 readable)."""
    k = len(best.classes)
    matrix = best.confusion / np.maximum(best.confusion.sum(axis=1, keepdims=True), 1)
    side = max(4.0, 0.2 * k + 2.0)  # 0.2 in per class leaves room for 7 pt labels
    font = 10.0 if k <= 20 else 7.0
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xticks(range(k), best.classes, rotation=90, fontsize=font)
    ax.set_yticks(range(k), best.classes, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{describe(best.cell)} (all draws)", fontsize=10)
    if k <= 20:
        for (i, j), value in np.ndenumerate(matrix):
            if value > 0:
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=font * 0.8,
                        color="white" if value > 0.5 else "black")
    _save(fig, path)


def plot_mistakes(path: Path, images: dict[str, str], best: BestRun) -> None:
    """Thumbnails of misclassified test images with their true and predicted labels; `images`: each
    path's address (`locations`)."""
    shown = best.mistakes[:GALLERY_CAP]
    cols = min(6, max(1, len(shown)))
    rows = max(1, math.ceil(len(shown) / cols))
    fig = Figure(figsize=(2.0 * cols, 2.3 * rows + 0.4), layout="constrained")
    fig.suptitle(f"misclassified: {describe(best.cell)}, first draw", fontsize=10)
    for i in range(rows * cols):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.axis("off")
        if i >= len(shown):
            continue
        m = shown[i]
        try:
            image = decode_rgb(read(images.get(m.path, "")), draft_to=128)
            image.thumbnail((128, 128))
            ax.imshow(np.asarray(image))
        except (ImageError, OSError):
            ax.imshow(np.full((128, 128, 3), 235, dtype=np.uint8))
            ax.text(64, 64, "unreadable", ha="center", va="center", fontsize=8)
        ax.set_title(f"true: {m.true}\npred: {m.predicted}", fontsize=7, color="firebrick")
    if not shown:
        fig.text(0.5, 0.5, "no misclassified test images", ha="center", va="center")
    _save(fig, path)


def plot_curve(path: Path, cells: Sequence[Cell], metric: str) -> None:
    """Metric vs training images per class: one line per features + head, ± std band."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    lines: dict[tuple[str, str], list[Cell]] = {}
    for c in cells:
        if c.per_class is not None:
            lines.setdefault((c.features, c.head), []).append(c)
    for (features, head), group in lines.items():
        group = sorted(group, key=lambda c: c.per_class or 0)
        x = [c.per_class or 0 for c in group]
        mean, std = (np.array(v) for v in zip(*(c.mean_std(metric) for c in group), strict=True))
        style = "--" if features.startswith("raw") else "-"
        (line,) = ax.plot(x, mean, style, marker="o", label=f"{features} + {head}")
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    ax.set_xlabel("training images per class")
    ax.set_ylabel(metric)
    ax.set_xticks(sorted({c.per_class for c in cells}))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _save(fig, path)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    def cell(text: str, tag: str) -> str:
        bold = text.startswith("**")
        body = html.escape(text.strip("*"))
        return f"<{tag}>{'<b>' + body + '</b>' if bold else body}</{tag}>"

    head = "".join(cell(h, "th") for h in header)
    body = "".join("<tr>" + "".join(cell(t, "td") for t in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_html(path: Path, cells: Sequence[Cell], metric: str, title: str, notes: Sequence[str],
               pictures: dict[str, Path], embedding_map: EmbeddingMap | None = None, map_note: str = "") -> None:
    """One self-contained page: the tables, the notes, the embedding map (or why there is none: `map_note`)
    and the PNGs embedded, so it can be moved or mailed."""
    header, scores, times = _text_tables(cells, metric)
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(metric)}, mean ± std over draws (best per column in bold)</p>",
        _html_table(header, scores), "<h2>Fit time per draw</h2>", _html_table(header, times),
    ]
    if notes:
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    if embedding_map is not None or map_note:
        parts.append(map_section(embedding_map, map_note))
    parts += [f'<h2>{html.escape(caption)}</h2><img src="data:image/png;base64,'
              f'{base64.b64encode(png.read_bytes()).decode()}" alt="{html.escape(caption)}">'
              for caption, png in pictures.items()]
    style = ("body{font-family:sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}td:first-child{text-align:left}"
             "img{max-width:100%}")
    path.write_text(f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
                    f'<title>{html.escape(title)}'
                    f"</title><style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


def write_report(out: Path, cells: Sequence[Cell], best: BestRun | None, *, images: dict[str, str], title: str,
                 metric: str, notes: Sequence[str] = (), embedding_map: EmbeddingMap | None = None,
                 map_note: str = "") -> dict[str, Path]:
    """Write every output under `out`; returns kind → path of the files written.

    The curve needs more than one N (none under --cv); the pictures of the best run need `best`;
    report.html shows `embedding_map`, or says why there is none (`map_note`).
    """
    check_metric(metric)
    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):  # a class named $x$ is text
        return _write_report(out, cells, best, images=images, title=title, metric=metric, notes=notes,
                             embedding_map=embedding_map, map_note=map_note)


def _write_report(out: Path, cells: Sequence[Cell], best: BestRun | None, *, images: dict[str, str], title: str,
                  metric: str, notes: Sequence[str], embedding_map: EmbeddingMap | None,
                  map_note: str) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {kind: out / FILES[kind] for kind in ("markdown", "csv", "json")}
    files["markdown"].write_text(markdown(cells, metric, title, notes))
    write_csv(files["csv"], cells)
    files["json"].write_text(json.dumps(records(cells), indent=1) + "\n")
    pictures: dict[str, Path] = {}
    if best is not None:
        files["confusion"], files["mistakes"] = out / FILES["confusion"], out / FILES["mistakes"]
        plot_confusion(files["confusion"], best)
        plot_mistakes(files["mistakes"], images, best)
        pictures[f"Confusion matrix, {describe(best.cell)}"] = files["confusion"]
        pictures["Misclassified test images"] = files["mistakes"]
    if all(c.per_class is not None for c in cells):
        files["curve"] = out / FILES["curve"]
        plot_curve(files["curve"], cells, metric)
        pictures[f"{metric} vs training images per class"] = files["curve"]
    files["html"] = out / FILES["html"]
    write_html(files["html"], cells, metric, title, notes, pictures, embedding_map, map_note)
    return files
