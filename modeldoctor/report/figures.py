"""Draw figure dicts (see `modeldoctor.results`) as inline SVG strings.

Figures are data; this module is the only place that turns them into pictures. It uses
matplotlib's object-oriented `Figure` API (no pyplot state, nothing leaks between calls),
a fixed `svg.hashsalt` so the same figure always gives the same bytes, and text drawn as
paths so the page renders identically offline. Text from the data is always plain text:
`$` is escaped so mathtext never interprets user strings.

Kinds: `line` (with `logy`, `logx`, `hlines` and `vlines` [{x, label}]), `bar`, `images`,
`heatmap`. Anything else, or data that cannot be drawn, gives a small SVG that says so;
`figure_svg` never raises.
"""
from __future__ import annotations

import hashlib
import html
import io
import math
import re
import textwrap
from typing import Any, Callable

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["figure_svg", "format_number", "side_metrics_text"]

FIGSIZE = (5.0, 3.0)
MAX_TICKLABELS = 40
ANNOTATE_MAX_CELLS = 64
IMAGES_PER_ROW = 6

_RC = {
    "svg.hashsalt": "modeldoctor",
    "svg.fonttype": "path",
    "font.size": 8.5,
    "axes.titlesize": 9.5,
    "axes.labelsize": 8.5,
    "legend.fontsize": 7.5,
    "xtick.labelsize": 7.5,
    "ytick.labelsize": 7.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.6,
    "text.usetex": False,
    "image.interpolation": "nearest",
}
_PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"]


def format_number(value: Any, digits: int = 4) -> str:
    """A number for people: 4 significant digits, ints as is, None/NaN as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        return f"{value:.{digits}g}"
    return str(value)


def side_metrics_text(arm: dict) -> list[str]:
    """["routing_entropy 0.99", ...]: an arm's side metrics, by their means."""
    side = arm.get("side_metrics") or {}
    return [f"{name} {format_number((value or {}).get('mean'))}" for name, value in side.items()]


def plain(text: Any, width: int | None = None) -> str:
    """User text made safe for matplotlib: no mathtext (`$` escaped), optionally wrapped."""
    text = "" if text is None else str(text)
    if width:
        text = textwrap.shorten(text, width * 2, placeholder="…")
        text = "\n".join(textwrap.wrap(text, width)) or text
    return text.replace("$", r"\$")


def _floats(values: Any) -> np.ndarray:
    """A float array with None (JSON null) and non-numbers as NaN."""
    def one(v: Any) -> float:
        try:
            return float(v)
        except (TypeError, ValueError):
            return math.nan

    if isinstance(values, (list, tuple)) and values and isinstance(values[0], (list, tuple)):
        return np.array([[one(v) for v in row] for row in values], dtype=float)
    return np.array([one(v) for v in (values or [])], dtype=float)


def _grid(values: Any) -> np.ma.MaskedArray:
    """A 2-D (or H×W×3) list with None as masked cells."""
    array = np.array(values, dtype=float)  # None -> nan; ragged lists raise ValueError
    if array.ndim not in (2, 3):
        raise ValueError(f"expected a 2-D grid, got {array.ndim}-D")
    return np.ma.masked_invalid(array)


def _hlines(ax: Axes, hlines: list[dict] | None) -> bool:
    """Dashed horizontal reference lines; returns whether any carried a label."""
    labelled = False
    for i, line in enumerate(hlines or []):
        y = _floats([line.get("y")])[0]
        if not math.isfinite(y):
            continue
        label = line.get("label")
        ax.axhline(y, color="#6b7280" if i == 0 else _PALETTE[-(i % 4) - 2], linestyle="--",
                   linewidth=1.1, label=plain(label) if label else None, zorder=1)
        labelled = labelled or bool(label)
    return labelled


def _vlines(ax: Axes, vlines: list[dict] | None, logx: bool = False) -> bool:
    """Dotted vertical reference lines (e.g. marked learning rates); returns whether any carried a label."""
    labelled = False
    for i, line in enumerate(vlines or []):
        x = _floats([line.get("x")])[0]
        if not math.isfinite(x) or (logx and x <= 0):
            continue
        label = line.get("label")
        ax.axvline(x, color=_PALETTE[(i + 1) % len(_PALETTE)], linestyle=":", linewidth=1.3,
                   label=plain(label, 40) if label else None, zorder=1)
        labelled = labelled or bool(label)
    return labelled


