"""Marker resolution across the ways real files name channels."""

from __future__ import annotations

import numpy as np
import pytest

from gating.strategy import load_strategy
from panels.fcs import scan_header
from panels.resolve import PanelError, label_words, load_panel, resolve_panel
from simulate.fcs_writer import write_fcs


@pytest.mark.parametrize(
    ("label", "marker"),
    [
        ("CD19", "CD19"),
        ("CD19 PE-Cy7", "CD19"),
        ("PE-Cy7-CD19", "CD19"),
        ("CD19-PECy7", "CD19"),
        ("HLA-DR BV605", "HLADR"),
        ("HLADR", "HLADR"),
        ("igd fitc", "IGD"),
        ("IgD_FITC", "IGD"),
    ],
)
def test_label_offers_marker(label, marker):
    assert marker in label_words(label)


@pytest.mark.parametrize(
    ("label", "not_marker"), [("CD45RA", "CD45"), ("CD45", "CD4"), ("CD127", "CD12")]
)
def test_label_does_not_offer_a_prefix(label, not_marker):
    assert not_marker not in label_words(label)


def _header(tmp_path, pnn, pns):
    path = write_fcs(tmp_path / "h.fcs", np.ones((3, len(pnn))), pnn, pns)
    return scan_header(path)


SCATTER = ["FSC-A", "FSC-H", "SSC-A"]


def test_treg_panel_resolves_from_pns_with_vendor_detectors(tmp_path):
    pnn = [*SCATTER, "B2-A", "YG1-A", "B4-A", "YG5-A", "R1-A", "R3-A", "V7-A", "Time"]
    pns = [
        "",
        "",
        "",
        "CD45RA FITC",
        "PE-CD25",
        "CD4-PerCP",
        "CD127 PE-Cy7",
        "HLA-DR APC",
        "CD3",
        "CD45",
        "",
    ]
    resolved = resolve_panel(load_panel("treg"), _header(tmp_path, pnn, pns))
    assert resolved.marker_channels == {
        "CD45": "V7-A",
        "CD3": "R3-A",
        "CD4": "B4-A",
        "CD25": "YG1-A",
        "CD127": "YG5-A",
        "CD45RA": "B2-A",
        "HLA-DR": "R1-A",
    }
    assert resolved.time_channel == "Time"


def test_markers_only_in_pnn(tmp_path):
    pnn = [*SCATTER, "CD45", "CD19", "CD24", "CD38", "CD27", "IgD", "IgM", "Time"]
    resolved = resolve_panel(load_panel("bcell"), _header(tmp_path, pnn, [""] * len(pnn)))
    assert resolved.marker_channels["IgD"] == "IgD"


def test_a_missing_marker_loses_only_the_populations_that_use_it(tmp_path):
    pnn = [*SCATTER, "A", "B", "C", "D", "E", "F", "Time"]
    pns = ["", "", "", "CD45", "CD19", "CD24", "CD38", "CD27", "IgD", ""]
    resolved = resolve_panel(load_panel("bcell"), _header(tmp_path, pnn, pns))
    assert resolved.missing == ("IgM",)
    lost = load_strategy("bcell").not_measurable(resolved.missing)
    # IgM splits memory B cells; every other population is still measured.
    assert lost == {"igm_memory_b": ("IgM",), "switched_memory_b": ("IgM",)}


def test_a_tube_with_none_of_the_panel_markers_is_refused(tmp_path):
    pnn = [*SCATTER, "A", "B", "Time"]
    with pytest.raises(PanelError) as err:
        resolve_panel(load_panel("bcell"), _header(tmp_path, pnn, ["", "", "", "CD3", "CD4", ""]))
    assert "none of its markers" in err.value.reason
    assert "A=CD3" in err.value.reason  # lists what the file has


def test_area_channel_is_chosen_when_height_and_width_share_its_label(tmp_path):
    pnn = ["FSC-A", "FSC-W", "SSC-A", "PE-A", "PE-H", "Time"]
    pns = ["", "", "", "CD3", "CD3", ""]
    resolved = resolve_panel(load_panel("treg"), _header(tmp_path, pnn, pns))
    assert resolved.marker_channels == {"CD3": "PE-A"}
    assert "FSC-H" not in resolved.scatter_channels and resolved.scatter_channels["FSC-W"]


def test_ambiguous_marker_is_named(tmp_path):
    pnn = [*SCATTER, "A", "B", "C", "D", "E", "F", "G", "H", "Time"]
    pns = ["", "", "", "CD45", "CD19", "CD24", "CD38", "CD27", "IgD", "IgM", "CD19 BV711", ""]
    with pytest.raises(PanelError, match="ambiguous marker.*CD19"):
        resolve_panel(load_panel("bcell"), _header(tmp_path, pnn, pns))
