"""`immunomon review`: the lab's review and sign-off pages (FastAPI, Jinja2, uvicorn).

Wiring only: the review state and the audit trail are ``cohort.review`` and ``cohort.audit``,
the plots ``reports.review_plots``, the drift scores ``stats.drift``; re-gating a sample runs
the same per-sample work as the nightly pass. The application never writes to inbox/, and a
sample id from a request is only ever looked up in the store."""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
from fastapi import Depends, FastAPI, Form, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from cohort.accounts import (
    account_fingerprint,
    account_problem,
    check_password,
    record_failed_sign_in,
    rights,
    user_roles,
    vouched_accounts,
)
from cohort.audit import AuditError, AuditLog, anchor_head, anchors_path
from cohort.exports import samples_table
from cohort.review import (
    REVIEW_STATES,
    ReviewStatus,
    check_signature,
    current_review_states,
    describe_override,
    drawn_gate,
    own_overrides,
    own_templates,
    record_decision,
    record_override,
    record_undo,
    result_seal,
    superseded,
)
from cohort.store import Store
from cohort.study import Study
from cohort.templates import POOLED
from flows.review_security import ROUTE_ROLES, ReviewGuard, Site, local_path, page_of
from gating.gates import Gate
from gating.strategy import override_record
from panels.errors import ImmunomonError
from reports.outputs import software_version, study_names, update_outputs
from stats.drift import DRIFT_Z, drift_scores, placement_values

MAX_WORKSPACE_BYTES = 64 * 2**20  # a FlowJo workspace uploaded to seed a template
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


@dataclass(frozen=True)
class PublishJob:
    """The background "update results and the report" job: one at a time per server."""

    state: str = "idle"  # idle, running, done, failed
    who: str = ""
    started_at: str = ""
    started: float = 0.0  # time.monotonic() at the start
    seconds: float = 0.0  # how long it took (done or failed)
    report: str = ""  # the cohort report's path once written
    problem: str = ""  # the clinical input problem that stopped part of it
    error: str = ""  # the one line that stopped it

    def as_json(self) -> dict:
        running = self.state == "running"
        elapsed = time.monotonic() - self.started if running else self.seconds
        return {
            "state": self.state,
            "who": self.who,
            "started_at": self.started_at,
            "elapsed_s": round(elapsed, 1),
            "report": self.report,
            "problem": self.problem,
            "error": self.error,
        }


