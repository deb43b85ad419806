"""Sample QC report: one PDF per sample with every applied gate drawn on its parent's events,
the QC steps with the events each removed, and the counts."""

from __future__ import annotations

import textwrap
import threading
from functools import cache
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.patches import Ellipse, Polygon, Rectangle
from matplotlib.transforms import Bbox

from gating.gates import EllipseGate, PolygonGate, RectangleGate, ThresholdMark, TimeRangesGate
from gating.records import AppliedGate
from gating.strategy import QC_ROOT
from reports.figures import A4_LANDSCAPE, A4_PORTRAIT, OKABE_ITO, plt
from reports.names import flag_words

GATE_COLOUR = OKABE_ITO[3]
# Gates whose position the data decided (listed with data/DEFAULT on the first page).
PLACED_FROM_DATA = (ThresholdMark, EllipseGate, PolygonGate)


def _density(ax, x: np.ndarray, y: np.ndarray, xlabel: str, ylabel: str) -> None:
    lo_x, hi_x = np.percentile(x, [0.2, 99.8]) if x.size else (0, 1)
    lo_y, hi_y = np.percentile(y, [0.2, 99.8]) if y.size else (0, 1)
    pad_x, pad_y = 0.1 * (hi_x - lo_x + 1e-9), 0.1 * (hi_y - lo_y + 1e-9)
    extent = [lo_x - pad_x, hi_x + pad_x, lo_y - pad_y, hi_y + pad_y]
    hist, _, _ = np.histogram2d(x, y, bins=120, range=[extent[:2], extent[2:]])
    # 'none': the 120x120 counts go into the PDF as they are, not resampled to 300 dpi.
    ax.imshow(
        np.log1p(hist.T),
        origin="lower",
        extent=extent,
        aspect="auto",
        cmap="Greys",
        interpolation="none",
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def _histogram(ax, values: np.ndarray, bins: int) -> None:
    # One filled step artist, not a patch per bar: pages stay small and fast to write.
    counts, edges = np.histogram(values[np.isfinite(values)], bins=bins)
    ax.stairs(counts, edges, fill=True, color="0.5")


def _axis_label(dim: str) -> str:
    return f"{dim} (fraction of range)" if dim.startswith(("FSC", "SSC")) else f"{dim} (logicle)"


def draw_gate(ax, applied: AppliedGate, dims: dict, masks: dict, data_channel) -> None:
    """Draw one applied gate over its parent population."""
    parent = masks[applied.parent]
    count, parent_count = int(masks[applied.name].sum()), int(parent.sum())
    share = 100 * count / parent_count if parent_count else float("nan")
    ax.set_title(
        f"{applied.name}  {count}/{parent_count} ({share:.1f}%)"
        + ("" if applied.from_data else "  [default]"),
        fontsize=7,
    )
    _DRAWERS[type(applied.gate)](ax, applied.gate, parent, dims, data_channel)


def _draw_time_ranges(ax, gate: TimeRangesGate, parent, dims, data_channel) -> None:
    t = data_channel(gate.channel)
    _histogram(ax, t[parent], 100)
    top = ax.get_ylim()[1]
    for lo, hi in gate.keep:
        hi = t.max() if hi is None else hi
        ax.add_patch(Rectangle((lo, 0), hi - lo, top, color=OKABE_ITO[2], alpha=0.2))
    ax.set_xlabel(f"{gate.channel} (acquisition time)")
    ax.set_ylabel("events per bin")


def _draw_rectangle(ax, gate: RectangleGate, parent, dims, data_channel) -> None:
    dimensions = list(gate.limits)
    if len(dimensions) == 1:
        d = dimensions[0]
        _histogram(ax, dims[d][parent], 150)
        for v in gate.limits[d]:
            if v is not None:
                ax.axvline(v, color=GATE_COLOUR, lw=1.2)
        ax.set_xlabel(_axis_label(d))
        ax.set_ylabel("events")
        return
    _density_of(ax, dimensions, parent, dims)
    (x_lo, x_hi), (y_lo, y_hi) = gate.limits[dimensions[0]], gate.limits[dimensions[1]]
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    x_lo, x_hi = (x0 if x_lo is None else x_lo), (x1 if x_hi is None else x_hi)
    y_lo, y_hi = (y0 if y_lo is None else y_lo), (y1 if y_hi is None else y_hi)
    ax.add_patch(
        Rectangle((x_lo, y_lo), x_hi - x_lo, y_hi - y_lo, fill=False, ec=GATE_COLOUR, lw=1.2)
    )
    if len(dimensions) > 2:
        extra = ", ".join(limit_text(d, lo, hi) for d, (lo, hi) in list(gate.limits.items())[2:])
        ax.text(0.02, 0.98, f"and {extra}", transform=ax.transAxes, fontsize=5, va="top", wrap=True)


def limit_text(dimension: str, low: float | None, high: float | None) -> str:
    """A rectangle's limits on one dimension as a reader writes them: ``CD27 < 0.489``,
    ``CD19 >= 0.45``, ``0.1 <= FSC-A < 0.9`` (an open end is left out, not printed None)."""
    if low is None and high is None:
        return f"{dimension} any"
    if low is None:
        return f"{dimension} < {high:.3g}"
    if high is None:
        return f"{dimension} >= {low:.3g}"
    return f"{low:.3g} <= {dimension} < {high:.3g}"


def _density_of(ax, dimensions, parent, dims) -> None:
    x, y = dims[dimensions[0]][parent], dims[dimensions[1]][parent]
    _density(ax, x, y, _axis_label(dimensions[0]), _axis_label(dimensions[1]))


def _draw_polygon(ax, gate: PolygonGate, parent, dims, data_channel) -> None:
    _density_of(ax, gate.dims, parent, dims)
    ax.add_patch(Polygon(gate.vertices, fill=False, ec=GATE_COLOUR, lw=1.2))


def _draw_ellipse(ax, gate: EllipseGate, parent, dims, data_channel) -> None:
    _density_of(ax, gate.dims, parent, dims)
    values, vectors = np.linalg.eigh(np.asarray(gate.covariance))
    angle = np.degrees(np.arctan2(vectors[1, 1], vectors[0, 1]))
    radius = np.sqrt(gate.distance_square)
    ax.add_patch(
        Ellipse(
            gate.mean,
            2 * radius * np.sqrt(values[1]),
            2 * radius * np.sqrt(values[0]),
            angle=angle,
            fill=False,
            ec=GATE_COLOUR,
            lw=1.2,
        )
    )


# Gate kinds drawn on a page of their own; boolean and raw-range gates are listed, not drawn.
_DRAWERS = {
    TimeRangesGate: _draw_time_ranges,
    RectangleGate: _draw_rectangle,
    PolygonGate: _draw_polygon,
    EllipseGate: _draw_ellipse,
}


def drawable(gates: list[AppliedGate]) -> list[AppliedGate]:
    """The gates that are drawn (boolean and raw-range gates are listed, not drawn)."""
    return [g for g in gates if type(g.gate) in _DRAWERS]


GATES_PER_PAGE = 12
_PAGE_LOCK = threading.Lock()  # the review server may write two samples' PDFs at once


@cache
def _gates_page():
    """The gates page, made once per process and redrawn for every sample: creating 12 axes
    and their ticks was most of a QC PDF's cost (issue 25)."""
    fig, axes = plt.subplots(3, 4, figsize=A4_LANDSCAPE)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.92, bottom=0.07, hspace=0.45, wspace=0.35)
    return fig, axes.ravel()


