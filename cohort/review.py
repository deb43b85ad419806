"""Review and sign-off: each sample's review state, derived from the audit trail, and the
actions a lab scientist takes on it (adjust a threshold, approve, exclude, undo).

The trail is the only record: a sample's state is what its entries, in order, leave once the
undone ones are set aside. An override is tied to the strategy it was made under; when that
strategy changes, the override is not applied and the sample goes back to review.

Approvals and exclusions are signatures. An action that changes one (an undo of it, an
adjustment made after it) must be signed too and names the entry it supersedes; an excluded
sample stays excluded until a signed decision (an approval, or the exclusion's signed undo)
says otherwise: adjusting it re-gates it but leaves it out of the statistics."""

from __future__ import annotations

import getpass
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

from cohort.audit import AuditEntry, AuditError, AuditLog, trail_mark, verify_study_trail
from cohort.templates import AUDIT_ACTION as TEMPLATE_ACTION
from gating.gates import MAX_DRAWN_VERTICES, EllipseGate, Gate, PolygonGate
from gating.strategy import override_from_record

REVIEW_STATES = ("to_review", "overridden", "approved", "excluded")
REVIEW_ACTIONS = ("override", "approve", "exclude", "undo")  # audit actions a person takes


@dataclass(frozen=True)
class Override:
    """A threshold set, or a gate (ellipse, polygon) drawn, by hand for one sample."""

    name: str  # the threshold's or the gate's
    value: float | Gate
    strategy_sha256: str  # the panel strategy (without overrides) it was made under
    seq: int
    who: str
    reason: str


@dataclass
class ReviewStatus:
    """A sample's review state: ``status`` one of REVIEW_STATES."""

    sample_id: str
    status: str = "to_review"
    overrides: dict[str, Override] = field(default_factory=dict)
    decided_by: str = ""
    decided_at: str = ""
    reason: str = ""
    decision_seq: int = 0  # the approval or exclusion in force (0: none)
    note: str = ""  # e.g. an override from an earlier strategy, not applied

    def applied_overrides(self, strategy_sha256: str) -> dict[str, float | Gate]:
        """Threshold -> value, gate -> drawn gate, of the overrides made under this strategy."""
        return {
            t: o.value for t, o in self.overrides.items() if o.strategy_sha256 == strategy_sha256
        }


def override_of(detail: dict) -> tuple[str, float | Gate]:
    """The threshold or gate an override entry sets, and its value as the pipeline takes it."""
    if "gate" in detail:
        return detail["gate"], override_from_record(detail["new"])
    return detail["threshold"], float(detail["new"])


def override_text(value: float | Gate | None) -> str:
    """An override's value as the pages, the trail and the export's keywords say it."""
    if value is None:
        return "?"
    if isinstance(value, EllipseGate):
        (x, y), (major, minor), angle = value.axes()
        return (
            f"ellipse at ({x:.3f}, {y:.3f}), semi-axes {major:.3f} x {minor:.3f}, {angle:.0f} deg"
        )
    if isinstance(value, PolygonGate):
        return "polygon " + " ".join(f"({x:.3f}, {y:.3f})" for x, y in value.vertices)
    if isinstance(value, Gate):
        return value.kind
    return f"{float(value):.3f}"


def _pair(value) -> tuple[float, float]:
    x, y = value
    return float(x), float(y)


def drawn_gate(placed: Gate, geometry: Mapping) -> Gate:
    """The gate a person drew in review over ``placed`` (same kind, same dimensions, on the
    scale it is evaluated on): an ellipse from ``centre``, ``axes`` (semi-axes) and ``angle``
    (degrees), its boundary at the placed ellipse's distance; a polygon from ``vertices``.
    Anything else, or a degenerate or out-of-scale shape, is an AuditError saying what."""
    try:
        if isinstance(placed, EllipseGate):
            gate: Gate = EllipseGate.from_axes(
                placed.dims,
                _pair(geometry["centre"]),
                _pair(geometry["axes"]),
                float(geometry["angle"]),
                placed.distance_square,
            )
        elif isinstance(placed, PolygonGate):
            vertices = geometry["vertices"]
            if len(vertices) > MAX_DRAWN_VERTICES:
                raise AuditError(
                    f"a polygon drawn in review has at most {MAX_DRAWN_VERTICES} vertices "
                    f"({len(vertices)} given)"
                )
            gate = PolygonGate(placed.dims, tuple(_pair(v) for v in vertices))
        else:
            raise AuditError(f"a {placed.kind} gate cannot be redrawn in review")
    except (KeyError, TypeError, ValueError) as exc:
        shape = "centre, axes, angle" if isinstance(placed, EllipseGate) else "vertices"
        raise AuditError(
            f"the drawn {placed.kind} is not usable ({type(exc).__name__}: {exc}); "
            f"give its {shape} as numbers"
        ) from None
    problem = gate.drawn_problem()
    if problem:
        raise AuditError(f"the drawn {placed.kind}: {problem}")
    return gate


