"""Matplotlib (Agg) figures for the HTML report, returned as PNG bytes or `data:` URIs.

Every function takes plain numpy/list inputs and draws one figure; nothing touches the store.
"""

from __future__ import annotations

import base64
import io
import textwrap
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def data_uri(png: bytes, mime: str = "image/png") -> str:
    """`data:image/png;base64,...` for inline embedding."""
    return f"data:{mime};base64,{base64.b64encode(png).decode('ascii')}"


def fig_png(fig: Figure, dpi: int = 100) -> bytes:
    """Render a figure to PNG bytes and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)  # layout is constrained at creation: one draw
    plt.close(fig)
    return buf.getvalue()


def heatmap(
    matrix: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str],
    title: str,
    xlabel: str = "",
    ylabel: str = "",
    fmt: str = "{:.0f}",
    vmax: float | None = None,
    cmap: str = "viridis",
    annotate_max: int = 200,
) -> bytes:
    """Heatmap of a (len(rows), len(cols)) matrix, cell values written when it has at most
    `annotate_max` cells; NaN cells are left blank."""
    m = np.asarray(matrix, dtype=float)
    if m.shape != (len(rows), len(cols)):
        raise ValueError(f"matrix shape {m.shape} != ({len(rows)}, {len(cols)})")
    w = max(4.0, 0.55 * len(cols) + 2.5)
    h = max(3.0, 0.45 * len(rows) + 1.8)
    fig, ax = plt.subplots(figsize=(w, h), layout="constrained")
    im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=0, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), labels=list(cols), rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), labels=list(rows))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if m.size <= annotate_max:  # per-cell text is the slow part of drawing
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if np.isfinite(m[i, j]):
                    r, g, b, _a = im.cmap(im.norm(m[i, j]))
                    dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5  # text colour by cell luminance
                    ax.text(j, i, fmt.format(m[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if dark else "black")
    fig.colorbar(im, ax=ax, shrink=0.9)
    return fig_png(fig)


def bars(values: Mapping[str, float], title: str, ylabel: str = "", fmt: str = "{:.0f}") -> bytes:
    """Vertical bar chart of label -> value, values printed on the bars."""
    labels = list(values)
    v = [float(values[k]) for k in labels]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(labels) + 2), 3.2), layout="constrained")
    rects = ax.bar(range(len(labels)), v, color="#4c72b0")
    ax.set_xticks(range(len(labels)), labels=labels, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    for r, val in zip(rects, v, strict=True):
        ax.annotate(fmt.format(val), (r.get_x() + r.get_width() / 2, r.get_height()),
                    ha="center", va="bottom", fontsize=8)
    return fig_png(fig)


def curves(x: Sequence[float], series: Mapping[str, Sequence[float]], title: str, xlabel: str = "epoch") -> bytes:
    """Line plot of several series against x; loss-like and [0, 1] metrics on twin axes."""
    fig, ax = plt.subplots(figsize=(6, 3.4), layout="constrained")
    ax2 = None
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, ys) in enumerate(series.items()):
        ys = np.asarray(ys, dtype=float)
        xs = np.asarray(x[: len(ys)], dtype=float)
        color = colors[i % len(colors)]  # one cycle across both axes
        if "loss" in name.lower():
            ax.plot(xs, ys, marker=".", color=color, label=name)
        else:
            ax2 = ax2 or ax.twinx()
            ax2.plot(xs, ys, marker=".", linestyle="--", color=color, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss")
    ax.set_title(textwrap.fill(title, 70), fontsize=8)
    handles, labels = ax.get_legend_handles_labels()
    if ax2 is not None:
        ax2.set_ylabel("metric")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        ax.legend(handles, labels, fontsize=7, loc="best")
    return fig_png(fig)
