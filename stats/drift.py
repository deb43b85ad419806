"""Gate-drift QC: a threshold, a population's share or a marker's median that moves between a
patient's visits by more than the cohort's visit-to-visit spread allows. A mis-set instrument
or a misplaced gate shows as one visit off its patient's line."""

from __future__ import annotations

import numpy as np
import pandas as pd

DRIFT_Z = 3.5  # robust z beyond which a value is flagged (Iglewicz and Hoaglin's cut-off)
MAD_TO_SD = 1.4826


def drift_scores(values: pd.DataFrame, z_limit: float = DRIFT_Z) -> pd.DataFrame:
    """Per row of ``values`` (columns patient_id, visit, key, value): the move from the
    median of the patient's other visits of the same key, its robust z against the cohort's
    spread of such moves (1.4826 x median absolute move), and whether it is flagged.

    A value needs two other visits of its patient to be judged; keys whose moves have no
    spread (every patient flat) are judged against 1% of the key's typical value."""
    frame = values.dropna(subset=["value"]).copy()
    frame["move"] = np.nan
    for (_, _), block in frame.groupby(["patient_id", "key"], sort=False):
        if len(block) < 3:
            continue
        v = block.value.to_numpy(float)
        others = [np.median(np.delete(v, i)) for i in range(len(v))]
        frame.loc[block.index, "move"] = v - np.array(others)
    frame["spread"] = frame.groupby("key").move.transform(
        lambda m: MAD_TO_SD * np.nanmedian(np.abs(m)) if m.notna().any() else np.nan
    )
    floor = 0.01 * frame.groupby("key").value.transform(lambda v: np.nanmedian(np.abs(v)))
    frame["spread"] = np.maximum(frame.spread.fillna(0.0), floor.fillna(0.0))
    frame["z"] = frame.move / frame.spread.replace(0.0, np.nan)
    frame["flagged"] = frame.z.abs() > z_limit
    return frame


# A polygon's coordinates at these limits are where it was clipped to reach past the data
# (the cloud arm's far sides, ``gating.adaptive.place_cloud_arm``): they do not move with it.
POLYGON_SPAN = (-0.5, 1.5)


def polygon_edges(vertices: list[list[float]]) -> tuple[float | None, float | None]:
    """Where a data-placed polygon's straight edges lie on each axis: the coordinate of the
    vertices clipped to the span on the other axis only (the Treg arm's CD127 and CD25 limits,
    set by the CD4 cloud's centre and spreads, not by the diagonal cut between them, which
    follows a dip where there is one); None on an axis without such an edge."""
    lo, hi = POLYGON_SPAN

    def inside(v: float) -> bool:
        return lo < v < hi

    x_edge = [x for x, y in vertices if inside(x) and not inside(y)]
    y_edge = [y for x, y in vertices if inside(y) and not inside(x)]
    return (
        float(np.mean(x_edge)) if x_edge else None,
        float(np.mean(y_edge)) if y_edge else None,
    )


def placement_values(
    gates: pd.DataFrame, dimensions: dict[str, tuple[str, ...]] | None = None
) -> pd.DataFrame:
    """The gate positions drift is scored on, from recorded gates (columns sample_id,
    patient_id, visit, gate, kind, parameters as JSON): a threshold's value (key ``threshold
    NAME``) and a polygon's edge on each of its dimensions (key ``threshold NAME edge DIM``,
    ``dimensions`` naming the polygon's axes, else x and y), so that a Treg gate placed
    from an unstable cloud shows as one visit off its patient's line like a threshold."""
    import json

    rows = []
    for r in gates.itertuples():
        parameters = json.loads(r.parameters)
        where = (r.sample_id, r.patient_id, r.visit)
        if r.kind == "threshold":
            rows.append((*where, f"threshold {r.gate}", float(parameters["value"])))
        elif r.kind == "polygon":
            edges = polygon_edges(parameters["vertices"])
            axes = (dimensions or {}).get(r.gate, ("x", "y"))
            rows += [
                (*where, f"threshold {r.gate} edge {axis}", value)
                for axis, value in zip(axes, edges, strict=True)
                if value is not None
            ]
    return pd.DataFrame(rows, columns=["sample_id", "patient_id", "visit", "key", "value"])