def _clear(ax) -> None:
    """An axes as subplots made it, its ticks kept: no data, limits from what comes next."""
    for artist in [*ax.images, *ax.patches, *ax.lines, *ax.texts, *ax.collections]:
        artist.remove()
    ax.dataLim.set_points(Bbox.null().get_points())
    ax.ignore_existing_data_limits = True
    ax.set_autoscale_on(True)
    ax.set_title("")
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.locator_params(nbins=4)  # fewer ticks: fewer texts to lay out, still readable
    ax.set_visible(True)


def draw_gates_page(fig, axes, sample_id: str, gates, dims, masks, data_channel) -> None:
    """Up to GATES_PER_PAGE gates on the page's axes (unused axes hidden)."""
    fig.suptitle(
        f"{sample_id}: applied gates on their parent populations "
        "(red: gate; green: kept acquisition time)",
        fontsize=10,
    )
    for k, ax in enumerate(axes):
        _clear(ax)
        if k < len(gates):
            draw_gate(ax, gates[k], dims, masks, data_channel)
        else:
            ax.set_visible(False)


def _wrapped(first: str, text: str, width: int, indent: int) -> list[str]:
    """``first`` then ``text`` wrapped at word boundaries, continuation lines indented under
    it: a note is never cut mid-token."""
    pieces = textwrap.wrap(text, max(20, width - len(first))) or [""]
    return [first + pieces[0], *(" " * indent + piece for piece in pieces[1:])]


