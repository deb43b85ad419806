"""Work on one sample file as a plain function: read, gate, count, and the QC PDF if asked.

This is what the worker processes run (``flows.worker_pool``); it returns plain data for the
store and imports no Prefect.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict
from pathlib import Path

from cohort.store import SampleRecord, strategy_as_stored
from cohort.study import SampleName
from gating.apply import AnyStrategy, gate_file
from gating.pipeline import PIPELINE_VERSION
from gating.records import NEEDS_REVIEW
from panels.resolve import Panel


def worth_a_qc_report(flags: list[str]) -> bool:
    """With qc_reports 'flagged': samples that need review, or with too few events in a
    reported population."""
    return NEEDS_REVIEW in flags or any(f.startswith("low_count:") for f in flags)


def process_sample_file(
    path: str | Path,
    sha256: str,
    name: SampleName,
    panel: Panel,
    strategy: AnyStrategy,
    qc_report_dir: str | None = None,
    qc_reports: str = "none",
) -> SampleRecord:
    """Read, gate and count one file; returns plain data for the store (no store access).

    With ``qc_reports`` 'all' (or 'flagged' and the sample needs review) the sample's QC PDF is
    written to ``qc_report_dir`` while its events and masks are in memory (YAML strategies;
    a FlowJo workspace's gates are reviewed in FlowJo).
    """
    gated = gate_file(path, panel, strategy)
    gating, data = gated.gating, gated.data
    notes = data.header.notes if data is not None else []
    flags = list(gating.flags) + [f"reader:{note}" for note in notes]
    parent_of = {spec.name: spec.parent for spec in strategy.gates} if gating.not_measured else {}
    record = SampleRecord(
        sample_id=name.sample_id,
        sha256=sha256,
        patient_id=name.patient_id,
        visit=name.visit,
        panel=name.panel_token,
        events=gating.n_events,
        strategy_sha256=strategy.sha256,
        pipeline_version=PIPELINE_VERSION,
        populations=[
            {
                "population": p.population,
                "parent": p.parent,
                "count": p.count,
                "parent_count": p.parent_count,
            }
            for p in gating.populations
        ],
        qc_steps=[asdict(q) for q in gating.qc_steps],
        gates=[g.to_record() for g in gating.gates],
        flags=flags,
        not_measured=[
            {"population": name, "parent": parent_of[name], "missing_markers": "+".join(markers)}
            for name, markers in gating.not_measured.items()
        ],
        medians=[asdict(m) for m in gating.medians],
        **strategy_as_stored(strategy),
    )
    wanted = qc_reports == "all" or (qc_reports == "flagged" and worth_a_qc_report(flags))
    if qc_report_dir and wanted and data is not None:
        # Here, not at the top: a worker with qc_reports none never loads matplotlib.
        from reports.qc_report import write_sample_qc_report

        write_sample_qc_report(
            Path(qc_report_dir) / f"{name.sample_id}.pdf",
            sample_id=name.sample_id,
            file_name=Path(path).name,
            sha256=sha256,
            gates=gating.gates,
            masks=gating.masks,
            dims=gating.space,
            data_channel=data.channel,
            qc_steps=record.qc_steps,
            populations=record.populations,
            flags=flags,
            software=f"strategy {strategy.name} sha256 {strategy.sha256[:12]}",
        )
    return record


def process_sample_file_noting_warnings(*args, **kwargs) -> tuple[SampleRecord, list[str]]:
    """``process_sample_file``, with the warnings libraries raised meanwhile (each distinct
    one once) returned for the flow's log instead of printed on the worker's terminal."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        record = process_sample_file(*args, **kwargs)
    notes = dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught)
    return record, list(notes)
