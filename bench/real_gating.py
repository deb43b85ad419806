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
cross-validated; a diagnostic, never used to gate) and ``lofo_*``, the same question asked
honestly (``leave_one_file_out``): a classifier learned from FlowJo's answers on the other
scored files, in each file's own cloud-normalised coordinates, scoring the held-out file.
FlowJo's T cells of the 412C, 423C and
428C files are gated inside ``non-B`` (CD19-): their CD3 shares its channel with IgD, so CD3+
alone also takes IgD+ B cells; the Treg panel's optional CD19 removes them where the tube
stains it, as FlowJo does.
FlowJo's CD4 gate is CD4+ CD8- on CD4 x CD8; every file here stains CD8, so ours is too (the
panel's optional CD8), and CD4 % of T is compared with FlowJo's CD4 % of its T cells.
``fj_cd4dp_pct_t`` is FlowJo's (CD4 + CD4+CD8+) % of T: what a tube without CD8 would count.
The scored files are those with at least 100 FlowJo Tregs.
With ``--plots``, each file's CD127 x CD25 of our CD4 T cells with our Treg polygon, FlowJo's
Tregs marked, and Foxp3 x CD127 with FlowJo's gate's events and ours (and, green, our gate
kind placed on CD127 x Foxp3: ``foxp3_*`` columns, a bench comparison only); and
``lofo_boundary.png``: each scored file in the cloud's normalised coordinates with the
boundary the leave-one-file-out classifier learned from the other files and our polygon.
"""

from __future__ import annotations

import argparse
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from gating.adaptive import place_cloud_arm
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


@dataclass(frozen=True)
class NormalisedCD4:
    """One file's CD4 T cells in the Treg gate's own coordinates: offsets from the CD4
    cloud's centre in its robust SDs, signed towards the arm (CD127 down, CD25 up), as
    ``gating.adaptive.place_cloud_arm`` measures them; FlowJo's Treg membership of them, and
    how many FlowJo Tregs lie outside our CD4 (misses for any gate inside it)."""

    z: np.ndarray  # (n, 2): CD127 fall, CD25 rise in SDs
    flowjo: np.ndarray
    flowjo_outside: int
    fj_treg_pct_cd4: float
    polygon: np.ndarray  # our Treg polygon in the same coordinates


def normalised_cd4(gating, treg_gate, theirs: dict[str, np.ndarray]) -> NormalisedCD4 | None:
    """``gating``'s CD4 T cells in the cloud's normalised coordinates (None where the cloud
    could not be measured: the default cloud is no file's own)."""
    cd4 = gating.masks["cd4_t"]
    x, y = gating.space["CD127"][cd4], gating.space["CD25"][cd4]
    spec = next(g for g in load_strategy("treg").gates if g.name == "treg")
    arm = place_cloud_arm(x, y, spec.default_cloud, direction=(-1, 1))
    if not arm.from_data:
        return None
    x_peak, x_sd, y_peak, y_sd = arm.cloud
    vertices = np.asarray(treg_gate.gate.vertices)
    return NormalisedCD4(
        np.column_stack([(x_peak - x) / x_sd, (y - y_peak) / y_sd]),
        theirs["Treg"][cd4],
        int(np.count_nonzero(theirs["Treg"] & ~cd4)),
        pct(theirs["Treg"], theirs["CD4"]),
        np.column_stack([(x_peak - vertices[:, 0]) / x_sd, (vertices[:, 1] - y_peak) / y_sd]),
    )


LOFO_NEIGHBOURS = 50
LOFO_EVENTS_PER_FILE = 3000  # each training file weighs the same
LOFO_CUTS = np.linspace(0.2, 0.7, 11)


def _lofo_classifier(files: list[NormalisedCD4], seed: int = 0):
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(seed)
    picks = [
        rng.choice(
            f.flowjo.size, LOFO_EVENTS_PER_FILE, replace=f.flowjo.size < LOFO_EVENTS_PER_FILE
        )
        for f in files
    ]
    return KNeighborsClassifier(LOFO_NEIGHBOURS).fit(
        np.vstack([f.z[i] for f, i in zip(files, picks, strict=True)]),
        np.concatenate([f.flowjo[i] for f, i in zip(files, picks, strict=True)]),
    )


def _f1_with_misses(predicted: np.ndarray, file: NormalisedCD4) -> float:
    both = int(np.count_nonzero(predicted & file.flowjo))
    return 2 * both / (predicted.sum() + file.flowjo.sum() + file.flowjo_outside)


def leave_one_file_out(files: dict[str, NormalisedCD4], seed: int = 0) -> pd.DataFrame:
    """Per file: what a CD127 x CD25 rule learned from FlowJo's answers on the OTHER files
    gives on it, in each file's cloud-normalised coordinates (the cloud_arm's own units). A
    50-nearest-neighbour classifier on the other files (each resampled to the same weight);
    its probability cut chosen on those files alone (leave-one-out among them, best median
    F1); then the held-out file's Treg % of CD4 and F1 (FlowJo's Tregs outside our CD4
    count as misses). ``lofo_best_cut_f1`` is the optimistic bound: the cut chosen on the
    held-out file itself. A diagnostic, never a gate."""
    rows = []
    for held, file in files.items():
        train = [f for name, f in files.items() if name != held]
        inner = np.zeros((len(train), LOFO_CUTS.size))
        for i, inner_held in enumerate(train):
            others = [f for j, f in enumerate(train) if j != i]
            share = _lofo_classifier(others, seed).predict_proba(inner_held.z)[:, 1]
            inner[i] = [_f1_with_misses(share >= cut, inner_held) for cut in LOFO_CUTS]
        cut = float(LOFO_CUTS[int(np.argmax(np.median(inner, axis=0)))])
        share = _lofo_classifier(train, seed).predict_proba(file.z)[:, 1]
        predicted = share >= cut
        rows.append(
            {
                "file": held,
                "lofo_cut": cut,
                "lofo_treg_pct_cd4": 100.0 * predicted.mean(),
                "lofo_f1": _f1_with_misses(predicted, file),
                "lofo_best_cut_f1": max(_f1_with_misses(share >= c, file) for c in LOFO_CUTS),
            }
        )
    return pd.DataFrame(rows)


FOXP3_CHANNEL = "FJComp-561 585_15-A"  # Foxp3 in the FlowAtlas tube (channels.csv)


def foxp3_logicle(gating) -> np.ndarray | None:
    """The file's Foxp3 on the logicle scale FlowJo's plane is drawn on (None where the
    tube has no Foxp3 channel); our panel has no Foxp3, so the pipeline never reads it."""
    if FOXP3_CHANNEL not in gating.space.data.header.pnn:
        return None
    from gating.transforms import Logicle

    raw = gating.space.data.channel(FOXP3_CHANNEL).astype(np.float64)
    return Logicle(262144.0, 0.5, 4.5, 0.0).exact(raw)


def foxp3_arm(gating):
    """Our Treg gate kind with FlowJo's marker: the strategy's ``treg`` cloud_arm, every
    limit as in the yaml, placed on CD127 x Foxp3 of our CD4 T cells instead of CD127 x
    CD25. Returns (its membership of all events, its polygon) or None without Foxp3. A
    bench comparison only: the trial panel stains no Foxp3."""
    fx = foxp3_logicle(gating)
    if fx is None:
        return None
    from flowutils.gating import points_in_polygon

    spec = next(g for g in load_strategy("treg").gates if g.name == "treg")
    cd4 = gating.masks["cd4_t"]
    x = gating.space["CD127"]
    arm = place_cloud_arm(
        x[cd4],
        fx[cd4],
        spec.default_cloud,
        direction=(-1, 1),
        min_rise=spec.min_rise,
        min_fall=spec.min_fall,
        min_distance=spec.min_distance,
        below_arm=spec.below_arm,
    )
    inside = np.zeros(cd4.size, bool)
    points = np.column_stack([x[cd4], fx[cd4]])
    inside[cd4] = points_in_polygon(np.asarray(arm.vertices), points).astype(bool)
    return inside, np.asarray(arm.vertices)


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
    rows, normalised = [], {}
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
                **foxp3_columns(gating, treg_fj),
                "treg_from_data": treg_gate.from_data,
                "treg_placement": treg_gate.note,
                "lymphocytes": int(masks["lymphocytes"].sum()),
                "needs_review": gating.needs_review,
                "flags": ";".join(gating.flags),
            }
        )
        if rows[-1]["fj_tregs"] >= MIN_FLOWJO_TREGS:
            file = normalised_cd4(gating, treg_gate, theirs)
            if file is not None:
                normalised[name] = file
        if plots is not None:
            plots.mkdir(parents=True, exist_ok=True)
            plot(plots / f"{Path(name).stem}_treg.png", name, gating, theirs)
    table = pd.DataFrame(rows)
    table["scored"] = table.fj_tregs >= MIN_FLOWJO_TREGS
    if len(normalised) >= 3:
        lofo = leave_one_file_out(normalised)
        table = table.merge(lofo, on="file", how="left")
        if plots is not None:
            plot_lofo(plots / "lofo_boundary.png", normalised, lofo)
    table["treg_error"] = table.treg_pct_cd4 - table.fj_treg_pct_cd4
    table["treg_allowed"] = np.maximum(1.5, 0.2 * table.fj_treg_pct_cd4)
    table["foxp3_within"] = (
        table.foxp3_treg_pct_cd4 - table.fj_treg_pct_cd4
    ).abs() <= table.treg_allowed
    if "lofo_f1" in table:
        table["lofo_within"] = (
            table.lofo_treg_pct_cd4 - table.fj_treg_pct_cd4
        ).abs() <= table.treg_allowed
    return table


