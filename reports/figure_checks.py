"""Checks that a drawn page cannot misstate: every data point inside its axes' limits, every
annotation inside its own axes, page text inside the page and clear of the panels' labels,
nothing within a printer's margin of the page edge, no table without column headers, no
count axis ticked at fractions, no raw code (flag codes, nan, full-precision floats, tuples),
no note about hatching where nothing is hatched, no empty band under the page title.

The report's tests run these on every page's figure object before it is saved."""

from __future__ import annotations

import re

import numpy as np
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

TOLERANCE_PX = 1.5
# Nothing drawn closer than this to the page edge (points): printers and viewers crop less.
MARGIN_PT = 14.0
# Axis labels that say the axis counts things (patients, relapses, drugs, events).
COUNT_AXIS = re.compile(r"\(count\)|\bnumber of\b|^events\b|^patients\b(?!.*%)", re.I)
# What a referee should never read: the pipeline's flag codes, raw floats and tuples,
# non-numbers, a NaN printed as a number ('inf' closing an interval, '[0.5, inf]', is its
# open end, not a raw value; 'inf' quoted names the CSV's spelling). Names and words come
# from ``reports.names``.
RAW_CODE = re.compile(
    r"\b(default_threshold|default_gate|low_count|not_measured|below_separation_floor"
    r"|qc_removed|no_spillover_keyword|no_time_channel|entered_at):[^\s;,]+"
    r"|\(None, |\b\d+\.\d{7,}\b|(?<![\w.'])(nan|NaN|-?inf)(?![\w.\]'])"
)
# The largest band of empty page between the title and the panels (share of the height).
EMPTY_BAND = 0.1
_NUMBER = re.compile(r"^[-+<>]?\s*\d[\d.,:/%-]*(e[-+]?\d+)?$|^(NA|nan|inf)$", re.I)


def _inside(inner: Bbox, outer: Bbox) -> bool:
    return (
        inner.x0 >= outer.x0 - TOLERANCE_PX
        and inner.x1 <= outer.x1 + TOLERANCE_PX
        and inner.y0 >= outer.y0 - TOLERANCE_PX
        and inner.y1 <= outer.y1 + TOLERANCE_PX
    )


def _overlap(a: Bbox, b: Bbox) -> bool:
    return (
        min(a.x1, b.x1) - max(a.x0, b.x0) > TOLERANCE_PX
        and min(a.y1, b.y1) - max(a.y0, b.y0) > TOLERANCE_PX
    )


