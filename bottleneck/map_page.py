"""The embedding map as HTML: a <canvas> with one point per image coloured by class, marks (mistakes,
duplicates joined by a line, label issues, outliers), a hover card (thumbnail, path, label, the
point's note), a click that opens the image, a legend that filters classes, zoom and pan.

A fragment that report.html and audit.html embed (`map_section`), or a whole page (`map_document`).
The page carries its own script and data: no network. Data go in as JSON with `<`, `>` and `&`
escaped, and the script sets every name with textContent, so a hostile class or file name stays text.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .images import ImageError, jpeg_data_uri
from .locations import is_url, read

MARKS = ("misclassified", "duplicate", "near-duplicate", "label-issue", "outlier")  # bit i of a point's marks
POINTS_CAP = 20_000  # points drawn; past it a seeded sample (marked points first), said on the page
THUMBNAILS_CAP = 1_500  # hover thumbnails kept in the page (marked points first): ~2.5 KB each
THUMBNAIL_SIDE, THUMBNAIL_QUALITY = 64, 70


@dataclass
class MapView:
    """One layout of the map's images (one extraction)."""

    title: str
    xy: np.ndarray  # (images, 2)
    marks: list[int] | None = None  # per image: bit i set for MARKS[i]
    notes: list[str] | None = None  # per image: a line for the hover card ("predicted: bee"), or ""
    links: list[tuple[int, int, str]] = field(default_factory=list)  # images joined by a line, and why (a MARKS name)
    caption: str = ""


@dataclass
class EmbeddingMap:
    """The images of a map (paths as the manifest has them, and where their bytes are) and their
    layouts; `note`: what the page says above it."""

    paths: list[str]
    addresses: list[str]  # shards.image_addresses: a file, a URL or a shard's byte range
    labels: list[str]
    views: list[MapView]
    note: str = ""


def mark_bits(names: list[str] | set[str]) -> int:
    return sum(1 << MARKS.index(name) for name in names)


def _sample(n: int, marks: np.ndarray, cap: int, seed: int = 0) -> np.ndarray:
    """Up to `cap` of n rows, sorted: every marked row first (as many as fit), then a seeded sample."""
    if n <= cap:
        return np.arange(n)
    order = np.random.default_rng(seed).permutation(n)
    order = order[np.argsort(marks[order] == 0, kind="stable")]  # marked first, each part shuffled
    return np.sort(order[:cap])


def thumbnail(address: str) -> str:
    """A small JPEG data URI of the image at `address`, "" when it can't be read."""
    try:
        return jpeg_data_uri(read(address), THUMBNAIL_SIDE, THUMBNAIL_QUALITY, draft_to=THUMBNAIL_SIDE * 2)
    except (ImageError, OSError):
        return ""


def _url(address: str) -> str:
    """Where a click opens the image: its file or http(s) URL; "" for other stores (s3://: no browser
    opens those) and inside a tar shard."""
    if is_url(address):
        return address if address.startswith(("http://", "https://")) else ""
    target = Path(address)
    return target.as_uri() if address and target.is_absolute() else ""


def payload(m: EmbeddingMap) -> dict:
    """The JSON the script reads: images (sampled past POINTS_CAP), classes, thumbnails, views."""
    n = len(m.paths)
    marks = np.zeros(n, dtype=np.int64)
    for view in m.views:
        if view.marks is not None:
            marks |= np.asarray(view.marks, dtype=np.int64)
    shown = _sample(n, marks, POINTS_CAP)
    position = {int(i): j for j, i in enumerate(shown)}
    with_thumbnail = set(_sample(len(shown), marks[shown], THUMBNAILS_CAP, seed=1).tolist())
    classes = sorted(set(m.labels))
    class_of = {c: i for i, c in enumerate(classes)}
    notes = [m.note] if m.note else []
    if len(shown) < n:
        notes.append(f"a sample of {len(shown):,} of the {n:,} images (every marked one that fits first)")
    if len(with_thumbnail) < len(shown):
        notes.append(f"thumbnails for {len(with_thumbnail):,} of the {len(shown):,} points")
    views = []
    for view in m.views:
        xy = np.asarray(view.xy, dtype=np.float64)[shown]
        low, span = xy.min(axis=0) if len(xy) else np.zeros(2), np.ptp(xy, axis=0) if len(xy) else np.ones(2)
        unit = (xy - low) / np.where(span > 0, span, 1)
        views.append({
            "title": view.title, "caption": view.caption,
            "xy": [round(float(v), 4) for v in unit.ravel()],
            "marks": [int(view.marks[i]) for i in shown] if view.marks is not None else [0] * len(shown),
            "notes": [view.notes[i] for i in shown] if view.notes is not None else [""] * len(shown),
            "links": [[position[a], position[b], MARKS.index(why)] for a, b, why in view.links
                      if a in position and b in position],
        })
    return {
        "classes": classes, "marks": list(MARKS), "notes": notes,
        "label": [class_of[m.labels[i]] for i in shown],
        "path": [m.paths[i] for i in shown],
        "url": [_url(m.addresses[i]) for i in shown],
        "thumb": [thumbnail(m.addresses[i]) if j in with_thumbnail else "" for j, i in enumerate(shown)],
        "views": views,
    }


