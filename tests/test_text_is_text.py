"""Identifiers from files, reasons and clinical data are printed as text, never parsed as
mathtext: a patient id, a review reason or a file name with '$\\foo$' or '$5 and $6' leaves the
report written and the text on the page as typed (issue 23)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from pypdf import PdfReader

from reports.figures import plt

ATTACKS = ("P$\\foo$", "$5 and $6")


def _page_text(path) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(path).pages)


def test_mathtext_never_parses_drawn_text():
    """The attack strings render (a parsed '$\\foo$' raises ParseFatalException) and are laid
    out as plain text: '$5 and $6' as wide as its characters, not as math."""
    fig = plt.figure()
    texts = [fig.text(0.1, 0.1 + 0.2 * k, s) for k, s in enumerate(ATTACKS)]
    fig.canvas.draw()
    for text in texts:
        assert not text._parse_math
    plt.close(fig)


def _context(**extra):
    from reports.context import ReportContext

    return ReportContext(
        study="S$\\foo$",
        visits=["BL", "M1"],
        baseline="BL",
        panels={"BCELL": "B cells"},
        strategy_hashes={"BCELL": "0" * 64},
        software="immunomon test",
        data_as_of="2026-12-01",
        clinical_cut="2026-11-30",
        **extra,
    )


def test_cohort_report_prints_ids_reasons_and_file_names_literally(tmp_path):
    from reports.cohort_report import (
        _appendix,
        _completeness_page,
        _text_pages,
        _title_page,
        write_cohort_report,
    )

    samples = pd.DataFrame(
        {
            "file": ["P$\\foo$_BL_BCELL.fcs", "P02_M1_BCELL.fcs"],
            "sample_id": ["P$\\foo$_BL_BCELL", "P02_M1_BCELL"],
            "patient_id": ["P$\\foo$", "P02"],
            "visit": ["BL", "M1"],
            "panel": ["BCELL", "BCELL"],
            "status": ["processed", "quarantined"],
            "reason": ["", "costs $5 and $6 to fix"],
            "qc_flags": ["", ""],
            "sha256": ["a" * 64, "b" * 64],
        }
    )
    ctx = _context(
        unknown_patients=["P$\\foo$"], review_lines=["#3 reviewer: why: $5 and $6 \\alpha"]
    )
    sections = [
        lambda pdf: _title_page(pdf, ctx=ctx, samples=samples, monitor=None),
        lambda pdf: _completeness_page(pdf, ctx=ctx, samples=samples),
        lambda pdf: _appendix(pdf, samples=samples),
        lambda pdf: _text_pages(pdf, "Review and sign-off", ctx.review_lines),
    ]
    path = write_cohort_report(tmp_path / "r.pdf", ctx, [(0.1, s) for s in sections])
    text = _page_text(path)
    assert "P$\\foo$_BL_BCELL.fcs" in text
    assert "costs $5 and $6 to fix" in text
    assert "$5 and $6 \\alpha" in text
    assert "P$\\foo$" in text.split("Data completeness")[1]  # the grid's patient label


def test_sample_qc_pdf_prints_its_file_name_and_flags_literally(tmp_path):
    from gating.gates import RectangleGate
    from gating.records import AppliedGate
    from reports.qc_report import write_sample_qc_report

    rng = np.random.default_rng(0)
    dims = {"CD19": rng.random(500), "CD27": rng.random(500)}
    root = np.ones(500, bool)
    gate = RectangleGate(limits={"CD19": (0.5, None)})
    masks = {"root": root, "b$\\foo$": dims["CD19"] >= 0.5}
    applied = AppliedGate(name="b$\\foo$", parent="root", gate=gate, from_data=True, note="")
    path = write_sample_qc_report(
        tmp_path / "qc.pdf",
        sample_id="P$\\foo$_BL_BCELL",
        file_name="P$\\foo$_BL_BCELL.fcs",
        sha256="c" * 64,
        gates=[applied],
        masks=masks,
        dims=dims,
        data_channel=lambda name: dims[name],
        qc_steps=[{"name": "margin", "events_in": 500, "removed": 0, "detail": "$5 and $6"}],
        populations=[],
        flags=["reason:$\\foo$"],
    )
    text = _page_text(path)
    assert "P$\\foo$_BL_BCELL.fcs" in text
    assert "$5 and $6" in text
    assert "reason:$\\foo$" in text
    assert "b$\\foo$" in PdfReader(path).pages[1].extract_text()  # the gate panel's title
