"""Our Treg gating against FlowJo's expert gates on real human tissue files (FlowAtlas).

    .venv/bin/python -m bench.real_gating [--realdata ../shared/realdata] [--plots DIR]

``../shared/realdata/flowatlas_tissues`` holds 12 FlowJo-compensated exports of pre-gated
cells (no FSC/SSC/Time) from an LSRFortessa, and the FlowJo workspace that gated them. The
files run through the built-in Treg panel and strategy as they are: the panel declares that
they enter the gate tree at ``lymphocytes`` (the scatter steps are skipped and flagged; nothing
is added). flowkit replays the workspace (``Workspace('flowatlas.wsp', fcs_samples='fcs')``,
sample ids = ``$FIL``) for FlowJo's per-event membership.

Per file: our T cells, CD4 % of T and Treg % of CD4 beside FlowJo's, and the per-event F1 of
our Treg gate against FlowJo's Treg gate (drawn on Foxp3 x CD127; our panel has no Foxp3, so
CD25 stands in for it); where CD25 cannot stand in: the share of FlowJo's Tregs below our
polygon's CD25 edge and of our Tregs that FlowJo's Foxp3 gate excludes; and ``ceiling_f1``,
what any gate on CD127 x CD25 could reach (a classifier fitted to FlowJo's answer,
cross-validated; a diagnostic, never used to gate). FlowJo's T cells of the 412C, 423C and
428C files are gated inside ``non-B`` (CD19-): their CD3 shares its channel with IgD, so CD3+
alone also takes IgD+ B cells; the Treg panel's optional CD19 removes them where the tube
stains it, as FlowJo does.
FlowJo's CD4 gate is CD4+ CD8- on CD4 x CD8; every file here stains CD8, so ours is too (the
panel's optional CD8), and CD4 % of T is compared with FlowJo's CD4 % of its T cells.
``fj_cd4dp_pct_t`` is FlowJo's (CD4 + CD4+CD8+) % of T: what a tube without CD8 would count.
The scored files are those with at least 100 FlowJo Tregs.
With ``--plots``, each file's CD127 x CD25 of our CD4 T cells with our Treg polygon, FlowJo's
Tregs marked, and Foxp3 x CD127 with FlowJo's gate's events and ours.
"""

from __future__ import annotations

import argparse
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from gating.pipeline import gate_sample
from gating.strategy import load_strategy
from panels.fcs import read_events
from panels.resolve import load_panel, resolve_panel

HERE = Path(__file__).resolve().parent
FOLDER = "flowatlas_tissues"
MIN_FLOWJO_TREGS = 100
FLOWJO_GATES = ("T cells", "CD4", "CD4+ CD8+", "Treg")
# The files FlowJo gated at least MIN_FLOWJO_TREGS Tregs in (README of the folder).
SCORED = (
    "390C_Lung_029.fcs",
    "403C_donor_Lung_026.fcs",
    "412C_BM_032.fcs",
    "412C_mLN_026.fcs",
    "423_Donor_Lung_032.fcs",
    "428_Donor_Lung_029.fcs",
)