class ReviewServer:
    """The study, its store (one connection, used under a lock: SQLite and threads) and the
    review actions the pages call. Each person's action is anchored beside the study."""

    def __init__(self, root: Path, accounts: bool):
        self.study = Study(root)
        self.accounts = accounts
        self.lock = threading.RLock()
        self.store = Store(self.study.db_path, shared_between_threads=True)
        self.log = AuditLog(self.store.conn, anchors=anchors_path(self.study.root))
        self.software = software_version()
        self.job = PublishJob()
        self.job_lock = threading.Lock()  # the job's state only: pages read it while it runs
        self._vouched: tuple[tuple, tuple[str, dict]] | None = None

    # state ---------------------------------------------------------------------------------
    def states(self) -> dict[str, ReviewStatus]:
        return current_review_states(self.study, self.store)

    def sample(self, sample_id: str) -> dict:
        sample = self.store.current_sample(sample_id)
        if sample is None:
            raise HTTPException(404, f"no processed sample {sample_id!r} in this study")
        return sample

    def counts(self, sample_key: str) -> dict[str, int]:
        pops = self.store.current_populations()
        return dict(
            pops.loc[pops.sample_key == sample_key, ["population", "count"]].itertuples(index=False)
        )

    # accounts ------------------------------------------------------------------------------
    def vouched(self) -> tuple[str, dict]:
        """``cohort.accounts.vouched_accounts``, recomputed only when the store (any
        connection's commit) or the anchor file has changed since: asked on every request."""
        conn = self.store.conn
        anchors = anchors_path(self.study.root)
        stat = anchors.stat() if anchors.exists() else None
        key = (
            conn.execute("PRAGMA data_version").fetchone()[0],
            conn.total_changes,
            (stat.st_size, stat.st_mtime_ns) if stat else None,
        )
        if self._vouched is None or self._vouched[0] != key:
            self._vouched = (key, vouched_accounts(conn, self.study.root))
        return self._vouched[1]

    def account_problem(self, name: str) -> str:
        """Why ``name``'s account is not vouched for by the audit trail ('' when it is)."""
        with self.lock:
            return account_problem(self.store.conn, self.study.root, name, self.vouched())

    def fingerprint(self, name: str) -> str | None:
        """The account's fingerprint while the trail vouches for it, else None."""
        if not self.accounts:
            return None
        with self.lock:
            fingerprint = account_fingerprint(self.store.conn, name)
            if fingerprint is None or self.account_problem(name):
                return None
            return fingerprint

    def roles(self, name: str) -> tuple[str, ...]:
        with self.lock:
            return user_roles(self.store.conn, name)

    def password_ok(self, name: str, password: str) -> bool:
        with self.lock:
            return check_password(self.store.conn, name, password)

    def sign_in_failed(self, name: str, address: str) -> None:
        with self.lock:
            record_failed_sign_in(self.store.conn, name, address)

    # actions -------------------------------------------------------------------------------
    def adjust(
        self,
        sample_id: str,
        threshold: str,
        value: float,
        who: str,
        reason: str,
        signed: bool = False,
    ):
        """Set one threshold of one sample by hand and re-gate that sample now. Returns the
        counts before and after. After an approval or exclusion it must be ``signed``."""
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise AuditError(f"{value} is outside the logicle scale (0 to 1)")

        def checked(strategy, sample) -> tuple[dict, float]:
            if threshold not in strategy.thresholds:
                raise AuditError(f"{threshold!r} is not a threshold of strategy {strategy.name}")
            old = self._placed(sample, threshold)
            return {"threshold": threshold, "old": None if old is None else old.value}, value

        return self._override(sample_id, threshold, who, reason, signed, checked)

    def redraw(
        self,
        sample_id: str,
        gate: str,
        geometry: dict,
        who: str,
        reason: str,
        signed: bool = False,
    ):
        """Redraw one placed gate of one sample by hand (the lymphocyte ellipse: centre, semi-
        axes, angle; a polygon: its vertices, on the gate's own scale) and re-gate that sample
        now; audited and signed like a threshold. Returns the counts before and after."""

        def checked(strategy, sample) -> tuple[dict, Gate]:
            drawable = strategy.drawable()
            if gate not in drawable:
                raise AuditError(
                    f"{gate!r} is not a gate of strategy {strategy.name} that can be drawn "
                    f"(those that can: {', '.join(drawable) or 'none'})"
                )
            placed = self._placed(sample, gate)
            if placed is None:
                raise AuditError(f"{sample_id} has no gate {gate!r} placed: nothing to redraw")
            recorded = {"gate": gate, "kind": placed.kind, "old": override_record(placed)}
            return recorded, drawn_gate(placed, geometry)

        return self._override(sample_id, gate, who, reason, signed, checked)

    def _placed(self, sample: dict, name: str):
        """The sample's current gate (or threshold mark) of that name, as recorded."""
        gates = self.store.applied_gates(sample["sample_key"])
        return next((g.gate for g in gates if g.name == name), None)

    def _override(self, sample_id, name, who, reason, signed, checked):
        """An override of threshold or gate ``name``: ``checked(strategy, sample)`` checks the
        request and gives what to record and the new value (a number or a drawn gate); then
        the sample is re-gated and the override audited with the counts before and after."""
        from flows.sample_work import process_sample_file
        from gating.strategy import Strategy

        # Not while a pass writes results: the same file must not be gated twice at once.
        with self.lock, self.study.exclusive(wait=False):
            sample = self.sample(sample_id)
            strategy = self.study.strategies[sample["panel"]]
            if not isinstance(strategy, Strategy):
                raise AuditError(f"{sample_id} is gated by a FlowJo workspace: adjust it in FlowJo")
            if not reason.strip():
                raise AuditError("override needs a reason in words")
            recorded, value = checked(strategy, sample)
            entries = self.log.entries()
            check_signature(entries, sample_id, "override", signed)  # before re-gating
            before = self.counts(sample["sample_key"])
            state = self.states().get(sample_id, ReviewStatus(sample_id))
            overrides = state.applied_overrides(strategy.sha256) | {name: value}
            effective = strategy.with_overrides(overrides)  # refuses a bad value: not gated
            record = self._regate(sample, effective, process_sample_file)
            after = self.counts(record.sample_key)
            record_override(
                self.log,
                sample_id,
                who,
                reason,
                self.software,
                {
                    **recorded,
                    "new": override_record(value),
                    "strategy_sha256": strategy.sha256,
                    "counts_before": before,
                    "counts_after": after,
                },
                signed,
                entries,
            )
            return before, after

    def _regate(self, sample: dict, strategy, process) -> object:
        path = self.study.inbox / sample["file_name"]
        name = self.study.parse_name(sample["file_name"])
        record = process(
            path,
            sample["sha256"],
            name,
            self.study.panels[sample["panel"]],
            strategy,
            str(self.study.qc_reports_dir),
            self.study.config.qc_reports,
        )
        stat = path.stat()
        self.store.record_sample(
            file_name=sample["file_name"],
            size=stat.st_size,
            mtime_ns=stat.st_mtime_ns,
            result=record,
            run_id="review",
        )
        return record

    def undo(self, sample_id: str, who: str, reason: str, signed: bool = False) -> str:
        """Undo the sample's last action; an undone override re-gates the sample. Undoing an
        approval or exclusion (or a signed override) must be ``signed``."""
        from flows.sample_work import process_sample_file

        with self.lock, self.study.exclusive(wait=False):
            sample = self.sample(sample_id)
            entry = record_undo(self.log, sample_id, who, reason, self.software, signed)
            if entry.detail.get("action") == "override":
                strategy = self.study.strategies[sample["panel"]]
                state = self.states().get(sample_id, ReviewStatus(sample_id))
                overrides = state.applied_overrides(strategy.sha256)
                effective = strategy.with_overrides(overrides) if overrides else strategy
                self._regate(sample, effective, process_sample_file)
            return entry.detail.get("action", "")

    def decide(
        self, sample_ids: list[str], action: str, who: str, reason: str, seen: str = ""
    ) -> int:
        """Approve or exclude samples, each decision sealed with the result and counts it
        covers. ``seen``: the result the person's page showed (one sample); refused when the
        sample has been re-gated since, so nobody signs numbers they did not see."""
        with self.lock:
            states = self.states()
            for sample_id in sample_ids:
                sample = self.sample(sample_id)
                key = sample["sample_key"]
                mine = self.own_changes(states, sample, who) if action == "approve" else ""
                if mine:
                    raise AuditError(
                        f"{sample_id}: {mine} set by you; another person approves a change "
                        "(four eyes)"
                    )
                if seen and seen != key:
                    raise AuditError(
                        f"{sample_id} has been re-gated since its page was opened: look at its "
                        f"new numbers, then {action}"
                    )
                seal = result_seal(key, self.counts(key))
                record_decision(self.log, sample_id, action, who, reason, self.software, seal)
            return len(sample_ids)

    def own_changes(self, states: dict[str, ReviewStatus], sample: dict, who: str) -> str:
        """The changes in force on ``sample`` that ``who`` made: overrides of it, study
        templates of its panel ('' when none, and always without accounts: a name typed in
        loopback mode proves nobody's identity)."""
        if not self.accounts:
            return ""
        state = states.get(sample["sample_id"])
        strategy = self.study.strategies[sample["panel"]]
        mine = [o.name for o in own_overrides(state, who, strategy.sha256)] if state else []
        panel = sample["panel"]
        templates = own_templates(self.log.entries(), panel, self.templates_in_force(panel), who)
        mine += [f"{t}'s study template" for t in templates]
        return ", ".join(mine)

    def templates_in_force(self, panel: str) -> dict[str, str]:
        """Threshold -> who the reference file says set the panel's study template in force
        (none for a FlowJo-gated panel)."""
        from cohort.templates import panel_templates
        from gating.strategy import Strategy

        if not isinstance(self.study.strategies.get(panel), Strategy):
            return {}
        return {t: template.set_by for t, template in panel_templates(self.study, panel).items()}

    def set_template(
        self,
        panel: str,
        threshold: str,
        value: float,
        who: str,
        reason: str,
        sample_id: str | None,
    ):
        """Set the panel's expert template (``cohort.templates.set_template``, which audits
        it); refused while a pass holds the study, as the pass reads the reference."""
        from cohort.templates import set_template

        with self.lock, self.study.exclusive(wait=False):
            if sample_id:
                sample = self.sample(sample_id)  # an id from a request: looked up in the store
                if sample["panel"] != panel:
                    raise AuditError(f"{sample_id} is a {sample['panel']} sample, not {panel}")
            change = set_template(
                self.study,
                self.store,
                panel,
                threshold,
                value,
                who=who,
                reason=reason,
                sample_id=sample_id or None,
                software=self.software,
            )
            anchor_head(self.study.root, self.store.conn, f"template {panel} {threshold}")
            # The strategies (with their reference) are cached: this server's later re-gates
            # and review states must use the reference now in force, as the next pass will.
            vars(self.study).pop("strategies", None)
            return change

    def seed_template(
        self,
        panel: str,
        workspace: Path,
        who: str,
        reason: str,
        group: str,
        sample: str | None,
    ):
        """Start the panel's study template from a FlowJo workspace
        (``cohort.templates.seed_from_workspace``, audited per threshold); refused while a
        pass holds the study, as ``set_template``."""
        from cohort.templates import seed_from_workspace

        with self.lock, self.study.exclusive(wait=False):
            seeding = seed_from_workspace(
                self.study,
                self.store,
                panel,
                workspace,
                who=who,
                reason=reason,
                group=group,
                sample=sample,
                software=self.software,
            )
            anchor_head(self.study.root, self.store.conn, f"template {panel} from {workspace.name}")
            vars(self.study).pop("strategies", None)  # the reference in force changed
            return seeding

    def start_publish(self, who: str) -> PublishJob:
        """Start rewriting results and the cohort report in a background thread. Refused
        (StudyError/AuditError) while a pass holds the study or a job runs; the study's lock
        is taken here, before returning, and released by the job when it ends."""
        with self.job_lock:
            if self.job.state == "running":
                raise AuditError(
                    f"results are already being updated (started by {self.job.who} at "
                    f"{self.job.started_at}): wait for it to finish"
                )
            lease = self.study.exclusive(wait=False)
            lease.__enter__()  # raises while a pass holds the study: refused, nothing started
            with self.lock:  # who rewrote the published results, and when
                self.log.append(
                    who, "publish", "results and report rewritten from the store", self.software
                )
            now = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
            self.job = PublishJob("running", who, now, time.monotonic())
            threading.Thread(
                target=self._publish, args=(lease,), name="publish", daemon=True
            ).start()
            return self.job

    def _publish(self, lease) -> None:
        # Its own connection: the server's stays free for the pages during the ~minute.
        store = Store(self.study.db_path)
        started_wall = time.time() - 1.0
        done = {}
        try:
            problem = update_outputs(self.study, store)
            report = self.study.reports_dir / "cohort_report.pdf"
            written = report.is_file() and report.stat().st_mtime >= started_wall
            done = {"state": "done", "problem": problem, "report": str(report) if written else ""}
        except Exception as exc:  # shown on the page: the job must not die silently
            done = {"state": "failed", "error": f"{type(exc).__name__}: {exc}"}
        finally:
            store.close()
            lease.__exit__(None, None, None)
            with self.job_lock:
                seconds = time.monotonic() - self.job.started
                self.job = replace(self.job, seconds=round(seconds, 1), **done)

    def publish_status(self) -> PublishJob:
        with self.job_lock:
            return self.job


