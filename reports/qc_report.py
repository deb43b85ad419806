"""Sample QC report: one PDF per sample with every applied gate drawn on its parent's events,
the QC steps with the events each removed, and the counts.

What a gate's panel shows is decided once per gate kind (``gate_plot``: the parent's density
or histogram, the gate's outline, the view) and drawn by two renderers: matplotlib for the
review pages (``draw_gate``), and, for the QC PDF written for every sample of a pass, a plain
PDF page writer (``write_sample_qc_report``). Matplotlib spent ~0.4 CPU-s a sample laying out
twelve axes' ticks and texts, four times what gating the sample costs (issue 25); the writer
puts the same densities in as 8-bit images, the gates as vector paths and the text as text
in the PDF standard fonts (searchable, nothing embedded), in a few milliseconds.
"""

from __future__ import annotations

import math
import textwrap
import zlib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
from matplotlib import get_data_path
from matplotlib.patches import Polygon, Rectangle
from matplotlib.ticker import MaxNLocator

from gating.gates import EllipseGate, PolygonGate, RectangleGate, ThresholdMark, TimeRangesGate
from gating.records import AppliedGate
from gating.strategy import QC_ROOT
from reports.figures import OKABE_ITO
from reports.names import flag_words

GATE_COLOUR = OKABE_ITO[3]
KEPT_COLOUR = OKABE_ITO[2]
# Gates whose position the data decided (listed with data/DEFAULT on the first page).
PLACED_FROM_DATA = (ThresholdMark, EllipseGate, PolygonGate)
DENSITY_BINS = 120
ELLIPSE_POINTS = 96
MARGIN = 0.05  # of the data's span on each side, as matplotlib's autoscale leaves


@dataclass
class GatePlot:
    """What one gate's panel shows, in data units: the parent's events (a density image or a
    histogram), the gate (outlines; shaded kept ranges) and the view."""

    title: str
    xlabel: str
    ylabel: str
    view: tuple[float, float, float, float]  # x0, x1, y0, y1
    # Grey levels, rows from the bottom (0 black: many events; 255 white: none), and where
    # the image sits (x0, x1, y0, y1).
    density: np.ndarray | None = None
    density_extent: tuple[float, float, float, float] | None = None
    histogram: tuple[np.ndarray, np.ndarray] | None = None  # counts, bin edges
    kept: list[tuple[float, float]] = field(default_factory=list)  # x ranges, full height
    outlines: list[tuple[np.ndarray, bool]] = field(default_factory=list)  # (n x 2, closed)
    note: str = ""  # small text at the top left (a rectangle's further limits)
    counts_on_y: bool = False  # whole-number ticks on y


