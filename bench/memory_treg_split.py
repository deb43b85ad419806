"""Where a simulated study's memory Treg error comes from, event by event.

    .venv/bin/python -m bench.memory_treg_split --study DIR [--files 12] [--simulator S]

DIR is a study ``bench.gating_accuracy --out OUT`` kept (``OUT/S-study``, with its reference
built). Each Treg tube is gated as the bench gates it; the memory Treg share's error
(gated - true, points of the parent) splits exactly into

- **threshold**: ``t_cd45ra``'s own error on the TRUE Tregs (the share of true Tregs below it
  minus the true memory share), itself the memory Tregs it calls naive (-) plus the naive Tregs
  it calls memory (+);
- **upstream**: the rest, from the ``treg`` gate letting in other cells (conventional CD4
  memory cells below the cut count as memory, naive ones above it as not) and missing Tregs.

Also per tube: ``t_cd45ra``, and on the true Tregs the cut that counts them exactly (as many
memory Tregs above it as naive ones below), to see how far the study's registered cut is from
each tube's unbiased one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from bench.gating_accuracy import TRUTH
from cohort.study import Study
from gating.gates import ThresholdMark
from gating.pipeline import gate_sample
from panels.fcs import read_events
from panels.resolve import resolve_panel


def unbiased_cut(values: np.ndarray, memory: np.ndarray) -> float:
    """The cut below which exactly as many values lie as ``memory`` marks: the boundary that
    counts the memory share of these events without error."""
    return float(np.sort(values)[max(int(memory.sum()) - 1, 0)]) if values.size else np.nan


def split_tube(gating, kinds: np.ndarray, truth: dict[str, tuple[str, set[str]]]) -> dict:
    """The memory Treg error of one gated tube, split into threshold and upstream parts."""
    treg_types, memory_types = truth["treg"][1], truth["memory_treg"][1]
    cd45ra = gating.space["CD45RA"]
    cut = next(g.gate for g in gating.gates if g.name == "t_cd45ra")
    assert isinstance(cut, ThresholdMark)
    true_treg = np.isin(kinds, sorted(treg_types))
    true_memory = np.isin(kinds, sorted(memory_types))
    gated = gating.masks["treg"]
    below = cd45ra < cut.value
    true_pct = 100 * true_memory.sum() / true_treg.sum()
    on_true = 100 * (true_treg & below).sum() / true_treg.sum()
    gated_pct = 100 * (gated & below).sum() / gated.sum()
    row = {
        "t_cd45ra": cut.value,
        "unbiased_cut": unbiased_cut(cd45ra[true_treg], true_memory[true_treg]),
        "true_pct": true_pct,
        "error": gated_pct - true_pct,
        "threshold": on_true - true_pct,
        "memory_called_naive": -100 * (true_memory & ~below).sum() / true_treg.sum(),
        "naive_called_memory": 100 * (true_treg & ~true_memory & below).sum() / true_treg.sum(),
        "upstream": gated_pct - on_true,
        "gated_true_treg_share": (gated & true_treg).sum() / gated.sum(),
    }
    # The cells in the gate that are not Tregs, by type and by side of the cut.
    for kind in sorted(set(kinds[gated & ~true_treg])):
        inside = gated & (kinds == kind)
        row[f"in_gate_{kind}_below"] = int((inside & below).sum())
        row[f"in_gate_{kind}_above"] = int((inside & ~below).sum())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, required=True)
    parser.add_argument("--simulator", choices=sorted(TRUTH), default="second_site")
    parser.add_argument("--files", type=int, default=12)
    args = parser.parse_args()
    study = Study(args.study)
    truth = TRUTH[args.simulator]
    rows = []
    for path in study.inbox_files():
        name = study.parse_name(path.name)
        if "memory_treg" not in truth.get(name.panel_token, {}):
            continue
        data = read_events(path)
        resolved = resolve_panel(study.panels[name.panel_token], data.header)
        gating = gate_sample(data, resolved, study.strategies[name.panel_token])
        stored = np.load(args.study / "truth" / f"{path.stem}.npz")
        kinds = stored["label_names"][stored["labels"]]
        rows.append(
            {"sample_id": name.sample_id, **split_tube(gating, kinds, truth[name.panel_token])}
        )
        if len(rows) >= args.files:
            break
    table = pd.DataFrame(rows).fillna(0)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 40)
    print(table.round(3).to_string(index=False))
    print("\nmedians:")
    print(table.drop(columns="sample_id").median().round(3).to_string())


if __name__ == "__main__":
    main()
