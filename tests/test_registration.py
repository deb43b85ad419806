"""Landmark registration of thresholds: landmarks, the study reference's file and identity."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from gating.adaptive import place_threshold, place_threshold_where_populations_meet
from gating.registration import (
    RegisteredThreshold,
    StudyReference,
    build_reference,
    landmark_peak,
    load_reference,
    with_reference,
    write_reference,
)
from gating.strategy import StrategyError, load_strategy


def test_landmark_follows_the_peak_not_the_mixture():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(0.2, 0.03, 6000), rng.normal(0.55, 0.04, 4000)])
    assert landmark_peak(values, "high") == pytest.approx(0.55, abs=0.01)
    assert landmark_peak(values, "low") == pytest.approx(0.2, abs=0.01)
    # A brighter stain moves the landmark with it, whatever the populations' sizes.
    shifted = np.concatenate([rng.normal(0.25, 0.03, 2000), rng.normal(0.63, 0.04, 8000)])
    assert landmark_peak(shifted, "high") == pytest.approx(0.63, abs=0.01)
    assert landmark_peak(values[:100], "high") is None  # too few events to say


def _reference(strategy, offset=-0.2) -> StudyReference:
    threshold = RegisteredThreshold(offset, 0.55, 12, 9000, "mixture_1d", "test")
    return StudyReference(strategy.name, strategy.sha256, {"t_cd45ra": threshold}, ("a", "b"))


def test_reference_is_part_of_the_strategy_identity(tmp_path):
    strategy = load_strategy("treg")
    path = write_reference(tmp_path / "treg.yaml", _reference(strategy))
    registered = with_reference(strategy, load_reference(path, strategy))
    assert registered.offsets == {"t_cd45ra": -0.2}
    assert registered.sha256 != strategy.sha256  # results gated without it are superseded
    other = with_reference(
        strategy, load_reference(write_reference(path, _reference(strategy, -0.1)), strategy)
    )
    assert other.sha256 not in (strategy.sha256, registered.sha256)


def test_reference_for_another_strategy_version_is_ignored(tmp_path):
    strategy = load_strategy("treg")
    stale = _reference(strategy)
    stale = StudyReference(stale.strategy, "0" * 64, stale.thresholds, stale.sample_ids)
    path = write_reference(tmp_path / "treg.yaml", stale)
    assert load_reference(path, strategy) is None


def test_a_damaged_reference_is_one_clear_error(tmp_path):
    path = tmp_path / "treg.yaml"
    path.write_text("strategy: treg\nthresholds: {t_cd45ra: {offset: x}}\n")
    with pytest.raises(StrategyError, match="treg.yaml: not a usable study reference.*rebuild"):
        load_reference(path, load_strategy("treg"))


def test_a_landmark_population_must_exist(tmp_path):
    from importlib import resources

    doc = yaml.safe_load((resources.files("gating") / "strategies" / "treg.yaml").read_text())
    doc["thresholds"]["t_cd45ra"]["registration"]["landmark_within"] = "cd4"
    path = tmp_path / "treg.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(StrategyError, match="t_cd45ra.registration.landmark_within.*'cd4'"):
        load_strategy(str(path))


def _tregs_on_cd45ra(rng, n: int, memory_share: float, gain: float = 0.0):
    """Tregs on a log-like CD45RA scale (a decade = 1/4.5): naive ones narrow and high, memory
    ones a decade lower and twice as wide, compressed below by autofluorescence (skewed)."""
    memory = rng.uniform(size=n) < memory_share
    decades = np.where(memory, rng.normal(2.9, 0.35, n), rng.normal(3.95, 0.18, n))
    raw = 10**decades + 10 ** rng.normal(2.0, 0.22, n)
    return (np.log10(raw) - 1.5) / 4.5 + gain, memory


def test_registered_cut_counts_a_skewed_memory_population():
    """Pooled Tregs whose memory cells smear down CD45RA: the study's cut counts the memory
    share within 0.6 points; the mixture of the whole range (treg v7) undercounted it by
    1.5-2.0 points on such pools (measured on 6 seeds), calling memory Tregs naive."""
    rng = np.random.default_rng(4)
    gains = np.linspace(-0.03, 0.03, 8)  # per sample (detector gain, staining)
    samples = [_tregs_on_cd45ra(rng, 2500, 0.68, gain) for gain in gains]
    naive_peak = (np.log10(10**3.95 + 100) - 1.5) / 4.5  # each sample's landmark, its gain
    landmarks = [
        (f"s{i}", {"t_cd45ra": (naive_peak + gain, values)})
        for i, ((values, _), gain) in enumerate(zip(samples, gains, strict=True))
    ]
    registered = build_reference(load_strategy("treg"), landmarks).thresholds["t_cd45ra"]
    assert registered.method == "flank_mixture"
    pooled = np.concatenate(
        [values - gain for (values, _), gain in zip(samples, gains, strict=True)]
    )
    memory = np.concatenate([m for _, m in samples])
    true_pct = 100 * memory.mean()
    cut = registered.landmark_reference + registered.offset
    assert 100 * np.mean(pooled < cut) == pytest.approx(true_pct, abs=0.6)
    whole_range = place_threshold(pooled, (0.22, 0.68), 0.45)
    assert 100 * np.mean(pooled < whole_range.value) - true_pct < -1.0


def test_flank_fit_keeps_the_first_boundary_without_two_populations():
    """One population (tissue Tregs, nearly all memory): no second flank to fit, no move."""
    rng = np.random.default_rng(2)
    values = rng.normal(0.3, 0.08, 3000)
    first = place_threshold(values, (0.22, 0.68), 0.45)
    assert place_threshold_where_populations_meet(values, first, (0.22, 0.68)) is None
