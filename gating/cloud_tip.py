"""The CD24-high CD38-high tip of the CD27- B cells' diagonal cloud: transitional B as experts
draw them.

On real B tubes the CD27- B cells form ONE elongated diagonal cloud on CD38 x CD24 (issue 22:
from about (CD38 0.45, CD24 0.2) to (0.8, 0.75) on a LSRFortessa tube with central manual
gating), and experts gate transitional B as its CD24-high CD38-high tip. A corner with one
limit per marker (the 2-D mixture corner of bcell strategy v3) cuts through the middle of such
a cloud: it overcounted transitional B 2.3x on that tube. Where a lab's transitional B are a
separate cluster (our demo and second-site simulators) the same construction must still find
it. How this is done, and from where:

- **The gate's shape** is openCyto's transitional gate (``gate_flowclust_2d(...,
  transitional = TRUE)``, used for "Transitional" on CD38 x CD24 in the HIPC Lyoplate B-cell
  template, RGLab/flowcap3 ``gt-bcell.csv``: ``K=6, transitional=TRUE, quantile=0.95,
  translation=0.2``): take the eigenvector of the cloud's covariance that points into the
  positive quadrant, cut perpendicular to it, and keep the band beyond the cut, bounded across
  the axis and open towards high CD38 and CD24. openCyto places the cut at a fixed
  ``translation`` of the target cluster's chi-square contour; here the cut is placed from the
  data along the axis (below), because a fixed offset on a cloud whose tip share varies 4-16%
  between people would count the cloud's shape, not the tip.
- **Along the axis** the events are projected on it and the cut is placed, in order:
  1. ``tip_valley``: a deep density valley (at most ``DEEP_VALLEY`` of the lower peak) beyond
     the cloud's peak: a separate cluster (the demo's transitional B).
  2. ``tip_mixture``: a mixture of Student-t components (``TAIL_DF`` = 4 degrees of freedom,
     flowClust's default, Lo, Brinkman & Gottardo 2008, Cytometry A 73:321: heavy tails are the
     rule in cytometry and Gaussian mixtures split one heavy-tailed population into
     several), 1 to 3 components chosen by BIC; the tip is the component furthest along the
     axis, the cut the point where as many of the other components' events lie beyond it as
     of the tip's events fall short of it (an unbiased count, as
     ``gating.adaptive._balanced_boundary`` for Gaussians). It counts only where the tip and
     its nearest neighbour clear the separation floor (Ashman's D >= ``SEPARATION_FLOOR``,
     with the t components' SDs).
  3. ``tip_below_floor``: the same boundary where the tip and its neighbour are closer than
     the floor (the real tube's one cloud: no valley, no cluster). It is the best estimate the
     data give, and it is kept, but the gate is not counted as placed from the data: the
     sample is flagged ``default_gate:...`` and ``needs_review`` with the D in the note, so a
     person looks at the plot before the number is released.
  4. ``default``: no tip component at all (one population, or too few events): the cut at
     ``default_cut`` robust SDs beyond the cloud's peak along the axis, flagged.
- **Across the axis** the band is ``across`` robust SDs of the events' distances from the axis
  wide on each side (openCyto: the target cluster's 95% contour), so events beside the cloud
  (CD24-high CD38-low cells) stay out.

flowDensity's slanted gates (Malek et al. 2015) were the other option read: a line at a
density valley, its slope from the data. On the real-shaped cloud there is no valley to put
it in; the valley is step 1 here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln
from scipy.stats import t as student_t

from gating.adaptive import (
    DEEP_VALLEY,
    SEPARATION_FLOOR,
    ashman_d,
    balanced_cut,
    density_valleys,
)

TAIL_DF = 4.0  # degrees of freedom of every t component (flowClust's default)
LIGHT_TAIL_DF = 30.0  # the alternative: tails as a normal law's
MIN_TIP_EVENTS = 200  # fewer events than this in the parent: nothing to fit, default
MIN_TIP_WEIGHT = 0.01  # a tip component holding less of the parent is no population
MAX_TIP_WEIGHT = 0.5  # nor one holding more: that is the cloud
# The axis' angle from the first dimension, degrees (signed towards the target): a diagonal.
AXIS_ANGLES = (20.0, 70.0)
FIT_BAND = 2.5  # the mixture is fitted on events this many robust SDs from the axis


@dataclass(frozen=True)
class TMixture:
    """A fitted 1-D mixture of Student-t components, sorted by location."""

    weights: np.ndarray
    locations: np.ndarray
    scales: np.ndarray
    df: float
    log_likelihood: float

    @property
    def sds(self) -> np.ndarray:
        """Each component's standard deviation (the scale times sqrt(df / (df - 2)))."""
        return self.scales * np.sqrt(self.df / (self.df - 2.0))

    def bic(self, n: int) -> float:
        return -2.0 * self.log_likelihood + (3 * self.weights.size - 1) * np.log(n)


