"""Attention-pattern figures: one PNG per layer, one panel per head (`bridge-core inspect --plot-attention`).

matplotlib is optional (the `plots` extra) and imported only here, on first use. Figures are drawn on
matplotlib's Agg canvas directly, so nothing needs a display and pyplot's global state is never touched.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import PlotDependencyError
from .records import record

PLOTS_EXTRA = 'pip install "bridge-core[plots]"  (or: pip install "matplotlib>=3.7")'


@record
class PatternPanel:
    """One attention of one layer: `pattern [n_heads, q, k]` with its query and key labels."""

    title: str
    pattern: torch.Tensor
    query_labels: Sequence[str]
    key_labels: Sequence[str]


def _matplotlib() -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotDependencyError() from None
    return Figure, FigureCanvasAgg


def _short(label: str, width: int = 10) -> str:
    label = label.replace("\n", "\\n")
    return label if len(label) <= width else label[: width - 1] + "…"


def plot_layer(panels: Sequence[PatternPanel], path: str | Path, title: str) -> Path:
    """Write one PNG: a row per attention in `panels`, a column per head, each a [query, key] heatmap."""
    Figure, FigureCanvasAgg = _matplotlib()
    n_heads = max(p.pattern.shape[0] for p in panels)
    longest = max(max(len(p.query_labels), len(p.key_labels)) for p in panels)
    cell = min(max(2.2, 0.28 * longest + 1.0), 6.0)
    cols = min(n_heads, 4) if longest > 12 else min(n_heads, 8)
    rows_per_panel = math.ceil(n_heads / cols)
    n_rows = rows_per_panel * len(panels)
    figure = Figure(figsize=(cell * cols + 1.2, cell * n_rows + 0.8), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(title, fontsize=12)
    axes = figure.subplots(n_rows, cols, squeeze=False)
    image = None
    for p_index, panel in enumerate(panels):
        pattern = panel.pattern.detach().float().cpu()
        q_labels = [_short(s) for s in panel.query_labels]
        k_labels = [_short(s) for s in panel.key_labels]
        for head in range(rows_per_panel * cols):
            ax = axes[p_index * rows_per_panel + head // cols][head % cols]
            if head >= pattern.shape[0]:
                ax.axis("off")
                continue
            image = ax.imshow(pattern[head].numpy(), vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
            ax.set_title(f"{panel.title} head {head}", fontsize=9)
            ax.set_xticks(range(len(k_labels)), k_labels, rotation=90, fontsize=7)
            ax.set_yticks(range(len(q_labels)), q_labels, fontsize=7)
            if head % cols == 0:
                ax.set_ylabel("query", fontsize=8)
            if head // cols == rows_per_panel - 1:
                ax.set_xlabel("key", fontsize=8)
    if image is not None:
        figure.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label="attention")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def file_name(stack_layer: str) -> str:
    """A file name for a layer label (`decoder.2` -> `decoder_layer02.png`, `0` -> `layer00.png`)."""
    match = re.fullmatch(r"(?:(\w+)\.)?(\d+)", stack_layer)
    if match is None:
        return re.sub(r"[^\w.-]", "_", stack_layer) + ".png"
    stack, layer = match.groups()
    return f"{stack + '_' if stack else ''}layer{int(layer):02d}.png"


# ------------------------------------------------------------------ circuitsvis-compatible export and HTML pages
def circuitsvis_view(panel: PatternPanel) -> dict[str, Any] | None:
    """The keyword arguments of circuitsvis's `attention.attention_patterns(tokens=..., attention=...)`:
    `tokens` one string per position, `attention` `[n_heads][dest][src]`; None for a non-square pattern
    (cross attention), which that view cannot show."""
    pattern = panel.pattern.detach().float().cpu()
    if list(panel.query_labels) != list(panel.key_labels):
        return None
    return {"tokens": list(panel.key_labels), "attention": pattern.tolist()}


def layer_export(panels: Sequence[PatternPanel], title: str) -> dict[str, Any]:
    """One layer as JSON-ready data: per attention, its labels, pattern and circuitsvis arguments."""
    views = []
    for panel in panels:
        pattern = panel.pattern.detach().float().cpu()
        views.append(
            {
                "title": panel.title,
                "query_tokens": list(panel.query_labels),
                "key_tokens": list(panel.key_labels),
                "pattern": pattern.tolist(),
                "circuitsvis": circuitsvis_view(panel),
            }
        )
    return {"title": title, "views": views}


# The page draws every head as an SVG grid from the embedded data, with no script or style from elsewhere.
_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>body{font-family:sans-serif;margin:16px}figure{display:inline-block;margin:8px;vertical-align:top}
figcaption{font-size:12px}text{font-size:9px;font-family:monospace}#hover{font-family:monospace}</style>
</head><body><h1 id="title"></h1><p id="hover">hover a cell: query, key, attention</p><div id="heads"></div>
<script type="application/json" id="data">__DATA__</script>
<script>
(function () {
  var data = JSON.parse(document.getElementById("data").textContent);
  var NS = "http://www.w3.org/2000/svg", cell = 18, margin = 70, cells = 0;
  document.getElementById("title").textContent = data.title;
  function el(name, attrs, parent) {
    var node = document.createElementNS(NS, name);
    for (var key in attrs) node.setAttribute(key, attrs[key]);
    parent.appendChild(node);
    return node;
  }
  function colour(v) {  // white (0) to dark blue (1)
    var t = Math.max(0, Math.min(1, v));
    return "rgb(" + Math.round(255 - 225 * t) + "," + Math.round(255 - 175 * t) + "," + Math.round(255 - 55 * t) + ")";
  }
  data.views.forEach(function (view) {
    view.pattern.forEach(function (head, h) {
      var figure = document.createElement("figure"), q = view.query_tokens, k = view.key_tokens;
      var svg = el("svg", {width: margin + cell * k.length, height: margin + cell * q.length,
                           "class": "head", "data-view": view.title, "data-head": h}, figure);
      k.forEach(function (tok, j) {
        var x = margin + cell * j + cell / 2;
        var turn = "rotate(-60 " + x + " " + (margin - 4) + ")";
        el("text", {x: x, y: margin - 4, transform: turn}, svg).textContent = tok;
      });
      q.forEach(function (tok, i) {
        el("text", {x: margin - 4, y: margin + cell * i + cell * 0.7, "text-anchor": "end"}, svg).textContent = tok;
        head[i].forEach(function (v, j) {
          var rect = el("rect", {x: margin + cell * j, y: margin + cell * i, width: cell - 1, height: cell - 1,
                                 fill: colour(v), "class": "cell", "data-q": i, "data-k": j, "data-value": v}, svg);
          rect.addEventListener("mouseover", function () {
            var where = view.title + " head " + h + ": " + q[i] + " -> " + k[j];
            document.getElementById("hover").textContent = where + " = " + v.toFixed(4);
          });
          cells += 1;
        });
      });
      var caption = document.createElement("figcaption");
      caption.textContent = view.title + " head " + h + " (rows: query, columns: key)";
      figure.appendChild(caption);
      document.getElementById("heads").appendChild(figure);
    });
  });
  document.body.setAttribute("data-rendered-cells", cells);
})();
</script></body></html>
"""


def write_layer_page(panels: Sequence[PatternPanel], directory: str | Path, stem: str, title: str) -> list[Path]:
    """Write `stem.json` (the export) and `stem.html` (a page drawing it, openable offline); their paths."""
    import html
    import json

    export = layer_export(panels, title)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = json.dumps(export)
    json_path, html_path = directory / f"{stem}.json", directory / f"{stem}.html"
    json_path.write_text(data + "\n", encoding="utf-8")
    # "</" could close the script element early; a JSON string may spell it "<\\/" instead
    page = _PAGE.replace("__TITLE__", html.escape(title)).replace("__DATA__", data.replace("</", "<\\/"))
    html_path.write_text(page, encoding="utf-8")
    return [json_path, html_path]