def create_app(study_root: str | Path, accounts: bool = False, site: Site | None = None) -> FastAPI:
    """The review application for one study, served at ``site`` (default: loopback, port
    8765). ``accounts``: each person signs in with their own account (any host but
    loopback); else the name is asked once per browser session.

    Every state-changing route is on a router of ``ReviewGuard.router``: the site, the form
    token and (on ``actions``) a signed-in person are checked there, once."""
    server = ReviewServer(Path(study_root), accounts)
    guard = ReviewGuard(
        site or Site(),
        accounts,
        fingerprint=server.fingerprint,
        password_ok=server.password_ok,
        failure_log=server.sign_in_failed,
        roles=server.roles,
        account_problem=server.account_problem,
    )
    app = FastAPI(title="immunomon review", docs_url=None, redoc_url=None, openapi_url=None)
    guard.install(app)
    app.state.server = server
    app.state.guard = guard
    pages = guard.router()  # reading, signing in and out
    actions = guard.router("reviewer")  # a sample's review: a reviewer (or an expert)
    study_wide = guard.router("expert")  # the study's templates, publishing: an expert
    who = guard.who

    def render(request: Request, template: str, **context) -> HTMLResponse:
        context.setdefault("title", template.removesuffix(".html").title())
        return TEMPLATES.TemplateResponse(
            request,
            template,
            {
                "study": server.study.config.study,
                "who": who(request),
                "roles": guard.session_roles(request),
                # What the forms offer (the routes check it again): all without accounts.
                "may": rights(guard.session_roles(request)) if accounts else set(ROUTE_ROLES),
                "csrf": guard.csrf_token(request),
                "nonce": request.state.csp_nonce,
                "accounts": accounts,
                "message": request.session.pop("message", None),
                "error": request.session.pop("error", None),
                **context,
            },
        )

    def login_page(request: Request) -> Response:
        target = "/signin" if accounts else "/whoami"
        return RedirectResponse(
            f"{target}?next={quote(request.url.path, safe='/')}", status_code=303
        )

    def signed_for(request: Request, person: str, password: str, sample_id: str, action: str):
        """True once signed when the action changes a signed entry (False: it does not)."""
        with server.lock:
            entry = superseded(server.log.entries(), sample_id, action)
        if entry is None:
            return False
        try:
            guard.signature(request, person, password)
        except HTTPException as exc:
            if exc.status_code != 403:
                raise
            raise HTTPException(
                403,
                f"{sample_id}: this {action} changes #{entry.seq} ({entry.action} by "
                f"{entry.who}), a signed decision: {exc.detail}",
            ) from None
        return True

    @app.exception_handler(ImmunomonError)  # a refused action, e.g. a pass holds the study
    async def refused(request: Request, exc: ImmunomonError) -> Response:
        request.session["error"] = str(exc)
        return RedirectResponse(page_of(request.url.path), status_code=303)

    @pages.get("/whoami", response_class=HTMLResponse)
    def whoami_page(request: Request, next: str = "/"):
        if accounts:
            return RedirectResponse("/signin", status_code=303)
        return render(request, "whoami.html", title="Who is reviewing", next=local_path(next))

    @pages.post("/whoami")
    def whoami(request: Request, name: str = Form(""), next: str = Form("/")):
        if accounts:
            raise HTTPException(403, "sign in with your account")
        name = name.strip()
        if not name or len(name) > 64:
            request.session["error"] = (
                "a name (up to 64 characters) is needed: every change is recorded under it"
            )
            return RedirectResponse("/whoami", status_code=303)
        guard.start_session(request, name)
        return RedirectResponse(local_path(next), status_code=303)

    @pages.get("/signin", response_class=HTMLResponse)
    def signin_page(request: Request, next: str = "/"):
        return render(request, "signin.html", title="Sign in", next=local_path(next))

    @pages.post("/signin")
    def signin(
        request: Request, name: str = Form(""), password: str = Form(""), next: str = Form("/")
    ):
        if not accounts:
            raise HTTPException(403, "this server asks for a name, not an account: /whoami")
        response = RedirectResponse(local_path(next), status_code=303)
        problem = guard.sign_in(request, response, name, password)
        if problem:
            request.session["error"] = problem
            return RedirectResponse("/signin", status_code=303)
        return response

    @pages.post("/signout")
    def signout(request: Request):
        guard.end_session(request)
        return RedirectResponse("/signin" if accounts else "/whoami", status_code=303)

    @pages.get("/", response_class=HTMLResponse)
    def today(request: Request, state: str = "", panel: str = "", patient: str = ""):
        if not who(request):
            return login_page(request)
        with server.lock:
            rows = today_rows(server)
        if state:
            rows = rows[rows.review_status == state]
        if panel:
            rows = rows[rows.panel == panel]
        if patient:
            rows = rows[rows.patient_id == patient]
        filters = ", ".join(
            f"{k}={v}" for k, v in (("state", state), ("panel", panel), ("patient", patient)) if v
        )
        return render(
            request,
            "today.html",
            title="Today",
            rows=rows.to_dict("records"),
            states=REVIEW_STATES,
            state=state,
            panels=list(server.study.panels),
            panel=panel,
            patient=patient,
            filters=filters,
        )

    @pages.get("/patient/{patient_id}", response_class=HTMLResponse)
    def patient_page(request: Request, patient_id: str, panel: str = ""):
        if not who(request):
            return login_page(request)
        panel = panel or next(iter(server.study.panels))
        if panel not in server.study.panels:
            raise HTTPException(404, f"no panel {panel!r} in this study")
        with server.lock:
            context = patient_context(server, patient_id, panel)
        return render(request, "patient.html", title=f"Patient {patient_id}", **context)

    @pages.get("/sample/{sample_id}", response_class=HTMLResponse)
    def sample_page(request: Request, sample_id: str):
        if not who(request):
            return login_page(request)
        with server.lock:
            context = sample_context(server, sample_id)
        context["change"] = request.session.pop("change", None)
        return render(request, "sample.html", title=f"Sample {sample_id}", **context)

    @actions.post("/sample/{sample_id}/adjust")
    def adjust(
        request: Request,
        sample_id: str,
        threshold: str = Form(...),
        value: str = Form(...),
        reason: str = Form(""),
        password: str = Form(""),
        person: str = Depends(guard.person),
    ):
        try:
            number = float(value)
        except ValueError:
            raise AuditError(f"{value!r} is not a number") from None
        signed = signed_for(request, person, password, sample_id, "override")
        before, after = server.adjust(sample_id, threshold, number, person, reason, signed)
        request.session["change"] = counts_change(before, after)
        request.session["message"] = f"{threshold} set to {number:g}; {sample_id} re-gated"
        return RedirectResponse(f"/sample/{quote(sample_id)}", status_code=303)

    @actions.post("/sample/{sample_id}/redraw")
    def redraw(
        request: Request,
        sample_id: str,
        gate: str = Form(...),
        geometry: str = Form(...),
        reason: str = Form(""),
        password: str = Form(""),
        person: str = Depends(guard.person),
    ):
        try:
            drawn = json.loads(geometry)
        except ValueError:
            raise AuditError(f"the drawn {gate} is not JSON: {geometry[:80]!r}") from None
        if not isinstance(drawn, dict):
            raise AuditError(
                f"the drawn {gate} must be an object (centre, axes, angle or vertices)"
            )
        signed = signed_for(request, person, password, sample_id, "override")
        before, after = server.redraw(sample_id, gate, drawn, person, reason, signed)
        request.session["change"] = counts_change(before, after)
        request.session["message"] = f"{gate} redrawn; {sample_id} re-gated"
        return RedirectResponse(f"/sample/{quote(sample_id)}", status_code=303)

    @actions.post("/sample/{sample_id}/decide")
    def decide(
        request: Request,
        sample_id: str,
        action: str = Form(...),
        reason: str = Form(""),
        password: str = Form(""),
        result: str = Form(""),
        person: str = Depends(guard.person),
    ):
        if action not in ("approve", "exclude"):
            raise HTTPException(400, "action must be approve or exclude")
        guard.signature(request, person, password)
        server.decide([sample_id], action, person, reason, seen=result)
        request.session["message"] = f"{sample_id}: {action}d"
        return RedirectResponse(f"/sample/{quote(sample_id)}", status_code=303)

    @actions.post("/sample/{sample_id}/undo")
    def undo(
        request: Request,
        sample_id: str,
        reason: str = Form(""),
        password: str = Form(""),
        person: str = Depends(guard.person),
    ):
        signed = signed_for(request, person, password, sample_id, "undo")
        action = server.undo(sample_id, person, reason, signed)
        request.session["message"] = f"{sample_id}: the last {action} is undone"
        return RedirectResponse(f"/sample/{quote(sample_id)}", status_code=303)

    @pages.get("/signoff", response_class=HTMLResponse)
    def signoff_page(request: Request):
        if not who(request):
            return login_page(request)
        with server.lock:
            rows = signoff_rows(server)
            entries = len(server.log.entries())
            head = server.log.head()
        return render(
            request,
            "signoff.html",
            title="Sign-off",
            rows=rows,
            entries=entries,
            head=head,
            panels=list(server.study.panels),
        )

    @actions.post("/signoff/approve")
    def approve_visit(
        request: Request,
        visit: str = Form(...),
        panel: str = Form(...),
        reason: str = Form(""),
        password: str = Form(""),
        person: str = Depends(guard.person),
    ):
        guard.signature(request, person, password)
        with server.lock:
            rows = today_rows(server)
        pending = rows[
            (rows.visit == visit)
            & (rows.panel == panel)
            & (rows.status == "processed")
            & rows.review_status.isin(["to_review", "overridden"])
        ]
        with server.lock:
            states = server.states()
            theirs = [
                s
                for s in pending.sample_id
                if not server.own_changes(states, server.sample(s), person)
            ]
        count = server.decide(theirs, "approve", person, reason)
        left = sorted(set(pending.sample_id) - set(theirs))
        request.session["message"] = f"{count} sample(s) of {visit} {panel} approved" + (
            f"; left for another person (your own changes, four eyes): {', '.join(left)}"
            if left
            else ""
        )
        return RedirectResponse("/signoff", status_code=303)

    @pages.get("/templates/{panel}", response_class=HTMLResponse)
    def templates_page(request: Request, panel: str, sample: str = ""):
        if not who(request):
            return login_page(request)
        with server.lock:
            context = templates_context(server, panel)
        return render(
            request,
            "templates.html",
            title=f"Study templates {panel}",
            chosen=sample,
            not_used=request.session.pop("not_used", None),
            **context,
        )

    @study_wide.post("/templates/{panel}/set")
    def set_study_template(
        request: Request,
        panel: str,
        threshold: str = Form(...),
        value: str = Form(...),
        sample_id: str = Form(""),
        reason: str = Form(""),
        password: str = Form(""),
        back: str = Form(""),
        person: str = Depends(guard.person),
    ):
        guard.signature(request, person, password)  # a study-wide decision: always signed
        try:
            try:
                number = float(value)
            except ValueError:
                raise AuditError(f"{value!r} is not a number") from None
            change = server.set_template(panel, threshold, number, person, reason, sample_id)
        except ImmunomonError as exc:  # refused: back to the form it came from, saying why
            request.session["error"] = str(exc)
            return RedirectResponse(local_path(back, "/signoff"), status_code=303)
        t = change.template
        on = "the pooled aligned scale" if t.given_on == POOLED else t.given_on
        regates = (
            "the next processing pass re-gates the panel's samples"
            if change.regates
            else "the offset is unchanged: nothing is re-gated"
        )
        request.session["message"] = (
            f"{panel} {threshold}: study template {t.value:.3f} on {on} (landmark "
            f"{t.landmark:.3f}, offset {t.offset:+.3f}), audit entry #{change.audit_seq}; "
            f"{regates}"
        )
        return RedirectResponse(f"/templates/{quote(panel)}", status_code=303)

    @study_wide.post("/templates/{panel}/from-wsp")
    async def seed_study_template(
        request: Request,
        panel: str,
        workspace: UploadFile,
        group: str = Form("All Samples"),
        template_sample: str = Form(""),
        reason: str = Form(""),
        password: str = Form(""),
        person: str = Depends(guard.person),
    ):
        """A FlowJo workspace uploaded as the start of the panel's study template: kept in
        a temporary folder for the reading only (the study folder is not written but for the
        reference and the trail), named in the audit entries by its file name and sha256."""
        guard.signature(request, person, password)  # a study-wide decision: always signed
        back = f"/templates/{quote(panel)}"
        name = Path(workspace.filename or "workspace.wsp").name
        content = await workspace.read(MAX_WORKSPACE_BYTES + 1)
        if len(content) > MAX_WORKSPACE_BYTES:
            request.session["error"] = (
                f"{name}: larger than {MAX_WORKSPACE_BYTES // 2**20} MB; is it a FlowJo workspace?"
            )
            return RedirectResponse(back, status_code=303)
        with tempfile.TemporaryDirectory(prefix="immunomon-wsp-") as folder:
            path = Path(folder) / name
            path.write_bytes(content)
            try:
                seeding = await run_in_threadpool(
                    server.seed_template,
                    panel,
                    path,
                    person,
                    reason,
                    group or "All Samples",
                    template_sample or None,
                )
            except ImmunomonError as exc:  # refused: back to the page, saying why
                request.session["error"] = str(exc)
                return RedirectResponse(back, status_code=303)
        set_ = ", ".join(
            f"{c.template.threshold} {c.template.value:.3f} (#{c.audit_seq})"
            for c in seeding.changes
        )
        request.session["message"] = (
            f"{name} (sha256 {seeding.sha256[:12]}) read on {seeding.sample_id}: {set_}; "
            "the next processing pass re-gates the panel's samples"
        )
        request.session["not_used"] = [list(item) for item in seeding.not_used]
        return RedirectResponse(back, status_code=303)

    @study_wide.post("/publish")
    def publish(request: Request, person: str = Depends(guard.person)):
        server.start_publish(person)
        return RedirectResponse("/publish", status_code=303)

    @pages.get("/publish", response_class=HTMLResponse)
    def publish_page(request: Request):
        if not who(request):
            return login_page(request)
        job = server.publish_status().as_json()
        return render(request, "publish.html", title="Update results", job=job)

    @pages.get("/publish/status.json")
    def publish_status(request: Request):
        """The background job's state, polled by /publish: no store access, never waits."""
        if not who(request):
            raise HTTPException(401, "sign in first")
        return server.publish_status().as_json()

    @pages.get("/plot/{sample_id}.png")
    def plot(request: Request, sample_id: str, compact: int = 0):
        if not who(request):
            raise HTTPException(401, "sign in first")
        with server.lock:
            server.sample(sample_id)
            png = sample_plot(server, sample_id, bool(compact))
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    @pages.get("/hist/{sample_id}/{threshold}.json")
    def threshold_histogram(request: Request, sample_id: str, threshold: str):
        """The events a threshold is placed among, binned, with its current value: what the
        sample page draws to drag the threshold on."""
        if not who(request):
            raise HTTPException(401, "sign in first")
        with server.lock:
            server.sample(sample_id)
            return threshold_bins(server, sample_id, threshold)

    @pages.get("/scatter/{sample_id}/{gate}.json")
    def gate_scatter_json(request: Request, sample_id: str, gate: str):
        """The parent's events of a drawable gate on its two dimensions (at most
        ``SCATTER_POINTS``) and the gate's geometry: what the sample page draws to drag it."""
        if not who(request):
            raise HTTPException(401, "sign in first")
        with server.lock:
            server.sample(sample_id)
            return gate_scatter(server, sample_id, gate)

    @pages.get("/audit.csv")
    def audit_csv(request: Request):
        if not who(request):
            raise HTTPException(401, "sign in first")
        text = io.StringIO()
        with server.lock:
            server.log.write_csv(text)
        return Response(
            text.getvalue(),
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="audit_trail.csv"'},
        )

    app.include_router(pages)
    app.include_router(actions)
    app.include_router(study_wide)
    return app


