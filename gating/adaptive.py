"""Per-sample placement of gate positions from the data, within bounds set by the strategy.

Each placer returns the position it chose and whether the data supported it. When they do not
(no valley, no cluster inside the bounds), the strategy's default is used and the caller flags
the sample, so a reviewer knows which gates were not data-driven.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.optimize import brentq
from scipy.stats import norm
from sklearn.mixture import GaussianMixture

DEEP_VALLEY = 0.05  # a valley at most this share of the lower peak: populations barely overlap
SHALLOW_VALLEY = 0.5  # the most a valley may be and still count at all
# The separation floor for mixtures: Ashman's D = sqrt(2) |m1 - m2| / sqrt(s1^2 + s2^2) of the
# two components a boundary is placed between. D > 2 is the usual criterion of a clean split;
# the boundaries real expert-gated files showed to be wrong (Tregs, transitional B) came from
# components "1.02-1.08x their spreads apart", D 2.0-2.2. Below the floor no boundary is taken
# from the mixture. (For valleys the measure is the dip's depth, 1 - valley / lower peak, and
# its floor 1 - SHALLOW_VALLEY.)
SEPARATION_FLOOR = 2.5


def ashman_d(mean_a: float, sd_a: float, mean_b: float, sd_b: float) -> float:
    """Ashman's D of two normal components: their distance in their pooled spread."""
    return float(np.sqrt(2.0) * abs(mean_a - mean_b) / np.sqrt(sd_a**2 + sd_b**2))


@dataclass(frozen=True)
class Placement:
    """Where a threshold went, how (valley, mixture_2d, mixture_1d, default), and why."""

    value: float
    from_data: bool
    note: str
    method: str = "valley"
    # How far apart the populations on either side are: Ashman's D for a mixture, the dip's
    # depth (1 - valley / lower peak) for a valley; None where nothing was measured.
    separation: float | None = None


@dataclass(frozen=True)
class DensityValleys:
    """The local minima of a smoothed 1-D density inside some bounds, each with its depth
    (its height over the lower of the peaks beside it); ``problem`` says why there are none."""

    centres: np.ndarray
    density: np.ndarray
    depth: dict[int, float]  # bin -> depth, for minima with enough events on each side
    bounds: tuple[float, float]
    problem: str = ""

    def place(self, default: float, max_depth: float) -> Placement:
        """The lowest minimum at most ``max_depth`` deep, else ``default``."""
        if self.problem:
            return Placement(default, False, self.problem, "default")
        valid = [k for k, depth in self.depth.items() if depth <= max_depth]
        if not valid:
            lo, hi = self.bounds
            return Placement(default, False, f"no clear valley in [{lo:.2f}, {hi:.2f}]", "default")
        lowest = min(valid, key=lambda k: self.density[k])
        threshold, dip = float(self.centres[lowest]), 1.0 - self.depth[lowest]
        return Placement(
            threshold, True, f"valley at {threshold:.3f} (dip {dip:.2f})", "valley", dip
        )