def describe_override(detail: dict) -> str:
    """An override entry's change in words: ``t_cd19 0.512 -> 0.620``, or the gate's old and
    new ellipse or polygon."""
    name, new = override_of(detail)
    old = detail.get("old")
    if old is not None and "gate" in detail:
        old = override_from_record(old)
    elif isinstance(old, (int, float)):
        old = float(old)
    else:
        old = None
    return f"{name} {override_text(old)} -> {override_text(new)}"


def undone(entries: list[AuditEntry]) -> set[int]:
    """The sequence numbers of the entries an undo has reversed."""
    return {e.detail.get("undoes") for e in entries if e.action == "undo"}


def result_seal(sample_key: str, counts: Mapping[str, int]) -> dict:
    """What a decision signs: the result (``sample_key``: the file's content, the strategy
    with its overrides, the pipeline version) and a sha256 of its population counts, so an
    approval covers those numbers only, not a later re-gate or a hand-edited store."""
    # As text: a count edited by hand into something that is no number still seals (differently).
    text = json.dumps({str(k): str(v) for k, v in sorted(counts.items())}, sort_keys=True)
    return {"result": sample_key, "counts_sha256": hashlib.sha256(text.encode()).hexdigest()}


def current_seals(store) -> dict[str, dict]:
    """sample_id -> ``result_seal`` of its current result (``store``: cohort.store.Store)."""
    pops = store.current_populations()
    return {
        sample_id: result_seal(key, dict(zip(rows.population, rows["count"], strict=True)))
        for (sample_id, key), rows in pops.groupby(["sample_id", "sample_key"], sort=False)
    }


def current_review_states(
    study, store, trail: TrailVerdict | None = None
) -> dict[str, ReviewStatus]:
    """The review state of every sample with a current result, judged against its panel's
    current strategy and its current numbers (``study``: cohort.study.Study, ``store``:
    cohort.store.Store). ``trail``: the trail's verification made for this write, used while
    the trail is as it was verified (else it is verified here)."""
    files = store.files_frame()
    current = files[files.status == "processed"].dropna(subset=["sample_id"])
    strategy_of = {
        r.sample_id: study.strategies[r.panel].sha256
        for r in current.itertuples()
        if r.panel in study.strategies
    }
    states = review_states(AuditLog(store.conn).entries(), strategy_of, current_seals(store))
    problem = study_trail_verdict(study.root, store.conn, trail).problem
    for state in states.values():
        if problem and state.status == "approved":  # a signature the trail cannot vouch for
            state.status = "overridden" if state.overrides else "to_review"
            state.note = (
                f"the audit trail does not verify ({problem}): no approval is in force until "
                "`immunomon audit verify` passes"
            )
    return states


@dataclass(frozen=True)
class TrailVerdict:
    """The study's audit trail verified once for a write of the results and the report, and
    passed to each of its parts (recomputing the chain costs ~0.1 s per 1,000 entries).
    ``problem``: why the trail cannot be trusted, '' when it verifies; ``mark``: its row
    count and last row when it was verified (``trail_mark``)."""

    problem: str
    mark: tuple


def study_trail_verdict(study_root, conn, known: TrailVerdict | None = None) -> TrailVerdict:
    """``known`` while the trail is still as it was verified; else the study's trail verified
    now (its chain recomputed and checked against the study's anchor file)."""
    mark = trail_mark(conn)
    if known is not None and known.mark == mark:
        return known
    problems = verify_study_trail(conn, study_root).problems
    more = f" (and {len(problems) - 2} more)" if len(problems) > 2 else ""
    return TrailVerdict("; ".join(problems[:2]) + more, mark)


def trail_problem(study_root, conn) -> str:
    """Why the study's audit trail cannot be trusted as it stands (its chain recomputed and
    checked against the study's anchor file: an entry edited, deleted or added by hand), or
    '' when it verifies."""
    return study_trail_verdict(study_root, conn).problem