def foxp3_columns(gating, treg_fj: np.ndarray) -> dict[str, float]:
    """Treg % of our CD4 and F1 of our gate kind placed on CD127 x Foxp3 (``foxp3_arm``)."""
    placed = foxp3_arm(gating)
    if placed is None:
        return {"foxp3_treg_pct_cd4": float("nan"), "foxp3_f1": float("nan")}
    inside, _ = placed
    return {
        "foxp3_treg_pct_cd4": pct(inside, gating.masks["cd4_t"]),
        "foxp3_f1": f1_score(inside, treg_fj),
    }


def plot_lofo(path: Path, files: dict[str, NormalisedCD4], lofo: pd.DataFrame) -> None:
    """Each scored file in the cloud's normalised coordinates: FlowJo's Tregs, the boundary
    the leave-one-file-out classifier learned from the other files (at its chosen cut), and
    our polygon."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cuts = lofo.set_index("file").lofo_cut
    grid_x, grid_y = np.meshgrid(np.linspace(-3, 7, 121), np.linspace(-3, 9, 145))
    grid = np.column_stack([grid_x.ravel(), grid_y.ravel()])
    columns = 3
    rows = -(-len(files) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.8 * rows), squeeze=False)
    for ax, (name, file) in zip(axes.ravel(), files.items(), strict=False):
        others = [f for n, f in files.items() if n != name]
        share = _lofo_classifier(others).predict_proba(grid)[:, 1].reshape(grid_x.shape)
        rest = ~file.flowjo
        ax.scatter(*file.z[rest].T, s=1, color="0.6", alpha=0.3, label="not FlowJo Treg")
        ax.scatter(*file.z[file.flowjo].T, s=2, color="tab:red", alpha=0.5, label="FlowJo Treg")
        ax.contour(grid_x, grid_y, share, [cuts[name]], colors="k", linewidths=1.2)
        ax.plot([], [], color="k", label=f"learned from the other files (cut {cuts[name]:.2f})")
        ax.fill(*file.polygon.T, fill=False, color="tab:blue", lw=1.4, label="our Treg gate")
        ax.set(xlim=(-3, 7), ylim=(-3, 9), xlabel="CD127 below the cloud (SD)")
        ax.set(ylabel="CD25 above the cloud (SD)")
        ax.set_title(Path(name).stem, fontsize=8)
        ax.legend(loc="upper left", fontsize=6, markerscale=4)
    for ax in axes.ravel()[len(files) :]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


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
    fx = foxp3_logicle(gating)
    if fx is not None:
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
        arm = foxp3_arm(gating)
        if arm is not None:  # our gate kind on this plane: CD127 is its x, Foxp3 its y
            inside, polygon = arm
            right.fill(polygon[:, 1], polygon[:, 0], fill=False, color="tab:green", lw=1.2)
            right.plot(
                [], [], color="tab:green", label=f"our gate kind on Foxp3 ({int(inside.sum())})"
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
        "lofo_treg_pct_cd4",
        "lofo_f1",
        "foxp3_treg_pct_cd4",
        "foxp3_f1",
        "fj_tregs_cd25_low_pct",
        "ours_not_fj_pct",
        "treg_from_data",
        "needs_review",
        "scored",
    ]
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(table[[c for c in columns if c in table]].round(2).to_string(index=False))
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
    if "lofo_f1" in table:
        lofo = table[table.scored & table.lofo_f1.notna()]
        print(
            f"leave-one-file-out CD127 x CD25 classifier (learned from FlowJo on the other "
            f"{len(lofo) - 1} files): Treg % within the target on {int(lofo.lofo_within.sum())}"
            f"/{len(lofo)}, median F1 {lofo.lofo_f1.median():.3f} (its cut chosen on the "
            f"held-out file itself: {lofo.lofo_best_cut_f1.median():.3f})"
        )
    print(
        "our gate kind on CD127 x Foxp3 (FlowJo's marker; the trial panel has none): Treg % "
        f"within the target on {int(scored.foxp3_within.sum())}/{len(scored)}, median F1 "
        f"{scored.foxp3_f1.median():.3f}"
    )
    placed = table.treg_placement.str.split(":").str[0].value_counts()
    print("Treg gate placed by: " + ", ".join(f"{k} {v}" for k, v in placed.items()))
    print(f"needs review: {int(table.needs_review.sum())} of {len(table)} files")
    for row in table.itertuples():
        print(f"{row.file}: {row.treg_placement}")
    # Why each file goes to a person: its flags (the review page lists the same).
    for row in table[table.needs_review].itertuples():
        print(f"{row.file} needs review; its flags: {row.flags}")


if __name__ == "__main__":
    main()
