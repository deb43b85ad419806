"""Gating accuracy against per-event ground truth, on two independently written simulators.

    .venv/bin/python bench/gating_accuracy.py [--simulator demo|second_site|both]
        [--events 30000] [--seed 7] [--out DIR]

- ``demo``: the demo study made hard (``simulate.demo``): per-visit gain drift of +/-25% on
  every detector, all naming styles, a second vendor's detector names, 16-bit and big-endian
  files, clogs in 10% of files.
- ``second_site``: ``simulate.second_site``, its own population model: transitional B and
  memory Treg as shoulders without valleys, granulocyte contamination, scatter scale 0.6-1.6x
  per file, no FSC-H (FSC-W or SSC-H), a third of the B tubes without IgM, CytoFLEX-style
  detectors on a 2^20 range.

Prints, per simulator and population: samples, median F1 of event membership (samples with
>= 200 true events), median / p90 / max absolute error of pct_parent in percentage points;
then how each threshold was placed (valley / mixture_2d / mixture_1d / registered / default),
with counts. As a study would, each study first builds its reference for registered thresholds
(``immunomon reference build``: every file gated once, landmarks pooled) and is then scored;
``--no-reference`` scores per-sample placement alone.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cohort.references import build_panel_reference
from cohort.study import Study
from gating.gates import ThresholdMark
from gating.pipeline import gate_sample
from gating.registration import registered_thresholds
from panels.fcs import read_events
from panels.resolve import resolve_panel
from simulate import demo, second_site

HARD = demo.DemoOptions(
    gain_drift=0.25,
    naming_styles=("marker_fluor", "fluor_marker", "marker", "pnn"),
    vendors=("bd", "cytek"),
    integer_16bit_share=0.15,
    big_endian_share=0.15,
    clog_share=0.10,
    include_bad_files=False,
)
TRUTH = {"demo": demo.TRUTH, "second_site": second_site.TRUTH}
# Looser median-error target for the rarest populations (issue 14).
RARE = {"plasmablasts", "hladr_memory_treg"}


def make_study(simulator: str, root: Path, events: int, seed: int) -> Path:
    """Write the simulator's study under ``root``."""
    if simulator == "demo":
        options = demo.DemoOptions(**{**HARD.__dict__, "events_per_file": events, "seed": seed})
        return demo.simulate_study(root, options)
    options = second_site.SiteOptions(events_per_file=events, seed=seed)
    return second_site.simulate_site(root, options)


def build_study_references(root: Path) -> dict[str, str]:
    """Build each panel's study reference from all its files, as ``immunomon reference
    build`` does; returns a line per reference."""
    study = Study(root)
    lines = {}
    for token, strategy in study.strategies.items():
        if not registered_thresholds(strategy):
            continue
        files = [p for p in study.inbox_files() if study.parse_name(p.name).panel_token == token]
        reference, _ = build_panel_reference(study, token, files)
        lines[token] = ", ".join(
            f"{n} offset {t.offset:+.3f} ({t.method}, {t.samples} samples, {t.events} events)"
            for n, t in reference.thresholds.items()
        )
    return lines


def score_study(root: Path, truth: dict[str, dict[str, tuple[str, set[str]]]]):
    """Per sample and population: F1, true and gated pct_parent; per sample and threshold:
    how it was placed. Uses the study's references where built."""
    study = Study(root)
    rows, placements = [], []
    for path in study.inbox_files():
        name = study.parse_name(path.name)
        data = read_events(path)
        resolved = resolve_panel(study.panels[name.panel_token], data.header)
        gating = gate_sample(data, resolved, study.strategies[name.panel_token])
        stored = np.load(root / "truth" / f"{path.stem}.npz")
        kinds = stored["label_names"][stored["labels"]]
        member = {"qc_passed": ~np.isin(kinds, ["debris", "doublet"])}
        gated = {p.population: p.pct_parent for p in gating.populations}
        for population, (parent, types) in truth[name.panel_token].items():
            member[population] = np.isin(kinds, sorted(types))
            if population not in gated:  # not measured on this tube (a marker is missing)
                continue
            got = gating.masks[population]
            true_n = int(member[population].sum())
            tp = int((got & member[population]).sum())
            rows.append(
                {
                    "sample_id": name.sample_id,
                    "panel": name.panel_token,
                    "population": population,
                    "true_events": true_n,
                    "f1": 2 * tp / (got.sum() + true_n) if got.sum() + true_n else np.nan,
                    "pct_true": 100 * true_n / max(member[parent].sum(), 1),
                    "pct_gated": gated[population],
                    "flags": ";".join(gating.flags),
                }
            )
        for applied in gating.gates:
            if isinstance(applied.gate, ThresholdMark):
                placements.append(
                    {
                        "sample_id": name.sample_id,
                        "panel": name.panel_token,
                        "threshold": applied.name,
                        "method": applied.gate.method,
                        "value": applied.gate.value,
                    }
                )
    scores = pd.DataFrame(rows)
    scores["abs_error"] = (scores.pct_gated - scores.pct_true).abs()
    return scores, pd.DataFrame(placements)


def summarise(scores: pd.DataFrame) -> pd.DataFrame:
    """Per population: error and F1 figures, and whether the issue-14 targets hold."""
    by = scores.groupby(["panel", "population"], sort=False)
    big = scores[scores.true_events >= 200].groupby(["panel", "population"], sort=False)
    table = pd.DataFrame(
        {
            "samples": by.size(),
            "median_true_events": by.true_events.median(),
            "median_f1": big.f1.median(),
            "median_abs_error_pp": by.abs_error.median(),
            "p90_abs_error_pp": by.abs_error.quantile(0.9),
            "max_abs_error_pp": by.abs_error.max(),
        }
    ).round(3)
    limit = [2.0 if p in RARE else 1.0 for _, p in table.index]
    table["meets_target"] = (table.median_abs_error_pp <= limit) & (
        table.median_f1.isna() | (table.median_f1 >= 0.95)
    )
    return table


def placement_table(placements: pd.DataFrame) -> pd.DataFrame:
    """Per threshold: how many samples had it placed by each method, and the default share."""
    counts = (
        placements.pivot_table(
            index=["panel", "threshold"], columns="method", values="value", aggfunc="size"
        )
        .fillna(0)
        .astype(int)
    )
    counts["default_share"] = (counts.get("default", 0) / counts.sum(axis=1)).round(3)
    return counts


def markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = [
        "| " + " | ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in row) + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join([header, rule, *body])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulator", choices=["demo", "second_site", "both"], default="both")
    parser.add_argument("--events", type=int, default=30000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="keep the studies here")
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="do not build study references: registered thresholds are placed per sample",
    )
    args = parser.parse_args()
    simulators = ["demo", "second_site"] if args.simulator == "both" else [args.simulator]
    with tempfile.TemporaryDirectory() as scratch:
        base = args.out or Path(scratch)
        for simulator in simulators:
            started = time.perf_counter()
            root = make_study(simulator, base / f"{simulator}-study", args.events, args.seed)
            references = {} if args.no_reference else build_study_references(root)
            scores, placements = score_study(root, TRUTH[simulator])
            scores.to_csv(base / f"{simulator}_scores.csv", index=False)
            placements.to_csv(base / f"{simulator}_placements.csv", index=False)
            print(f"\n## {simulator}: {scores.sample_id.nunique()} files, {args.events} events")
            print(markdown_table(summarise(scores).reset_index()))
            print()
            print(markdown_table(placement_table(placements).reset_index()))
            for token, line in references.items():
                print(f"\nstudy reference {token}: {line}")
            print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