def _unsigned_numbers(made: AuditEntry, seal: dict | None) -> str:
    """Why an approval does not cover the sample's current numbers ('' when it does).
    Approvals written before they carried a seal cover whatever result is current."""
    signed = {k: made.detail[k] for k in ("result", "counts_sha256") if k in made.detail}
    if not signed or seal is None:
        return ""
    if signed.get("result") != seal["result"]:
        return (
            f"approval #{made.seq} by {made.who} was for another result: the sample has been "
            "re-gated since (a new strategy, study template or pipeline version, or a new file "
            "under its name), so these numbers are not signed: look again"
        )
    if signed.get("counts_sha256") != seal["counts_sha256"]:
        return (
            f"approval #{made.seq} by {made.who} was for other counts: the store's counts of "
            "this result differ from those approved (edited outside immunomon?), so these "
            "numbers are not signed: look again"
        )
    return ""


def review_states(
    entries: list[AuditEntry],
    strategy_of: dict[str, str] | None = None,
    seal_of: dict[str, dict] | None = None,
) -> dict[str, ReviewStatus]:
    """Each reviewed sample's state from the trail. ``strategy_of`` maps sample_id -> the
    current panel strategy's sha256: overrides made under another one are not applied and
    send the sample back to review. ``seal_of`` maps sample_id -> ``result_seal`` of its
    current result: an approval of another result, or of other counts, is not in force."""
    reversed_ = undone(entries)
    states: dict[str, ReviewStatus] = {}
    last_override: dict[str, int] = {}
    decision: dict[str, AuditEntry] = {}
    for e in entries:
        if e.seq in reversed_ or e.action not in ("override", "approve", "exclude"):
            continue
        state = states.setdefault(e.sample_id, ReviewStatus(e.sample_id))
        if e.action == "override":
            name, value = override_of(e.detail)
            state.overrides[name] = Override(
                name, value, e.detail["strategy_sha256"], e.seq, e.who, e.reason
            )
            last_override[e.sample_id] = e.seq
        else:
            decision[e.sample_id] = e
    for sample_id, state in states.items():
        current = (strategy_of or {}).get(sample_id)
        stale = [o for o in state.overrides.values() if current and o.strategy_sha256 != current]
        made = decision.get(sample_id)
        if made is not None and made.action == "exclude":
            state.status = "excluded"  # until a signed decision says otherwise
        elif stale:
            names = ", ".join(o.name for o in stale)
            state.status = "to_review"
            state.note = (
                f"override of {names} was made under strategy {stale[0].strategy_sha256[:12]}; "
                f"the strategy changed, so it is not applied: look again"
            )
        elif made is not None and made.seq > last_override.get(sample_id, 0):
            state.note = _unsigned_numbers(made, (seal_of or {}).get(sample_id))
            # Not covered: awaiting a look like any changed sample (its overrides still apply).
            waiting = "overridden" if state.overrides else "to_review"
            state.status = waiting if state.note else "approved"
        elif state.overrides:
            state.status = "overridden"
        if state.status in ("approved", "excluded"):
            state.decision_seq = made.seq
        if made is not None:
            state.decided_by, state.decided_at, state.reason = made.who, made.at, made.reason
    return states


def overrides_in_force(
    entries: list[AuditEntry], strategy_of_panel: dict[str, str]
) -> dict[str, dict[str, float]]:
    """sample_id -> threshold or gate -> value of the overrides the nightly pass applies: those
    made under the panel's current strategy (``strategy_of_panel``: panel token -> sha256)."""
    strategy_of = {}
    for e in entries:
        if e.sample_id:
            strategy_of[e.sample_id] = strategy_of_panel.get(panel_of(e.sample_id), "")
    states = review_states(entries, strategy_of)
    out = {}
    for sample_id, state in states.items():
        applied = state.applied_overrides(strategy_of.get(sample_id, ""))
        if applied:
            out[sample_id] = applied
    return out


def reviewer_name() -> str:
    """Who runs a pass from this process: the login name (never blank)."""
    try:
        return getpass.getuser() or "unknown"
    except (KeyError, OSError):
        return "unknown"


def panel_of(sample_id: str) -> str:
    """The panel token of a sample id (PATIENT_VISIT_PANEL, ``cohort.study.SampleName``)."""
    return sample_id.rsplit("_", 1)[-1]


def status_frame(states: dict[str, ReviewStatus], sample_ids: list[str]) -> pd.DataFrame:
    """review_status and overridden_gates per sample_id (to_review where never reviewed)."""
    rows = []
    for sample_id in sample_ids:
        state = states.get(sample_id, ReviewStatus(sample_id))
        rows.append(
            {
                "sample_id": sample_id,
                "review_status": state.status,
                "overridden_gates": ";".join(sorted(state.overrides))
                if state.status != "to_review" or not state.note
                else "",
            }
        )
    return pd.DataFrame(rows, columns=["sample_id", "review_status", "overridden_gates"])