# page data ----------------------------------------------------------------------------------
# Today's order: what needs someone first (a file that could not be used, then samples to
# review), then what is done.
ATTENTION_ORDER = {
    "failed": 0,
    "quarantined": 0,
    "to_review": 1,
    "overridden": 2,
    "approved": 3,
    "excluded": 4,
}


def today_rows(server: ReviewServer) -> pd.DataFrame:
    """Every inbox file with status, reason, what needs a look and the review state: the
    samples that need review first, then newest first."""
    samples = samples_table(server.store, server.study)
    states = server.states()
    samples["review_status"] = [
        states.get(s, ReviewStatus(s)).status if st == "processed" else ""
        for s, st in zip(samples.sample_id, samples.status, strict=True)
    ]
    drift = drift_table(server)
    flagged: dict[str, list] = {}
    for d in drift.loc[drift.flagged.astype(bool)].itertuples():
        flagged.setdefault(d.sample_id, []).append(d)
    attention = []
    # Flags in words as the report prints them, each sample's from the strategy it was gated with.
    study_wide = study_names(server.study, server.store)
    for r in samples.itertuples():
        names = study_wide.of_sample(r.sample_id)
        items = []
        if r.status == "failed":
            items.append("failed")
        flags = str(r.qc_flags or "").split(";")
        defaults = {f.partition(":")[2] for f in flags if f.startswith("default_threshold:")}
        weak = [  # a threshold below the floor already shows as at its default
            f for f in flags if f.startswith("below_separation_floor:") and f[23:] not in defaults
        ]
        for families in (("default_threshold", "default_gate"), ("low_count", "high_qc_loss")):
            items += [names.flag(r.panel, f) for f in flags if f.startswith(families)]
        items += [names.flag(r.panel, f) for f in weak]
        items += [names.drift(r.panel, d.key, d.move, d.z) for d in flagged.get(r.sample_id, [])]
        note = states.get(r.sample_id)
        if note is not None and note.note:
            items.append("override not applied")
        attention.append(items)
    samples["attention"] = attention
    samples["rank"] = [
        ATTENTION_ORDER.get(rs or st, 5) - (0.5 if a else 0)
        for st, rs, a in zip(samples.status, samples.review_status, attention, strict=True)
    ]
    stamp = samples.processed_at.fillna("")
    samples = samples.assign(stamp=stamp).sort_values(["rank", "stamp"], ascending=[True, False])
    return samples.drop(columns=["rank", "stamp"])