def summary_lines(
    file_name: str,
    sha256: str,
    software: str,
    gates: list[AppliedGate],
    qc_steps: list[dict],
    populations: list[dict],
    flags: list[str],
    width: int = 118,
) -> list[str]:
    """The first page of a sample's QC PDF as lines of at most ``width`` characters."""
    lines = [
        f"File: {file_name}",
        f"sha256: {sha256}",
        software,
        "",
        "QC steps                 events in   removed   detail",
    ]
    for q in qc_steps:
        first = f"  {q['name']:22} {q['events_in']:9d} {q['removed']:9d}   "
        lines += _wrapped(first, str(q["detail"]), width, len(first))
    lines += ["", "Population           parent                count   parent    % parent"]
    for pop in populations:
        pct = 100 * pop["count"] / pop["parent_count"] if pop["parent_count"] else np.nan
        lines.append(
            f"  {pop['population']:18} {pop['parent']:18} {pop['count']:8d} "
            f"{pop['parent_count']:8d} {pct:10.2f}"
        )
    lines += [
        "",
        "Gates placed from the data (threshold: valley, mixture_2d, mixture_1d, registered;",
        "DEFAULT: the strategy's default, and the sample needs review):",
    ]
    for g in gates:
        if isinstance(g.gate, PLACED_FROM_DATA) or g.name == QC_ROOT:
            how = "data" if g.from_data else "DEFAULT"
            if isinstance(g.gate, ThresholdMark):
                how = g.gate.method if g.from_data else "DEFAULT"
            first = f"  {g.name:22} {how:11} "
            lines += _wrapped(first, g.note, width, len(first))
    words = "; ".join(flag_words(f) for f in flags)  # in words (reports.names), not codes
    lines += ["", *_wrapped("Flags: ", words or "none", width, 7)]
    return lines


def write_sample_qc_report(
    path: str | Path,
    *,
    sample_id: str,
    file_name: str,
    sha256: str,
    gates: list[AppliedGate],
    masks: dict,
    dims: dict,
    data_channel,
    qc_steps: list[dict],
    populations: list[dict],
    flags: list[str],
    software: str = "",
) -> Path:
    """Write one sample's QC PDF. ``data_channel(name)`` returns a raw channel's values."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    drawn = drawable(gates)
    lines = summary_lines(file_name, sha256, software, gates, qc_steps, populations, flags)
    tmp = path.with_name(path.name + ".tmp")
    with PdfPages(tmp, metadata={"Title": f"QC report {sample_id}", "CreationDate": None}) as pdf:
        fig = plt.figure(figsize=A4_PORTRAIT)
        fig.text(0.06, 0.96, f"Sample QC report: {sample_id}", fontsize=14, weight="bold", va="top")
        fig.text(0.06, 0.92, "\n".join(lines), family="monospace", fontsize=6.5, va="top")
        pdf.savefig(fig)
        plt.close(fig)
        with _PAGE_LOCK:
            page, axes = _gates_page()
            for start in range(0, len(drawn), GATES_PER_PAGE):
                chunk = drawn[start : start + GATES_PER_PAGE]
                draw_gates_page(page, axes, sample_id, chunk, dims, masks, data_channel)
                pdf.savefig(page)
    tmp.replace(path)
    return path