def undoable(entries: list[AuditEntry], sample_id: str) -> AuditEntry | None:
    """The sample's latest override, approval or exclusion not undone yet (what Undo reverses)."""
    reversed_ = undone(entries)
    for e in reversed(entries):
        if e.sample_id == sample_id and e.action in ("override", "approve", "exclude"):
            if e.seq not in reversed_:
                return e
    return None


class SignatureNeeded(AuditError):
    """An action that changes a signed decision, asked for without a signature."""


def _signed_entry(entries: list[AuditEntry], seq: int) -> AuditEntry:
    return next(e for e in entries if e.seq == seq)


def superseded(entries: list[AuditEntry], sample_id: str, action: str) -> AuditEntry | None:
    """The signed entry that ``action`` (override or undo) on the sample would change: the
    approval or exclusion in force, or for an undo, the decision (or the signed override)
    it reverses. None when the action changes no signature."""
    if action == "override":
        state = review_states(entries).get(sample_id)
        if state is not None and state.decision_seq:
            return _signed_entry(entries, state.decision_seq)
        return None
    if action == "undo":
        target = undoable(entries, sample_id)
        if target is not None and (
            target.action in ("approve", "exclude") or "supersedes" in target.detail
        ):
            return target
        return None
    raise AuditError(f"unknown review action {action!r}")


def check_signature(entries: list[AuditEntry], sample_id: str, action: str, signed: bool) -> dict:
    """The detail to record for ``action``: ``supersedes`` (entry, action, who) when it changes
    a signed entry; SignatureNeeded when it does and ``signed`` is False."""
    entry = superseded(entries, sample_id, action)
    if entry is None:
        return {}
    if not signed:
        raise SignatureNeeded(
            f"{sample_id}: this {action} changes #{entry.seq} ({entry.action} by {entry.who}): "
            "sign it with your password"
        )
    return {"supersedes": {"seq": entry.seq, "action": entry.action, "who": entry.who}}


def own_overrides(state: ReviewStatus, who: str, strategy_sha256: str) -> list[Override]:
    """The overrides in force on a sample that ``who`` made: with personal accounts nobody
    approves their own change (four eyes, as a GCP lab's second-person review expects)."""
    return [
        o for o in state.overrides.values() if o.who == who and o.strategy_sha256 == strategy_sha256
    ]


def own_templates(
    entries: list[AuditEntry], panel: str, in_force: Mapping[str, str], who: str
) -> list[str]:
    """The thresholds of ``panel`` whose study template in force (``in_force``: threshold ->
    who the reference file says set it) ``who`` set, as the file says or as the trail's latest
    ``template`` entry for it says. A template is its setter's change, like an override: with
    personal accounts they approve none of the panel's samples while it is in force (every
    result the panel's strategy gives now carries it; a result from before it is re-gated by
    the next pass, which voids an approval of it)."""
    latest = {}
    for e in entries:
        if e.action == TEMPLATE_ACTION and e.detail.get("panel") == panel:
            latest[e.detail.get("threshold")] = e.who
    return sorted(t for t, named in in_force.items() if who in (named, latest.get(t)))


def record_decision(
    log: AuditLog,
    sample_id: str,
    action: str,
    who: str,
    reason: str,
    software: str,
    seal: dict | None = None,
) -> AuditEntry:
    """Approve or exclude a sample (the caller has checked the signature); ``seal``
    (``result_seal``) names the result and counts the person saw, which the decision covers."""
    if action not in ("approve", "exclude"):
        raise AuditError(f"unknown decision {action!r}")
    return log.append(who, action, reason, software, sample_id, dict(seal or {}))


def record_override(
    log: AuditLog,
    sample_id: str,
    who: str,
    reason: str,
    software: str,
    detail: dict,
    signed: bool,
    entries: list[AuditEntry] | None = None,
) -> AuditEntry:
    """Record a threshold override; signed when it comes after an approval or exclusion."""
    entries = log.entries() if entries is None else entries
    extra = check_signature(entries, sample_id, "override", signed)
    return log.append(who, "override", reason, software, sample_id, {**detail, **extra})


def record_undo(
    log: AuditLog, sample_id: str, who: str, reason: str, software: str, signed: bool = False
) -> AuditEntry:
    """Undo the sample's latest action, as a new entry; signed when it reverses a signature."""
    entries = log.entries()
    target = undoable(entries, sample_id)
    if target is None:
        raise AuditError(f"{sample_id}: nothing to undo")
    extra = check_signature(entries, sample_id, "undo", signed)
    return log.append(
        who,
        "undo",
        reason,
        software,
        sample_id,
        {**target.detail, "undoes": target.seq, "action": target.action, **extra},
    )
