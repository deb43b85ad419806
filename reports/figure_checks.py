"""Checks that a drawn page cannot misstate: every data point inside its axes' limits, every
annotation inside its own axes, page text inside the page and clear of the panels' labels.

The report's tests run these on every page's figure object before it is saved."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

TOLERANCE_PX = 1.5


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


def figure_problems(fig: Figure) -> list[str]:
    """What on this page could misstate or hide data; empty when the page is sound."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    problems = []
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
    for ax in panels:
        problems += _points_outside(ax)
        box = ax.get_window_extent(renderer)
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
        for ax, tight in labelled:
            if tight is not None and _overlap(extent, tight):
                problems.append(
                    f"page text {text.get_text()[:40]!r} overlaps the panel '{ax.get_title()}'"
                )
    if fig._suptitle is not None:
        extent = fig._suptitle.get_window_extent(renderer)
        for ax, tight in labelled:
            if tight is not None and _overlap(extent, tight):
                problems.append(f"the page title overlaps the panel '{ax.get_title()}'")
    return problems
