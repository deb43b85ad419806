"""Statistics against published references, not against our own code."""

from __future__ import annotations

import numpy as np
import pandas as pd

from stats.immuno import wilcoxon_vs_baseline
from stats.tests import benjamini_hochberg, paired_wilcoxon

# Hollander & Wolfe (1973), p. 29: Hamilton depression scale factor IV, first (x) and second
# (y) visit; R's ?wilcox.test example. wilcox.test(x, y, paired = TRUE) gives V = 40 and
# two-sided exact p = 0.03906 (= 20/512: 10 of the 512 sign patterns are as extreme each side).
HW_X = [1.83, 0.50, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.30]
HW_Y = [0.878, 0.647, 0.598, 2.05, 1.06, 1.29, 1.06, 3.14, 1.29]


def test_wilcoxon_hollander_wolfe_reference():
    res = paired_wilcoxon(before=np.array(HW_X), after=np.array(HW_Y))
    assert res.n == 9
    assert abs(res.p_value - 20 / 512) < 1e-12
    assert res.statistic == 45 - 40  # scipy reports min(V+, V-); R reports V+ = 40
    assert "exact" in res.method
    assert abs(res.effect - np.median(np.array(HW_Y) - np.array(HW_X))) < 1e-12


def test_wilcoxon_with_zero_differences_names_method():
    res = paired_wilcoxon(np.array([1, 2, 3, 4, 5, 6.0]), np.array([1, 3, 5, 7, 9, 12.0]))
    assert "zero differences dropped" in res.method


def test_benjamini_hochberg_matches_hand_computation():
    # sorted p: 0.005, 0.01, 0.03, 0.04 -> x4/1, x4/2, x4/3, x4/4 -> 0.02, 0.02, 0.04, 0.04
    adjusted = benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.005, np.nan]))
    np.testing.assert_allclose(adjusted[:4], [0.02, 0.04, 0.04, 0.02])
    assert np.isnan(adjusted[4])


def test_wilcoxon_vs_baseline_pairs_only_patients_with_both_visits():
    rows = []
    for i, (bl, m1) in enumerate(zip(HW_X, HW_Y, strict=True)):
        for visit, value in (("BL", bl), ("M1", m1)):
            rows.append(
                {
                    "patient_id": f"P{i}",
                    "visit": visit,
                    "panel": "BCELL",
                    "population": "cd19_b",
                    "pct_parent": value,
                    "pct_lymphocytes": value,
                    "cells_per_ul": value,
                }
            )
    rows.append(
        {
            "patient_id": "P99",
            "visit": "M1",
            "panel": "BCELL",
            "population": "cd19_b",
            "pct_parent": 9.0,
            "pct_lymphocytes": 9.0,
            "cells_per_ul": 9.0,
        }
    )
    groups = {f"P{i}": ("child" if i < 5 else "adult") for i in range(9)} | {"P99": "child"}
    table = wilcoxon_vs_baseline(pd.DataFrame(rows), groups, "BL", ["BL", "M1"])
    everyone = table[(table.group == "all") & (table.measure == "pct_parent")].iloc[0]
    assert everyone.n == 9
    assert abs(everyone.p_value - 20 / 512) < 1e-12
    children = table[(table.group == "child") & (table.measure == "pct_parent")].iloc[0]
    assert children.n == 5
