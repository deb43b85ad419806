"""Per-sample placement of gate positions from the data, within bounds set by the strategy.

Each placer returns the position it chose and whether the data supported it. When they do not
(no valley, no cluster inside the bounds), the strategy's default is used and the caller flags
the sample, so a reviewer knows which gates were not data-driven.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d
from sklearn.mixture import GaussianMixture


@dataclass(frozen=True)
class Placement:
    """Where a threshold went, and why."""

    value: float
    from_data: bool
    note: str


def place_threshold_at_density_valley(
    values: np.ndarray,
    bounds: tuple[float, float],
    default: float,
    *,
    bandwidth: float = 0.015,
    min_depth: float = 0.5,
    min_side_share: float = 0.002,
) -> Placement:
    """Put a 1-D threshold at the lowest point of the smoothed density inside ``bounds``.

    The valley counts only if each side holds at least ``min_side_share`` of the events and a
    peak on each side rises above the valley by ``1 / min_depth`` (a valley at most half as
    high as the lower of the two peaks, by default).
    """
    lo, hi = bounds
    values = values[np.isfinite(values)]
    if values.size < 50:
        return Placement(default, False, f"too few events ({values.size}) to place; default")
    # The density is needed over the bounds and the peaks beside them, not over outliers far
    # away (a ratio over a near-zero FSC-H can be huge): the grid reaches ``reach`` beyond.
    reach = max(hi - lo, 0.5)
    grid_lo = min(lo, max(float(values.min()), lo - reach)) - 0.05
    grid_hi = max(hi, min(float(values.max()), hi + reach)) + 0.05
    bins = max(int((grid_hi - grid_lo) / 0.004), 50)
    hist, edges = np.histogram(values, bins=bins, range=(grid_lo, grid_hi))
    centres = (edges[:-1] + edges[1:]) / 2
    density = gaussian_filter1d(hist.astype(np.float64), sigma=bandwidth / (edges[1] - edges[0]))
    inside = np.flatnonzero((centres >= lo) & (centres <= hi))
    if inside.size == 0:
        return Placement(default, False, "bounds outside the data; default")
    # Among equally low points prefer the one nearest the middle of the flat stretch.
    low = density[inside].min()
    flat = inside[density[inside] <= low + 1e-12]
    k = int(flat[len(flat) // 2])
    threshold = float(centres[k])
    left_peak, right_peak = density[: k + 1].max(), density[k:].max()
    left_share = np.count_nonzero(values < threshold) / values.size
    if min(left_share, 1 - left_share) < min_side_share:
        return Placement(default, False, f"one side of {threshold:.3f} is empty; default")
    if density[k] > min_depth * min(left_peak, right_peak):
        return Placement(default, False, f"no clear valley in [{lo:.2f}, {hi:.2f}]; default")
    return Placement(threshold, True, f"valley at {threshold:.3f}")


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