def _json(data: dict) -> str:
    """JSON safe inside a <script> element: no `<`, `>` or `&` left to end it or start markup."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def map_section(m: EmbeddingMap | None, note: str = "", heading: str = "Embedding map") -> str:
    """The map as a fragment: its style, its data and its script; `None`: the section says why not (`note`)."""
    if m is None or not m.views:
        return (f'<section class="bn-map-none"><h2>{html.escape(heading)}</h2>'
                f"<p>no embedding map: {html.escape(note or 'nothing to draw')}</p></section>")
    return (f'<section class="bn-map"><h2>{html.escape(heading)}</h2>'
            f'<style>{STYLE}</style><script type="application/json" class="bn-map-data">{_json(payload(m))}</script>'
            f"<script>{SCRIPT}</script></section>")


def map_document(title: str, m: EmbeddingMap | None, note: str = "") -> str:
    """A whole page holding the map alone."""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
            f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:2em}}</style></head>"
            f"<body><h1>{html.escape(title)}</h1>{map_section(m, note)}</body></html>\n")


STYLE = """
.bn-map .bn-row{display:flex;gap:1em;align-items:flex-start}
.bn-map canvas{border:1px solid #ccc;cursor:crosshair;background:#fff;touch-action:none}
.bn-map .bn-legend{max-height:560px;overflow-y:auto;min-width:12em;font-size:small}
.bn-map .bn-legend button{display:flex;align-items:center;gap:.4em;border:0;background:none;padding:.1em;
 cursor:pointer;text-align:left;font:inherit;width:100%}
.bn-map .bn-legend button.bn-off{opacity:.35;text-decoration:line-through}
.bn-map .bn-swatch{display:inline-block;width:.9em;height:.9em;border-radius:50%;flex:none}
.bn-map .bn-card{position:fixed;pointer-events:none;background:#fff;border:1px solid #999;padding:.4em;
 font-size:small;max-width:22em;word-break:break-all;box-shadow:0 2px 6px #0003;display:none;z-index:10}
.bn-map .bn-card img{display:block;margin-bottom:.3em}
.bn-map .bn-tools{margin:.4em 0;font-size:small}
"""

# One script per section: it starts the sections not started yet, so it may be included more than once.
SCRIPT = r"""
(function () {
"use strict";
var PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2",
  "#c7c7c7", "#dbdb8d", "#9edae5"];
var MARK_STYLE = {"misclassified": "#d62728", "label-issue": "#ff7f0e", "outlier": "#000000",
  "duplicate": "#6a3d9a", "near-duplicate": "#b15928"};
function colour(i) { return i < PALETTE.length ? PALETTE[i] : "hsl(" + ((i * 137.508) % 360) + ",60%,45%)"; }
function el(tag, cls, text) {
  var e = document.createElement(tag);
  if (cls) { e.className = cls; }
  if (text !== undefined) { e.textContent = text; }
  return e;
}
var registry = window.__bottleneckMap = window.__bottleneckMap || [];
Array.prototype.forEach.call(document.querySelectorAll("section.bn-map"), function (section) {
  if (section.getAttribute("data-started")) { return; }
  section.setAttribute("data-started", "1");
  registry.push(start(section, JSON.parse(section.querySelector("script.bn-map-data").textContent)));
});

function start(section, data) {
  var n = data.path.length, hidden = {}, viewIndex = 0, view = data.views[0], hover = -1;
  var W = 720, H = 540, PAD = 16, scale = 1, tx = 0, ty = 0, drag = null;
  data.notes.forEach(function (line) { section.appendChild(el("p", "bn-note", line)); });
  var tools = section.appendChild(el("div", "bn-tools"));
  var select = null;
  if (data.views.length > 1) {
    tools.appendChild(el("span", "", "extraction: "));
    select = tools.appendChild(el("select"));
    data.views.forEach(function (v, i) { var o = el("option", "", v.title); o.value = String(i); select.appendChild(o); });
    select.addEventListener("change", function () { viewIndex = +select.value; view = data.views[viewIndex]; reset(); });
  }
  var resetButton = tools.appendChild(el("button", "", "reset zoom"));
  tools.appendChild(el("span", "bn-help", " wheel: zoom; drag: pan; click a point: open the image"));
  var caption = section.appendChild(el("p", "bn-caption", ""));
  var row = section.appendChild(el("div", "bn-row"));
  var canvas = row.appendChild(el("canvas"));
  var legend = row.appendChild(el("div", "bn-legend"));
  var card = section.appendChild(el("div", "bn-card"));
  var ratio = window.devicePixelRatio || 1;
  canvas.width = W * ratio; canvas.height = H * ratio;
  canvas.style.width = W + "px"; canvas.style.height = H + "px";
  var ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  var counts = data.classes.map(function () { return 0; });
  data.label.forEach(function (c) { counts[c] += 1; });
  var buttons = data.classes.map(function (name, c) {
    var b = el("button", "bn-class");
    var swatch = b.appendChild(el("span", "bn-swatch"));
    swatch.style.background = colour(c);
    b.appendChild(el("span", "bn-name", name));
    b.appendChild(el("span", "bn-count", "(" + counts[c] + ")"));
    b.setAttribute("data-class", String(c));
    b.addEventListener("click", function () { toggle(c); });
    legend.appendChild(b);
    return b;
  });
  var markKey = legend.appendChild(el("div", "bn-marks"));

  function markCounts() {
    markKey.textContent = "";
    data.marks.forEach(function (name, bit) {
      var count = 0;
      for (var i = 0; i < n; i++) { if (view.marks[i] & (1 << bit)) { count++; } }
      if (!count) { return; }
      var line = markKey.appendChild(el("div", "bn-mark"));
      var swatch = line.appendChild(el("span", "bn-swatch"));
      swatch.style.border = "2px solid " + MARK_STYLE[name];
      line.appendChild(el("span", "", " " + name + " (" + count + ")"));
    });
  }
  function toggle(c) {
    hidden[c] = !hidden[c];
    buttons[c].classList.toggle("bn-off", !!hidden[c]);
    hover = -1; card.style.display = "none";
    draw();
  }
  function sx(i) { return PAD + (view.xy[2 * i] * (W - 2 * PAD)) * scale + tx; }
  function sy(i) { return PAD + ((1 - view.xy[2 * i + 1]) * (H - 2 * PAD)) * scale + ty; }
  function visible(i) { return !hidden[data.label[i]]; }
  function reset() { scale = 1; tx = 0; ty = 0; hover = -1; caption.textContent = view.caption || ""; markCounts(); draw(); }
  function draw() {
    ctx.clearRect(0, 0, W, H);
    var drawn = 0, i;
    ctx.lineWidth = 1;
    view.links.forEach(function (pair) {
      var a = pair[0], b = pair[1];
      if (!visible(a) || !visible(b)) { return; }
      ctx.strokeStyle = MARK_STYLE[data.marks[pair[2]]];
      ctx.beginPath(); ctx.moveTo(sx(a), sy(a)); ctx.lineTo(sx(b), sy(b)); ctx.stroke();
    });
    var radius = n > 3000 ? 2 : 3.5;
    for (var c = 0; c < data.classes.length; c++) {
      if (hidden[c]) { continue; }
      ctx.fillStyle = colour(c);
      ctx.beginPath();
      for (i = 0; i < n; i++) {
        if (data.label[i] !== c) { continue; }
        var x = sx(i), y = sy(i);
        ctx.moveTo(x + radius, y); ctx.arc(x, y, radius, 0, 6.2832);
        drawn++;
      }
      ctx.fill();
    }
    ctx.lineWidth = 1.5;
    for (i = 0; i < n; i++) {
      var m = view.marks[i];
      if (!m || !visible(i)) { continue; }
      data.marks.forEach(function (name, bit) {
        if (!(m & (1 << bit))) { return; }
        ctx.strokeStyle = MARK_STYLE[name];
        ctx.beginPath();
        if (name === "outlier") {
          var s = radius + 3;
          ctx.moveTo(sx(i) - s, sy(i) - s); ctx.lineTo(sx(i) + s, sy(i) + s);
          ctx.moveTo(sx(i) - s, sy(i) + s); ctx.lineTo(sx(i) + s, sy(i) - s);
        } else {
          ctx.arc(sx(i), sy(i), radius + 2 + bit, 0, 6.2832);
        }
        ctx.stroke();
      });
    }
    if (hover >= 0) {
      ctx.strokeStyle = "#000"; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.arc(sx(hover), sy(hover), radius + 4, 0, 6.2832); ctx.stroke();
    }
    canvas.setAttribute("data-points", String(drawn));
  }
  function nearest(x, y) {
    var best = -1, bestD = 64;  // within 8 px
    for (var i = 0; i < n; i++) {
      if (!visible(i)) { continue; }
      var dx = sx(i) - x, dy = sy(i) - y, d = dx * dx + dy * dy;
      if (d < bestD) { bestD = d; best = i; }
    }
    return best;
  }
  function showCard(i, clientX, clientY) {
    card.textContent = "";
    if (data.thumb[i]) { var img = card.appendChild(el("img")); img.src = data.thumb[i]; img.alt = ""; }
    card.appendChild(el("div", "bn-path", data.path[i]));
    card.appendChild(el("div", "bn-label", "label: " + data.classes[data.label[i]]));
    if (view.notes[i]) { card.appendChild(el("div", "bn-text", view.notes[i])); }
    var marked = data.marks.filter(function (name, bit) { return view.marks[i] & (1 << bit); });
    if (marked.length) { card.appendChild(el("div", "bn-flags", marked.join(", "))); }
    card.style.left = (clientX + 14) + "px"; card.style.top = (clientY + 14) + "px";
    card.style.display = "block";
  }
  function local(event) {
    var box = canvas.getBoundingClientRect();
    return [event.clientX - box.left, event.clientY - box.top];
  }
  canvas.addEventListener("mousemove", function (event) {
    if (drag) { return; }
    var p = local(event), found = nearest(p[0], p[1]);
    if (found !== hover) { hover = found; draw(); }
    if (hover >= 0) { showCard(hover, event.clientX, event.clientY); } else { card.style.display = "none"; }
  });
  canvas.addEventListener("mouseleave", function () {
    if (drag) { return; }
    hover = -1; card.style.display = "none"; draw();
  });
  canvas.addEventListener("mousedown", function (event) {
    var p = local(event);
    drag = {x: p[0], y: p[1], tx: tx, ty: ty, moved: false};
    card.style.display = "none";
  });
  // A drag goes on outside the canvas until the button is released.
  window.addEventListener("mousemove", function (event) {
    if (!drag) { return; }
    var p = local(event);
    tx = drag.tx + p[0] - drag.x; ty = drag.ty + p[1] - drag.y;
    drag.moved = drag.moved || Math.abs(p[0] - drag.x) + Math.abs(p[1] - drag.y) > 3;
    draw();
  });
  window.addEventListener("mouseup", function (event) {
    if (!drag) { return; }
    var moved = drag.moved;
    drag = null;
    if (moved || event.target !== canvas) { return; }
    var p = local(event), i = nearest(p[0], p[1]);
    if (i >= 0 && data.url[i]) { window.open(data.url[i], "_blank"); }
  });
  canvas.addEventListener("wheel", function (event) {
    event.preventDefault();
    var p = local(event), factor = Math.exp(-event.deltaY * 0.0015);
    factor = Math.min(Math.max(factor, 0.2), 5);
    var next = Math.min(Math.max(scale * factor, 0.5), 200);
    factor = next / scale;
    tx = p[0] - (p[0] - tx - PAD) * factor - PAD; ty = p[1] - (p[1] - ty - PAD) * factor - PAD;
    scale = next; draw();
  }, {passive: false});
  resetButton.addEventListener("click", reset);
  reset();
  return {
    section: section, points: n, classes: data.classes.slice(),
    drawn: function () { return +canvas.getAttribute("data-points"); },
    view: function () { return viewIndex; },
    scale: function () { return scale; },
    hidden: function () { return data.classes.filter(function (name, c) { return !!hidden[c]; }); },
    links: function () { return view.links.length; },
    hovered: function () { return hover; },
    // where point i is in the window's CSS pixels (for tests and tools)
    clientPoint: function (i) {
      var box = canvas.getBoundingClientRect();
      return [box.left + sx(i), box.top + sy(i)];
    },
    find: function (path) { return data.path.indexOf(path); },
  };
}
})();
"""
