"""What `audit` writes: audit.csv and audit.json (one record per finding) and audit.html, a
self-contained page with thumbnails side by side (both copies of a duplicate; an image with its
given and suggested label), and the embedding map with the findings marked (`audit_map`)."""

from __future__ import annotations

import csv
import html
import json
from dataclasses import asdict
from pathlib import Path

from .dataset_audit import ISSUES, Audit, Finding
from .errors import BottleneckError
from .formats import spreadsheet_safe
from .images import ImageError, jpeg_data_uri
from .locations import read
from .map_layout import cached_projection, check_available
from .map_page import EmbeddingMap, MapView, map_section, mark_bits
from .store import load_features

HTML_CAP = 100  # findings of each issue shown with thumbnails; the CSV and JSON hold them all
COLUMNS = ("issue", "flag", "path", "label", "split", "suggested", "score", "related")


def audit_files(out: Path) -> dict[str, Path]:
    return {"csv": out / "audit.csv", "json": out / "audit.json", "html": out / "audit.html"}


def write_audit(out: Path, audit: Audit, embedding_map: EmbeddingMap | None = None,
                map_note: str = "") -> dict[str, Path]:
    """The three files; audit.html with `embedding_map`, or saying why there is none (`map_note`)."""
    out.mkdir(parents=True, exist_ok=True)
    files = audit_files(out)
    with files["csv"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for f in audit.findings:
            row = [f.issue, f.flag, f.path, f.label, f.split, f.suggested, f"{f.score:.4f}", " | ".join(f.related)]
            writer.writerow([spreadsheet_safe(cell) for cell in row])
    summary = {"dataset": audit.dataset, "root": str(audit.root), "extractor": audit.extractor,
               "threshold": audit.threshold, "seconds": round(audit.seconds, 2),
               "classes": [asdict(c) for c in audit.classes], "findings": audit.to_records()}
    files["json"].write_text(json.dumps(summary, indent=1) + "\n")
    files["html"].write_text(_page(audit, embedding_map, map_note))
    return files


def audit_map(cache: Path, fingerprint: str, audit: Audit, *, write: bool = True) -> tuple[EmbeddingMap | None, str]:
    """The audited extraction laid out in 2-D (kept in the cache when `write`), every finding marked:
    copies joined by a line, label issues with their suggested label; (None, why) when it can't be drawn."""
    try:
        check_available()
        features = load_features(cache, audit.dataset, fingerprint)
        xy, _ = cached_projection(cache, fingerprint, features.shas, features.X, write=write)
    except BottleneckError as exc:
        return None, str(exc)
    row = {path: i for i, path in enumerate(features.paths)}
    marks: list[int] = [0] * len(row)
    notes: list[list[str]] = [[] for _ in row]
    links: list[tuple[int, int, str]] = []
    for f in audit.findings:
        members = [row[p] for p in [f.path, *f.related] if p in row]
        if not members:
            continue
        if f.issue in ("duplicate", "near-duplicate"):
            for i in members:
                marks[i] |= mark_bits([f.issue])
            links += [(members[0], i, f.issue) for i in members[1:]]
            notes[members[0]].append(f"{f.issue} of {len(members) - 1} other(s)" + (f", {f.flag}" if f.flag else ""))
        else:
            marks[members[0]] |= mark_bits([f.issue])
            notes[members[0]].append(f"label issue: the cross-validated head says {f.suggested}" if f.suggested
                                     else f"{f.issue}: score {f.score:.3f}")
    view = MapView(audit.extractor, xy, marks, ["; ".join(n) for n in notes], links,
                   caption="marked: duplicates and near-duplicates (joined by a line), label issues, outliers")
    addresses = [audit.images.get(p, "") for p in features.paths]
    return EmbeddingMap(features.paths, addresses, [str(x) for x in features.labels], [view]), ""


def _page(audit: Audit, embedding_map: EmbeddingMap | None = None, map_note: str = "") -> str:
    title = f"audit of {audit.dataset} ({audit.extractor})"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ("class", "images", *ISSUES))
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (c.label, c.images, *c.counts.values()))
                   + "</tr>" for c in audit.classes)
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>near-duplicates: cosine similarity ≥ {audit.threshold}; {len(audit.findings)} findings</p>",
             f"<table><tr>{head}</tr>{rows}</table>"]
    if embedding_map is not None or map_note:
        parts.append(map_section(embedding_map, map_note))
    for issue in ISSUES:
        found = [f for f in audit.findings if f.issue == issue]
        parts.append(f"<h2>{issue}: {len(found)}</h2>")
        if len(found) > HTML_CAP:
            parts.append(f"<p>the first {HTML_CAP}; audit.csv holds all {len(found)}</p>")
        parts += [_finding(audit.images, f) for f in found[:HTML_CAP]]
    style = ("body{font-family:sans-serif;margin:2em;max-width:90em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:.3em .6em}figure{display:inline-block;margin:.3em;"
             "vertical-align:top;width:140px;font-size:small;word-break:break-all}.finding{margin:.6em 0}")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
            f'<title>{html.escape(title)}</title>'
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


def _finding(images: dict[str, str], f: Finding) -> str:
    what = f"score {f.score:.3f}" + (f", {f.flag}" if f.flag else "")
    if f.suggested:
        what += f": labelled {f.label}, the cross-validated head says {f.suggested}"
    pictures = [_figure(images.get(f.path, ""), f.path, f"{f.label} ({f.split})" if f.split else f.label)]
    pictures += [_figure(images.get(path, ""), path, "") for path in f.related[:4]]
    return f'<div class="finding"><p>{html.escape(what)}</p>{"".join(pictures)}</div>'


def _figure(address: str, path: str, caption: str) -> str:
    try:
        picture = f'<img src="{jpeg_data_uri(read(address), 128, 85, draft_to=128)}" alt="">'
    except ImageError as exc:
        picture = f"<i>{html.escape(str(exc))}</i>"
    text = html.escape(path) + (f"<br>{html.escape(caption)}" if caption else "")
    return f"<figure>{picture}<figcaption>{text}</figcaption></figure>"
