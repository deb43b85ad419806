"""How heavy are a marker's tails on real files, towards bright and towards dim?

    .venv/bin/python -m bench.marker_tails [--realdata ../shared/realdata]

On the 12 FlowJo-compensated ``flowatlas_tissues`` exports (LSRFortessa, logicle T = $PnR,
w 0.5, m 4.5, the pipeline's scale), per file and population: the share of its events beyond
3 (and 4) robust SDs of its median, on the side measured. Bright side of positive populations
(CD3, CD4, CD8 and CD45 above the marker's valley: nothing brighter lies beyond them), its
robust SD from the population's upper half; dim side of CD45 (every event of these pre-gated
files is a CD45+ leukocyte), from the upper half; and the bright side of a negative
population, CD19 of the CD3+ CD4+ T cells, from its lower half. For comparison, a normal law
puts 0.13% (0.003%) beyond 3 (4) SDs on one side, a t law with 4 degrees of freedom 1.5%
(0.6%). ``simulate.real_shaped`` draws its B-cell markers' spreads from these numbers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from gating.adaptive import density_valleys
from gating.transforms import Logicle
from panels.fcs import read_events

HERE = Path(__file__).resolve().parent
MIN_EVENTS = 1000  # a population smaller than this gives no 0.1%-level share


def _logicle(data, pns: str) -> np.ndarray | None:
    """The first channel whose $PnS starts with ``pns``, on the pipeline's logicle scale."""
    h = data.header
    for label, channel in zip(h.pns, h.pnn, strict=True):
        if label and label.split("-")[0] == pns:
            scale = Logicle(h.pnr[h.pnn.index(channel)], 0.5, 4.5, 0.0)
            return scale.exact(data.channel(channel).astype(np.float64))
    return None


def _positive(values: np.ndarray) -> np.ndarray:
    """A positive population: above the marker's deepest valley between 0.25 and 0.75."""
    return values >= density_valleys(values, (0.25, 0.75)).place(0.4, 0.5).value


def tail_shares(values: np.ndarray, side: str, spread_from: str) -> dict[str, float]:
    """Percent of ``values`` beyond 3 and 4 robust SDs of their median on ``side`` (bright,
    dim), the robust SD from the ``spread_from`` half (upper, lower)."""
    median = float(np.median(values))
    half = values[values >= median] if spread_from == "upper" else values[values <= median]
    robust_sd = 1.4826 * float(np.median(np.abs(half - median)))
    sign = 1 if side == "bright" else -1
    beyond = sign * (values - median) / robust_sd
    return {
        "beyond_3": 100 * float(np.mean(beyond > 3)),
        "beyond_4": 100 * float(np.mean(beyond > 4)),
    }


def measure(folder: Path) -> pd.DataFrame:
    rows = []
    for path in sorted((folder / "fcs").glob("*.fcs")):
        data = read_events(path)
        markers = {m: _logicle(data, m) for m in ("CD3", "CD4", "CD8", "CD45", "CD19")}

        def add(what: str, values: np.ndarray, side: str, spread_from: str, path=path) -> None:
            if values.size >= MIN_EVENTS:
                shares = tail_shares(values, side, spread_from)
                rows.append(
                    {"file": path.stem, "population": what, "events": values.size, **shares}
                )

        for marker in ("CD3", "CD4", "CD8", "CD45"):
            if markers[marker] is not None:
                values = markers[marker]
                add(f"{marker}+ bright side", values[_positive(values)], "bright", "upper")
        if markers["CD45"] is not None:
            add("CD45 dim side", markers["CD45"], "dim", "upper")
        if markers["CD19"] is not None and markers["CD3"] is not None:
            t_cd4 = _positive(markers["CD3"]) & _positive(markers["CD4"])
            add("CD19 of CD4 T (negative), bright side", markers["CD19"][t_cd4], "bright", "lower")
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realdata", type=Path, default=HERE.parent.parent / "shared" / "realdata")
    args = parser.parse_args()
    table = measure(args.realdata / "flowatlas_tissues")
    summary = table.groupby("population").agg(
        files=("file", "size"),
        beyond_3_min=("beyond_3", "min"),
        beyond_3_median=("beyond_3", "median"),
        beyond_3_max=("beyond_3", "max"),
        beyond_4_max=("beyond_4", "max"),
    )
    print(summary.round(2).to_string())


if __name__ == "__main__":
    main()
