"""Immunomonitoring statistics: each visit against baseline, per group, population, measure."""

from __future__ import annotations

import pandas as pd

from stats.tests import STATISTICS_COLUMNS, benjamini_hochberg, paired_wilcoxon

MEASURES = ("pct_parent", "pct_lymphocytes", "cells_per_ul")
GROUPS = ("all", "child", "adult")


def wilcoxon_vs_baseline(
    populations: pd.DataFrame,
    groups: dict[str, str],
    baseline: str,
    visits: list[str],
) -> pd.DataFrame:
    """Paired Wilcoxon signed-rank tests of each visit against baseline.

    ``populations`` is the populations table; ``groups`` maps patient_id to 'child'/'adult'
    (patients missing from it are left out). Pairs are the patients with both the baseline and
    the visit. The Benjamini-Hochberg family is all tests of one group and one measure.
    """
    rows = []
    data = populations[populations.patient_id.isin(groups)].copy()
    data["group"] = data.patient_id.map(groups)
    for group in GROUPS:
        in_group = data if group == "all" else data[data.group == group]
        for measure in MEASURES:
            family = []
            for (panel, population), block in in_group.groupby(["panel", "population"], sort=False):
                if population == "lymphocytes" and measure == "pct_lymphocytes":
                    continue  # 100% by definition
                wide = block.pivot_table(
                    index="patient_id", columns="visit", values=measure, aggfunc="first"
                )
                if baseline not in wide:
                    continue
                for visit in visits:
                    if visit == baseline or visit not in wide:
                        continue
                    pair = wide[[baseline, visit]].dropna()
                    if pair.empty:
                        continue
                    res = paired_wilcoxon(pair[baseline].to_numpy(), pair[visit].to_numpy())
                    family.append(
                        {
                            "analysis": "wilcoxon_vs_baseline",
                            "group": group,
                            "population": population,
                            "measure": measure,
                            "visit": visit,
                            "n": res.n,
                            "statistic": res.statistic,
                            "p_value": res.p_value,
                            "effect": res.effect,
                            "ci_low": float("nan"),
                            "ci_high": float("nan"),
                            "method": f"{res.method}; effect = median({visit} - {baseline}); "
                            f"BH over {group}/{measure}",
                            "panel": panel,
                        }
                    )
            adjusted = benjamini_hochberg([r["p_value"] for r in family])
            for r, p_adj in zip(family, adjusted, strict=True):
                r["p_adjusted"] = p_adj
            rows.extend(family)
    return pd.DataFrame(rows, columns=STATISTICS_COLUMNS)
