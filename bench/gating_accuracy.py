"""Gating accuracy against per-event ground truth on a demo study harder than the default.

    .venv/bin/python bench/gating_accuracy.py [--events 30000] [--seed 7] [--out DIR]

Writes a demo study with per-visit gain drift of +/-25% on every detector, all naming styles
($PnS 'CD19 PE-Cy7', 'PE-Cy7-CD19', 'CD19', markers only in $PnN), a second vendor's detector
names, 16-bit integer and big-endian files, and clogs in 10% of files; gates every file and
prints, per population, the median F1 of event membership (samples with >= 200 true events)
and the median and maximum absolute error of pct_parent.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cohort.study import Study
from gating.pipeline import gate_sample
from panels.fcs import read_events
from panels.resolve import resolve_panel
from simulate.demo import B_TRUTH, LABELS, T_TRUTH, DemoOptions, simulate_study

HARD = DemoOptions(
    gain_drift=0.25,
    naming_styles=("marker_fluor", "fluor_marker", "marker", "pnn"),
    vendors=("bd", "cytek"),
    integer_16bit_share=0.15,
    big_endian_share=0.15,
    clog_share=0.10,
    include_bad_files=False,
)


def score_study(root: Path) -> pd.DataFrame:
    """One row per sample and population: F1, true and gated pct_parent."""
    study = Study(root)
    rows = []
    for path in study.inbox_files():
        name = study.parse_name(path.name)
        data = read_events(path)
        resolved = resolve_panel(study.panels[name.panel_token], data.header)
        gating = gate_sample(data, resolved, study.strategies[name.panel_token])
        kinds = np.array(LABELS)[np.load(root / "truth" / f"{name.sample_id}.npz")["labels"]]
        truth = B_TRUTH if name.panel_token == "BCELL" else T_TRUTH
        member = {"qc_passed": ~np.isin(kinds, ["debris", "doublet"])}
        for population, (parent, types) in truth.items():
            member[population] = np.isin(kinds, sorted(types))
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
                    "pct_true": 100 * true_n / member[parent].sum(),
                    "pct_gated": next(
                        p.pct_parent for p in gating.populations if p.population == population
                    ),
                    "flags": ";".join(gating.flags),
                }
            )
    frame = pd.DataFrame(rows)
    frame["abs_error"] = (frame.pct_gated - frame.pct_true).abs()
    return frame


def summarise(scores: pd.DataFrame) -> pd.DataFrame:
    by = scores.groupby(["panel", "population"], sort=False)
    big = scores[scores.true_events >= 200].groupby(["panel", "population"], sort=False)
    return pd.DataFrame(
        {
            "samples": by.size(),
            "median_true_events": by.true_events.median(),
            "median_f1_(>=200_events)": big.f1.median(),
            "median_abs_error_pp": by.abs_error.median(),
            "p90_abs_error_pp": by.abs_error.quantile(0.9),
            "max_abs_error_pp": by.abs_error.max(),
        }
    ).round(3)


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
    parser.add_argument("--events", type=int, default=30000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="keep the study here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = (args.out or Path(scratch)) / "hard-study"
        started = time.perf_counter()
        options = DemoOptions(
            **{**HARD.__dict__, "events_per_file": args.events, "seed": args.seed}
        )
        simulate_study(root, options)
        scores = score_study(root)
        table = summarise(scores)
        print(markdown_table(table.reset_index()))
        scores.to_csv(root.parent / "gating_accuracy_scores.csv", index=False)
        print(
            f"\n{scores.sample_id.nunique()} files, {args.events} events each, "
            f"{time.perf_counter() - started:.0f} s"
        )


if __name__ == "__main__":
    main()
