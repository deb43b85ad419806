"""Study-level landmark registration of thresholds on populations that form a continuum.

A threshold placed on one sample's few hundred Tregs moves with that sample's noise. Pooling
the study's samples gives tens of thousands of events, but the samples must first be aligned:
detector gains and staining differ between visits. As in flowStats' warpSet and CytoNorm,
each sample's *landmark* (the peak of a well-populated reference population on the same
marker, e.g. the CD45RA-high peak of all CD4 T cells) is found, every sample's values are
shifted so that landmarks coincide, the threshold is placed once on the pooled aligned values
(by ``gating.adaptive.place_threshold``), and each sample gets ``its landmark + the study's
offset``.

The offsets are a *study reference*: built on request (``immunomon reference build``) from the
samples processed so far, written to ``STUDY/references/STRATEGY.yaml`` with the samples they
came from, and part of every result's identity, so building or rebuilding one re-gates the
panel's samples on the next run (earlier results are kept, superseded).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml

from gating.records import SampleGating
from gating.strategy import Strategy, StrategyError, ThresholdSpec

MIN_LANDMARK_EVENTS = 200


def landmark_peak(values: np.ndarray, peak: str, min_height: float = 0.1) -> float | None:
    """The uppermost ('high') or lowermost ('low') peak of the smoothed density that rises to
    at least ``min_height`` of the highest one: the reference population's location, whatever
    the share of the other populations."""
    values = values[np.isfinite(values)]
    if values.size < MIN_LANDMARK_EVENTS:
        return None
    from scipy.ndimage import gaussian_filter1d

    hist, edges = np.histogram(values, bins=max(int(np.ptp(values) / 0.004), 20))
    density = gaussian_filter1d(hist.astype(np.float64), sigma=0.015 / (edges[1] - edges[0]))
    inner = density[1:-1]
    peaks = 1 + np.flatnonzero((inner >= density[:-2]) & (inner > density[2:]))
    peaks = peaks[density[peaks] >= min_height * density.max()]
    if peaks.size == 0:
        return None
    k = int(peaks.max() if peak == "high" else peaks.min())
    return float((edges[k] + edges[k + 1]) / 2)


@dataclass(frozen=True)
class RegisteredThreshold:
    """A threshold's study offset from its landmark, and what it was placed on."""

    offset: float
    landmark_reference: float  # the median landmark the pooled values were aligned to
    samples: int
    events: int
    method: str
    note: str


@dataclass(frozen=True)
class StudyReference:
    """The registered thresholds of one strategy, built from named samples."""

    strategy: str
    strategy_sha256: str
    thresholds: dict[str, RegisteredThreshold]
    sample_ids: tuple[str, ...]
    built_at: str = ""
    software: str = ""
    sha256: str = field(default="", compare=False)


def registered_thresholds(strategy: Strategy) -> dict[str, ThresholdSpec]:
    """The strategy's thresholds that name a landmark for registration."""
    return {name: t for name, t in strategy.thresholds.items() if t.registration is not None}


def sample_landmarks(
    strategy: Strategy, gating: SampleGating, max_values: int = 5000, seed: int = 0
) -> dict[str, tuple[float, np.ndarray]]:
    """Per registered threshold: this sample's landmark and its values among the threshold's
    events (at most ``max_values``, so every sample weighs about the same in the pool)."""
    found = {}
    for name, spec in registered_thresholds(strategy).items():
        rows = gating.masks.get(spec.registration.landmark_within)
        within = gating.masks.get(spec.within)
        if rows is None or within is None:
            continue  # the sample could not measure the populations (a marker is missing)
        landmark = landmark_peak(gating.space[spec.dimension][rows], spec.registration.peak)
        if landmark is None:
            continue
        values = gating.space[spec.dimension][within]
        if values.size > max_values:
            values = np.random.default_rng(seed).choice(values, max_values, replace=False)
        found[name] = (landmark, values.astype(np.float64))
    return found


