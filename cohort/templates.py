"""Expert study templates: a threshold a lab expert sets once for a panel, mapped to every
sample through the sample's own landmark (as FlowJo templates and CytoNorm-style registration
do).

The expert gives the value either on one reference sample (its own logicle scale) or on the
pooled aligned scale of the study reference (``immunomon reference build``: the samples shifted
so that their landmarks meet at the reference's median landmark). Either way it is stored as
an offset from the landmark, in the study reference file (``references/STRATEGY.yaml``), the
threshold's entry marked ``method: template`` with who set it, when, why and on what. Each
sample's threshold is then its own landmark plus that offset (``gating.pipeline``), exactly as
for a registered threshold; a per-sample correction stays a review override.

The offsets are part of every result's identity (``gating.registration.load_reference``): a
new or changed template re-gates the panel's samples on the next pass, their earlier results
kept, superseded. Setting one is an audited action (``template`` in the audit trail, with the
old and new offsets), and a later ``reference build`` keeps it (an expert's decision is not
overwritten by the automatic placement). The report's Methods name each template and who set
it (``template_methods_lines``).

Only thresholds with a landmark (``registration:`` in the strategy) can take a template: a
value must be carried to each sample through something each sample has.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from cohort.audit import AuditLog, anchors_path
from cohort.study import Study
from panels.errors import ImmunomonError

TEMPLATE_METHOD = "template"
AUDIT_ACTION = "template"
POOLED = "pooled"  # ``given_on`` of a value on the pooled aligned scale
_HEADER = (
    "# Study reference for registered thresholds, written by `immunomon reference build`\n"
    "# and `immunomon reference set` (expert templates: method: template).\n"
    "# Its content is part of every result's identity: editing it re-gates the panel.\n"
)


class TemplateError(ImmunomonError):
    """A template that cannot be set: the message names the panel, threshold or value."""


@dataclass(frozen=True)
class ExpertTemplate:
    """One threshold's expert template: each sample's threshold is its landmark + ``offset``."""

    panel: str
    strategy: str
    threshold: str
    offset: float
    value: float  # as the expert gave it
    given_on: str  # a sample id, or POOLED
    landmark: float  # of that sample, or the reference's median landmark
    set_by: str
    reason: str
    set_at: str


@dataclass(frozen=True)
class TemplateChange:
    """What ``set_template`` did: the template, the offset it replaced, the reference file and
    the audit entry's sequence number."""

    template: ExpertTemplate
    previous_offset: float | None
    previous_method: str
    path: Path
    audit_seq: int

    @property
    def regates(self) -> bool:
        """Whether the panel's samples are re-gated on the next pass (the offset changed)."""
        return self.previous_offset is None or not math.isclose(
            self.previous_offset, self.template.offset, abs_tol=1e-9
        )


def _base_strategy(study: Study, panel: str):
    """The panel's strategy as written (no reference applied) and its registered thresholds."""
    from gating.apply import load_panel_strategy
    from gating.registration import registered_thresholds
    from gating.strategy import Strategy

    if panel not in study.config.panels:
        raise TemplateError(
            f"{study.root / 'study.yaml'}: no panel {panel!r} (panels: "
            f"{', '.join(study.config.panels)})"
        )
    base = load_panel_strategy(study.panels[panel], study.root)
    if not isinstance(base, Strategy):
        raise TemplateError(
            f"panel {panel} is gated by the FlowJo workspace {base.source}: set its gates there"
        )
    return base, registered_thresholds(base)


