"""A threshold between populations whose tails are heavy towards dim and light towards bright.

Real populations are not symmetric on a logicle axis: ``bench.marker_tails`` finds 0.00-0.49%
of positive populations beyond 3 robust SDs on their bright side (a normal law's 0.13%, a t
law's 1.5%) and 4.1-5.8% on their dim side (CD45 of the 12 flowatlas files). Between two such
populations the boundary that counts each without bias lies closer to the dim one than a
symmetric mixture puts it: the bright population's heavy dim tail reaches far down, the dim
population's light bright tail stops short. On the real-shaped B tube IgM memory B (IgD 0.55)
lose a median 5% of their cells below a symmetric boundary (~0.40) into the IgD- quadrants,
where the IgD-negative memory B (0.21) send few back.

Each component here is a Student-t (``TAIL_DF`` = 4, flowClust's default) below its location
and a normal law above it, the two halves with the same quartile distance, as the real-shaped
simulator draws its B markers. The symmetric t mixture of ``gating.cloud_tip`` (1-3
components by BIC) is fitted first, the dim-tailed mixture started from it with the same
components, and the likelier kept (same parameter count): both have the same heavy dim side,
so the data decide whether the bright side is light. A near-normal symmetric law is not a
candidate: with the few hundred memory B of a tube its likelihood is within noise of the
dim-tailed law's, and where it won (6 of 12 real-shaped tubes) it put the cut back at the
symmetric ~0.40; on normal populations well apart (the demo's) the dim-tailed law wins and
its boundary lies slightly towards the dim population, within a few tenths of a point. The threshold
is the balanced boundary between the two neighbouring components furthest apart (Ashman's D):
as many events of the components below it lie above it as of those from it on lie below it.

The Human ImmunoPhenotyping Consortium's B-cell analysis (RGLab/flowcap3, ``gating.bsub``)
places its IgD cut the same way round: among the CD27+ B cells, not all B, and near the top of
the IgD-negative component (flowClust with two components for the negatives, the cut at their
95% quantile), not midway to the IgD+ memory cells.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.special import gammaln
from scipy.stats import norm
from scipy.stats import t as student_t

from gating.adaptive import SEPARATION_FLOOR, Placement, ashman_d, balanced_cut, place_threshold
from gating.cloud_tip import (
    TAIL_DF,
    TMixture,
    balanced_t_boundary,
    best_t_mixture,
    t_log_pdf,
)

# A normal half with this scale has the t half's quartile distance: t(4)'s 0.7407 over 0.6745.
LIGHT_SIDE_SCALE = float(student_t.ppf(0.75, TAIL_DF) / norm.ppf(0.75))
MIN_EVENTS = 200  # fewer events than this: nothing to fit
MIN_WEIGHT = 0.02  # a component holding less is no population to cut against
BIN_WIDTH = 0.003  # histogram bin, logicle units (as ``gating.cloud_tip``)


@dataclass(frozen=True)
class DimTailMixture:
    """A 1-D mixture of dim-tailed components (t below the location, normal above), sorted
    by location; ``scales`` are the t halves' scales."""

    weights: np.ndarray
    locations: np.ndarray
    scales: np.ndarray
    log_likelihood: float

    def below(self, cut: float) -> np.ndarray:
        """Each component's share below ``cut``."""
        m, s = self.locations, self.scales
        t_part = student_t.cdf(np.minimum(cut, m), TAIL_DF, m, s)
        normal_part = norm.cdf(np.maximum(cut, m), m, s * LIGHT_SIDE_SCALE) - 0.5
        return t_part + normal_part

    def sds(self) -> np.ndarray:
        """Each component's SD (of its law as a whole, both halves)."""
        t_second = TAIL_DF / (TAIL_DF - 2.0)  # E[z^2] of either half
        light = LIGHT_SIDE_SCALE**2
        mean_abs_t = (
            2
            * np.sqrt(TAIL_DF)
            / (TAIL_DF - 1)
            / np.sqrt(np.pi)
            * np.exp(gammaln((TAIL_DF + 1) / 2) - gammaln(TAIL_DF / 2))
        )
        mean_abs_n = np.sqrt(2 / np.pi) * LIGHT_SIDE_SCALE
        mean = 0.5 * (mean_abs_n - mean_abs_t)
        second = 0.5 * (t_second + light)
        return self.scales * np.sqrt(second - mean**2)