def t_log_pdf(x: np.ndarray, location: np.ndarray, scale: np.ndarray, df: float) -> np.ndarray:
    """log density of t components (columns) at the values (rows)."""
    z2 = ((x[:, None] - location[None, :]) / scale[None, :]) ** 2
    const = gammaln((df + 1) / 2) - gammaln(df / 2) - 0.5 * np.log(df * np.pi)
    return const - np.log(scale)[None, :] - (df + 1) / 2 * np.log1p(z2 / df)


def fit_t_mixture(
    values: np.ndarray,
    counts: np.ndarray,
    start: tuple[np.ndarray, np.ndarray, np.ndarray],
    df: float = TAIL_DF,
    iterations: int = 500,
    tolerance: float = 1e-7,
) -> TMixture:
    """EM for a 1-D mixture of t components with fixed degrees of freedom (Peel & McLachlan
    2000, the t law as a scale mixture of normals), on ``values`` each seen ``counts`` times
    (a fine histogram: the cost does not grow with the events), from ``start`` (weights,
    locations, scales)."""
    x = np.asarray(values, dtype=np.float64)
    c = np.asarray(counts, dtype=np.float64)
    n = c.sum()
    weights, locations, scales = (np.asarray(a, dtype=np.float64).copy() for a in start)
    floor = 1e-4
    previous = -np.inf
    log_likelihood = -np.inf
    for _ in range(iterations):
        joint = np.log(weights)[None, :] + t_log_pdf(x, locations, scales, df)
        top = joint.max(axis=1, keepdims=True)
        total = top[:, 0] + np.log(np.exp(joint - top).sum(axis=1))
        log_likelihood = float(c @ total)
        resp = np.exp(joint - total[:, None]) * c[:, None]
        z2 = ((x[:, None] - locations[None, :]) / scales[None, :]) ** 2
        ru = resp * ((df + 1) / (df + z2))
        mass = resp.sum(axis=0)
        weights = np.maximum(mass / n, 1e-12)
        locations = (ru * x[:, None]).sum(axis=0) / np.maximum(ru.sum(axis=0), 1e-300)
        spread = (ru * (x[:, None] - locations[None, :]) ** 2).sum(axis=0)
        scales = np.sqrt(np.maximum(spread / np.maximum(mass, 1e-300), floor**2))
        if log_likelihood - previous < tolerance * abs(log_likelihood):
            break
        previous = log_likelihood
    order = np.argsort(locations)
    return TMixture(weights[order], locations[order], scales[order], df, log_likelihood)


def best_t_mixture(
    values: np.ndarray, max_components: int = 3, bin_width: float = 0.003
) -> TMixture:
    """The t mixture (``TAIL_DF``) of 1..max_components components with the lowest BIC (as
    flowClust chooses them), fitted on a histogram of ``bin_width`` (a tenth of the narrowest
    spread seen on a logicle axis). Each fit starts from components at even quantiles, and
    from small components in the far tails (where a tip, and cells below the cloud, are), and
    keeps the likeliest."""
    x = np.asarray(values, dtype=np.float64)
    edges = np.arange(x.min(), x.max() + 2 * bin_width, bin_width)
    hist, edges = np.histogram(x, bins=edges)
    used = hist > 0
    centres, counts = ((edges[:-1] + edges[1:]) / 2)[used], hist[used]
    spread = float(np.std(x)) or 1e-3
    low, tail = np.quantile(x, [0.03, 0.95])
    best: TMixture | None = None
    for k in range(1, max_components + 1):
        even = np.quantile(x, (np.arange(k) + 0.5) / k)
        starts = [(np.full(k, 1.0 / k), even, np.full(k, spread / k))]
        if k >= 2:
            rest = np.quantile(x, (np.arange(k - 1) + 0.5) / (k - 1) * 0.9)
            starts.append(
                (
                    np.array([*np.full(k - 1, 0.9 / (k - 1)), 0.1]),
                    np.array([*rest, tail]),
                    np.array([*np.full(k - 1, spread / k), spread / 4]),
                )
            )
        if k >= 3:
            middle = np.quantile(x, (np.arange(k - 2) + 0.5) / (k - 2) * 0.8 + 0.1)
            starts.append(
                (
                    np.array([0.05, *np.full(k - 2, 0.85 / (k - 2)), 0.1]),
                    np.array([low, *middle, tail]),
                    np.array([spread / 4, *np.full(k - 2, spread / k), spread / 4]),
                )
            )
        fit = max(
            (fit_t_mixture(centres, counts, start) for start in starts),
            key=lambda f: f.log_likelihood,
        )
        if best is None or fit.bic(x.size) < best.bic(x.size):
            best = fit
    assert best is not None
    return best


