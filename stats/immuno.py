"""Immunomonitoring statistics: each visit against baseline, per group, population, measure."""

from __future__ import annotations

import numpy as np
import pandas as pd

from stats.plan import AnalysisPlan
from stats.tests import STATISTICS_COLUMNS, benjamini_hochberg, paired_wilcoxon


def wilcoxon_vs_baseline(
    populations: pd.DataFrame,
    patient_groups: dict[str, str],
    baseline: str,
    visits: list[str],
    plan: AnalysisPlan,
) -> pd.DataFrame:
    """Paired Wilcoxon signed-rank tests of each visit against baseline, as ``plan`` declares.

    ``populations`` is the populations table; ``patient_groups`` maps patient_id to its
    patients.csv group (patients missing from it are left out). Pairs are the patients with
    both the baseline and the visit. Each row names its Benjamini-Hochberg ``family``.
    """
    rows = []
    data = populations[
        populations.patient_id.isin(patient_groups)
        & ~populations.population.isin(plan.not_endpoints)
    ]
    rule = plan.signed_rank.rule()
    for group in plan.groups:
        in_group = data[data.patient_id.isin(plan.members(group.name, patient_groups))]
        for measure in plan.measures:
            for (panel, population), block in in_group.groupby(["panel", "population"], sort=False):
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
                    res = paired_wilcoxon(pair[baseline].to_numpy(), pair[visit].to_numpy(), rule)
                    keys = {
                        "group": group.name,
                        "panel": panel,
                        "measure": measure,
                        "population": population,
                        "visit": visit,
                    }
                    rows.append(
                        {
                            "analysis": "wilcoxon_vs_baseline",
                            **keys,
                            "family": "wilcoxon:" + ":".join(keys[k] for k in plan.family),
                            "test": res.test,
                            "n": res.n,
                            "statistic": res.statistic,
                            "p_value": res.p_value,
                            "effect": res.effect,
                            "ci_low": res.ci_low,
                            "ci_high": res.ci_high,
                            "estimate_exists": bool(np.isfinite(res.effect)),
                            "flag": res.flag,
                            "primary": True,
                            "method": f"{res.method}; differences = {visit} - {baseline}",
                        }
                    )
    table = pd.DataFrame(rows, columns=STATISTICS_COLUMNS)
    if not table.empty:
        table["p_adjusted"] = table.groupby("family", sort=False).p_value.transform(
            lambda p: benjamini_hochberg(p.to_numpy())
        )
    return table