def _span(values: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(values, [0.2, 99.8]) if values.size else (0.0, 1.0)
    pad = 0.1 * (hi - lo + 1e-9)
    return float(lo - pad), float(hi + pad)


def _view_around(
    extent: tuple, outlines: list[tuple[np.ndarray, bool]], most: float = math.inf
) -> tuple:
    """The density's extent grown towards every outline, by at most ``most`` times its span
    on each side, with a margin where it grew. Thresholds and rectangle edges are always
    shown where they were placed (``most`` infinite); a polygon or an ellipse reaching far
    beyond the events (the singlet gate's open sides) is cut at the axes instead of
    shrinking the events to a corner."""
    x0, x1, y0, y1 = extent
    points = [p for p, _ in outlines if len(p)]
    if not points:
        return extent
    both = np.vstack(points)
    (px0, py0), (px1, py1) = np.nanmin(both, axis=0), np.nanmax(both, axis=0)
    wx, wy = most * (x1 - x0), most * (y1 - y0)
    nx0, nx1 = max(min(x0, px0), x0 - wx), min(max(x1, px1), x1 + wx)
    ny0, ny1 = max(min(y0, py0), y0 - wy), min(max(y1, py1), y1 + wy)
    mx, my = MARGIN * (nx1 - nx0), MARGIN * (ny1 - ny0)
    return (
        nx0 - (mx if nx0 < x0 else 0),
        nx1 + (mx if nx1 > x1 else 0),
        ny0 - (my if ny0 < y0 else 0),
        ny1 + (my if ny1 > y1 else 0),
    )


def _density(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, tuple]:
    """Log event density as grey levels over the central 99.6% of each axis, padded."""
    extent = (*_span(x), *_span(y))
    counts, _, _ = np.histogram2d(x, y, bins=DENSITY_BINS, range=[extent[:2], extent[2:]])
    level = np.log1p(counts.T)
    top = level.max()
    grey = 255 - np.rint(255 * level / top) if top > 0 else np.full_like(level, 255)
    return grey.astype(np.uint8), extent


def _histogram_view(counts: np.ndarray, edges: np.ndarray, extra_x: list[float]) -> tuple:
    xs = [float(edges[0]), float(edges[-1]), *extra_x]
    x0, x1 = min(xs), max(xs)
    pad = MARGIN * (x1 - x0 or 1.0)
    return (x0 - pad, x1 + pad, 0.0, 1.05 * max(float(counts.max(initial=0)), 1.0))


def _axis_label(dim: str) -> str:
    return f"{dim} (fraction of range)" if dim.startswith(("FSC", "SSC")) else f"{dim} (logicle)"


def _time_ranges_plot(gate: TimeRangesGate, parent, dims, data_channel) -> dict:
    t = data_channel(gate.channel)
    counts, edges = np.histogram(t[parent][np.isfinite(t[parent])], bins=100)
    end = float(np.nanmax(t)) if t.size else 0.0
    kept = [(float(lo), end if hi is None else float(hi)) for lo, hi in gate.keep]
    return {
        "xlabel": f"{gate.channel} (acquisition time)",
        "ylabel": "events per bin",
        "histogram": (counts, edges),
        "kept": kept,
        "view": _histogram_view(counts, edges, [v for r in kept for v in r]),
        "counts_on_y": True,
    }


def _rectangle_plot(gate: RectangleGate, parent, dims, data_channel) -> dict:
    dimensions = list(gate.limits)
    if len(dimensions) == 1:
        d = dimensions[0]
        values = dims[d][parent]
        counts, edges = np.histogram(values[np.isfinite(values)], bins=150)
        marks = [float(v) for v in gate.limits[d] if v is not None]
        view = _histogram_view(counts, edges, marks)
        return {
            "xlabel": _axis_label(d),
            "ylabel": "events",
            "histogram": (counts, edges),
            "view": view,
            "outlines": [(np.array([[v, view[2]], [v, view[3]]]), False) for v in marks],
            "counts_on_y": True,
        }
    grey, extent = _density(dims[dimensions[0]][parent], dims[dimensions[1]][parent])
    (x_lo, x_hi), (y_lo, y_hi) = gate.limits[dimensions[0]], gate.limits[dimensions[1]]
    # Open ends run to the edge of the view, once the view holds the closed ones.
    closed = [[x, extent[2]] for x in (x_lo, x_hi) if x is not None]
    closed += [[extent[0], y] for y in (y_lo, y_hi) if y is not None]
    view = _view_around(extent, [(np.array(closed, dtype=float), False)] if closed else [])
    x_lo, x_hi = (view[0] if x_lo is None else x_lo), (view[1] if x_hi is None else x_hi)
    y_lo, y_hi = (view[2] if y_lo is None else y_lo), (view[3] if y_hi is None else y_hi)
    box = np.array([[x_lo, y_lo], [x_hi, y_lo], [x_hi, y_hi], [x_lo, y_hi]], dtype=float)
    extra = [limit_text(d, lo, hi) for d, (lo, hi) in list(gate.limits.items())[2:]]
    return {
        "xlabel": _axis_label(dimensions[0]),
        "ylabel": _axis_label(dimensions[1]),
        "density": grey,
        "density_extent": extent,
        "view": view,
        "outlines": [(box, True)],
        "note": f"and {', '.join(extra)}" if extra else "",
    }


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


def _two_dimensional(dimensions, parent, dims, outline: np.ndarray) -> dict:
    grey, extent = _density(dims[dimensions[0]][parent], dims[dimensions[1]][parent])
    outlines = [(outline, True)]
    return {
        "xlabel": _axis_label(dimensions[0]),
        "ylabel": _axis_label(dimensions[1]),
        "density": grey,
        "density_extent": extent,
        "view": _view_around(extent, outlines, most=0.25),
        "outlines": outlines,
    }


def _polygon_plot(gate: PolygonGate, parent, dims, data_channel) -> dict:
    return _two_dimensional(gate.dims, parent, dims, np.asarray(gate.vertices, dtype=float))


def ellipse_outline(gate: EllipseGate, points: int = ELLIPSE_POINTS) -> np.ndarray:
    """The ellipse's boundary (Mahalanobis distance squared = ``distance_square``) as
    ``points`` vertices in its first two dimensions."""
    values, vectors = np.linalg.eigh(np.asarray(gate.covariance, dtype=float)[:2, :2])
    angle = np.linspace(0.0, 2 * np.pi, points, endpoint=False)
    unit = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    radius = np.sqrt(gate.distance_square * np.clip(values, 0.0, None))
    return np.asarray(gate.mean[:2], dtype=float) + (unit * radius) @ vectors.T


def _ellipse_plot(gate: EllipseGate, parent, dims, data_channel) -> dict:
    return _two_dimensional(gate.dims, parent, dims, ellipse_outline(gate))


# Gate kinds drawn on a panel of their own; boolean and raw-range gates are listed, not drawn.
_PLOTS = {
    TimeRangesGate: _time_ranges_plot,
    RectangleGate: _rectangle_plot,
    PolygonGate: _polygon_plot,
    EllipseGate: _ellipse_plot,
}


def drawable(gates: list[AppliedGate]) -> list[AppliedGate]:
    """The gates that are drawn (boolean and raw-range gates are listed, not drawn)."""
    return [g for g in gates if type(g.gate) in _PLOTS]


def gate_plot(applied: AppliedGate, dims: dict, masks: dict, data_channel) -> GatePlot:
    """What one applied gate's panel shows over its parent population, or over the events it
    was placed on where those are not its parent (``within``: the transitional tip over the
    CD27- B cells whose cloud it is the tip of, not over all CD19+ B cells), counted there."""
    shown = masks[applied.within or applied.parent]
    count = int(np.count_nonzero(masks[applied.name] & shown))
    shown_count = int(np.count_nonzero(shown))
    share = 100 * count / shown_count if shown_count else float("nan")
    among = f" of {applied.within}" if applied.within else ""
    title = f"{applied.name}  {count}/{shown_count} ({share:.1f}%){among}" + (
        "" if applied.from_data else "  [default]"
    )
    return GatePlot(
        title=title, **_PLOTS[type(applied.gate)](applied.gate, shown, dims, data_channel)
    )


# --- matplotlib: the review pages ---------------------------------------------------------


def draw_gate(ax, applied: AppliedGate, dims: dict, masks: dict, data_channel) -> None:
    """Draw one applied gate over its parent population on a matplotlib axes."""
    draw_plot(ax, gate_plot(applied, dims, masks, data_channel))


def draw_plot(ax, plot: GatePlot) -> None:
    """A ``GatePlot`` on a matplotlib axes (the review pages' renderer)."""
    if plot.density is not None:
        ax.imshow(
            plot.density,
            origin="lower",
            extent=plot.density_extent,
            aspect="auto",
            cmap="gray",
            vmin=0,
            vmax=255,
            interpolation="none",
        )
    if plot.histogram is not None:
        # One filled step artist, not a patch per bar.
        ax.stairs(*plot.histogram, fill=True, color="0.5")
    for lo, hi in plot.kept:
        ax.add_patch(
            Rectangle(
                (lo, plot.view[2]),
                hi - lo,
                plot.view[3] - plot.view[2],
                color=KEPT_COLOUR,
                alpha=0.2,
                lw=0,
            )
        )
    for points, closed in plot.outlines:
        ax.add_patch(Polygon(points, closed=closed, fill=False, ec=GATE_COLOUR, lw=1.2))
    if plot.note:
        ax.text(0.02, 0.98, plot.note, transform=ax.transAxes, fontsize=5, va="top", wrap=True)
    ax.set_xlim(*plot.view[:2])
    ax.set_ylim(*plot.view[2:])
    ax.set_title(plot.title, fontsize=7)
    ax.set_xlabel(plot.xlabel)
    ax.set_ylabel(plot.ylabel)
    if plot.counts_on_y:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))