def drift_table(server: ReviewServer) -> pd.DataFrame:
    """Drift scores of every current sample's thresholds, population % and the medians of
    each reported population's own markers (those its gate is drawn on)."""
    axes = {
        gate.name: tuple(gate.dimensions)
        for panel in server.study.panels
        for gate in _reported(server, panel)
        if isinstance(getattr(gate, "dimensions", None), (tuple, list))
    }
    rows = list(placement_values(server.store.current_gates(), axes).itertuples(index=False))
    pops = server.store.current_populations()
    pct = 100.0 * pops["count"] / pops.parent_count.replace(0, np.nan)
    rows += list(
        zip(pops.sample_id, pops.patient_id, pops.visit, "% " + pops.population, pct, strict=True)
    )
    medians = server.store.current_medians()
    own = {
        (panel, gate.name, marker)
        for panel in server.study.panels
        for gate in _reported(server, panel)
        for marker in server.study.strategies[panel].defining_markers(gate.name)
    }
    gating_marker = np.array(
        [k in own for k in zip(medians.panel, medians.population, medians.marker, strict=True)],
        dtype=bool,
    )
    medians = medians.loc[gating_marker]
    rows += list(
        zip(
            medians.sample_id,
            medians.patient_id,
            medians.visit,
            "median " + medians.population + " " + medians.marker,
            medians.median_logicle,
            strict=True,
        )
    )
    frame = pd.DataFrame(rows, columns=["sample_id", "patient_id", "visit", "key", "value"])
    if frame.empty:
        return frame.assign(
            move=pd.Series(dtype=float), z=pd.Series(dtype=float), flagged=pd.Series(dtype=bool)
        )
    return drift_scores(frame)