def _labels(ax: Axes, figure: dict) -> None:
    if figure.get("xlabel"):
        ax.set_xlabel(plain(figure["xlabel"], 70))
    if figure.get("ylabel"):
        ax.set_ylabel(plain(figure["ylabel"], 40))


def _draw_line(fig: Figure, figure: dict) -> None:
    ax = fig.add_subplot()
    logy, logx = bool(figure.get("logy")), bool(figure.get("logx"))
    named = False
    for i, series in enumerate(figure.get("series") or []):
        y = _floats(series.get("y"))
        x = _floats(series["x"]) if series.get("x") is not None else np.arange(len(y), dtype=float)
        n = min(len(x), len(y))
        x, y = x[:n], y[:n]
        if logy:
            y = np.where(y > 0, y, np.nan)
        if logx:
            x = np.where(x > 0, x, np.nan)
        keep = np.isfinite(x)
        marker = "o" if np.count_nonzero(np.isfinite(y)) <= 30 else None
        ax.plot(x[keep], y[keep], color=_PALETTE[i % len(_PALETTE)], marker=marker, markersize=3,
                label=plain(series.get("name"), 40) if series.get("name") else None)
        named = named or bool(series.get("name"))
    if logy:
        ax.set_yscale("log")
    if logx:
        ax.set_xscale("log")
    labelled = _hlines(ax, figure.get("hlines"))
    labelled = _vlines(ax, figure.get("vlines"), logx) or labelled
    _labels(ax, figure)
    if named or labelled:
        ax.legend(frameon=False)


def _set_categories(ax: Axes, axis: str, labels: list | None, count: int) -> None:
    """Category tick labels when there are few enough to read."""
    if not labels or count > MAX_TICKLABELS:
        return
    if axis == "x":
        texts = [plain(label, 24) for label in list(labels)[:count]]
        rotate = 45 if count > 6 or max((len(t) for t in texts), default=0) > 8 else 0
        ax.set_xticks(range(len(texts)))
        ax.set_xticklabels(texts, rotation=rotate, ha="right" if rotate else "center")
    else:
        # One line per row: long names (module paths) keep their most specific end.
        texts = [plain(label if len(str(label)) <= 32 else "…" + str(label)[-31:]) for label in list(labels)[:count]]
        ax.set_yticks(range(len(texts)))
        ax.set_yticklabels(texts)


def _draw_bar(fig: Figure, figure: dict) -> None:
    ax = fig.add_subplot()
    values = _floats(figure.get("values"))
    labels = figure.get("labels") or [str(i) for i in range(len(values))]
    ax.bar(np.arange(len(values)), np.nan_to_num(values, nan=0.0), color=_PALETTE[0], width=0.7,
           zorder=2)
    for i in np.flatnonzero(np.isnan(values)):
        ax.text(i, 0, "n/a", ha="center", va="bottom", fontsize=7, color="#6b7280")
    ax.grid(axis="x", visible=False)
    _set_categories(ax, "x", labels, len(values))
    if _hlines(ax, figure.get("hlines")):
        ax.legend(frameon=False)
    _labels(ax, figure)


