"""How well could any gate on CD38 x CD24 count transitional B? A diagnostic, not a gate.

    .venv/bin/python -m bench.transitional_ceiling [--simulator real_shaped] [--events 20000]
        [--seed 7] [--files 12] [--study DIR]

Per B tube of a ground-truth study (``bench.gating_accuracy`` writes it; ``--study`` reuses one
kept with its ``--out``): the per-event F1 of our transitional B gate (the tip of the CD27- B
cells' cloud, ``gating.cloud_tip``) against the simulator's truth, beside the ceiling: a
25-nearest-neighbour classifier fitted to the truth on CD38 x CD24 of the same CD27- B cells,
cross-validated (5 folds) at its best probability cut (``bench.real_gating.ceiling_f1``, the
Treg ceiling's method). Both are scored on the CD27- B cells, where the gate is placed. A
ceiling far above the gate says the placement can improve; a ceiling near it says the two
populations' overlap, not the gate, sets the F1.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from bench.gating_accuracy import TRUTH, make_study, markdown_table
from bench.real_gating import ceiling_f1, f1_score
from cohort.study import Study
from gating.pipeline import gate_sample
from panels.fcs import read_events
from panels.resolve import resolve_panel

PLACED_ON = "cd27neg_b"  # the transitional tip's ``within`` in the bcell strategy
PLANE = ("CD38", "CD24")


def tube_rows(root: Path, truth_of: dict, files: int) -> list[dict]:
    """Per B tube (the first ``files``): our gate's F1 and the ceiling, on the CD27- B cells;
    ``truth_of`` is the simulator's ``TRUTH`` (panel -> population -> (parent, cell types))."""
    study = Study(root)
    rows = []
    for path in study.inbox_files():
        name = study.parse_name(path.name)
        token = name.panel_token
        if "transitional_b" not in truth_of.get(token, {}) or len(rows) >= files:
            continue
        data = read_events(path)
        gating = gate_sample(
            data, resolve_panel(study.panels[token], data.header), study.strategies[token]
        )
        stored = np.load(root / "truth" / f"{path.stem}.npz")
        kinds = stored["label_names"][stored["labels"]]
        truth = np.isin(kinds, sorted(truth_of[token]["transitional_b"][1]))
        placed_on = gating.masks[PLACED_ON]
        tip = next(g for g in gating.gates if g.name == "transitional_tip")
        rows.append(
            {
                "file": path.stem,
                "true_transitional": int((truth & placed_on).sum()),
                "gated": int((gating.masks["transitional_b"] & placed_on).sum()),
                "gate_f1": round(
                    f1_score(gating.masks["transitional_b"][placed_on], truth[placed_on]), 3
                ),
                "ceiling_f1": round(ceiling_f1(gating, truth, within=PLACED_ON, dims=PLANE), 3),
                "placed_by": tip.note.split(":", 1)[0],
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulator", choices=sorted(TRUTH), default="real_shaped")
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--files", type=int, default=12, help="B tubes scored (the first N)")
    parser.add_argument("--study", type=Path, default=None, help="a study already written")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.study or make_study(
            args.simulator, Path(scratch) / "study", args.events, args.seed
        )
        table = pd.DataFrame(tube_rows(root, TRUTH[args.simulator], args.files))
    print(markdown_table(table))
    print(
        f"\nmedian F1 over {len(table)} tubes: our gate {table.gate_f1.median():.3f}, "
        f"ceiling {table.ceiling_f1.median():.3f}"
    )


if __name__ == "__main__":
    main()
