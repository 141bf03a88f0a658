"""Attention-pattern figures: one PNG per layer, one panel per head (`bridge-core inspect --plot-attention`).

matplotlib is optional (the `plots` extra) and imported only here, on first use. Figures are drawn on
matplotlib's Agg canvas directly, so nothing needs a display and pyplot's global state is never touched.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import PlotDependencyError

PLOTS_EXTRA = 'pip install "bridge-core[plots]"  (or: pip install "matplotlib>=3.7")'


@dataclass
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