def _read_document(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise TemplateError(
            f"{path}: not a usable study reference ({exc}); rebuild it with "
            "`immunomon reference build`"
        ) from None
    return doc if isinstance(doc, dict) else {}


def _stage_document(path: Path, doc: dict) -> Path:
    """Write ``doc`` beside ``path``; the caller puts it in place (``Path.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(_HEADER + yaml.safe_dump(doc, sort_keys=False))
    return tmp


def _write_document(path: Path, doc: dict) -> None:
    _stage_document(path, doc).replace(path)


def _template_of(panel: str, strategy: str, name: str, entry: dict) -> ExpertTemplate:
    t = entry["template"]
    return ExpertTemplate(
        panel,
        strategy,
        name,
        float(entry["offset"]),
        float(t["value"]),
        str(t["given_on"]),
        float(t["landmark"]),
        str(t["set_by"]),
        str(t["reason"]),
        str(t["set_at"]),
    )


def panel_templates(study: Study, panel: str) -> dict[str, ExpertTemplate]:
    """Threshold -> expert template in force for the panel (those of the strategy as it is
    now: a template set under another strategy version is not applied, like its reference)."""
    base, _ = _base_strategy(study, panel)
    path = study.reference_path(base.name)
    doc = _read_document(path)
    if doc.get("strategy_sha256") != base.sha256:
        return {}
    try:
        return {
            name: _template_of(panel, base.name, name, entry)
            for name, entry in (doc.get("thresholds") or {}).items()
            if isinstance(entry, dict) and entry.get("method") == TEMPLATE_METHOD
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise TemplateError(
            f"{path}: a template entry lacks {exc} (edited by hand?); set it again with "
            "`immunomon reference set`"
        ) from None


def _sample_landmark(study: Study, panel: str, base, threshold: str, sample_id: str) -> float:
    """The landmark of ``threshold`` in one sample, gated with the strategy as written (the
    same per-file gating as a pass, ``gating.apply.gate_file``)."""
    from gating.apply import gate_file
    from gating.registration import sample_landmarks

    paths = []
    for path in study.inbox_files():
        try:
            name = study.parse_name(path.name)
        except ImmunomonError:
            continue
        if isinstance(name, str):  # a misnamed file (parse_name says why): not this sample
            continue
        if name.sample_id == sample_id:
            paths.append(path)
    if not paths:
        raise TemplateError(f"no file of sample {sample_id!r} in {study.inbox}")
    if study.parse_name(paths[0].name).panel_token != panel:
        raise TemplateError(f"sample {sample_id} is not a {panel} sample")
    gating = gate_file(paths[0], study.panels[panel], base).gating
    found = sample_landmarks(base, gating).get(threshold)
    if found is None:
        raise TemplateError(
            f"{paths[0].name}: no landmark for {threshold} (too few events of "
            f"{base.thresholds[threshold].registration.landmark_within}, or no peak): "
            "choose another reference sample"
        )
    return found[0]


def set_template(
    study: Study,
    store,
    panel: str,
    threshold: str,
    value: float,
    *,
    who: str,
    reason: str,
    sample_id: str | None = None,
    software: str = "",
    source: dict | None = None,
) -> TemplateChange:
    """Set (or change) the expert template of ``threshold`` of ``panel``: ``value`` on the
    logicle scale of sample ``sample_id``, or, without one, on the pooled aligned scale of the
    panel's study reference. Stored as an offset from the landmark in the reference file and
    audited (``store``: cohort.store.Store, whose audit trail gets a ``template`` entry). The
    next pass re-gates the panel's samples. ``source``: where the value came from, recorded
    in the audit entry (a FlowJo workspace's name, sha256 and gate). The caller holds the
    study's lock if a pass may run (the CLI does)."""
    from gating.registration import load_reference

    if not who.strip():
        raise TemplateError("a template needs the name of the person setting it (--who)")
    if not reason.strip():
        raise TemplateError("a template needs a reason in words (--reason)")
    base, registered = _base_strategy(study, panel)
    if threshold not in base.thresholds:
        raise TemplateError(
            f"{base.source}: no threshold {threshold!r} (thresholds: {', '.join(base.thresholds)})"
        )
    if threshold not in registered:
        with_landmark = ", ".join(registered) or "none"
        raise TemplateError(
            f"{base.source}: threshold {threshold} has no landmark to map a template through "
            f"each sample (thresholds with one: {with_landmark}); give it "
            "'registration: {landmark_within: GATE, peak: high|low}' in the strategy"
        )
    spec = base.thresholds[threshold]
    if not math.isfinite(value):
        raise TemplateError(f"{threshold}: value {value} is not a number")
    low, high = spec.bounds
    if not low <= value <= high:
        raise TemplateError(
            f"{threshold}: value {value:.3f} is outside the strategy's bounds [{low}, {high}] "
            f"({base.source}); a sample whose landmark + offset falls outside them is placed "
            "from its own data instead"
        )
    path = study.reference_path(base.name)
    doc = _read_document(path)
    if doc and doc.get("strategy_sha256") != base.sha256:
        doc = {}  # built for another version of the strategy: not in force, start afresh
    entries = dict(doc.get("thresholds") or {})
    previous = entries.get(threshold) if isinstance(entries.get(threshold), dict) else None
    if sample_id:
        landmark = _sample_landmark(study, panel, base, threshold, sample_id)
        given_on = sample_id
    else:
        if previous is None:
            raise TemplateError(
                f"panel {panel}: {threshold} has no study reference yet, so there is no pooled "
                "aligned scale: give the value on a reference sample (--sample ID), or run "
                "`immunomon reference build` first"
            )
        landmark = float(previous["landmark_reference"])
        given_on = POOLED
    offset = round(value - landmark, 6)
    set_at = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    template = ExpertTemplate(
        panel,
        base.name,
        threshold,
        offset,
        round(float(value), 6),
        given_on,
        round(landmark, 6),
        who,
        reason,
        set_at,
    )
    entries[threshold] = _entry(template, previous)
    document = {
        "strategy": base.name,
        "strategy_sha256": base.sha256,
        "built_at": doc.get("built_at", ""),
        "software": doc.get("software", software),
        "thresholds": entries,
        "samples": list(doc.get("samples", [])),
    }
    before = load_reference(path, base) if path.is_file() else None
    staged = _stage_document(path, document)
    after = load_reference(staged, base)  # it must load as the pipeline will load it
    # Audited first, then put in force: no template applies without its audit entry.
    try:
        entry = AuditLog(store.conn, anchors=anchors_path(study.root)).append(
            who,
            AUDIT_ACTION,
            reason,
            software,
            detail={
                "panel": panel,
                "strategy": base.name,
                "threshold": threshold,
                "value": template.value,
                "given_on": given_on,
                "landmark": template.landmark,
                "old_offset": None if previous is None else float(previous["offset"]),
                "old_method": "" if previous is None else str(previous.get("method", "")),
                "new_offset": offset,
                "reference_sha256_old": before.sha256 if before else "",
                "reference_sha256_new": after.sha256 if after else "",
                **({"source": source} if source else {}),
            },
        )
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    staged.replace(path)
    return TemplateChange(
        template,
        None if previous is None else float(previous["offset"]),
        "" if previous is None else str(previous.get("method", "")),
        path,
        entry.seq,
    )


@dataclass(frozen=True)
class WorkspaceSeeding:
    """What ``seed_from_workspace`` did: the templates set, and every FlowJo gate or limit
    that did not become one, with the reason."""

    workspace: Path
    sha256: str
    sample_id: str  # the study sample the workspace's gates were read on
    changes: list[TemplateChange]
    not_used: list[tuple[str, str]]  # (FlowJo gate or threshold, why)


def seed_from_workspace(
    study: Study,
    store,
    panel: str,
    workspace: Path,
    *,
    who: str,
    reason: str,
    group: str = "All Samples",
    sample: str | None = None,
    software: str = "",
) -> WorkspaceSeeding:
    """Start the panel's study template from a lab's FlowJo workspace: its gates on one of
    its samples (``sample``, or the first of ``group``) are read with flowkit and mapped to
    the strategy's thresholds (``gating.workspace.workspace_limits``: rectangles named as our
    gates, by marker), each limit on that sample's own logicle scale. Each threshold with a
    landmark becomes an expert template given on that sample (``set_template``: audited,
    naming the workspace's file name, sha256 and gate), which every sample then adapts
    through its own landmark. The workspace's sample must be a file of the study's inbox (its
    landmark is measured on it). Nothing is set unless every value can be: gates and limits
    that give no template are returned with the reason, never silently dropped."""
    from cohort.intake import sha256_of
    from gating.workspace import workspace_limits, workspace_samples
    from panels.fcs import scan_header
    from panels.resolve import resolve_panel

    if not who.strip():
        raise TemplateError("a template needs the name of the person setting it (--who)")
    if not reason.strip():
        raise TemplateError("a template needs a reason in words (--reason)")
    workspace = Path(workspace)
    if not workspace.is_file():
        raise TemplateError(f"{workspace}: no such FlowJo workspace file")
    base, registered = _base_strategy(study, panel)
    files = {path.name: path for path in study.inbox_files()}
    if sample is None:  # the group's first sample that is a file of the study
        members = workspace_samples(workspace, group)
        sample = next((m for m in members if m in files), members[0] if members else None)
    path = files.get(sample or "")
    if path is None:
        raise TemplateError(
            f"{workspace}: its sample {sample!r} is not a file of {study.inbox}: the limits "
            "are read on a sample whose landmark can be measured; give --template-sample "
            "NAME (a file of the study that the workspace gates)"
        )
    name = study.parse_name(path.name)
    if isinstance(name, str) or name.panel_token != panel:
        raise TemplateError(f"{workspace}: sample {path.name} is not a {panel} sample")
    header = scan_header(path)
    resolved = resolve_panel(study.panels[panel], header)
    seed = workspace_limits(
        workspace, base, resolved, dict(zip(header.pnn, header.pnr, strict=True)), group, path.name
    )
    not_used = list(seed.unmapped)
    chosen = {}
    for threshold, limit in seed.limits.items():
        low, high = base.thresholds[threshold].bounds
        if threshold not in registered:
            not_used.append(
                (
                    f"{limit.gate} ({threshold} = {limit.value:.3f})",
                    f"{threshold} has no landmark to carry a template to each sample (only "
                    f"{', '.join(registered) or 'none'}); it stays placed per sample",
                )
            )
        elif not (math.isfinite(limit.value) and low <= limit.value <= high):
            not_used.append(
                (
                    f"{limit.gate} ({threshold} = {limit.value:.3f})",
                    f"outside the strategy's bounds [{low}, {high}] for {threshold}",
                )
            )
        else:
            chosen[threshold] = limit
    for threshold in registered:
        if threshold not in seed.limits:
            not_used.append((threshold, "no FlowJo rectangle of the workspace sets it"))
    if not chosen or len(chosen) < len([t for t in seed.limits if t in registered]):
        listed = "; ".join(f"{what}: {why}" for what, why in not_used)
        raise TemplateError(
            f"{workspace}: nothing set for panel {panel}: no usable limit of a threshold with a "
            f"landmark ({listed})"
        )
    sha256 = sha256_of(workspace)
    changes = [
        set_template(
            study,
            store,
            panel,
            threshold,
            round(limit.value, 6),
            who=who,
            reason=reason,
            sample_id=name.sample_id,
            software=software,
            source={
                "workspace": workspace.name,
                "workspace_sha256": sha256,
                "flowjo_sample": seed.sample,
                "flowjo_gate": limit.gate,
                "flowjo_channel": limit.channel,
                "flowjo_side": limit.side,
            },
        )
        for threshold, limit in chosen.items()
    ]
    return WorkspaceSeeding(workspace, sha256, name.sample_id, changes, not_used)


def _entry(template: ExpertTemplate, placed: dict | None) -> dict:
    """A template's entry in the reference file; the pooled scale (``landmark_reference``)
    and the counts of the automatic placement it replaces are kept where there was one."""
    placed = placed or {}
    return {
        "offset": template.offset,
        "landmark_reference": float(placed.get("landmark_reference", template.landmark)),
        "samples": int(placed.get("samples", 1)),
        "events": int(placed.get("events", 0)),
        "method": TEMPLATE_METHOD,
        "note": f"expert template set by {template.set_by} at {template.set_at}",
        "template": {
            "value": template.value,
            "given_on": template.given_on,
            "landmark": template.landmark,
            "set_by": template.set_by,
            "reason": template.reason,
            "set_at": template.set_at,
        },
    }


def keep_templates(path: Path, templates: dict[str, ExpertTemplate]) -> None:
    """Put ``templates`` back into a reference file just rebuilt (``reference build`` keeps an
    expert's decision rather than overwrite it with the automatic placement)."""
    if not templates:
        return
    doc = _read_document(path)
    entries = dict(doc.get("thresholds") or {})
    for name, template in templates.items():
        entries[name] = _entry(template, entries.get(name))
    doc["thresholds"] = entries
    _write_document(path, doc)


def template_methods_lines(study: Study) -> list[str]:
    """The report's Methods sentences naming each template in force and who set it."""
    lines = []
    for panel in study.config.panels:
        if study.panels[panel].uses_workspace:
            continue  # its gates are the workspace's
        try:
            templates = panel_templates(study, panel)
        except TemplateError as error:
            lines.append(f"{panel}: templates not readable: {error}")
            continue
        for t in templates.values():
            on = "the pooled aligned samples" if t.given_on == POOLED else f"sample {t.given_on}"
            lines.append(
                f"{panel} {t.threshold}: expert template set by {t.set_by} on {t.set_at[:10]} "
                f"({t.value:.3f} on {on}, landmark {t.landmark:.3f}): each sample's landmark "
                f"{t.offset:+.3f}. Reason: {t.reason}"
            )
    return lines
