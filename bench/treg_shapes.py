"""The Treg panel's shapes on the real FlowAtlas files beside the real-shaped simulator's truth.

    .venv/bin/python -m bench.treg_shapes [--realdata ../shared/realdata] [--tubes 6]
        [--events 20000] [--seed 7]

Both sides go through the same pipeline (``gate_sample``, the built-in Treg strategy) and are
measured on OUR CD4 T cells, against the Tregs of their truth: FlowJo's Foxp3+ CD127-low gate
on the real files (replayed by flowkit, ``bench.real_gating``), the simulator's labels on its
tubes. "Cloud-normalised" is the frame the ``treg`` polygon is built in: the CD4 cloud's
CD127 and CD25 peak and spread, measured on its CD127-high side
(``gating.adaptive.cloud_on_far_side``), so a Treg at z_CD127 -1, z_CD25 +2 lies one cloud
SD below the cloud's CD127 peak and two above its CD25 peak.

Per file: Treg % of CD4; the Tregs' CD127 and CD25 offsets (quartiles of z); the share of
Tregs CD25-low (z_CD25 below the polygon's 0.75 rise); the 25-NN ceiling F1 on CD127 x CD25
(``bench.real_gating.ceiling_f1``) and our gate's F1; the Tregs' CD45RA (median, share below
our ``t_cd45ra``) and HLA-DR (median, share above ``t_hladr``, and whether HLA-DR of memory
Tregs has two modes); the T cells' CD3 (median of T cells and of the other lymphocytes).
"""

from __future__ import annotations

import argparse
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from bench.real_gating import FOLDER, SCORED, ceiling_f1, f1_score, flowjo_memberships
from gating.adaptive import cloud_on_far_side, density_valleys, half_spread
from gating.gates import ThresholdMark
from gating.pipeline import gate_sample
from gating.strategy import load_strategy
from panels.fcs import read_events
from panels.resolve import load_panel, resolve_panel
from simulate import real_shaped

HERE = Path(__file__).resolve().parent
MIN_RISE = 0.75  # the treg polygon's CD25 rise (gating/strategies/treg.yaml)


def _quartiles(values: np.ndarray) -> tuple[float, float, float]:
    if values.size == 0:
        return (np.nan, np.nan, np.nan)
    q1, q2, q3 = np.percentile(values, [25, 50, 75])
    return float(q1), float(q2), float(q3)


def _modes(values: np.ndarray) -> int:
    """Density modes of ``values`` separated by a valley at least 20% deep (1 = unimodal)."""
    if values.size < 50:
        return 0
    lo, hi = np.percentile(values, [1, 99])
    valleys = density_valleys(values, (lo, hi), bandwidth=0.04, min_side_share=0.05)
    return 1 + sum(depth <= 0.8 for depth in valleys.depth.values())