def with_light_tails(mixture: TMixture, values: np.ndarray, bin_width: float = 0.003) -> TMixture:
    """The same mixture refitted with near-normal tails (``LIGHT_TAIL_DF``), where likelier.

    Used only between populations already apart by the separation floor: there the tails,
    not the cores, meet at the cut, and populations normal on the logicle scale (the second
    site's) given heavy tails would lend the cloud tip events and push the cut out. Where
    the populations overlap (one cloud) heavy tails stay, as flowClust's default: a
    near-normal mixture there splits the cloud's tails into spurious components."""
    x = np.asarray(values, dtype=np.float64)
    edges = np.arange(x.min(), x.max() + 2 * bin_width, bin_width)
    hist, edges = np.histogram(x, bins=edges)
    used = hist > 0
    centres = ((edges[:-1] + edges[1:]) / 2)[used]
    start = (mixture.weights, mixture.locations, mixture.scales)
    light = fit_t_mixture(centres, hist[used], start, df=LIGHT_TAIL_DF)
    return light if light.log_likelihood > mixture.log_likelihood else mixture


def balanced_t_boundary(mixture: TMixture, split: int) -> float:
    """The point where as many events of the components below ``split`` lie above it as of
    those from it on below it: beyond the lower group's location, and beyond the upper's
    too when the upper group is small (a small tip beside a large heavy-tailed cloud)."""
    w, m, s, df = mixture.weights, mixture.locations, mixture.scales, mixture.df
    lower, upper = range(split), range(split, w.size)
    start, stop = m[split - 1], m[-1] + 10 * s[-1]

    def excess(t: float) -> float:
        above = sum(w[i] * student_t.sf(t, df, m[i], s[i]) for i in lower)
        below = sum(w[i] * student_t.cdf(t, df, m[i], s[i]) for i in upper)
        return above - below

    return balanced_cut(excess, start, stop)


@dataclass(frozen=True)
class CloudTip:
    """Where the tip gate went: the cloud's axis (centre, unit vector towards the tip), the
    cut along it, the band's half-width across it, the polygon, and how it was placed."""

    centre: tuple[float, float]
    axis: tuple[float, float]
    cut: float  # along the axis, from the centre
    half_width: float
    vertices: tuple[tuple[float, float], ...]
    from_data: bool
    method: str  # tip_valley | tip_mixture | tip_below_floor | default
    note: str
    separation: float | None = None  # Ashman's D of the tip and its neighbour, or dip depth


def cloud_axis(
    x: np.ndarray, y: np.ndarray, target: tuple[int, int] = (1, 1), trim: float = 0.01
) -> tuple[np.ndarray, np.ndarray]:
    """The cloud's centre (per-axis median) and the eigenvector of its covariance that points
    into the ``target`` quadrant (openCyto's transitional gate: of the two eigenvectors, the
    one pointing there; the major one when both do), from the events inside the
    ``trim``..1-``trim`` quantiles on both axes (compensation spreads a few far outliers)."""
    keep = np.ones(x.size, bool)
    for v in (x, y):
        lo, hi = np.quantile(v, [trim, 1 - trim])
        keep &= (v >= lo) & (v <= hi)
    points = np.column_stack([x[keep], y[keep]])
    centre = np.median(points, axis=0)
    values, vectors = np.linalg.eigh(np.cov(points.T))
    sign = np.asarray(target, dtype=np.float64)
    candidates = []
    for k in (1, 0):  # major first
        v = vectors[:, k] * (1 if vectors[:, k] @ sign >= 0 else -1)
        if np.all(v * sign > 0):
            candidates.append(v)
    axis = candidates[0] if candidates else sign / np.linalg.norm(sign)
    return centre, diagonal(axis, target)


def diagonal(vector: np.ndarray, target: tuple[int, int] = (1, 1)) -> np.ndarray:
    """The unit vector's direction held between ``AXIS_ANGLES`` from the first dimension
    (signed towards ``target``): the population is high (or low) on BOTH markers, so an axis
    along one marker alone (a cloud with a long tail on one of them) is not its direction."""
    sign = np.asarray(target, dtype=np.float64)
    x, y = np.asarray(vector, dtype=np.float64) * sign
    low, high = np.radians(AXIS_ANGLES)
    angle = float(np.clip(np.arctan2(y, x), low, high))
    return np.array([np.cos(angle), np.sin(angle)]) * sign