def patient_context(server: ReviewServer, patient_id: str, panel: str) -> dict:
    states = server.states()
    visits = list(server.study.config.visits)
    samples = [
        {"sample_id": f"{patient_id}_{v}_{panel}", "visit": v}
        for v in visits
        if server.store.current_sample(f"{patient_id}_{v}_{panel}") is not None
    ]
    if not samples:
        raise HTTPException(404, f"no processed {panel} sample of patient {patient_id!r}")
    for s in samples:
        s["review_status"] = states.get(s["sample_id"], ReviewStatus(s["sample_id"])).status
    drift = drift_table(server)
    mine = drift[drift.patient_id == patient_id]
    mine = mine[mine.sample_id.str.endswith(f"_{panel}")]
    # Rows and drift items in words as the today list prints them, each visit's from the
    # strategy it was gated with.
    names = study_names(server.study, server.store)

    def grid(prefix: str, fmt: str) -> list:
        out = []
        for key in dict.fromkeys(k for k in mine.key if k.startswith(prefix)):
            cells, label = [], ""
            for v in visits:
                hit = mine[(mine.key == key) & (mine.visit == v)]
                if hit.empty:
                    cells.append(None)
                    continue
                h = hit.iloc[0]
                visit_names = names.of_sample(h.sample_id)
                label = label or visit_names.drift_subject(panel, key)
                flagged = bool(h.flagged)
                cells.append(
                    {
                        "text": fmt.format(h.value),
                        "flag": f"moved {h.move:+.3g} (z {h.z:+.1f})" if flagged else "",
                        "words": visit_names.drift(panel, key, h.move, h.z) if flagged else "",
                    }
                )
            out.append((label, cells))
        return out

    return {
        "patient_id": patient_id,
        "panel": panel,
        "panels": list(server.study.panels),
        "visits": visits,
        "samples": samples,
        "thresholds": grid("threshold ", "{:.3f}"),
        "populations": grid("% ", "{:.2f}"),
        "mfi": grid("median ", "{:.3f}"),
        "z_limit": DRIFT_Z,
    }