def cd4_plane(gating, treg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CD127, CD25, CD45RA and HLA-DR of our CD4 T cells, and which are true Tregs (plots)."""
    cd4 = gating.masks["cd4_t"]
    points = np.column_stack([gating.space[m][cd4] for m in ("CD127", "CD25", "CD45RA", "HLA-DR")])
    return points, treg[cd4]


def shape_row(gating, treg: np.ndarray) -> dict[str, float]:
    """The Treg panel's shape statistics of one gated file, ``treg`` its true Tregs."""
    space, masks = gating.space, gating.masks
    cd4, lymph, t_cells = masks["cd4_t"], masks["lymphocytes"], masks["t_cells"]
    cd127, cd25 = space["CD127"], space["CD25"]
    cloud, problem = cloud_on_far_side(cd127[cd4], cd25[cd4], (-1, 1))
    true_treg = treg & cd4
    row: dict[str, float] = {
        "cd4_events": int(cd4.sum()),
        "treg_pct_cd4": 100.0 * true_treg.sum() / max(cd4.sum(), 1),
        "treg_f1": f1_score(masks["treg"], treg),
        "ceiling_f1": ceiling_f1(gating, treg),
    }
    if cloud is not None:
        x_peak, x_sd, y_peak, y_sd = cloud
        z127 = (cd127[true_treg] - x_peak) / x_sd
        z25 = (cd25[true_treg] - y_peak) / y_sd
        row.update(
            {
                "cloud_cd127": x_peak,
                "cloud_cd127_sd": x_sd,
                "cloud_cd25": y_peak,
                "cloud_cd25_sd": y_sd,
                **dict(zip(("z127_q1", "z127_med", "z127_q3"), _quartiles(z127), strict=True)),
                **dict(zip(("z25_q1", "z25_med", "z25_q3"), _quartiles(z25), strict=True)),
                "cd25_low_pct": 100.0 * float(np.mean(z25 < MIN_RISE)),
                # The cloud's spread on the side towards the arm (conventional CD4 cells).
                "cloud_cd127_low_sd": half_spread(
                    cd127[cd4 & ~treg][cd127[cd4 & ~treg] < x_peak], x_peak
                ),
                "cloud_cd25_low_sd": half_spread(
                    cd25[cd4 & ~treg & (cd127 >= x_peak)][
                        cd25[cd4 & ~treg & (cd127 >= x_peak)] < y_peak
                    ],
                    y_peak,
                ),
                "treg_cd127_med": float(np.median(cd127[true_treg])),
                "treg_cd25_med": float(np.median(cd25[true_treg])),
            }
        )
    marks = {g.name: g.gate for g in gating.gates if isinstance(g.gate, ThresholdMark)}
    cd45ra = space["CD45RA"]
    t45 = marks["t_cd45ra"]
    row.update(
        {
            "treg_cd45ra_med": float(np.median(cd45ra[true_treg])),
            "cd4_cd45ra_med": float(np.median(cd45ra[cd4])),
            "t_cd45ra": t45.value,
            "t_cd45ra_by": t45.method,
            "treg_memory_pct": 100.0 * float(np.mean(cd45ra[true_treg] < t45.value)),
        }
    )
    hladr = space["HLA-DR"]
    memory = true_treg & (cd45ra < t45.value)
    th = marks["t_hladr"]
    from gating.registration import landmark_peak

    band = landmark_peak(hladr[cd4 & ~treg], "low")
    row.update(
        {
            "cd4_hladr_band": band,
            "memtreg_hladr_above_band_pct": 100.0 * float(np.mean(hladr[memory] > band + 0.1))
            if memory.any() and band is not None
            else np.nan,
            "memtreg_hladr_med": float(np.median(hladr[memory])) if memory.any() else np.nan,
            "memtreg_hladr_p90": (
                float(np.percentile(hladr[memory], 90)) if memory.any() else np.nan
            ),
            "t_hladr": th.value,
            "t_hladr_by": th.method,
            "hladr_pos_pct_memtreg": 100.0 * float(np.mean(hladr[memory] >= th.value))
            if memory.any()
            else np.nan,
            "memtreg_hladr_modes": _modes(hladr[memory]),
        }
    )
    cd3 = space["CD3"]
    t3 = marks["t_cd3"]
    row.update(
        {
            "t_cd3": t3.value,
            "t_cd3_by": t3.method,
            "t_cd3_med": float(np.median(cd3[t_cells])),
            "non_t_cd3_med": float(np.median(cd3[lymph & ~t_cells])),
        }
    )
    return row


def real_rows(realdata: Path, planes: list) -> pd.DataFrame:
    """Shape rows of the six scored FlowAtlas files (FlowJo's Tregs as the truth); each
    file's ``cd4_plane`` is appended to ``planes``."""
    folder = realdata / FOLDER
    panel = replace(load_panel("treg"), enters_at="lymphocytes")
    strategy = load_strategy("treg")
    rows = []
    for name, theirs in flowjo_memberships(folder, SCORED).items():
        data = read_events(folder / "fcs" / name)
        gating = gate_sample(data, resolve_panel(panel, data.header), strategy)
        rows.append({"file": name.removesuffix(".fcs"), **shape_row(gating, theirs["Treg"])})
        planes.append(cd4_plane(gating, theirs["Treg"]))
    return pd.DataFrame(rows)


def simulated_rows(tubes: int, events: int, seed: int, scratch: Path, planes: list) -> pd.DataFrame:
    """Shape rows of ``tubes`` real-shaped Treg tubes (children and adults alternating); each
    tube's ``cd4_plane`` is appended to ``planes``."""
    panel, strategy = load_panel("treg"), load_strategy("treg")
    truth_types = sorted(real_shaped.TRUTH["TREG"]["treg"][1])
    rows = []
    for i in range(tubes):
        rng = np.random.default_rng([seed, i])
        shares = real_shaped.sample_shares("TREG", i % 2 == 0, rng)
        tube = real_shaped.simulate_tube("TREG", shares, events, rng)
        path = scratch / f"S{i:02d}_TREG.fcs"
        labels = real_shaped.write_tube(path, tube, path.stem, with_scatter=True)
        data = read_events(path)
        gating = gate_sample(data, resolve_panel(panel, data.header), strategy)
        treg = np.isin(np.array(real_shaped.LABEL_NAMES)[labels], truth_types)
        rows.append({"file": path.stem, **shape_row(gating, treg)})
        planes.append(cd4_plane(gating, treg))
    return pd.DataFrame(rows)


COLUMNS = [
    "file",
    "cd4_events",
    "treg_pct_cd4",
    "z127_q1",
    "z127_med",
    "z127_q3",
    "z25_q1",
    "z25_med",
    "z25_q3",
    "cd25_low_pct",
    "cloud_cd127_low_sd",
    "cloud_cd25_low_sd",
    "ceiling_f1",
    "treg_f1",
    "cloud_cd127",
    "cloud_cd127_sd",
    "cloud_cd25",
    "cloud_cd25_sd",
    "treg_cd127_med",
    "treg_cd25_med",
    "treg_cd45ra_med",
    "cd4_cd45ra_med",
    "t_cd45ra",
    "t_cd45ra_by",
    "treg_memory_pct",
    "cd4_hladr_band",
    "memtreg_hladr_above_band_pct",
    "memtreg_hladr_med",
    "memtreg_hladr_p90",
    "t_hladr",
    "t_hladr_by",
    "hladr_pos_pct_memtreg",
    "memtreg_hladr_modes",
    "t_cd3",
    "t_cd3_by",
    "t_cd3_med",
    "non_t_cd3_med",
]


def plot(folder: Path, names: list[str], planes: list) -> None:
    """Per file: CD127 x CD25 of our CD4 T cells with the true Tregs in red, CD25 and CD127
    densities of the cloud and the Tregs, and HLA-DR x CD45RA of the Tregs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(planes), 4, figsize=(13, 2.6 * len(planes)), squeeze=False)
    grid = np.linspace(-0.2, 1.0, 121)
    for row, name, (points, treg) in zip(axes, names, planes, strict=True):
        cloud = ~treg
        row[0].scatter(points[cloud, 0], points[cloud, 1], s=1, color="0.6", alpha=0.3)
        row[0].scatter(points[treg, 0], points[treg, 1], s=2, color="tab:red", alpha=0.6)
        row[0].set(xlim=(0, 1), ylim=(-0.1, 1), xlabel="CD127", ylabel="CD25")
        row[0].set_title(name, fontsize=8)
        for k, marker in ((1, "CD25"), (2, "CD127")):
            col = 1 if marker == "CD25" else 0
            for part, colour in ((cloud, "0.4"), (treg, "tab:red")):
                hist, _ = np.histogram(points[part, col], bins=grid, density=True)
                row[k].plot(grid[:-1], hist, color=colour)
            row[k].set(xlabel=marker)
        row[3].scatter(points[treg, 2], points[treg, 3], s=2, color="tab:red", alpha=0.6)
        row[3].scatter(points[cloud, 2], points[cloud, 3], s=1, color="0.6", alpha=0.1)
        row[3].set(xlim=(-0.1, 1), ylim=(-0.1, 1), xlabel="CD45RA", ylabel="HLA-DR")
    fig.tight_layout()
    fig.savefig(folder / "treg_shapes.png", dpi=60)
    plt.close(fig)


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realdata", type=Path, default=HERE.parent.parent / "shared/realdata")
    parser.add_argument("--tubes", type=int, default=6)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--plots", type=Path, default=None, help="write PNGs here")
    parser.add_argument("--no-real", action="store_true", help="the simulator's side only")
    args = parser.parse_args()
    frames, planes = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not args.no_real:
            frames.append(real_rows(args.realdata, planes).assign(source="real"))
        with tempfile.TemporaryDirectory() as scratch:
            frames.append(
                simulated_rows(args.tubes, args.events, args.seed, Path(scratch), planes).assign(
                    source="real_shaped"
                )
            )
    table = pd.concat(frames, ignore_index=True)
    if args.plots is not None:
        plot(args.plots, list(table.file), planes)
    with pd.option_context("display.width", 250, "display.max_columns", 40):
        for source, part in table.groupby("source", sort=False):
            print(f"\n## {source}")
            print(part[COLUMNS].round(3).T.to_string(header=False))
        numeric = table.select_dtypes("number").columns
        print("\n## medians")
        print(table.groupby("source", sort=False)[list(numeric)].median().round(3).T.to_string())


if __name__ == "__main__":
    main()