def _robust_sd(values: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def place_cloud_tip(
    x: np.ndarray,
    y: np.ndarray,
    *,
    target: tuple[int, int] = (1, 1),
    across: float = 5.0,
    default_cut: float = 1.5,
    min_ashman_d: float = SEPARATION_FLOOR,
    span: tuple[float, float] = (-0.5, 1.5),
) -> CloudTip:
    """The tip of the (x, y) cloud towards ``target`` (see the module docstring).

    Three axes are tried: the covariance's eigenvector (``cloud_axis``), the plain diagonal,
    and the line from the median of the events short of the better one's cut to the median
    of those beyond it (the axis through the cloud and its tip: the eigenvector of the whole
    parent tilts with whatever else the parent holds, double-negative B cells below the
    cloud, a cloud elongated along one marker). The placement kept is the one from the data
    with the largest separation (``_placement_rank``)."""
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite].astype(np.float64), y[finite].astype(np.float64)
    if x.size < MIN_TIP_EVENTS:
        centre = np.array([np.median(x) if x.size else 0.5, np.median(y) if y.size else 0.5])
        axis = np.asarray(target, float) / np.sqrt(2.0)
        return _tip(centre, axis, 0.1, 0.2, False, "default", f"too few events ({x.size})", span)
    centre, axis = cloud_axis(x, y, target)
    sign = np.asarray(target, dtype=np.float64)
    tries = [
        _place_along(x, y, centre, along, across, default_cut, min_ashman_d, span)
        for along in (axis, sign / np.sqrt(2.0))  # the eigenvector, and the plain diagonal
    ]
    first = max(tries, key=_placement_rank)
    points = np.column_stack([x, y])
    beyond = (points - centre) @ np.asarray(first.axis) >= first.cut
    if min(np.count_nonzero(beyond), np.count_nonzero(~beyond)) >= MIN_TIP_EVENTS // 10:
        line = np.median(points[beyond], axis=0) - np.median(points[~beyond], axis=0)
        line = diagonal(line / np.linalg.norm(line), target)
        tries.append(_place_along(x, y, centre, line, across, default_cut, min_ashman_d, span))
    return max(tries, key=_placement_rank)


def _placement_rank(tip: CloudTip) -> tuple[bool, float]:
    """Placed from the data first, then the larger separation: the axis along which the tip
    stands furthest from the cloud (a cloud elongated along one marker tilts its eigenvector
    away from a tip that lies on the diagonal)."""
    return tip.from_data, tip.separation if tip.separation is not None else -np.inf


def _place_along(
    x: np.ndarray,
    y: np.ndarray,
    centre: np.ndarray,
    axis: np.ndarray,
    across: float,
    default_cut: float,
    min_ashman_d: float,
    span: tuple[float, float],
) -> CloudTip:
    """The cut along one axis through ``centre``: valley, t mixture, below the floor, default."""
    normal = np.array([-axis[1], axis[0]])
    offset = np.column_stack([x, y]) - centre
    along, beside = offset @ axis, offset @ normal
    half_width = across * _robust_sd(beside)
    # The cloud's peak along the axis and its spread on the side away from the tip, where the
    # tip does not reach: the cut is looked for beyond the peak.
    valleys = density_valleys(along, (float(np.quantile(along, 0.5)), float(along.max())))
    peak = float(valleys.centres[np.argmax(valleys.density)]) if valleys.centres.size else 0.0
    back = along[along <= peak]
    spread = float(np.sqrt(np.mean((back - peak) ** 2))) if back.size else _robust_sd(along)
    where = (
        f"axis from ({centre[0]:.3f}, {centre[1]:.3f}) towards ({axis[0]:+.2f}, {axis[1]:+.2f}), "
        f"peak {peak:+.3f}, spread {spread:.3f} along it, band {half_width:.3f} wide each side"
    )
    lo, hi = peak, float(np.quantile(along, 0.999))
    # Beyond a valley lies a population: at least MIN_TIP_WEIGHT of the events (a gap in the
    # tip's own far tail, 0.2% of the events beyond it, is no boundary).
    valley = density_valleys(along, (lo, hi), min_side_share=MIN_TIP_WEIGHT).place(0.0, DEEP_VALLEY)
    if valley.from_data:
        cut, dip = valley.value, valley.separation
        note = f"{where}; cut at a valley {cut:+.3f} along the axis (dip {dip:.2f})"
        return _tip(centre, axis, cut, half_width, True, "tip_valley", note, span, dip)
    # Fitted on the events near the axis: cells beside the cloud (double-negative B below it)
    # would widen the cloud's component; the cloud and the tip lose alike share of their events.
    near = np.abs(beside) <= FIT_BAND * _robust_sd(beside)
    mixture = best_t_mixture(along[near])
    k = mixture.weights.size
    # A tip is a minority beyond the cloud's peak: a component holding most events is the
    # cloud itself (split from a tail of its own on the other side).
    tip_ok = (
        k >= 2
        and MIN_TIP_WEIGHT <= mixture.weights[-1] <= MAX_TIP_WEIGHT
        and mixture.locations[-1] > peak
    )
    if tip_ok:
        d = ashman_d(*_neighbours(mixture))
        if d >= min_ashman_d:
            mixture = with_light_tails(mixture, along[near])
            d = ashman_d(*_neighbours(mixture))
        cut = balanced_t_boundary(mixture, k - 1)
        fit = (
            f"t mixture of {k} (df {mixture.df:g}): tip {mixture.weights[-1]:.3f} of the events at "
            f"{mixture.locations[-1]:+.3f}, cut at {cut:+.3f}, Ashman's D {d:.2f}"
        )
        if d >= min_ashman_d:
            note = f"{where}; {fit}"
            return _tip(centre, axis, cut, half_width, True, "tip_mixture", note, span, d)
        note = (
            f"{where}; {fit}, below the separation floor ({min_ashman_d:g}): the tip is not "
            "a separate population; review"
        )
        return _tip(centre, axis, cut, half_width, False, "tip_below_floor", note, span, d)
    cut = peak + default_cut * spread
    note = (
        f"{where}; no tip component in a t mixture (best: {k} components): cut "
        f"{default_cut:g} spreads beyond the peak (default)"
    )
    return _tip(centre, axis, cut, half_width, False, "default", note, span)


