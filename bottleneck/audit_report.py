"""What `audit` writes: audit.csv and audit.json (one record per finding) and audit.html, a
self-contained page with thumbnails side by side (both copies of a duplicate; an image with its
given and suggested label)."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from dataclasses import asdict
from pathlib import Path

from .dataset_audit import ISSUES, Audit, Finding
from .formats import spreadsheet_safe
from .images import ImageError, decode_rgb

HTML_CAP = 100  # findings of each issue shown with thumbnails; the CSV and JSON hold them all
COLUMNS = ("issue", "flag", "path", "label", "split", "suggested", "score", "related")


def audit_files(out: Path) -> dict[str, Path]:
    return {"csv": out / "audit.csv", "json": out / "audit.json", "html": out / "audit.html"}


def write_audit(out: Path, audit: Audit) -> dict[str, Path]:
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
    files["html"].write_text(_page(audit))
    return files


def _page(audit: Audit) -> str:
    title = f"audit of {audit.dataset} ({audit.extractor})"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ("class", "images", *ISSUES))
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (c.label, c.images, *c.counts.values()))
                   + "</tr>" for c in audit.classes)
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>near-duplicates: cosine similarity ≥ {audit.threshold}; {len(audit.findings)} findings</p>",
             f"<table><tr>{head}</tr>{rows}</table>"]
    for issue in ISSUES:
        found = [f for f in audit.findings if f.issue == issue]
        parts.append(f"<h2>{issue}: {len(found)}</h2>")
        if len(found) > HTML_CAP:
            parts.append(f"<p>the first {HTML_CAP}; audit.csv holds all {len(found)}</p>")
        parts += [_finding(audit.root, f) for f in found[:HTML_CAP]]
    style = ("body{font-family:sans-serif;margin:2em;max-width:90em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:.3em .6em}figure{display:inline-block;margin:.3em;"
             "vertical-align:top;width:140px;font-size:small;word-break:break-all}.finding{margin:.6em 0}")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


def _finding(root: Path, f: Finding) -> str:
    what = f"score {f.score:.3f}" + (f", {f.flag}" if f.flag else "")
    if f.suggested:
        what += f": labelled {f.label}, the cross-validated head says {f.suggested}"
    pictures = [_figure(root, f.path, f"{f.label} ({f.split})" if f.split else f.label)]
    pictures += [_figure(root, path, "") for path in f.related[:4]]
    return f'<div class="finding"><p>{html.escape(what)}</p>{"".join(pictures)}</div>'


def _figure(root: Path, path: str, caption: str) -> str:
    try:
        img = decode_rgb(root / path, draft_to=128)
        img.thumbnail((128, 128))
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", quality=85)
        picture = f'<img src="data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()}" alt="">'
    except ImageError as exc:
        picture = f"<i>{html.escape(str(exc))}</i>"
    text = html.escape(path) + (f"<br>{html.escape(caption)}" if caption else "")
    return f"<figure>{picture}<figcaption>{text}</figcaption></figure>"
