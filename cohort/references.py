"""Building a study reference for a panel's registered thresholds from the study's files."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from cohort.study import Study
from cohort.templates import TEMPLATE_METHOD, keep_templates, panel_templates
from gating.apply import gate_file, load_panel_strategy
from gating.registration import (
    RegisteredThreshold,
    StudyReference,
    build_reference,
    registered_thresholds,
    sample_landmarks,
    write_reference,
)
from gating.strategy import Strategy, StrategyError


def build_panel_reference(
    study: Study, panel_token: str, files: Iterable[Path], software: str = ""
) -> tuple[StudyReference, Path]:
    """Gate ``files`` (the panel's samples) with the strategy alone, pool their aligned
    values, place each registered threshold once, and write ``references/STRATEGY.yaml``.
    Thresholds with an expert template (``cohort.templates``) keep it."""
    # The strategy as written: any reference built before must not shape the new one.
    base = load_panel_strategy(study.panels[panel_token], study.root)
    if not isinstance(base, Strategy) or not registered_thresholds(base):
        raise StrategyError(
            f"panel {panel_token}: its strategy has no registered thresholds "
            "(a threshold with 'registration:'), so there is no reference to build"
        )
    collected = []
    for path in files:  # each gated as a pass gates it
        gating = gate_file(path, study.panels[panel_token], base).gating
        collected.append((path.stem, sample_landmarks(base, gating)))
    reference = build_reference(base, collected, software=software)
    # An expert's template is kept: the automatic placement does not overwrite a decision.
    templates = panel_templates(study, panel_token)
    path = write_reference(study.reference_path(base.name), reference)
    keep_templates(path, templates)
    kept = {
        name: replace(
            reference.thresholds.get(name)
            or RegisteredThreshold(t.offset, t.landmark, 1, 0, TEMPLATE_METHOD, ""),
            offset=t.offset,
            method=TEMPLATE_METHOD,
            note=f"expert template set by {t.set_by} at {t.set_at}, kept",
        )
        for name, t in templates.items()
    }
    return replace(reference, thresholds={**reference.thresholds, **kept}), path