def _neighbours(mixture: TMixture) -> tuple[float, float, float, float]:
    """Location and SD of the component next to the tip, then of the tip."""
    sds = mixture.sds
    return mixture.locations[-2], sds[-2], mixture.locations[-1], sds[-1]


def _tip(
    centre: np.ndarray,
    axis: np.ndarray,
    cut: float,
    half_width: float,
    from_data: bool,
    method: str,
    note: str,
    span: tuple[float, float],
    separation: float | None = None,
) -> CloudTip:
    """The band beyond ``cut`` along ``axis``, ``half_width`` each side of it, reaching past
    the data (``span`` on both axes) towards the tip."""
    axis = np.asarray(axis, float)
    normal = np.array([-axis[1], axis[0]])
    far = 2.0 * (span[1] - span[0])  # past the box from anywhere inside it
    corners = [
        centre + cut * axis + half_width * normal,
        centre + cut * axis - half_width * normal,
        centre + far * axis - half_width * normal,
        centre + far * axis + half_width * normal,
    ]
    vertices = tuple((float(px), float(py)) for px, py in clip_to_box(corners, span))
    return CloudTip(
        (float(centre[0]), float(centre[1])),
        (float(axis[0]), float(axis[1])),
        float(cut),
        float(half_width),
        vertices,
        from_data,
        method,
        note,
        separation,
    )


def clip_to_box(polygon: list[np.ndarray], span: tuple[float, float]) -> list[tuple[float, float]]:
    """The part of a convex polygon inside the square ``span`` x ``span`` (Sutherland-Hodgman):
    the band keeps its slanted edges exactly where the events are, and no vertex lies where
    the logicle scale has no inverse worth writing (a FlowJo export stores channel units)."""
    points = [tuple(map(float, p)) for p in polygon]
    for axis in (0, 1):
        for limit, keep_below in ((span[0], False), (span[1], True)):

            def inside(p, axis=axis, limit=limit, keep_below=keep_below) -> bool:
                return p[axis] <= limit if keep_below else p[axis] >= limit

            clipped = []
            for k, current in enumerate(points):
                previous = points[k - 1]
                if inside(current) != inside(previous):
                    t = (limit - previous[axis]) / (current[axis] - previous[axis])
                    clipped.append(
                        tuple(previous[i] + t * (current[i] - previous[i]) for i in (0, 1))
                    )
                if inside(current):
                    clipped.append(current)
            points = clipped
    return points


def inside_tip(tip: CloudTip, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Which (x, y) points lie in the tip's band (as the polygon gate evaluates it)."""
    axis = np.asarray(tip.axis)
    normal = np.array([-axis[1], axis[0]])
    offset = np.column_stack([x, y]) - np.asarray(tip.centre)
    return (offset @ axis >= tip.cut) & (np.abs(offset @ normal) <= tip.half_width)