def _draw_images(fig: Figure, figure: dict) -> None:
    images = figure.get("images") or []
    if not images:
        raise ValueError("no images")
    cols = min(len(images), IMAGES_PER_ROW)
    rows = math.ceil(len(images) / cols)
    fig.set_size_inches(min(1.55 * cols + 0.9, 10.0), 1.75 * rows + 0.45)
    axes = fig.subplots(rows, cols, squeeze=False)
    cmap = matplotlib.colormaps.get(str(figure.get("cmap") or "viridis"), matplotlib.colormaps["viridis"])
    cmap = cmap.with_extremes(bad="#e5e7eb")
    vmin, vmax = figure.get("vmin"), figure.get("vmax")
    shown = None
    for ax, image in zip(axes.flat, images):
        shown = ax.imshow(_grid(image.get("pixels")), cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_title(plain(image.get("label"), 22), fontsize=8)
    for ax in axes.flat:
        ax.set_axis_off()
    if shown is not None and shown.get_array().ndim == 2:
        fig.colorbar(shown, ax=axes.ravel().tolist(), shrink=0.85, pad=0.02)


def _draw_heatmap(fig: Figure, figure: dict) -> None:
    ax = fig.add_subplot()
    matrix = _grid(figure.get("matrix"))
    cmap = matplotlib.colormaps.get(str(figure.get("cmap") or "viridis"), matplotlib.colormaps["viridis"])
    shown = ax.imshow(matrix, cmap=cmap.with_extremes(bad="#e5e7eb"), aspect="auto",
                      vmin=figure.get("vmin"), vmax=figure.get("vmax"))
    ax.grid(False)
    bar = fig.colorbar(shown, ax=ax, pad=0.02)
    if figure.get("colorbar"):
        bar.set_label(plain(figure["colorbar"], 40))
    _set_categories(ax, "x", figure.get("xticklabels"), matrix.shape[1])
    _set_categories(ax, "y", figure.get("yticklabels"), matrix.shape[0])
    if matrix.ndim == 2 and matrix.size <= ANNOTATE_MAX_CELLS:
        _annotate(ax, matrix, shown.norm)
    _labels(ax, figure)


def _annotate(ax: Axes, matrix: np.ma.MaskedArray, norm: Any) -> None:
    """Write each cell's value on small heatmaps, dark on light cells and light on dark."""
    for (i, j), value in np.ndenumerate(matrix.filled(np.nan)):
        if math.isfinite(value):
            light = norm(value) > 0.6
            ax.text(j, i, format_number(float(value), 3), ha="center", va="center", fontsize=8,
                    color="#111827" if light else "#f9fafb")


_DRAWERS: dict[str, Callable[[Figure, dict], None]] = {
    "line": _draw_line,
    "bar": _draw_bar,
    "images": _draw_images,
    "heatmap": _draw_heatmap,
}


def _svg_text(fig: Figure) -> str:
    """Serialise without the XML prolog/doctype and with ids unique to this picture."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg",
                metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):].strip()
    return _scope_ids(svg)


def _scope_ids(svg: str) -> str:
    """Prefix every id (and reference to it) so several SVGs can share one HTML page."""
    prefix = "md" + hashlib.sha1(svg.encode()).hexdigest()[:8] + "-"
    svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}{m.group(1)}"', svg)
    svg = re.sub(r'href="#([^"]+)"', lambda m: f'href="#{prefix}{m.group(1)}"', svg)
    return re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}{m.group(1)})", svg)


def placeholder_svg(message: str) -> str:
    """A small SVG box with an (escaped) message, for figures that cannot be drawn."""
    text = html.escape(textwrap.shorten(message, 90, placeholder="…"))
    return ('<svg xmlns="http://www.w3.org/2000/svg" width="360" height="48" viewBox="0 0 360 48" '
            'role="img">'
            '<rect x="0.5" y="0.5" width="359" height="47" rx="6" fill="#f9fafb" stroke="#d1d5db"/>'
            f'<text x="12" y="29" font-family="sans-serif" font-size="12" fill="#6b7280">{text}</text>'
            '</svg>')


def figure_size(figure: dict) -> tuple[float, float]:
    """FIGSIZE, made taller for heatmaps with many labelled rows so their labels do not overlap."""
    rows = len(figure.get("yticklabels") or []) if figure.get("kind") == "heatmap" else 0
    return (FIGSIZE[0] + (1.5 if rows > 12 else 0), max(FIGSIZE[1], 0.16 * rows + 1.2))


def figure_svg(figure: dict) -> str:
    """Draw one figure dict as an inline `<svg>` string; never raises.

    `figure` is `{"kind", "title", **fields}` as produced by `Figure.to_dict()`.
    """
    if not isinstance(figure, dict):
        return placeholder_svg("figure cannot be drawn: not a dict")
    kind = figure.get("kind")
    drawer = _DRAWERS.get(kind)  # type: ignore[arg-type]
    if drawer is None:
        return placeholder_svg(f"figure kind {kind!r} cannot be drawn")
    try:
        with matplotlib.rc_context(_RC):
            fig = Figure(figsize=figure_size(figure), layout="constrained")
            drawer(fig, figure)
            if figure.get("title"):
                fig.suptitle(plain(figure["title"], 70), fontsize=_RC["axes.titlesize"])
            svg = _svg_text(fig)
            fig.clear()
            return svg
    except Exception as exc:  # noqa: BLE001 - a bad figure must not break the report
        return placeholder_svg(f"{kind} figure cannot be drawn: {type(exc).__name__}: {exc}")