def _points_outside(ax) -> list[str]:
    """Data points (lines' vertices, scatter offsets) outside the axes' limits."""
    (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
    problems = []
    pieces = [(line.get_label(), np.asarray(line.get_xydata(), float)) for line in ax.lines]
    pieces += [
        (collection.get_label(), np.asarray(collection.get_offsets(), float))
        for collection in ax.collections
        if collection.get_offset_transform() == ax.transData
    ]
    for label, xy in pieces:
        if xy.ndim != 2 or not xy.size:
            continue
        xy = xy[np.isfinite(xy).all(axis=1)]
        span_x, span_y = (x1 - x0) * 1e-9, (y1 - y0) * 1e-9
        out = (
            (xy[:, 0] < x0 - span_x)
            | (xy[:, 0] > x1 + span_x)
            | (xy[:, 1] < y0 - span_y)
            | (xy[:, 1] > y1 + span_y)
        )
        if out.any():
            problems.append(
                f"{int(out.sum())} point(s) of {label!r} outside the limits "
                f"x [{x0:.4g}, {x1:.4g}], y [{y0:.4g}, {y1:.4g}] of '{ax.get_title()}'"
            )
    return problems


def _visible_texts(ax) -> list[Text]:
    return [t for t in ax.texts if t.get_visible() and t.get_text().strip()]


def _cells(line: str) -> list[str]:
    """A text line's cells: the pieces between runs of two or more spaces."""
    return [c for c in re.split(r"\s{2,}", line.strip()) if c]


def is_table_row(line: str) -> bool:
    """A line of a text table: three or more cells, two or more of them numbers."""
    cells = _cells(line)
    return len(cells) >= 3 and sum(bool(_NUMBER.match(c)) for c in cells) >= 2


def is_table_header(line: str) -> bool:
    """Column headers: three or more cells (two spaces apart), none a number."""
    cells = _cells(line)
    return len(cells) >= 3 and not any(_NUMBER.match(c) for c in cells)


def unlabelled_tables(lines: list[str]) -> list[str]:
    """The first row of every table (two or more rows in a paragraph) with no column headers
    above it in its paragraph (paragraphs: runs of lines between blank lines)."""
    problems, header, rows, first = [], False, 0, ""
    for line in [*lines, ""]:
        if not line.strip():
            header, rows = False, 0
            continue
        if is_table_row(line):
            rows += 1
            first = line if rows == 1 else first
            if rows == 2 and not header:
                problems.append(first.strip()[:50])
        elif is_table_header(line):
            header = True
    return problems


def raw_codes(text: str) -> list[str]:
    """The raw codes in a page's text: flag codes, floats to full precision, tuples, nan."""
    return sorted({m.group(0) for m in RAW_CODE.finditer(text)})


def _all_text(fig: Figure) -> list[str]:
    """Every visible string on the page: page text, titles, labels, ticks, annotations."""
    texts = [t for t in fig.texts if t.get_visible()]
    if fig._suptitle is not None:
        texts.append(fig._suptitle)
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label]
        texts += ax.texts + ax.get_xticklabels() + ax.get_yticklabels()
        legend = ax.get_legend()
        if legend is not None:
            texts += legend.get_texts()
    return [t.get_text() for t in texts if t.get_visible() and t.get_text().strip()]


def _hatching_claimed(fig: Figure, words: list[str]) -> list[str]:
    """A note about hatched bars on a page where no bar is hatched."""
    if not any(re.search(r"\bhatch", w, re.I) for w in words):
        return []
    # A hatched bar of height 0 shows no hatching: the claim needs a visible one.
    hatched = any(
        patch.get_hatch() and patch.get_window_extent().height > 1
        for ax in fig.axes
        for patch in ax.patches
    )
    return [] if hatched else ["the page's text speaks of hatching but nothing is hatched"]


def _empty_band(fig: Figure, renderer, panels) -> list[str]:
    """A band of empty page between the page title and the panels below it."""
    title = fig._suptitle
    if title is None or not title.get_text() or not panels:
        return []
    bottom = title.get_window_extent(renderer).y0
    tops = [ax.get_tightbbox(renderer) for ax in panels]
    top = max((b.y1 for b in tops if b is not None and b.y1 <= bottom + 1), default=None)
    if top is None:
        return []
    gap = (bottom - top) / fig.bbox.height
    if gap > EMPTY_BAND:
        return [f"{gap:.0%} of the page empty between the title and the panels"]
    return []


def _count_ticks(ax) -> list[str]:
    problems = []
    for axis, label, (lo, hi) in (
        (ax.yaxis, ax.get_ylabel(), sorted(ax.get_ylim())),
        (ax.xaxis, ax.get_xlabel(), sorted(ax.get_xlim())),
    ):
        if not label or not COUNT_AXIS.search(label) or not axis.get_ticklabels():
            continue
        ticks = [t for t in axis.get_ticklocs() if lo - 1e-9 <= t <= hi + 1e-9]
        fractions = [t for t in ticks if abs(t - round(t)) > 1e-9]
        if fractions:
            problems.append(
                f"count axis {label!r} of '{ax.get_title()[:40]}' ticked at fractions "
                f"{', '.join(f'{t:g}' for t in fractions[:3])}"
            )
    return problems