# --- the QC PDF ----------------------------------------------------------------------------

A4 = (595.28, 841.89)  # points, portrait
GATES_PER_PAGE = 12
GRID = (3, 4)  # rows, columns of a landscape gates page
FONTS = {"F1": "Helvetica", "F2": "Helvetica-Bold", "F3": "Courier"}


@cache
def _widths(font: str) -> tuple[dict[int, int], int]:
    """Character widths (1/1000 em) of a PDF standard font, from the metrics matplotlib ships
    (``fonts/pdfcorefonts/*.afm``), by WinAnsi code; and the width for anything else."""
    widths: dict[int, int] = {}
    by_name: dict[str, int] = {}
    afm = Path(get_data_path()) / "fonts" / "pdfcorefonts" / f"{font}.afm"
    for line in afm.read_text(encoding="latin-1").splitlines():
        if line.startswith("C "):
            fields = dict(f.strip().split(" ", 1) for f in line.split(";") if f.strip())
            by_name[fields["N"]] = int(fields["WX"])
            if 32 <= int(fields["C"]) < 127:
                widths[int(fields["C"])] = int(fields["WX"])
    return widths, by_name.get("n", 556)


def text_width(text: str, size: float, font: str = "Helvetica") -> float:
    """Width in points of ``text`` set in a standard font at ``size``."""
    widths, other = _widths(font)
    return size * sum(widths.get(b, other) for b in _encoded(text)) / 1000