def _reported(server: ReviewServer, panel: str) -> list:
    from gating.strategy import Strategy

    strategy = server.study.strategies[panel]
    return strategy.reported if isinstance(strategy, Strategy) else []


def sample_context(server: ReviewServer, sample_id: str) -> dict:
    from gating.gates import ThresholdMark
    from gating.pipeline import HAND_DRAWN
    from gating.registration import registered_thresholds
    from gating.strategy import Strategy

    sample = server.sample(sample_id)
    key = sample["sample_key"]
    state = server.states().get(sample_id, ReviewStatus(sample_id))
    applied = server.store.applied_gates(key)
    gates, thresholds = [], []
    for g in applied:
        if isinstance(g.gate, ThresholdMark):
            how = g.gate.method if g.from_data else "default"
            thresholds.append(
                {
                    "name": g.name,
                    "dimension": g.gate.dimension,
                    "value": g.gate.value,
                    "method": how,
                }
            )
        else:
            how = "manual" if g.note == HAND_DRAWN else "data" if g.from_data else "default"
        gates.append({"name": g.name, "parent": g.parent, "how": how, "note": g.note})
    pops = server.store.current_populations()
    pops = pops[pops.sample_key == key]
    populations = [
        {
            "population": p.population,
            "parent": p.parent,
            "count": p.count,
            "pct": 100.0 * p.count / p.parent_count if p.parent_count else float("nan"),
        }
        for p in pops.itertuples()
    ]
    qc = server.store.qc_steps(key).to_dict("records")
    trail = [
        {
            "seq": e.seq,
            "at": e.at,
            "who": e.who,
            "action": e.action,
            "what": _describe(e.detail),
            "reason": e.reason,
        }
        for e in server.log.entries()
        if e.sample_id == sample_id
    ]
    strategy = server.study.strategies[sample["panel"]]
    templatable = set(registered_thresholds(strategy)) if isinstance(strategy, Strategy) else set()
    drawable = strategy.drawable() if isinstance(strategy, Strategy) else {}
    return {
        "drawable": [g.name for g in applied if g.name in drawable],
        "s": sample,
        "state": state,
        "templatable": [t for t in thresholds if t["name"] in templatable],
        "flags": "; ".join(
            study_names(server.study, server.store).of_sample(sample_id).flag(sample["panel"], f)
            for f in (sample["qc_flags"] or "").split(";")
            if f
        ),
        "gates": gates,
        "thresholds": thresholds,
        "populations": populations,
        "qc": qc,
        "trail": trail,
    }


def templates_context(server: ReviewServer, panel: str) -> dict:
    """The panel's thresholds that can take a study template, the template in force for
    each (value, on what, who, when, why), and the current samples a change re-gates."""
    from cohort.templates import panel_templates
    from gating.registration import registered_thresholds
    from gating.strategy import Strategy

    if panel not in server.study.panels:
        raise HTTPException(404, f"no panel {panel!r} in this study")
    strategy = server.study.strategies[panel]
    if not isinstance(strategy, Strategy):
        raise HTTPException(404, f"panel {panel} is gated by a FlowJo workspace: no templates")
    in_force = panel_templates(server.study, panel)
    thresholds = [
        {
            "name": name,
            "dimension": spec.dimension,
            "within": spec.within,
            "bounds": spec.bounds,
            "landmark": f"{spec.registration.peak} peak of {spec.registration.landmark_within}",
            "template": in_force.get(name),
        }
        for name, spec in registered_thresholds(strategy).items()
    ]
    samples = samples_table(server.store, server.study)
    touched = samples[(samples.panel == panel) & (samples.status == "processed")]
    return {
        "panel": panel,
        "strategy": strategy.name,
        "thresholds": thresholds,
        "samples": sorted(touched.sample_id),
        "pooled": POOLED,
    }


def counts_change(before: dict[str, int], after: dict[str, int]) -> list[dict]:
    """Each population's count before and after a change, as the sample page tabulates it."""
    return [
        {"population": p, "before": before.get(p, ""), "after": after.get(p, "")}
        for p in dict.fromkeys([*before, *after])
    ]


def _describe(detail: dict) -> str:
    if ("threshold" in detail or "gate" in detail) and "new" in detail:
        text = describe_override(detail)
        if "undoes" in detail:
            text = f"undo #{detail['undoes']} ({text})"
        return text + _superseding(detail)
    if "undoes" in detail:
        return f"undo #{detail['undoes']} ({detail.get('action', '')})" + _superseding(detail)
    if "result" in detail:  # a decision: the result it covers
        file, _, rest = str(detail["result"]).partition(":")
        strategy, _, pipeline = rest.partition(":")
        counts = str(detail.get("counts_sha256", ""))[:12]
        return f"covers file {file[:12]}, strategy {strategy[:12]}, {pipeline}, counts {counts}"
    return ""