def _log_pdf(x: np.ndarray, locations: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """log density of dim-tailed components (columns) at the values (rows)."""
    heavy = t_log_pdf(x, locations, scales, TAIL_DF)
    light_scale = scales * LIGHT_SIDE_SCALE
    z = (x[:, None] - locations[None, :]) / light_scale[None, :]
    light = -0.5 * z * z - np.log(light_scale)[None, :] - 0.5 * np.log(2 * np.pi)
    return np.where(z < 0, heavy, light)


def _histogram(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    edges = np.arange(values.min(), values.max() + 2 * BIN_WIDTH, BIN_WIDTH)
    hist, edges = np.histogram(values, bins=edges)
    used = hist > 0
    return ((edges[:-1] + edges[1:]) / 2)[used], hist[used].astype(np.float64)


def fit_dim_tail_mixture(
    values: np.ndarray, start: TMixture, iterations: int = 300, tolerance: float = 1e-7
) -> DimTailMixture:
    """The dim-tailed mixture with ``start``'s components, by EM on a fine histogram of
    ``values`` (the cost does not grow with the events). Below its location a component is
    the t law as a scale mixture of normals (Peel & McLachlan 2000: each value weighted
    (df + 1) / (df + z^2)), above it a normal law of ``LIGHT_SIDE_SCALE`` times the scale;
    the location and the shared scale are updated from both halves' weighted moments."""
    x, counts = _histogram(np.asarray(values, dtype=np.float64))
    n = counts.sum()
    weights, locations, scales = (
        np.asarray(a, dtype=np.float64).copy()
        for a in (start.weights, start.locations, start.scales)
    )
    scales = np.maximum(scales, 1e-3)
    previous = -np.inf
    log_likelihood = -np.inf
    for _ in range(iterations):
        joint = np.log(np.maximum(weights, 1e-12))[None, :] + _log_pdf(x, locations, scales)
        top = joint.max(axis=1, keepdims=True)
        total = top[:, 0] + np.log(np.exp(joint - top).sum(axis=1))
        log_likelihood = float(counts @ total)
        if log_likelihood - previous < tolerance * abs(log_likelihood):
            break
        previous = log_likelihood
        resp = np.exp(joint - total[:, None]) * counts[:, None]
        z = (x[:, None] - locations[None, :]) / scales[None, :]
        u = np.where(z < 0, (TAIL_DF + 1) / (TAIL_DF + z * z), 1 / LIGHT_SIDE_SCALE**2)
        mass = np.maximum(resp.sum(axis=0), 1e-300)
        weights = mass / n
        locations = (resp * u * x[:, None]).sum(axis=0) / np.maximum((resp * u).sum(axis=0), 1e-300)
        spread = (resp * u * (x[:, None] - locations[None, :]) ** 2).sum(axis=0)
        scales = np.sqrt(np.maximum(spread / mass, 1e-8))
    order = np.argsort(locations)
    return DimTailMixture(weights[order], locations[order], scales[order], log_likelihood)


def balanced_dim_tail_boundary(mixture: DimTailMixture, split: int) -> float:
    """The point between components ``split - 1`` and ``split`` where as many events of the
    components below ``split`` lie above it as of those from it on lie below it."""
    w, m = mixture.weights, mixture.locations
    lower = np.arange(w.size) < split

    def excess(cut: float) -> float:
        below = mixture.below(cut)
        return float(w[lower] @ (1 - below[lower]) - w[~lower] @ below[~lower])

    return balanced_cut(excess, m[split - 1], m[split])


def place_threshold_by_dim_tail_mixture(
    values: np.ndarray, bounds: tuple[float, float], default: float
) -> Placement:
    """A threshold at the balanced boundary of a 1-D mixture whose components are heavy-tailed
    towards dim (or symmetric t, where the data say so), between the two neighbouring
    components furthest apart; ``default`` and not from the data when there are too few
    events, one component, or a boundary outside ``bounds`` or below the separation floor."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size < MIN_EVENTS:
        return Placement(default, False, f"too few events ({x.size}) for a mixture", "default")
    symmetric = best_t_mixture(x)
    kept = symmetric.weights >= MIN_WEIGHT
    if kept.sum() < 2:
        return Placement(default, False, "one population: no boundary", "default")
    dim = fit_dim_tail_mixture(x, symmetric)
    use_dim = dim.log_likelihood > symmetric.log_likelihood
    weights = dim.weights if use_dim else symmetric.weights
    locations = dim.locations if use_dim else symmetric.locations
    sds = dim.sds() if use_dim else symmetric.sds
    usable = [i for i in range(weights.size) if weights[i] >= MIN_WEIGHT]
    pairs = list(zip(usable, usable[1:], strict=False))
    separation = {(a, b): ashman_d(locations[a], sds[a], locations[b], sds[b]) for a, b in pairs}
    a, b = max(pairs, key=separation.get)
    d = separation[(a, b)]
    law = "dim-tailed" if use_dim else f"symmetric t({symmetric.df:g})"
    if d < SEPARATION_FLOOR:
        note = (
            f"{law} mixture of {weights.size}: below the separation floor (Ashman's D {d:.2f} "
            f"< {SEPARATION_FLOOR:g})"
        )
        return Placement(default, False, note, "default", d)
    # Balanced among the populations only: a component too small to be one (a spike the fit
    # put on a few events between the two, weight 1%) would count wholly on one side and drag
    # the cut into the other population (9.4 points off on one demo tube).
    keep, split = np.array(usable), usable.index(b)
    if use_dim:
        kept = DimTailMixture(
            dim.weights[keep], dim.locations[keep], dim.scales[keep], dim.log_likelihood
        )
        cut = balanced_dim_tail_boundary(kept, split)
    else:
        kept = TMixture(
            symmetric.weights[keep],
            symmetric.locations[keep],
            symmetric.scales[keep],
            symmetric.df,
            symmetric.log_likelihood,
        )
        cut = balanced_t_boundary(kept, split)
    lo, hi = bounds
    if not lo <= cut <= hi:
        note = f"{law} mixture boundary {cut:.3f} outside [{lo:.2f}, {hi:.2f}]"
        return Placement(default, False, note, "default")
    note = (
        f"{law} mixture of {weights.size}: balanced boundary at {cut:.3f} between "
        f"{locations[a]:.3f} and {locations[b]:.3f} (Ashman's D {d:.2f})"
    )
    return Placement(cut, True, note, "dim_tail_mixture" if use_dim else "t_mixture", d)


def place_dim_tailed_threshold(
    values: np.ndarray, bounds: tuple[float, float], default: float
) -> Placement:
    """A strategy's ``placement: dim_tail_mixture`` threshold: the dim-tailed mixture's
    balanced boundary, else the usual placement (``gating.adaptive.place_threshold``: a valley
    or a Gaussian mixture), its note saying why the mixture was not used."""
    place = place_threshold_by_dim_tail_mixture(values, bounds, default)
    if place.from_data:
        return place
    fallback = place_threshold(values, bounds, default)
    return replace(fallback, note=f"{place.note}; {fallback.note}")