def _encoded(text: str) -> bytes:
    # WinAnsi (cp1252) is what the standard fonts print; anything else shows as '?'.
    return "".join(c if c.isprintable() else "?" for c in text).encode("cp1252", "replace")


def _pdf_string(text: str) -> bytes:
    raw = _encoded(text)
    return b"(" + raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"


def _rgb(colour: str) -> str:
    r, g, b = (int(colour[k : k + 2], 16) / 255 for k in (1, 3, 5))
    return f"{r:.3f} {g:.3f} {b:.3f}"


def _n(value: float) -> str:
    return f"{value:.2f}"


class _Page:
    """One page's content stream and the images it shows."""

    def __init__(self, size: tuple[float, float]) -> None:
        self.size = size
        self.ops: list[bytes] = []
        self.images: list[np.ndarray] = []

    def op(self, text: str) -> None:
        self.ops.append(text.encode("ascii"))

    def text(
        self,
        x: float,
        y: float,
        text: str,
        size: float,
        font: str = "F1",
        align: str = "left",
        vertical: bool = False,
    ) -> None:
        """``text`` with its baseline at ``y``; ``align`` left/centre/right of ``x`` (along
        the baseline, which runs upwards when ``vertical``)."""
        shift = {"left": 0.0, "centre": 0.5, "right": 1.0}[align]
        offset = shift * text_width(text, size, FONTS[font])
        matrix = (
            f"0 1 -1 0 {_n(x)} {_n(y - offset)}"
            if vertical
            else f"1 0 0 1 {_n(x - offset)} {_n(y)}"
        )
        self.ops.append(
            f"BT /{font} {size:g} Tf {matrix} Tm ".encode("ascii") + _pdf_string(text) + b" Tj ET"
        )

    def path(self, points: np.ndarray, closed: bool) -> None:
        # One %-format over all coordinates: a 150-bin histogram is 300 points.
        coordinates = tuple(np.asarray(points, dtype=float).ravel().tolist())
        template = "%.2f %.2f m " + "%.2f %.2f l " * (len(coordinates) // 2 - 1)
        self.op(template % coordinates + ("h" if closed else ""))  # noqa: UP031 (C speed)

    def image(self, grey: np.ndarray, x: float, y: float, w: float, h: float) -> None:
        self.images.append(grey)
        self.op(f"q {_n(w)} 0 0 {_n(h)} {_n(x)} {_n(y)} cm /Im{len(self.images)} Do Q")


def _ticks(lo: float, hi: float, integer: bool) -> tuple[list[float], int]:
    """At most five tick positions inside [lo, hi] and the decimals their labels need."""
    values = [v for v in MaxNLocator(nbins=4, integer=integer).tick_values(lo, hi) if lo <= v <= hi]
    if len(values) < 2:
        return values, 0
    step = values[1] - values[0]
    decimals = max(0, -math.floor(math.log10(step)))
    while decimals < 6 and abs(round(step, decimals) - step) > 1e-9 * abs(step):
        decimals += 1
    return values, decimals


def _draw_panel(page: _Page, plot: GatePlot, box: tuple[float, float, float, float]) -> None:
    """A ``GatePlot`` in ``box`` (x, y, width, height in points): the QC PDF's renderer."""
    bx, by, bw, bh = box
    x0, x1, y0, y1 = plot.view
    sx, sy = bw / ((x1 - x0) or 1.0), bh / ((y1 - y0) or 1.0)

    def to_page(points: np.ndarray) -> np.ndarray:
        return np.column_stack([bx + (points[:, 0] - x0) * sx, by + (points[:, 1] - y0) * sy])

    page.op(f"q {_n(bx)} {_n(by)} {_n(bw)} {_n(bh)} re W n")  # nothing drawn outside the axes
    if plot.density is not None:
        ex0, ex1, ey0, ey1 = plot.density_extent
        page.image(
            plot.density,
            bx + (ex0 - x0) * sx,
            by + (ey0 - y0) * sy,
            (ex1 - ex0) * sx,
            (ey1 - ey0) * sy,
        )
    if plot.histogram is not None:
        counts, edges = plot.histogram
        steps = np.column_stack([np.repeat(edges, 2), np.r_[0, np.repeat(counts, 2), 0]])
        page.op("0.5 g")
        page.path(to_page(steps), closed=True)
        page.op("f")
    for lo, hi in plot.kept:
        page.op(f"q /Kept gs {_rgb(KEPT_COLOUR)} rg")
        page.path(to_page(np.array([[lo, y0], [hi, y0], [hi, y1], [lo, y1]])), closed=True)
        page.op("f Q")
    page.op(f"{_rgb(GATE_COLOUR)} RG 1.2 w 1 j")
    for points, closed in plot.outlines:
        page.path(to_page(np.asarray(points, dtype=float)), closed)
        page.op("S")
    page.op("Q")
    page.op(f"0 G 0.8 w {_n(bx)} {_n(by)} {_n(bw)} {_n(bh)} re S")
    tick = 6.5
    xs, x_decimals = _ticks(x0, x1, integer=False)
    for v in xs:
        px = bx + (v - x0) * sx
        page.op(f"0.6 w {_n(px)} {_n(by)} m {_n(px)} {_n(by - 3)} l S")
        page.text(px, by - 3 - tick, f"{v:.{x_decimals}f}", tick, align="centre")
    ys, y_decimals = _ticks(y0, y1, integer=plot.counts_on_y)
    label_width = 0.0
    for v in ys:
        py = by + (v - y0) * sy
        label = f"{v:.{y_decimals}f}"
        label_width = max(label_width, text_width(label, tick))
        page.op(f"0.6 w {_n(bx)} {_n(py)} m {_n(bx - 3)} {_n(py)} l S")
        page.text(bx - 5, py - tick / 3, label, tick, align="right")
    page.text(bx + bw / 2, by - 3 - 2 * tick - 6, plot.xlabel, 7, align="centre")
    page.text(bx - 9 - label_width, by + bh / 2, plot.ylabel, 7, align="centre", vertical=True)
    title_size = min(7.0, 7.0 * (bw + 30) / max(text_width(plot.title, 7.0), 1.0))
    page.text(bx + bw / 2, by + bh + 5, plot.title, title_size, align="centre")
    if plot.note:
        chars = max(20, int(bw / (0.52 * 5)))
        for k, line in enumerate(textwrap.wrap(plot.note, chars)):
            page.text(bx + 3, by + bh - 7 - 6 * k, line, 5)


def _gates_pages(sample_id: str, plots: list[GatePlot]) -> list[_Page]:
    """Landscape pages of up to GATES_PER_PAGE panels, laid out as matplotlib's
    subplots_adjust(left=0.06, right=0.98, top=0.92, bottom=0.07, hspace=0.45, wspace=0.35)."""
    width, height = A4[1], A4[0]
    rows, columns = GRID
    panel_w = (0.92 * width) / (columns + 0.35 * (columns - 1))
    panel_h = (0.85 * height) / (rows + 0.45 * (rows - 1))
    pages = []
    for start in range(0, len(plots), GATES_PER_PAGE):
        page = _Page((width, height))
        page.text(
            width / 2,
            height - 0.05 * height,
            f"{sample_id}: applied gates on their parent populations "
            "(red: gate; green: kept acquisition time)",
            10,
            align="centre",
        )
        for k, plot in enumerate(plots[start : start + GATES_PER_PAGE]):
            row, column = divmod(k, columns)
            x = 0.06 * width + column * 1.35 * panel_w
            y = height * 0.92 - panel_h - row * 1.45 * panel_h
            _draw_panel(page, plot, (x, y, panel_w, panel_h))
        pages.append(page)
    return pages


def _summary_pages(sample_id: str, lines: list[str]) -> list[_Page]:
    """The first page (and as many more as the lines need), portrait, monospaced."""
    width, height = A4
    size, leading = 6.5, 7.8
    per_page = int((0.88 * height - 36) / leading)
    pages = []
    for start in range(0, max(len(lines), 1), per_page):
        page = _Page((width, height))
        title = f"Sample QC report: {sample_id}" + (" (continued)" if start else "")
        page.text(0.06 * width, 0.96 * height - 14, title, 14, font="F2")
        for k, line in enumerate(lines[start : start + per_page]):
            page.text(0.06 * width, 0.92 * height - size - k * leading, line, size, font="F3")
        pages.append(page)
    return pages


def _write_pdf(path: Path, pages: list[_Page], title: str) -> None:
    """The pages as a PDF 1.4 file: standard fonts (not embedded), Flate streams, grey
    images drawn without smoothing, no creation date (the same sample gives the same bytes)."""
    objects: list[bytes] = []

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    def stream(dictionary: str, data: bytes) -> int:
        packed = zlib.compress(data, 6)
        head = f"<< {dictionary} /Filter /FlateDecode /Length {len(packed)} >>\nstream\n"
        return add(head.encode("ascii") + packed + b"\nendstream")

    catalog = add(b"<< /Type /Catalog /Pages 2 0 R >>")
    add(b"")  # the page tree, written once the pages are numbered
    font_objects = {
        key: add(
            b"<< /Type /Font /Subtype /Type1 /BaseFont /%s /Encoding /WinAnsiEncoding >>"
            % name.encode("ascii")
        )
        for key, name in FONTS.items()
    }
    fonts = " ".join(f"/{key} {number} 0 R" for key, number in font_objects.items())
    kept = add(b"<< /Type /ExtGState /ca 0.2 >>")
    kids = []
    for page in pages:
        images = []
        for k, grey in enumerate(page.images, start=1):
            h, w = grey.shape
            number = stream(
                f"/Type /XObject /Subtype /Image /Width {w} /Height {h} /ColorSpace /DeviceGray "
                "/BitsPerComponent 8 /Interpolate false",
                np.ascontiguousarray(grey[::-1]).tobytes(),  # PDF images run top row first
            )
            images.append(f"/Im{k} {number} 0 R")
        content = stream("", b"\n".join(page.ops))
        resources = (
            f"<< /Font << {fonts} >> /ExtGState << /Kept {kept} 0 R >> "
            f"/XObject << {' '.join(images)} >> >>"
        )
        width, height = (_n(v) for v in page.size)
        kids.append(
            add(
                f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {width} {height}] "
                f"/Resources {resources} /Contents {content} 0 R >>".encode("ascii")
            )
        )
    objects[1] = (
        f"<< /Type /Pages /Kids [{' '.join(f'{k} 0 R' for k in kids)}] /Count {len(kids)} >>"
    ).encode("ascii")
    info = add(b"<< /Title " + _pdf_string(title) + b" /Producer (immunomon) >>")
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode("ascii") + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode("ascii")
    out += b"".join(f"{offset:010d} 00000 n \n".encode("ascii") for offset in offsets)
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root {catalog} 0 R /Info {info} 0 R >>\n"
        f"startxref\n{xref}\n%%EOF\n"
    ).encode("ascii")
    path.write_bytes(bytes(out))


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
        "Gates placed from the data (threshold: valley, mixture_2d, mixture_1d, registered, tail;",
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
    """Write one sample's QC PDF. ``data_channel(name)`` returns a raw channel's values.

    Page 1 (and more if needed): the summary lines; then the drawable gates, 12 a page, each
    on its parent's events. Written to a temporary name and renamed: a reader never sees half
    a file. No shared state: samples may be written from several threads at once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plots = [gate_plot(g, dims, masks, data_channel) for g in drawable(gates)]
    lines = summary_lines(file_name, sha256, software, gates, qc_steps, populations, flags)
    pages = _summary_pages(sample_id, lines) + _gates_pages(sample_id, plots)
    tmp = path.with_name(path.name + ".tmp")
    _write_pdf(tmp, pages, f"QC report {sample_id}")
    tmp.replace(path)
    return path