def _superseding(detail: dict) -> str:
    """What a signed change replaced, as the trail table says it."""
    was = detail.get("supersedes")
    if not isinstance(was, dict):
        return ""
    return f"; signed, supersedes #{was.get('seq')} ({was.get('action')} by {was.get('who')})"


def signoff_rows(server: ReviewServer) -> list[dict]:
    rows = today_rows(server)
    processed = rows[rows.status == "processed"]
    out = []
    for visit in server.study.config.visits:
        for panel in server.study.panels:
            block = processed[(processed.visit == visit) & (processed.panel == panel)]
            counts = block.review_status.value_counts()
            out.append(
                {"visit": visit, "panel": panel}
                | {state: int(counts.get(state, 0)) for state in REVIEW_STATES}
            )
    return out


def threshold_bins(server: ReviewServer, sample_id: str, threshold: str) -> dict:
    """Histogram (logicle 0-1, 120 bins) of a threshold's marker among the events it is placed
    in, its current value and its placement bounds."""
    from gating.gates import ThresholdMark
    from gating.strategy import Strategy
    from reports.outputs import replay_current

    sample, gates, masks, space, _ = replay_current(server.study, server.store, sample_id)
    strategy = server.study.strategies[sample["panel"]]
    if not isinstance(strategy, Strategy) or threshold not in strategy.thresholds:
        raise HTTPException(404, f"no threshold {threshold!r} for {sample_id}")
    spec = strategy.thresholds[threshold]
    mark = next(g.gate for g in gates if g.name == threshold and isinstance(g.gate, ThresholdMark))
    values = np.asarray(space[spec.dimension])[masks[spec.within]]
    counts, edges = np.histogram(values[np.isfinite(values)], bins=120, range=(0.0, 1.0))
    return {
        "threshold": threshold,
        "dimension": spec.dimension,
        "within": spec.within,
        "value": float(mark.value),
        "bounds": list(spec.bounds),
        "edges": edges.round(6).tolist(),
        "counts": counts.tolist(),
    }


SCATTER_POINTS = 20_000  # events sent to the page to drag a gate over (a random subset beyond)


def gate_geometry(gate) -> dict:
    """A drawable gate's handles as the page drags them: an ellipse's centre, semi-axes and
    angle (``cohort.review.drawn_gate`` reads the same keys back), a polygon's vertices."""
    from gating.gates import EllipseGate

    if isinstance(gate, EllipseGate):
        centre, axes, angle = gate.axes()
        return {"centre": list(centre), "axes": list(axes), "angle": angle}
    return {"vertices": [list(v) for v in gate.vertices]}


def _extent(gate) -> list[tuple[float, float]]:
    """The gate's own span on each of its two dimensions."""
    from gating.gates import EllipseGate

    if isinstance(gate, EllipseGate):
        half = np.sqrt(np.diag(np.asarray(gate.covariance)) * gate.distance_square)
        return [(m - h, m + h) for m, h in zip(gate.mean, half, strict=True)]
    points = np.asarray(gate.vertices, float)
    return [(points[:, k].min(), points[:, k].max()) for k in range(2)]


def _view(values: np.ndarray, extent: tuple[float, float]) -> list[float]:
    """The shown range of one axis: most events and the gate, within a little more than the
    plot's scale (0 to 1), so a small cluster is not lost in a corner; a polygon's far
    vertices (an open side) are drawn on the edge."""
    finite = values[np.isfinite(values)]
    low, top = np.quantile(finite, [0.005, 0.995]) if finite.size else (0.0, 1.0)
    low = max(-0.1, min(0.0, float(low), float(extent[0])))
    high = min(1.1, max(float(top), float(extent[1])))
    high = max(high, low + 0.05)
    margin = 0.05 * (high - low)
    return [round(max(-0.1, low - margin), 4), round(min(1.1, high + margin), 4)]


def gate_scatter(server: ReviewServer, sample_id: str, gate: str) -> dict:
    """The events of a drawable gate's parent on the gate's dimensions (scatter as a fraction
    of range, markers in logicle), the gate's count and parent count, and its geometry."""
    from gating.strategy import Strategy
    from reports.outputs import replay_current

    sample, gates, masks, space, _ = replay_current(server.study, server.store, sample_id)
    strategy = server.study.strategies[sample["panel"]]
    drawable = strategy.drawable() if isinstance(strategy, Strategy) else {}
    applied = next((g for g in gates if g.name == gate), None)
    if gate not in drawable or applied is None:
        raise HTTPException(404, f"no drawable gate {gate!r} for {sample_id}")
    # Over the events it was placed on (the transitional tip: the CD27- B cells), as the QC
    # page draws it, so a person redraws the tip of the cloud it is the tip of.
    shown = applied.within or applied.parent
    rows = np.flatnonzero(masks[shown])
    parent_count = int(rows.size)
    if rows.size > SCATTER_POINTS:  # the same subset on every load: seeded by nothing else
        rows = np.sort(np.random.default_rng(0).choice(rows, SCATTER_POINTS, replace=False))
    x_dim, y_dim = applied.gate.dimensions
    x = np.asarray(space[x_dim])[rows]
    y = np.asarray(space[y_dim])[rows]
    return {
        "view": [_view(x, ex) for x, ex in zip((x, y), _extent(applied.gate), strict=True)],
        "gate": gate,
        "kind": applied.gate.kind,
        "parent": shown,
        "dimensions": [x_dim, y_dim],
        "x": np.round(x, 5).tolist(),
        "y": np.round(y, 5).tolist(),
        "parent_count": parent_count,
        "count": int(np.count_nonzero(masks[gate] & masks[shown])),
        "geometry": gate_geometry(applied.gate),
        "note": applied.note,
    }


def sample_plot(server: ReviewServer, sample_id: str, compact: bool) -> bytes:
    """A PNG of the sample's gates on their parents' events (compact: fixed axes, for the
    patient page's side-by-side view)."""
    from reports.review_plots import gate_grid_png

    return gate_grid_png(server.study, server.store, sample_id, compact)
