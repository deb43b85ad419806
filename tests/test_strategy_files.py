"""Strategy and panel files: validated on load, with errors naming the file, key and remedy."""

from __future__ import annotations

import pytest

from gating.gates import GATE_KINDS, gate_from_record
from gating.strategy import QcSettings, StrategyError, load_strategy
from panels.resolve import PanelError, load_panel

GOOD_GATES = """gates:
  - {name: lymphocytes, parent: qc_passed, kind: rectangle, limits: {FSC-A: [0.1, null]}}
"""


def _strategy(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: s\nschedul: 1\n" + GOOD_GATES, r"schedul: unknown key .*name, version, qc"),
        (
            "name: s\nqc: {max_removed_share: 2}\n" + GOOD_GATES,
            r"max_removed_share: .*or equal to 1",
        ),
        (
            "name: s\nqc: {debris_fsc: {bounds: [0.2, 0.1], default: 0.15}}\n" + GOOD_GATES,
            r"qc.debris_fsc: .*bounds must be increasing",
        ),
        (
            "name: s\nthresholds: {t: {dimension: CD3, within: qc_passed, bounds: [0.3, 0.6], "
            "default: 0.9}}\n" + GOOD_GATES,
            r"thresholds.t: .*default 0.9 lies outside bounds",
        ),
        (
            "name: s\ngates:\n  - {name: a, parent: qc_passed, kind: rectangle, lmits: {}}\n",
            r"gates.0.rectangle.lmits: unknown key .*did you mean 'limits'",
        ),
        (
            "name: s\ngates:\n  - {name: a, parent: qc_passed, kind: blob}\n",
            r"gates.0: .*'rectangle', 'boolean', 'scatter_cluster'",
        ),
        (
            "name: s\ngates:\n  - {name: a, parent: cells, kind: rectangle, limits: {X: [1, 2]}}\n",
            r"gates.0 \('a'\): parent 'cells' is not defined above it",
        ),
        (
            "name: s\ngates:\n  - {name: a, parent: qc_passed, kind: rectangle, "
            "limits: {X: [t_x, null]}}\n",
            r"limits.X: unknown threshold 't_x'",
        ),
        (
            "name: s\nthresholds: {t: {dimension: CD3, within: qc_passed, bounds: [0.3, 0.6], "
            "default: 0.4, tail: {within: cd4}}}\n" + GOOD_GATES,
            r"thresholds.t.tail.within: unknown gate 'cd4'",
        ),
        (
            "name: s\nthresholds: {t: {dimension: IgD, within: qc_passed, bounds: [0.2, 0.6], "
            "default: 0.4, placement: skewed}}\n" + GOOD_GATES,
            r"thresholds.t.placement: .*'auto' or 'dim_tail_mixture'",
        ),
        ("name: s\ngates: [\n", r"s.yaml: line \d+ not valid YAML"),
    ],
)
def test_bad_strategy_files_name_the_key_and_what_is_allowed(tmp_path, text, message):
    path = _strategy(tmp_path, text)
    with pytest.raises(StrategyError, match=message) as caught:
        load_strategy(str(path))
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)  # one line


def test_defaults_are_stated_once_and_applied():
    strategy = load_strategy("bcell")
    assert strategy.qc == QcSettings()  # the built-in restates the defaults exactly
    assert strategy.thresholds["t_cd27"].within == "cd19_b"


def test_bad_panel_file_is_one_clear_line(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nmarkers: {CD3: [CD3]}\nlogicle: {w: 0.5, m: -1}\nstrategi: treg\n")
    with pytest.raises(PanelError) as caught:
        load_panel(str(path))
    text = str(caught.value)
    assert "logicle.m: Input should be greater than 0" in text
    assert "strategi: unknown key" in text and "did you mean 'strategy'" in text


@pytest.mark.parametrize("kind", sorted(GATE_KINDS))
def test_every_gate_kind_round_trips_through_its_stored_form(kind):
    examples = {
        "raw_range": (("FSC-A",), {"limits": {"FSC-A": [None, 262143.0]}}),
        "time_ranges": (("Time",), {"channel": "Time", "keep": [[0.0, 10.0], [12.0, None]]}),
        "rectangle": (("CD19",), {"limits": {"CD19": [0.45, None]}}),
        "polygon": (("FSC-A", "FSC-H"), {"vertices": [[0, 0], [1, 0], [1, 1]]}),
        "ellipse": (
            ("FSC-A", "SSC-A"),
            {"mean": [0.2, 0.1], "covariance": [[1e-3, 0], [0, 4e-4]], "distance_square": 9.2},
        ),
        "boolean": ((), {"op": "and", "refs": ["a", "not b"]}),
        "threshold": (("CD27",), {"value": 0.5, "bounds": [0.3, 0.6]}),
    }
    dimensions, parameters = examples[kind]
    gate = gate_from_record(kind, dimensions, parameters)
    again = gate_from_record(kind, gate.dimensions, gate.parameters())
    assert again == gate and gate.kind == kind


def test_a_population_is_defined_on_the_markers_of_the_gates_it_keeps():
    """Drift QC follows the medians of the markers a population is gated on; a boolean
    population takes those of the gates it keeps, not of those it excludes."""
    from gating.strategy import load_strategy

    bcell = load_strategy("bcell")
    assert bcell.defining_markers("transitional_b") == {"CD24", "CD27", "CD38"}
    assert bcell.defining_markers("naive_b") == {"CD27", "IgD"}  # not the tip's CD24/CD38
    assert bcell.defining_markers("lymphocytes") == set()  # scatter only
    assert load_strategy("treg").defining_markers("treg") == {"CD127", "CD25"}


def test_memory_b_split_among_the_memory_b_by_a_dim_tailed_mixture():
    """bcell v5: IgM memory and switched memory B are cut on IgD among the memory B (not all
    B, whose IgD cut serves the naive B), both cuts by the dim-tailed mixture, and the
    definitions the report prints say so."""
    strategy = load_strategy("bcell")
    assert strategy.version == 5
    memory = {t: strategy.thresholds[t] for t in ("t_igd_memory", "t_igm")}
    assert all(
        t.within == "memory_b" and t.placement == "dim_tail_mixture" for t in memory.values()
    )
    assert strategy.thresholds["t_igd"].placement == "auto"
    split = ("igm_memory_b", "switched_memory_b")
    limits = {g.name: g.limits for g in strategy.gates if g.name in split}
    assert limits["igm_memory_b"]["IgD"] == ("t_igd_memory", None)
    assert limits["switched_memory_b"]["IgD"] == (None, "t_igd_memory")
    lines = [line for line in strategy.definitions() if "t_igd_memory:" in line]
    assert lines and "dim-tailed mixture" in lines[0] and "among memory_b" in lines[0]