def _overprinted_ticks(ax, renderer) -> list[str]:
    """Tick labels printed over one another (a per-patient axis with too many patients)."""
    problems = []
    for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
        labels = [t for t in axis.get_ticklabels() if t.get_visible() and t.get_text().strip()]
        boxes = sorted(
            (t.get_window_extent(renderer) for t in labels),
            key=lambda b: b.x0 if name == "x" else b.y0,
        )
        clashes = sum(_overlap(a, b) for a, b in zip(boxes, boxes[1:], strict=False))
        if clashes:
            problems.append(
                f"{clashes} {name} tick label(s) of '{ax.get_title()[:40]}' print over their "
                "neighbours"
            )
    return problems


def _annotations_overprinted(ax, renderer) -> list[str]:
    """Annotations of one panel printed over one another (neighbouring bars' tests)."""
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in _visible_texts(ax)]
    return [
        f"annotations {a[:20]!r} and {b[:20]!r} of '{ax.get_title()[:40]}' print over each other"
        for k, (a, box_a) in enumerate(boxes)
        for b, box_b in boxes[k + 1 :]
        if _overlap(box_a, box_b)
    ]


def _in_margin(extent: Bbox, page: Bbox, margin_px: float) -> bool:
    return (
        extent.x0 < page.x0 + margin_px
        or extent.x1 > page.x1 - margin_px
        or extent.y0 < page.y0 + margin_px
        or extent.y1 > page.y1 - margin_px
    )


def figure_problems(fig: Figure) -> list[str]:
    """What on this page could misstate or hide data; empty when the page is sound."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    problems = []
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
    margin_px = MARGIN_PT * fig.dpi / 72
    for ax in panels:
        problems += _points_outside(ax)
        problems += _count_ticks(ax)
        problems += _overprinted_ticks(ax, renderer)
        tight = ax.get_tightbbox(renderer)
        if tight is not None and _in_margin(tight, page, margin_px):
            problems.append(
                f"the panel '{ax.get_title()[:40]}' with its labels comes within "
                f"{MARGIN_PT:g} pt of the page edge"
            )
        box = ax.get_window_extent(renderer)
        problems += _annotations_overprinted(ax, renderer)
        for text in _visible_texts(ax):
            extent = text.get_window_extent(renderer)
            if not _inside(extent, box):
                problems.append(
                    f"annotation {text.get_text()!r} leaves its axes '{ax.get_title()}'"
                )
    labelled = [(ax, ax.get_tightbbox(renderer)) for ax in panels]
    for text in fig.texts:
        if not text.get_visible() or not text.get_text().strip():
            continue
        extent = text.get_window_extent(renderer)
        if not _inside(extent, page):
            problems.append(f"page text {text.get_text()[:40]!r} runs off the page")
        elif _in_margin(extent, page, margin_px):
            problems.append(
                f"page text {text.get_text()[:40]!r} comes within {MARGIN_PT:g} pt of the page edge"
            )
        problems += [
            f"table without column headers at {row!r}"
            for row in unlabelled_tables(text.get_text().split("\n"))
        ]
        for ax, tight in labelled:
            if tight is not None and _overlap(extent, tight):
                problems.append(
                    f"page text {text.get_text()[:40]!r} overlaps the panel '{ax.get_title()}'"
                )
    words = _all_text(fig)
    problems += [f"raw code {code!r} printed" for code in raw_codes("\n".join(words))]
    problems += _hatching_claimed(fig, words)
    problems += _empty_band(fig, renderer, panels)
    if fig._suptitle is not None and fig._suptitle.get_text():
        extent = fig._suptitle.get_window_extent(renderer)
        if _in_margin(extent, page, margin_px):
            problems.append(f"the page title comes within {MARGIN_PT:g} pt of the page edge")
        for ax, tight in labelled:
            if tight is not None and _overlap(extent, tight):
                problems.append(f"the page title overlaps the panel '{ax.get_title()}'")
    return problems
