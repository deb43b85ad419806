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
