"""Landmark registration of thresholds: landmarks, the study reference's file and identity."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from gating.registration import (
    RegisteredThreshold,
    StudyReference,
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
