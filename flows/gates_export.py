"""A study's current samples and their applied gates, exported for the lab's own tools.

``wsp``: one FlowJo 10 workspace (``gating.wsp_export``) with every current sample, sample
groups per panel, per visit and per review state, and the review state as keywords.
``gatingml``: a folder with one GatingML 2.0 file per sample (``gating.export``); GatingML
describes one gating, not a set of samples, so each sample has its own file, named by its id.

Orchestration only: the store says which samples are current and what gates they went through,
the gating package writes the files, and ``check_export`` reads them back with flowkit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from panels.errors import ImmunomonError

FORMATS = ("gatingml", "wsp")


class GateExportError(ImmunomonError):
    """A sample or an output the export cannot use; the message says which and what to do."""


@dataclass
class StudyExport:
    """What an export wrote, and what it left out with the reason."""

    path: Path  # the .wsp file, the GatingML folder or the one sample's GatingML file
    samples: list = field(default_factory=list)  # gating.wsp_export.WorkspaceSample
    files: dict[str, Path] = field(default_factory=dict)  # sample id -> file holding its gates
    skipped: dict[str, str] = field(default_factory=dict)  # sample id -> reason


def current_workspace_samples(study, store, sample_ids: list[str] | None = None):
    """Every current sample (or those of ``sample_ids``) with its file, gates, counts and
    review keywords; and the samples left out, with the reason (gated by a lab's FlowJo
    workspace, or a file changed since it was processed)."""
    from cohort.intake import sha256_of
    from cohort.review import current_review_states, override_text
    from gating.wsp_export import WorkspaceSample, gate_counts
    from panels.fcs import scan_header
    from panels.resolve import resolve_panel

    files = store.files_frame()
    current = files[files.status == "processed"].dropna(subset=["sample_id"])
    known = list(dict.fromkeys(current.sample_id))
    wanted = known if sample_ids is None else sample_ids
    unknown = [s for s in wanted if s not in known]
    if unknown:
        raise GateExportError(
            f"no processed sample {', '.join(unknown)} in {study.db_path}: "
            "give a sample id as results/samples.csv lists it"
        )
    states = current_review_states(study, store)
    samples, skipped = [], {}
    for sample_id in wanted:
        record = store.current_sample(sample_id)
        gates = store.applied_gates(record["sample_key"])
        if not gates:  # gated with a FlowJo workspace: the gates live in that workspace
            source = study.strategies[record["panel"]].source
            skipped[sample_id] = f"gated with the FlowJo workspace {source}"
            continue
        fcs_path = study.inbox / record["file_name"]
        if not fcs_path.is_file() or sha256_of(fcs_path) != record["sha256"]:
            skipped[sample_id] = (
                f"{fcs_path} is not the file that was processed (missing or replaced): "
                "run a pass, then export again"
            )
            continue
        header = scan_header(fcs_path)
        resolved = resolve_panel(study.panels[record["panel"]], header)
        state = states.get(sample_id)
        keywords = {
            "SAMPLE": sample_id,
            "PATIENT": record["patient_id"] or "",
            "VISIT": record["visit"] or "",
            "PANEL": record["panel"] or "",
            "REVIEW STATUS": state.status if state else "to_review",
            "OVERRIDDEN GATES": ";".join(
                f"{t}={o.value:g} by {o.who}: {o.reason}"
                if isinstance(o.value, float)
                else f"{t}={override_text(o.value)} by {o.who}: {o.reason}"
                for t, o in sorted((state.overrides if state else {}).items())
            ),
            "REVIEW DECIDED BY": state.decided_by if state else "",
            "REVIEW REASON": state.reason if state else "",
            "QC FLAGS": record["qc_flags"] or "",
            "STRATEGY SHA256": record["strategy_sha256"],
            "PIPELINE VERSION": record["pipeline_version"],
            "PROCESSED AT": record["processed_at"],
        }
        counts = gate_counts(gates, fcs_path, resolved)
        samples.append(
            WorkspaceSample(sample_id, fcs_path, header, resolved, gates, counts, keywords)
        )
    return samples, skipped


def sample_groups(study, samples) -> dict[str, list[str]]:
    """FlowJo groups: per panel and per visit (in study.yaml's order), per review state."""
    groups: dict[str, list[str]] = {}
    for title, keyword, order in (
        ("Panel", "PANEL", list(study.config.panels)),
        ("Visit", "VISIT", list(study.config.visits)),
        ("Review", "REVIEW STATUS", []),
    ):
        values = {s.keywords[keyword] for s in samples}
        ordered = [v for v in order if v in values] + sorted(values - set(order))
        for value in ordered:
            groups[f"{title} {value}"] = [
                s.sample_id for s in samples if s.keywords[keyword] == value
            ]
    return groups


def export_study_gates(
    study, store, fmt: str, out: Path | None = None, sample_ids: list[str] | None = None
) -> StudyExport:
    """Write the study's gates (or those of ``sample_ids``) as one FlowJo workspace (``wsp``)
    or a folder of GatingML files (``gatingml``; ``out`` ending in .xml with one sample: that
    file). The default place is ``STUDY/results/gates/``."""
    from gating.export import write_gatingml
    from gating.wsp_export import write_workspace

    if fmt not in FORMATS:
        raise GateExportError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    samples, skipped = current_workspace_samples(study, store, sample_ids)
    if not samples:
        reasons = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "no processed samples"
        raise GateExportError(f"nothing to export from {study.root} ({reasons})")
    gates_dir = study.results_dir / "gates"
    out = Path(out) if out else None
    if fmt == "wsp":
        path = out or gates_dir / f"{study.root.name}.wsp"
        if path.is_dir():
            raise GateExportError(f"--out {path} is a folder: give the .wsp file to write")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_workspace(path, samples, sample_groups(study, samples))
        return StudyExport(path, samples, {s.sample_id: path for s in samples}, skipped)
    if out is not None and out.suffix.lower() == ".xml" and not out.is_dir():
        if len(samples) != 1:
            raise GateExportError(
                f"--out {out} is one file but {len(samples)} samples are exported: "
                "give a folder (one GatingML file per sample)"
            )
        files = {samples[0].sample_id: out}
    else:
        folder = out or gates_dir / "gatingml"
        if folder.exists() and not folder.is_dir():
            raise GateExportError(f"--out {folder} is a file: give a folder for the GatingML files")
        files = {s.sample_id: folder / f"{s.sample_id}.xml" for s in samples}
    for sample in samples:
        target = files[sample.sample_id]
        target.parent.mkdir(parents=True, exist_ok=True)
        write_gatingml(target, sample.gates, sample.resolved, sample.header)
    path = out if out is not None else gates_dir / "gatingml"
    return StudyExport(path, samples, files, skipped)


# flowkit, like FlowJo, evaluates a FlowJo ellipse as a polygon of 128 vertices on the ellipse:
# the sliver between them holds 0.04% of the ellipse's area. The events there are in our
# ellipse and not in flowkit's, so every count under an ellipse may differ from ours by up to
# this share of the ellipse's events (at least 1); every other count must be equal.
ELLIPSE_TOLERANCE = 0.001


@dataclass(frozen=True)
class CountCheck:
    """One gate of one sample: our count, the one flowkit reads back, the difference allowed."""

    sample_id: str
    gate: str
    ours: int
    theirs: int | None
    allowed: int  # 0, or the ellipse sliver's share of the ellipse above this gate

    @property
    def agrees(self) -> bool:
        return self.theirs is not None and abs(self.theirs - self.ours) <= self.allowed


def _allowed_differences(sample) -> dict[str, int]:
    """Gate name -> events its count may differ by: the tolerance of the nearest ellipse at or
    above it, 0 with none."""
    parent_of = {g.name: g.parent for g in sample.gates}
    ellipses = {g.name for g in sample.gates if g.kind == "ellipse"}
    allowed = {}
    for g in sample.gates:
        name = g.name
        while name in parent_of and name not in ellipses:
            name = parent_of[name]
        allowed[g.name] = (
            max(1, math.ceil(ELLIPSE_TOLERANCE * sample.counts[name])) if name in ellipses else 0
        )
    return allowed


def _compare(sample, theirs: dict[str, int]) -> list[CountCheck]:
    allowed = _allowed_differences(sample)
    return [
        CountCheck(
            sample.sample_id, g.name, sample.counts[g.name], theirs.get(g.name), allowed[g.name]
        )
        for g in sample.gates
        if g.gate.selects_events
    ]


def check_export(export: StudyExport, fmt: str) -> list[CountCheck]:
    """Every gate of every exported sample, ours against flowkit's reading of the files written:
    the workspace through ``flowkit.Workspace``, each GatingML file through
    ``flowkit.parse_gating_xml`` applied to the sample's FCS file."""
    checks: list[CountCheck] = []
    if fmt == "wsp":
        from gating.wsp_export import read_workspace_counts

        read = {}
        for path in dict.fromkeys(export.files.values()):
            read.update(read_workspace_counts(path))
        for sample in export.samples:
            counts = read.get(sample.fcs_path.name, {})
            checks += _compare(sample, {name: n for (name, _), n in counts.items()})
    else:
        from gating.export import gatingml_counts

        for sample in export.samples:
            counts = gatingml_counts(export.files[sample.sample_id], sample.fcs_path)
            checks += _compare(sample, {name: n for (name, _), n in counts.items()})
    return checks
