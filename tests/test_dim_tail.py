"""The dim-tailed mixture's balanced boundary (``gating.dim_tail``): where populations are
heavy-tailed towards dim and light towards bright, as real ones are, it counts the bright
population without the bias a symmetric boundary has."""

from __future__ import annotations

import numpy as np
import pytest

from gating.adaptive import place_threshold
from gating.dim_tail import (
    LIGHT_SIDE_SCALE,
    place_dim_tailed_threshold,
    place_threshold_by_dim_tail_mixture,
)


def _dim_tailed(rng: np.random.Generator, median: float, spread: float, n: int) -> np.ndarray:
    """t (4 degrees of freedom) below the median, normal above, same quartiles: the real-shaped
    simulator's B-marker law, drawn here independently of it."""
    below = rng.random(n) < 0.5
    heavy = -np.abs(rng.standard_t(4, n))
    light = np.abs(rng.standard_normal(n)) * LIGHT_SIDE_SCALE
    return median + spread * np.where(below, heavy, light)


def _memory_b_igd(seed: int, n: int = 4000, upper_share: float = 0.4):
    """IgD of memory B as on the real-shaped tube: IgD-negative (switched and IgM-only) at
    0.21 and IgD+ (IgM memory) at 0.55, spread 0.06; returns values and the upper's labels."""
    rng = np.random.default_rng(seed)
    n_up = int(n * upper_share)
    values = np.concatenate(
        [_dim_tailed(rng, 0.21, 0.06, n - n_up), _dim_tailed(rng, 0.55, 0.06, n_up)]
    )
    return values, np.arange(n) >= n - n_up


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_balanced_boundary_counts_the_bright_population_where_the_symmetric_cut_does_not(seed):
    """The usual placement cuts midway (~0.40) and loses ~3% of the bright population's
    events below it (its heavy dim tail) against ~0% of the dim one's above: an undercount
    by more than a point. The dim-tailed mixture cuts lower and counts it within 0.6 points."""
    values, upper = _memory_b_igd(seed)
    true_pct = 100 * upper.mean()
    old = place_threshold(values, (0.22, 0.68), 0.45)
    new = place_threshold_by_dim_tail_mixture(values, (0.22, 0.68), 0.45)
    assert new.from_data and new.method == "dim_tail_mixture", new.note
    assert new.value < old.value - 0.02, (new.value, old.value)
    old_error = 100 * (values >= old.value).mean() - true_pct
    new_error = 100 * (values >= new.value).mean() - true_pct
    assert old_error < -1.0, old_error
    assert abs(new_error) < 0.6, (new_error, new.note)
    assert "Ashman's D" in new.note and new.separation > 2.5


def test_normal_populations_apart_are_counted_without_bias_whichever_law_fits():
    """Normal populations (the demo's and the second site's): the boundary counts the upper
    one within 0.5 points and lies between the two."""
    rng = np.random.default_rng(5)
    values = np.concatenate([rng.normal(0.2, 0.05, 3000), rng.normal(0.62, 0.05, 2000)])
    place = place_threshold_by_dim_tail_mixture(values, (0.22, 0.68), 0.45)
    assert place.from_data
    assert abs(100 * (values >= place.value).mean() - 40.0) < 0.5, place.note
    assert 0.3 < place.value < 0.5


def test_too_few_events_or_one_population_fall_back_to_the_usual_placement():
    """Below 200 events no mixture is fitted; one population gives no boundary: the usual
    placement (a valley, a Gaussian mixture, else the default) is used, the note says why."""
    rng = np.random.default_rng(7)
    few = np.concatenate([rng.normal(0.2, 0.04, 60), rng.normal(0.6, 0.04, 40)])
    place = place_dim_tailed_threshold(few, (0.22, 0.68), 0.45)
    assert place.note.startswith("too few events (100)") and place.method == "valley"
    one = _dim_tailed(rng, 0.5, 0.05, 3000)
    alone = place_threshold_by_dim_tail_mixture(one, (0.22, 0.68), 0.45)
    assert not alone.from_data and alone.value == 0.45


def test_a_spike_between_the_populations_does_not_drag_the_cut():
    """A few events on one value between the populations (a demo tube: 1.3% of its memory B
    on one IgD bin) fit as a component of weight ~1% and no spread; counted on the lower side
    it pulled the balanced cut to 0.62, inside the IgD+ cells (IgM memory B -9.4 points)."""
    rng = np.random.default_rng(11)
    lower = _dim_tailed(rng, 0.28, 0.065, 1500)
    upper = 0.667 + 0.04 * rng.standard_t(4, 1500)
    values = np.concatenate([lower, upper, np.full(40, 0.581)])
    place = place_threshold_by_dim_tail_mixture(values, (0.22, 0.68), 0.45)
    assert place.from_data
    assert 0.4 < place.value < 0.56, place.note  # below the spike, short of the IgD+ cells
    assert abs(100 * ((values >= place.value).mean() - 1540 / 3040)) < 1.5