def density_valleys(
    values: np.ndarray,
    bounds: tuple[float, float],
    *,
    bandwidth: float = 0.015,
    min_side_share: float = 0.002,
) -> DensityValleys:
    """The candidate valleys of ``values`` inside ``bounds``: local minima of the smoothed
    density with at least ``min_side_share`` of the events on each side."""
    lo, hi = bounds
    values = values[np.isfinite(values)]
    empty = np.empty(0)
    if values.size < 50:
        return DensityValleys(empty, empty, {}, bounds, f"too few events ({values.size}) to place")
    # The density is needed over the bounds and the peaks beside them, not over outliers far
    # away (a ratio over a near-zero FSC-H can be huge): the grid reaches ``reach`` beyond.
    reach = max(hi - lo, 0.5)
    grid_lo = min(lo, max(float(values.min()), lo - reach)) - 0.05
    grid_hi = max(hi, min(float(values.max()), hi + reach)) + 0.05
    bins = max(int((grid_hi - grid_lo) / 0.004), 50)
    hist, edges = np.histogram(values, bins=bins, range=(grid_lo, grid_hi))
    centres = (edges[:-1] + edges[1:]) / 2
    density = gaussian_filter1d(hist.astype(np.float64), sigma=bandwidth / (edges[1] - edges[0]))
    if not np.any((centres >= lo) & (centres <= hi)):
        return DensityValleys(centres, density, {}, bounds, "bounds outside the data")
    # Candidates are the local minima inside the bounds (the middle of a flat stretch), so
    # wide bounds reaching into a population's tail do not hide a real valley elsewhere.
    # A minimum may be a flat stretch (no events between two clear populations): its middle.
    steps = np.diff(density)
    steps[np.abs(steps) <= 1e-9 * density.max()] = 0.0
    turns = np.flatnonzero(steps)
    candidates = [
        (a + 1 + b) // 2
        for a, b in zip(turns, turns[1:], strict=False)
        if steps[a] < 0 < steps[b] and lo <= centres[(a + 1 + b) // 2] <= hi
    ]
    # Events below each bin's lower edge, counted once (not one pass over the events per
    # candidate): a bin's centre splits its own events about evenly.
    below = np.count_nonzero(values < grid_lo) + np.concatenate([[0], np.cumsum(hist)])
    depth = {}
    for k in candidates:
        left_share = (below[k] + hist[k] / 2) / values.size
        if min(left_share, 1 - left_share) < min_side_share:
            continue
        lower_peak = min(density[: k + 1].max(), density[k:].max())
        depth[k] = density[k] / lower_peak if lower_peak > 0 else 0.0
    return DensityValleys(centres, density, depth, bounds)


def place_threshold_at_density_valley(
    values: np.ndarray,
    bounds: tuple[float, float],
    default: float,
    *,
    bandwidth: float = 0.015,
    min_depth: float = SHALLOW_VALLEY,
    min_side_share: float = 0.002,
) -> Placement:
    """Put a 1-D threshold at the lowest local minimum of the smoothed density inside
    ``bounds``.

    A valley counts only if each side holds at least ``min_side_share`` of the events and a
    peak on each side rises above the valley by ``1 / min_depth`` (a valley at most half as
    high as the lower of the two peaks, by default).
    """
    valleys = density_valleys(values, bounds, bandwidth=bandwidth, min_side_share=min_side_share)
    return valleys.place(default, min_depth)


@dataclass(frozen=True)
class Mixture:
    """A fitted Gaussian mixture's parameters (components along the first axis)."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray

    def swapped(self) -> Mixture:
        """The same mixture with its two axes exchanged."""
        order = [1, 0]
        return Mixture(self.weights, self.means[:, order], self.covariances[:, order][:, :, order])


# A marker pair defines two thresholds (CD24 and CD38 of transitional B): the second placement
# reuses the first's fit, on the same events with the axes exchanged.
_recent_fits: dict[tuple, Mixture] = {}


def _fit_mixture(points: np.ndarray, max_components: int, seed: int) -> Mixture:
    """The Gaussian mixture (1..max_components, full covariances) with the lowest BIC."""
    columns = [hashlib.sha1(np.ascontiguousarray(c).tobytes()).digest() for c in points.T]
    key = (tuple(columns), max_components, seed)
    if key in _recent_fits:
        return _recent_fits[key]
    if points.shape[1] == 2:
        mirrored = ((columns[1], columns[0]), max_components, seed)
        if mirrored in _recent_fits:
            return _recent_fits[mirrored].swapped()
    best, best_bic = None, np.inf
    for k in range(1, max_components + 1):
        gmm = GaussianMixture(k, covariance_type="full", random_state=seed, reg_covar=1e-5)
        gmm.fit(points)
        bic = gmm.bic(points)
        if bic < best_bic:
            best, best_bic = gmm, bic
    fitted = Mixture(best.weights_, best.means_, best.covariances_)
    _recent_fits.clear()  # only the last fit is worth keeping
    _recent_fits[key] = fitted
    return fitted


def balanced_cut(excess: Callable[[float], float], start: float, stop: float) -> float:
    """The root in [``start``, ``stop``] of ``excess`` (the lower group's share above a cut
    minus the upper group's share below it, whatever their laws): the count on either side
    is then unbiased. The midpoint where ``excess`` does not change sign between them."""
    if not excess(start) > 0 > excess(stop):
        return float((start + stop) / 2)
    return float(brentq(excess, start, stop))


def _balanced_boundary(
    below: list[tuple[float, float, float]], above: list[tuple[float, float, float]]
) -> float:
    """The point between two groups of weighted 1-D components (weight, mean, SD) where as
    many events of the lower group lie above it as of the upper group below it: the count on
    either side is then unbiased, which is what a frequency endpoint needs. (A skewed
    population is fitted by several components, so each side is a group.)"""

    def excess(t: float) -> float:
        return sum(w * norm.sf(t, m, s) for w, m, s in below) - sum(
            w * norm.cdf(t, m, s) for w, m, s in above
        )

    return balanced_cut(excess, max(m for _, m, _ in below), min(m for _, m, _ in above))


def _balanced_corner(gmm: Mixture, population: int, rival: int, target: tuple[int, int]) -> float:
    """The first axis' limit of a corner gate (both limits at the same fraction of the way
    from the rival's mean to the population's) that lets in as many rival events as it
    leaves out population events, each component taken as independent along the axes."""
    w, mu = gmm.weights, gmm.means
    sd = np.sqrt(np.stack([np.diag(c) for c in gmm.covariances]))

    def limits(fraction: float) -> np.ndarray:
        return mu[rival] + fraction * (mu[population] - mu[rival])

    def passing(component: int, fraction: float) -> float:
        t = limits(fraction)
        share = 1.0
        for axis, side in enumerate(target):
            cdf = norm.cdf(t[axis], mu[component, axis], sd[component, axis])
            share *= 1.0 - cdf if side > 0 else cdf
        return share

    def excess(fraction: float) -> float:
        return w[population] * (1 - passing(population, fraction)) - w[rival] * passing(
            rival, fraction
        )

    fraction = brentq(excess, 0.0, 1.0) if excess(0.0) < 0 < excess(1.0) else 0.5
    return float(limits(fraction)[0])


def place_threshold_by_mixture(
    values: np.ndarray,
    bounds: tuple[float, float],
    default: float,
    *,
    partner: np.ndarray | None = None,
    target: tuple[int, int] = (1, 1),
    max_components: int = 4,
    min_weight: float = 0.01,
    min_events: int = 20,
    min_separation: float = 1.0,
    min_ashman_d: float = SEPARATION_FLOOR,
    max_fit_events: int = 20000,
    seed: int = 0,
) -> Placement:
    """A threshold between two populations that form a shoulder rather than a valley.

    A Gaussian mixture (components chosen by BIC) is fitted to the values, or, with
    ``partner``, to the marker pair that defines the population (transitional B on CD24 x
    CD38, Tregs on CD127 x CD25). In 2-D the population is the component lying furthest in
    the direction ``target`` (+1 high, -1 low, per axis) and its rival the nearest other
    component; in 1-D every pair of neighbouring components is a candidate. The threshold is
    where the two are equally many of their own standard deviations away along ``values``'
    axis. It counts only inside ``bounds``, between components of at least ``min_weight`` and
    ``min_events``, whose means lie ``min_separation`` times the sum of their spreads apart
    and whose Ashman's D along the axis reaches ``min_ashman_d`` (the separation floor);
    otherwise ``default``, the note saying whether the floor refused a boundary.
    """
    paired = partner is not None
    points = np.column_stack([values, partner]) if paired else values[:, None]
    points = points[np.isfinite(points).all(axis=1)].astype(np.float64)
    method = "mixture_2d" if paired else "mixture_1d"
    if points.shape[0] < 200:
        return Placement(
            default, False, f"too few events ({points.shape[0]}) for a mixture", "default"
        )
    if points.shape[0] > max_fit_events:
        points = points[np.random.default_rng(seed).choice(points.shape[0], max_fit_events)]
    gmm = _fit_mixture(points, max_components, seed)
    weights, means = gmm.weights, gmm.means
    sds = np.sqrt(gmm.covariances[:, 0, 0])
    usable = [
        i
        for i in range(weights.size)
        if weights[i] >= min_weight and weights[i] * points.shape[0] >= min_events
    ]
    pairs: list[tuple[int, int]] = []
    if paired and len(usable) >= 2:
        direction = np.asarray(target, dtype=np.float64)
        population = max(usable, key=lambda i: float(means[i] @ direction))
        shared = np.linalg.inv(gmm.covariances[usable].mean(axis=0))
        rival = min(
            (i for i in usable if i != population),
            key=lambda i: float(
                (means[i] - means[population]) @ shared @ (means[i] - means[population])
            ),
        )
        pairs = [(population, rival)]
    elif not paired:
        ordered = sorted(usable, key=lambda i: means[i, 0])
        pairs = list(zip(ordered, ordered[1:], strict=False))
    lo, hi = bounds
    best: tuple[float, float, float] | None = None
    below_floor: list[float] = []
    for a, b in pairs:
        gap = abs(means[a, 0] - means[b, 0]) / (sds[a] + sds[b])
        d = ashman_d(means[a, 0], sds[a], means[b, 0], sds[b])
        if paired:
            cut = _balanced_corner(gmm, a, b, target)
        else:
            split = ordered.index(b)
            cut = _balanced_boundary(
                [(weights[i], means[i, 0], sds[i]) for i in ordered[:split]],
                [(weights[i], means[i, 0], sds[i]) for i in ordered[split:]],
            )
        if not (gap >= min_separation and lo <= cut <= hi):
            continue
        if d < min_ashman_d:
            below_floor.append(d)
        elif best is None or gap > best[1]:
            best = (float(cut), float(gap), d)
    if best is None:
        floor = (
            f"; below the separation floor (Ashman's D {max(below_floor):.2f} < {min_ashman_d:g})"
            if below_floor
            else ""
        )
        return Placement(
            default,
            False,
            f"no mixture components {min_separation:g}x their spreads apart with a boundary in "
            f"[{lo:.2f}, {hi:.2f}]" + floor,
            "default",
            max(below_floor) if below_floor else None,
        )
    cut, gap, d = best
    return Placement(
        cut,
        True,
        f"{'2-D' if paired else '1-D'} mixture of {weights.size}: boundary at {cut:.3f} "
        f"(components {gap:.2f}x their spreads apart, Ashman's D {d:.2f})",
        method,
        d,
    )


def place_threshold(
    values: np.ndarray,
    bounds: tuple[float, float],
    default: float,
    *,
    partner: np.ndarray | None = None,
    target: tuple[int, int] = (1, 1),
) -> Placement:
    """The data's own boundary, by the first method that finds one: a mixture on the defining
    marker pair (where the strategy names a partner), a deep density valley, a 1-D mixture, a
    shallower valley; else ``default``, and the sample needs review."""
    tried = []
    first = Placement(default, False, "")
    if partner is not None:
        first = place_threshold_by_mixture(values, bounds, default, partner=partner, target=target)
        if first.from_data:
            return first
        tried.append(first.note)
    # A deep valley separates populations that barely overlap: take it. Where they overlap
    # more (a shallow valley or none), a valley's position depends on the populations'
    # sizes, so the mixture's balanced boundary is preferred, and the shallow valley kept as
    # the fallback.
    valleys = density_valleys(values, bounds)  # once, for the deep and the shallow look
    placers = (
        partial(valleys.place, default, DEEP_VALLEY),
        partial(place_threshold_by_mixture, values, bounds, default),
        partial(valleys.place, default, SHALLOW_VALLEY),
    )
    refused = [first.separation] if partner is not None and first.separation else []
    for placer in placers:
        place = placer()
        if place.from_data:
            return place
        tried.append(place.note)
        if place.separation is not None:
            refused.append(place.separation)
    note = "; ".join(tried) + "; default"
    return Placement(default, False, note, "default", max(refused) if refused else None)


def refused_by_floor(place: Placement) -> bool:
    """The data had a boundary, but below the separation floor, and it was not taken."""
    return not place.from_data and place.separation is not None


@dataclass(frozen=True)
class EllipsePlacement:
    """A 2-D ellipse (mean, covariance, squared Mahalanobis radius), GatingML-style."""

    mean: np.ndarray
    covariance: np.ndarray
    distance_square: float
    from_data: bool
    note: str


def place_lymphocyte_ellipse(
    fsc: np.ndarray,
    ssc: np.ndarray,
    default_mean: tuple[float, float],
    default_covariance: tuple[tuple[float, float], tuple[float, float]],
    *,
    within: np.ndarray | None = None,
    components: int = 4,
    distance_square: float = 13.82,
    min_weight: float = 0.04,
    debris_fsc_share: float = 0.45,
    max_fit_events: int = 10000,
    seed: int = 0,
) -> EllipsePlacement:
    """The lymphocyte cluster on FSC-A x SSC-A, found by relative rules, not a fixed box.

    Instruments differ 2-3x in scatter scale (PMT voltages, area scaling), so no position on
    the axes identifies lymphocytes. Their shape among the sample's own clusters does: a
    Gaussian mixture is fitted, and among components holding at least ``min_weight`` of the
    events and whose FSC is not debris-like (at least ``debris_fsc_share`` of the largest
    such component FSC), the one with the lowest SSC is the lymphocyte seed (monocytes and
    granulocytes scatter more to the side). Components whose means lie within the seed's own
    99% ellipse are merged with it (a skewed cluster split in two), by matching moments.
    """
    default = EllipsePlacement(
        np.asarray(default_mean, float),
        np.asarray(default_covariance, float),
        distance_square,
        False,
        "no lymphocyte-like mixture component; default",
    )
    rows = np.flatnonzero(within) if within is not None else np.arange(fsc.size)
    if rows.size > max_fit_events:
        rows = rows[np.random.default_rng(seed).choice(rows.size, max_fit_events)]
    fit_on = np.column_stack([fsc[rows], ssc[rows]]).astype(np.float64)
    fit_on = fit_on[np.isfinite(fit_on).all(axis=1)]
    if fit_on.shape[0] < 200:
        return default
    gmm = GaussianMixture(components, covariance_type="full", random_state=seed, tol=1e-2)
    gmm.fit(fit_on)
    weights, means, covariances = gmm.weights_, gmm.means_, gmm.covariances_
    substantial = np.flatnonzero(weights >= min_weight)
    if substantial.size == 0:
        return default
    top_fsc = means[substantial, 0].max()
    cells = [i for i in substantial if means[i, 0] >= debris_fsc_share * top_fsc]
    seed_component = min(cells, key=lambda i: means[i, 1])
    precision = np.linalg.inv(covariances[seed_component])
    chi2_99 = 9.21
    merged = [
        i
        for i in range(components)
        if (d := means[i] - means[seed_component]) @ precision @ d <= chi2_99
    ]
    w = weights[merged] / weights[merged].sum()
    mean = (w[:, None] * means[merged]).sum(axis=0)
    spread = means[merged] - mean
    covariance = sum(
        wi * (covariances[i] + np.outer(d, d)) for wi, i, d in zip(w, merged, spread, strict=True)
    )
    return EllipsePlacement(
        mean,
        covariance,
        distance_square,
        True,
        f"lowest-SSC cell cluster: {len(merged)} of {components} mixture components "
        f"(weight {weights[merged].sum():.2f}) at FSC {mean[0]:.3f}, SSC {mean[1]:.3f}",
    )


# A cloud's location and spreads need this many events on its far side (the side the
# population it is measured against does not reach).
MIN_CLOUD_EVENTS = 150
# A dip along the arm's diagonal is believed among at least this many events beyond the
# cloud's limits (a few hundred scattered events show chance dips), or, among at least
# MIN_GAP_EVENTS, where it is an empty gap (at most DEEP_VALLEY of the lower peak: the arm a
# cluster of its own, as in blood where Tregs sit apart from the cloud; a small file's arm
# then has too few events for the count above, and the tail rule alone cuts into the cloud's
# edge, which outnumbers the Tregs).
MIN_ARM_EVENTS = 400
MIN_GAP_EVENTS = 60


@dataclass(frozen=True)
class CloudArm:
    """A population leaving a sample's main cloud towards one corner of a marker pair (Tregs:
    the CD25-high arm of the CD4 T cells towards lower CD127; transitional B: the CD24-high
    CD38-high tip of the CD27- B cells), as a polygon on (x, y) relative to the cloud, with
    a diagonal edge. ``cloud`` is the cloud's (x peak, x spread, y peak, y spread) the
    polygon was built from."""

    vertices: tuple[tuple[float, float], ...]
    cloud: tuple[float, float, float, float]
    from_data: bool
    note: str
    method: str


def half_spread(values: np.ndarray, centre: float) -> float:
    """The SD of a normal whose one half beyond ``centre`` these values are (1.4826 x the
    median distance): the spread of a cloud measured on its side away from a neighbour."""
    return float(1.4826 * np.median(np.abs(values - centre))) if values.size else float("nan")


def cloud_on_far_side(
    x: np.ndarray, y: np.ndarray, direction: tuple[int, int]
) -> tuple[tuple[float, float, float, float] | None, str]:
    """The main cloud's (x peak, x SD, y peak, y SD), measured where the arm is not.

    On x the cloud is the outermost density peak on the side away from the arm (the arm
    leaves it towards ``direction[0]``) and its spread that of the events beyond the peak on
    that side; among those events (no arm there) y's outermost peak towards the arm and the
    spread of the events beyond it."""
    from gating.registration import landmark_peak

    away = "high" if direction[0] < 0 else "low"
    x_peak = landmark_peak(x, away) if x.size >= MIN_CLOUD_EVENTS else None
    if x_peak is None:
        return None, f"no cloud peak on x among {x.size} events"
    far = (x >= x_peak) if direction[0] < 0 else (x <= x_peak)
    if np.count_nonzero(far) < MIN_CLOUD_EVENTS:
        return None, f"{np.count_nonzero(far)} events beyond the cloud's x peak"
    y_far = y[far]
    toward = "high" if direction[1] > 0 else "low"
    y_peak = landmark_peak(y_far, toward)
    y_peak = float(np.median(y_far)) if y_peak is None else y_peak
    y_side = y_far[(y_far >= y_peak) if direction[1] > 0 else (y_far <= y_peak)]
    x_sd, y_sd = half_spread(x[far], x_peak), half_spread(y_side, y_peak)
    if not (x_sd > 0 and y_sd > 0):
        return None, "the cloud has no spread"
    return (float(x_peak), x_sd, float(y_peak), y_sd), ""


def place_cloud_arm(
    x: np.ndarray,
    y: np.ndarray,
    default_cloud: tuple[float, float, float, float],
    *,
    direction: tuple[int, int] = (-1, 1),
    min_rise: float = 1.0,
    min_fall: float = 0.5,
    min_distance: float = 2.0,
    below_arm: float | None = None,
    arm_from: float = 1.5,
    span: tuple[float, float] = (-0.5, 1.5),
) -> CloudArm:
    """The arm of a sample's main cloud towards ``direction`` (+1 high, -1 low on x and y),
    as experts draw it: Tregs on CD127 x CD25 (-1, +1), transitional B on CD38 x CD24 (+1, +1).

    The main cloud is measured on its far side, where the arm does not reach
    (``cloud_on_far_side``). In its spreads (z-scores, signed towards the arm), the arm is
    every event at least ``min_rise`` beyond the cloud's peak on y, ``min_fall`` on x, and
    ``min_distance`` from it along the diagonal ((z_x + z_y) / sqrt 2): a polygon with two
    straight edges and the corner between them cut diagonally (the shape of the Lyoplate /
    FlowJo Treg template), which follows the cloud when detector gains or staining move it.
    No boundary between two populations is fitted: on the real files the arm shows no
    density dip along the diagonal (it merges into the cloud), so the limits are measured on
    the cloud alone, as openCyto's gate_tail does. With fewer than ``MIN_CLOUD_EVENTS`` on
    the cloud's far side, ``default_cloud`` (x peak, x SD, y peak, y SD) is used and the
    placement is not from the data.
    """
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite].astype(np.float64), y[finite].astype(np.float64)
    cloud, problem = cloud_on_far_side(x, y, direction)
    from_data = cloud is not None
    x_peak, x_sd, y_peak, y_sd = cloud if from_data else default_cloud
    dx, dy = direction
    valley_note = ""
    if from_data:
        # Where the arm is a population of its own (a dip along the diagonal between the
        # cloud's tail and it, at least as deep as the separation floor for valleys), the
        # diagonal goes through the dip; else it is the cloud's tail rule above.
        zx, zy = dx * (x - x_peak) / x_sd, dy * (y - y_peak) / y_sd
        along = ((zx + zy) / np.sqrt(2.0))[(zx >= min_fall) & (zy >= min_rise)]
        valleys = density_valleys(
            along, (min_distance, min_distance + 6.0), bandwidth=0.3, min_side_share=0.05
        )
        dip = valleys.place(min_distance, SHALLOW_VALLEY)
        gap = dip.from_data and dip.separation >= 1.0 - DEEP_VALLEY
        if dip.from_data and (
            along.size >= MIN_ARM_EVENTS or (gap and along.size >= MIN_GAP_EVENTS)
        ):
            min_distance = dip.value
            valley_note = f"; diagonal at a dip {dip.separation:.2f} deep, {dip.value:.2f} SD out"
        elif below_arm is not None:
            # No dip: the arm merges into the cloud, and its own height places the y edge.
            arm_y = zy[(zx >= arm_from) & (zy >= min_rise)]
            if arm_y.size >= MIN_GAP_EVENTS and np.median(arm_y) - below_arm > min_rise:
                min_rise = float(np.median(arm_y) - below_arm)
                valley_note = f"; y edge {below_arm:g} SD below the arm's median y"
    # Corners in signed z-units (towards the arm), then back to the axes. ``far`` reaches
    # past the data on every side.
    far = 4 * (span[1] - span[0]) / min(x_sd, y_sd)
    diagonal = min_distance * np.sqrt(2.0)  # z_x + z_y at least this
    if diagonal <= min_fall + min_rise:  # the diagonal does not cut the corner
        corners = [(min_fall, far), (min_fall, min_rise), (far, min_rise), (far, far)]
    else:
        corners = [
            (min_fall, far),
            (min_fall, diagonal - min_fall),
            (diagonal - min_rise, min_rise),
            (far, min_rise),
            (far, far),
        ]
    lo, hi = span
    vertices = tuple(
        (
            float(np.clip(x_peak + dx * zx * x_sd, lo, hi)),
            float(np.clip(y_peak + dy * zy * y_sd, lo, hi)),
        )
        for zx, zy in corners
    )
    x_limit, y_limit = x_peak + dx * min_fall * x_sd, y_peak + dy * min_rise * y_sd
    where = (
        f"cloud at x {x_peak:.3f} (SD {x_sd:.3f}), y {y_peak:.3f} (SD {y_sd:.3f}); arm: "
        f"y {'>=' if dy > 0 else '<='} {y_limit:.3f}, x {'>=' if dx > 0 else '<='} "
        f"{x_limit:.3f}, {min_distance:.3g} SD from the cloud diagonally{valley_note}"
    )
    if not from_data:
        return CloudArm(
            vertices, default_cloud, False, f"{problem}: default cloud; {where}", "default"
        )
    return CloudArm(vertices, cloud, True, where, "cloud_arm")


def place_threshold_where_populations_meet(
    values: np.ndarray, first: Placement, bounds: tuple[float, float]
) -> Placement | None:
    """Move a 1-D boundary ``first`` between two populations to the count-balanced point of
    two normal populations fitted where they meet: on the events above the lower
    population's peak (a normal mixture truncated there, by maximum likelihood).

    Below its peak the lower population's shape says nothing about the boundary and, on a
    log-like scale, is compressed against the autofluorescence floor: memory Tregs smearing
    down CD45RA from the naive ones are skewed, and a Gaussian mixture of the whole range
    fits them with several narrower components whose outermost one has too light a tail
    under the naive peak, so its balanced boundary lies too far into the memory cells
    (second site, 48 pooled tubes: 0.445 where the cut that counts them exactly is 0.459,
    -1.0 points of memory Treg). Here each population's flank towards the other is fitted
    as one normal, the flank that decides how many events cross. None where the fit does
    not give two populations on either side of ``first`` with a boundary inside ``bounds``
    (the caller keeps ``first``).
    """
    from scipy.optimize import minimize

    from gating.registration import landmark_peak

    values = values[np.isfinite(values)].astype(np.float64)
    split = first.value
    floor = landmark_peak(values[values < split], "high")
    if floor is None:
        return None
    x = values[values >= floor]
    low, high = x[x < split], x[x >= split]
    if min(low.size, high.size) < 100:
        return None

    def unpack(p: np.ndarray) -> tuple[float, float, float, float, float]:
        return 1 / (1 + np.exp(-p[0])), p[1], np.exp(p[2]), p[3], np.exp(p[4])

    def loss(p: np.ndarray) -> float:
        w, m1, s1, m2, s2 = unpack(p)
        density = np.logaddexp(
            np.log(w) + norm.logpdf(x, m1, s1), np.log1p(-w) + norm.logpdf(x, m2, s2)
        )
        kept = w * norm.sf(floor, m1, s1) + (1 - w) * norm.sf(floor, m2, s2)
        return -(density.sum() - x.size * np.log(kept)) / x.size

    start = np.array(
        [
            np.log(low.size / high.size),
            floor,
            np.log(np.sqrt(np.mean((low - floor) ** 2))),
            np.median(high),
            np.log(high.std()),
        ]
    )
    fit = minimize(loss, start, method="L-BFGS-B")
    w, m1, s1, m2, s2 = unpack(fit.x)
    if not (fit.success and m1 < split < m2):
        return None
    cut = _balanced_boundary([(w, m1, s1)], [(1 - w, m2, s2)])
    if not bounds[0] <= cut <= bounds[1]:
        return None
    d = ashman_d(m1, s1, m2, s2)
    return Placement(
        cut,
        True,
        f"{first.note}; where they meet (above the lower peak {floor:.3f}): normals at "
        f"{m1:.3f} (SD {s1:.3f}) and {m2:.3f} (SD {s2:.3f}), Ashman's D {d:.2f}, boundary at "
        f"{cut:.3f}",
        "flank_mixture",
        d,
    )