def build_reference(
    strategy: Strategy,
    landmarks: Iterable[tuple[str, dict[str, tuple[float, np.ndarray]]]],
    *,
    min_samples: int = 5,
    software: str = "",
) -> StudyReference:
    """Pool the samples' aligned values per registered threshold and place each once.

    ``landmarks``: per sample, its id and ``sample_landmarks(strategy, gating)``.
    """
    # scikit-learn: only when building
    from gating.adaptive import place_threshold, place_threshold_where_populations_meet

    collected: dict[str, list[tuple[float, np.ndarray]]] = {}
    sample_ids = []
    for sample_id, found_in_sample in landmarks:
        sample_ids.append(sample_id)
        for name, found in found_in_sample.items():
            collected.setdefault(name, []).append(found)
    thresholds = {}
    for name, spec in registered_thresholds(strategy).items():
        found = collected.get(name, [])
        if len(found) < min_samples:
            raise StrategyError(
                f"reference for {strategy.name}: {name} needs at least {min_samples} samples "
                f"with a landmark, found {len(found)}; process more samples first"
            )
        reference = float(np.median([landmark for landmark, _ in found]))
        pooled = np.concatenate([values - landmark + reference for landmark, values in found])
        place = place_threshold(pooled, spec.bounds, spec.default)
        if not place.from_data:
            raise StrategyError(
                f"reference for {strategy.name}: {name}: no boundary in the pooled data of "
                f"{len(found)} samples ({place.note})"
            )
        # Tens of thousands of pooled events can measure the two populations' flanks where
        # they meet: the count-balanced cut is taken from those, not from a mixture of the
        # whole range, whose components understate a skewed population's tail
        # (``place_threshold_where_populations_meet``; memory Tregs smearing down CD45RA).
        place = place_threshold_where_populations_meet(pooled, place, spec.bounds) or place
        thresholds[name] = RegisteredThreshold(
            round(place.value - reference, 6),
            round(reference, 6),
            len(found),
            int(pooled.size),
            place.method,
            place.note,
        )
    return StudyReference(
        strategy.name,
        strategy.sha256,
        thresholds,
        tuple(sample_ids),
        dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        software,
    )


def write_reference(path: Path, reference: StudyReference) -> Path:
    """Write the reference YAML atomically."""
    document = {
        "strategy": reference.strategy,
        "strategy_sha256": reference.strategy_sha256,
        "built_at": reference.built_at,
        "software": reference.software,
        "thresholds": {
            name: {
                "offset": t.offset,
                "landmark_reference": t.landmark_reference,
                "samples": t.samples,
                "events": t.events,
                "method": t.method,
                "note": t.note,
            }
            for name, t in reference.thresholds.items()
        },
        "samples": list(reference.sample_ids),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    header = (
        "# Study reference for registered thresholds, written by `immunomon reference build`.\n"
        "# Its content is part of every result's identity: editing it re-gates the panel.\n"
    )
    tmp.write_text(header + yaml.safe_dump(document, sort_keys=False))
    tmp.replace(path)
    return path


def load_reference(path: Path, strategy: Strategy) -> StudyReference | None:
    """The reference for ``strategy`` in ``path``; None if there is none or it was built for
    another version of the strategy (the thresholds then fall back to per-sample placement)."""
    if not path.is_file():
        return None
    try:
        doc = yaml.safe_load(path.read_text())
        thresholds = {
            name: RegisteredThreshold(
                float(t["offset"]),
                float(t["landmark_reference"]),
                int(t["samples"]),
                int(t["events"]),
                str(t["method"]),
                str(t.get("note", "")),
            )
            for name, t in doc["thresholds"].items()
        }
        reference = StudyReference(
            str(doc["strategy"]),
            str(doc["strategy_sha256"]),
            thresholds,
            tuple(doc.get("samples", [])),
            str(doc.get("built_at", "")),
            str(doc.get("software", "")),
        )
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise StrategyError(
            f"{path}: not a usable study reference ({type(exc).__name__}: {exc}); "
            "rebuild it with `immunomon reference build`"
        ) from None
    if reference.strategy_sha256 != strategy.sha256:
        return None
    identity = json.dumps(
        {n: t.offset for n, t in sorted(thresholds.items())}, sort_keys=True
    ).encode()
    return replace(reference, sha256=hashlib.sha256(identity).hexdigest())


def with_reference(strategy: Strategy, reference: StudyReference | None) -> Strategy:
    """The strategy with the reference's offsets; its identity includes them."""
    if reference is None or not reference.thresholds:
        return strategy
    offsets = {name: t.offset for name, t in reference.thresholds.items()}
    combined = hashlib.sha256((strategy.sha256 + reference.sha256).encode()).hexdigest()
    return strategy.registered_with(offsets, combined, reference.sha256)