def flowjo_memberships(
    folder: Path, only: tuple[str, ...] | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """Per file: FlowJo's gates' event membership, as flowkit replays the workspace."""
    import flowkit as fk

    files = pd.read_csv(folder / "files.csv")
    if only is not None:
        files = files[files.file.isin(only)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        workspace = fk.Workspace(str(folder / "flowatlas.wsp"), fcs_samples=str(folder / "fcs"))
        out = {}
        for row in files.itertuples():
            workspace.analyze_samples(sample_id=row.FIL_keyword, use_mp=False)
            gates = {}
            for name, path in workspace.get_gate_ids(row.FIL_keyword):
                if name in FLOWJO_GATES:
                    gates[name] = workspace.get_gate_membership(row.FIL_keyword, name, path)
            out[row.file] = gates
    return out


def f1_score(ours: np.ndarray, theirs: np.ndarray) -> float:
    """Per-event F1 of one membership against another (NaN when both are empty)."""
    both = int(np.count_nonzero(ours & theirs))
    total = int(np.count_nonzero(ours) + np.count_nonzero(theirs))
    return 2 * both / total if total else float("nan")


def space_below(gating, treg_gate) -> np.ndarray:
    """Events below the Treg polygon's CD25 edge (``stats.drift.polygon_edges``)."""
    from stats.drift import polygon_edges

    _, cd25_edge = polygon_edges([list(v) for v in treg_gate.gate.vertices])
    return gating.space["CD25"] < cd25_edge


def ceiling_f1(
    gating,
    treg_fj: np.ndarray,
    seed: int = 0,
    *,
    within: str = "cd4_t",
    dims: tuple[str, str] = ("CD127", "CD25"),
) -> float:
    """The per-event F1 a gate on CD127 x CD25 alone could reach against FlowJo's Foxp3 gate
    in this file: a 25-nearest-neighbour classifier fitted to FlowJo's membership of our CD4
    T cells, cross-validated (5 folds), at its best probability cut. A diagnostic of what the
    panel allows, never a gate (our gating does not see FlowJo's answer). ``within`` and
    ``dims`` name another parent and plane, with any per-event truth as ``treg_fj``
    (``bench.transitional_ceiling``: transitional B on CD38 x CD24 of the CD27- B cells)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier

    cd4 = gating.masks[within]
    points = np.column_stack([gating.space[dims[0]][cd4], gating.space[dims[1]][cd4]])
    truth = treg_fj[cd4]
    if truth.sum() < 25:
        return float("nan")
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    share = cross_val_predict(
        KNeighborsClassifier(25), points, truth, cv=folds, method="predict_proba"
    )[:, 1]
    return max(f1_score(share >= cut, truth) for cut in np.linspace(0.2, 0.7, 11))


def pct(part: np.ndarray, whole: np.ndarray) -> float:
    n = int(np.count_nonzero(whole))
    return 100.0 * np.count_nonzero(part & whole) / n if n else float("nan")


def evaluate(
    folder: Path, plots: Path | None = None, only: tuple[str, ...] | None = None
) -> pd.DataFrame:
    """One row per file (``only``: those files): ours beside FlowJo's, how our Treg gate was
    placed, and the F1."""
    panel = replace(load_panel("treg"), enters_at="lymphocytes")
    strategy = load_strategy("treg")
    flowjo = flowjo_memberships(folder, only)
    rows = []
    for name, theirs in flowjo.items():
        data = read_events(folder / "fcs" / name)
        gating = gate_sample(data, resolve_panel(panel, data.header), strategy)
        masks = gating.masks
        t_ours, cd4_ours, treg_ours = masks["t_cells"], masks["cd4_t"], masks["treg"]
        t_fj, cd4_fj, treg_fj = theirs["T cells"], theirs["CD4"], theirs["Treg"]
        dp_fj = theirs["CD4+ CD8+"]
        treg_gate = next(g for g in gating.gates if g.name == "treg")
        rows.append(
            {
                "file": name,
                "events": data.header.n_events,
                "t_cells": int(t_ours.sum()),
                "fj_t_cells": int(t_fj.sum()),
                "t_cells_f1": f1_score(t_ours, t_fj),
                "cd4_pct_t": pct(cd4_ours, t_ours),
                "fj_cd4_pct_t": pct(cd4_fj, t_fj),
                "fj_cd4dp_pct_t": pct(cd4_fj | dp_fj, t_fj),
                "cd4_f1": f1_score(cd4_ours, cd4_fj),
                "treg_pct_cd4": pct(treg_ours, cd4_ours),
                "fj_treg_pct_cd4": pct(treg_fj, cd4_fj),
                "tregs": int(treg_ours.sum()),
                "fj_tregs": int(treg_fj.sum()),
                "treg_f1": f1_score(treg_ours, treg_fj),
                # Where CD25 cannot stand in for Foxp3: FlowJo's Tregs below our polygon's
                # CD25 edge (Foxp3+ CD25-low), and our Tregs FlowJo calls Foxp3-.
                "fj_tregs_cd25_low_pct": pct(space_below(gating, treg_gate), treg_fj & cd4_ours),
                "ours_not_fj_pct": pct(~treg_fj, treg_ours),
                "ceiling_f1": ceiling_f1(gating, treg_fj),
                "treg_from_data": treg_gate.from_data,
                "treg_placement": treg_gate.note,
                "lymphocytes": int(masks["lymphocytes"].sum()),
                "needs_review": gating.needs_review,
                "flags": ";".join(gating.flags),
            }
        )
        if plots is not None:
            plots.mkdir(parents=True, exist_ok=True)
            plot(plots / f"{Path(name).stem}_treg.png", name, gating, theirs)
    table = pd.DataFrame(rows)
    table["scored"] = table.fj_tregs >= MIN_FLOWJO_TREGS
    table["treg_error"] = table.treg_pct_cd4 - table.fj_treg_pct_cd4
    table["treg_allowed"] = np.maximum(1.5, 0.2 * table.fj_treg_pct_cd4)
    return table


def plot(path: Path, name: str, gating, theirs: dict[str, np.ndarray]) -> None:
    """CD127 x CD25 of our CD4 T cells with our Treg polygon and FlowJo's Tregs; beside it
    FlowJo's own plane (Foxp3 x CD127, channel 561 585/15) with both gates' events."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    space, masks = gating.space, gating.masks
    cd4, ours, fj = masks["cd4_t"], masks["treg"], theirs["Treg"]
    gate = next(g for g in gating.gates if g.name == "treg")
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4.2))
    x, y = space["CD127"], space["CD25"]
    rest = cd4 & ~fj
    left.scatter(x[rest], y[rest], s=1, color="0.6", alpha=0.35, label="our CD4, not FlowJo Treg")
    left.scatter(x[cd4 & fj], y[cd4 & fj], s=2, color="tab:red", alpha=0.6, label="FlowJo Treg")
    vertices = np.asarray(gate.gate.vertices)
    left.fill(vertices[:, 0], vertices[:, 1], fill=False, color="tab:blue", lw=1.4)
    left.plot([], [], color="tab:blue", label=f"our Treg gate ({int(ours.sum())})")
    left.set(xlim=(0, 1), ylim=(0, 1), xlabel="CD127 (logicle)", ylabel="CD25 (logicle)")
    left.legend(loc="lower left", fontsize=6, markerscale=4)
    left.set_title(f"{name}: our CD4 T ({int(cd4.sum())})", fontsize=8)
    foxp3 = next(
        (
            c
            for c, label in zip(space.data.header.pnn, space.data.header.pns, strict=True)
            if c == "FJComp-561 585_15-A"
        ),
        None,
    )
    if foxp3 is not None:
        from gating.transforms import Logicle

        fx = Logicle(262144.0, 0.5, 4.5, 0.0).exact(space.data.channel(foxp3).astype(np.float64))
        both = cd4 | theirs["CD4"]
        right.scatter(fx[both], x[both], s=1, color="0.6", alpha=0.35, label="CD4 (ours or FlowJo)")
        right.scatter(
            fx[fj],
            x[fj],
            s=6,
            facecolors="none",
            edgecolors="tab:red",
            lw=0.5,
            label=f"FlowJo Treg ({int(fj.sum())})",
        )
        right.scatter(
            fx[ours],
            x[ours],
            s=1,
            color="tab:blue",
            alpha=0.6,
            label=f"our Treg ({int(ours.sum())})",
        )
        right.set(xlim=(0, 1), ylim=(0, 1), xlabel="Foxp3 (logicle)", ylabel="CD127 (logicle)")
        right.legend(loc="lower left", fontsize=6, markerscale=4)
        right.set_title("FlowJo's plane: Foxp3 x CD127", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realdata", type=Path, default=HERE.parent.parent / "shared/realdata")
    parser.add_argument("--plots", type=Path, default=None)
    args = parser.parse_args()
    folder = args.realdata / FOLDER
    if not (folder / "flowatlas.wsp").is_file():
        raise SystemExit(f"no FlowAtlas workspace under {folder}")
    table = evaluate(folder, args.plots)
    columns = [
        "file",
        "t_cells",
        "fj_t_cells",
        "cd4_pct_t",
        "fj_cd4_pct_t",
        "cd4_f1",
        "treg_pct_cd4",
        "fj_treg_pct_cd4",
        "tregs",
        "fj_tregs",
        "treg_f1",
        "ceiling_f1",
        "fj_tregs_cd25_low_pct",
        "ours_not_fj_pct",
        "treg_from_data",
        "needs_review",
        "scored",
    ]
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(table[columns].round(2).to_string(index=False))
    scored = table[table.scored]
    within = (scored.treg_error.abs() <= scored.treg_allowed).sum()
    print(
        f"\nscored files (>= {MIN_FLOWJO_TREGS} FlowJo Tregs): {len(scored)}; Treg % of CD4 within "
        f"max(1.5, 20%) of FlowJo: {within}/{len(scored)}; median Treg F1 "
        f"{scored.treg_f1.median():.3f} (CD127 x CD25 ceiling {scored.ceiling_f1.median():.3f});"
        " CD4 % of T max abs difference from FlowJo's "
        f"{(scored.cd4_pct_t - scored.fj_cd4_pct_t).abs().max():.2f} points on the scored "
        f"files, {(table.cd4_pct_t - table.fj_cd4_pct_t).abs().max():.2f} on all"
    )
    placed = table.treg_placement.str.split(":").str[0].value_counts()
    print("Treg gate placed by: " + ", ".join(f"{k} {v}" for k, v in placed.items()))
    print(f"needs review: {int(table.needs_review.sum())} of {len(table)} files")
    for row in table.itertuples():
        print(f"{row.file}: {row.treg_placement}")


if __name__ == "__main__":
    main()
