"""`immunomon review`: the lab's review and sign-off pages (FastAPI, Jinja2, uvicorn).

Wiring only: the review state and the audit trail are ``cohort.review`` and ``cohort.audit``,
the plots ``reports.review_plots``, the drift scores ``stats.drift``; re-gating a sample runs
the same per-sample work as the nightly pass. The application never writes to inbox/, and a
sample id from a request is only ever looked up in the store."""

from __future__ import annotations

import hmac
import json
import secrets
import threading
import time
from collections import defaultdict, deque
from pathlib import Path

import numpy as np
import pandas as pd
from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.middleware.sessions import SessionMiddleware

from cohort.accounts import check_password
from cohort.audit import AuditError, AuditLog
from cohort.exports import samples_table
from cohort.review import (
    REVIEW_STATES,
    ReviewStatus,
    current_review_states,
    record_decision,
    record_undo,
)
from cohort.store import Store
from cohort.study import Study
from panels.errors import ImmunomonError
from reports.outputs import software_version, update_outputs
from stats.drift import DRIFT_Z, drift_scores

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
MAX_FAILED_SIGN_INS = 5  # per name and address, within FAILED_WINDOW_S
FAILED_WINDOW_S = 600.0


class ReviewServer:
    """The study, its store (one connection, used under a lock: SQLite and threads) and the
    review actions the pages call."""

    def __init__(self, root: Path, accounts: bool):
        self.study = Study(root)
        self.accounts = accounts
        self.lock = threading.RLock()
        self.store = Store(self.study.db_path, shared_between_threads=True)
        self.log = AuditLog(self.store.conn)
        self.software = software_version()
        self.failures: dict[tuple[str, str], deque] = defaultdict(deque)

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

    # actions -------------------------------------------------------------------------------
    def adjust(self, sample_id: str, threshold: str, value: float, who: str, reason: str):
        """Set one threshold of one sample by hand and re-gate that sample now. Returns the
        counts before and after."""
        from flows.sample_work import process_sample_file
        from gating.strategy import Strategy

        # Not while a pass writes results: the same file must not be gated twice at once.
        with self.lock, self.study.exclusive(wait=False):
            sample = self.sample(sample_id)
            strategy = self.study.strategies[sample["panel"]]
            if not isinstance(strategy, Strategy):
                raise AuditError(f"{sample_id} is gated by a FlowJo workspace: adjust it in FlowJo")
            if threshold not in strategy.thresholds:
                raise AuditError(f"{threshold!r} is not a threshold of strategy {strategy.name}")
            if not 0.0 <= value <= 1.0:
                raise AuditError(f"{value} is outside the logicle scale (0 to 1)")
            old = next(
                (
                    g.gate.value
                    for g in self.store.applied_gates(sample["sample_key"])
                    if g.name == threshold
                ),
                None,
            )
            before = self.counts(sample["sample_key"])
            state = self.states().get(sample_id, ReviewStatus(sample_id))
            overrides = state.applied_overrides(strategy.sha256) | {threshold: value}
            record = self._regate(sample, strategy.with_overrides(overrides), process_sample_file)
            after = self.counts(record.sample_key)
            self.log.append(
                who,
                "override",
                reason,
                self.software,
                sample_id,
                {
                    "threshold": threshold,
                    "old": old,
                    "new": value,
                    "strategy_sha256": strategy.sha256,
                    "counts_before": before,
                    "counts_after": after,
                },
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

    def undo(self, sample_id: str, who: str, reason: str) -> str:
        """Undo the sample's last action; an undone override re-gates the sample."""
        from flows.sample_work import process_sample_file

        with self.lock, self.study.exclusive(wait=False):
            sample = self.sample(sample_id)
            entry = record_undo(self.log, sample_id, who, reason, self.software)
            if entry.detail.get("action") == "override":
                strategy = self.study.strategies[sample["panel"]]
                state = self.states().get(sample_id, ReviewStatus(sample_id))
                overrides = state.applied_overrides(strategy.sha256)
                effective = strategy.with_overrides(overrides) if overrides else strategy
                self._regate(sample, effective, process_sample_file)
            return entry.detail.get("action", "")

    def decide(self, sample_ids: list[str], action: str, who: str, reason: str) -> int:
        with self.lock:
            for sample_id in sample_ids:
                self.sample(sample_id)
                record_decision(self.log, sample_id, action, who, reason, self.software)
            return len(sample_ids)

    def publish(self) -> str:
        with self.lock:
            with self.study.exclusive(wait=False):
                return update_outputs(self.study, self.store)

    def sign_in_failed(self, name: str, address: str) -> bool:
        """Record a failed sign-in; True when this name and address are now locked out."""
        now = time.monotonic()
        recent = self.failures[(name, address)]
        recent.append(now)
        while recent and now - recent[0] > FAILED_WINDOW_S:
            recent.popleft()
        with self.lock:
            self.log.append(
                name or "(blank)",
                "sign_in_failed",
                f"failed sign-in from {address}",
                self.software,
            )
        return len(recent) >= MAX_FAILED_SIGN_INS

    def locked_out(self, name: str, address: str) -> bool:
        recent = self.failures[(name, address)]
        now = time.monotonic()
        return sum(now - t <= FAILED_WINDOW_S for t in recent) >= MAX_FAILED_SIGN_INS


def create_app(study_root: str | Path, accounts: bool = False) -> FastAPI:
    """The review application for one study. ``accounts``: each person signs in with their
    own account (any host but loopback); else the name is asked once per browser session."""
    server = ReviewServer(Path(study_root), accounts)
    app = FastAPI(title="immunomon review", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(
        SessionMiddleware, secret_key=secrets.token_hex(32), same_site="strict", max_age=12 * 3600
    )
    app.state.server = server

    def session_csrf(request: Request) -> str:
        token = request.session.get("csrf")
        if not token:
            token = request.session["csrf"] = secrets.token_urlsafe(32)
        return token

    def check_csrf(request: Request, csrf: str) -> None:
        if not hmac.compare_digest(str(request.session.get("csrf", "")), csrf or ""):
            raise HTTPException(403, "stale or missing form token: reload the page and try again")

    def who(request: Request) -> str | None:
        return request.session.get("who")

    def acting(request: Request, csrf: str) -> str:
        """The signed-in person making a change, the form's token checked."""
        check_csrf(request, csrf)
        name = who(request)
        if not name:
            raise HTTPException(401, "sign in first: every change is recorded under a name")
        return name

    def render(request: Request, template: str, **context) -> HTMLResponse:
        context.setdefault("title", template.removesuffix(".html").title())
        return TEMPLATES.TemplateResponse(
            request,
            template,
            {
                "study": server.study.config.study,
                "who": who(request),
                "csrf": session_csrf(request),
                "accounts": accounts,
                "message": request.session.pop("message", None),
                "error": request.session.pop("error", None),
                **context,
            },
        )

    def login_page(request: Request) -> Response:
        target = "/signin" if accounts else "/whoami"
        return RedirectResponse(f"{target}?next={request.url.path}", status_code=303)

    def reauthenticate(request: Request, password: str) -> None:
        """An approval or exclusion is a signature: with accounts, the password again."""
        if not accounts:
            return
        with server.lock:
            valid = check_password(server.store.conn, who(request), password or "")
        if not valid:
            server.sign_in_failed(who(request), request.client.host if request.client else "")
            raise HTTPException(403, "the password does not match: nothing was signed")

    @app.exception_handler(ImmunomonError)  # a refused action, e.g. a pass holds the study
    async def refused(request: Request, exc: ImmunomonError) -> Response:
        request.session["error"] = str(exc)
        return RedirectResponse(request.headers.get("referer", "/"), status_code=303)

    @app.get("/whoami", response_class=HTMLResponse)
    def whoami_page(request: Request, next: str = "/"):
        if accounts:
            return RedirectResponse("/signin", status_code=303)
        return render(request, "whoami.html", title="Who is reviewing", next=next)

    @app.post("/whoami")
    def whoami(request: Request, name: str = Form(""), csrf: str = Form(""), next: str = Form("/")):
        check_csrf(request, csrf)
        if accounts:
            raise HTTPException(403, "sign in with your account")
        if not name.strip():
            request.session["error"] = "a name is needed: every change is recorded under it"
            return RedirectResponse("/whoami", status_code=303)
        request.session["who"] = name.strip()
        return RedirectResponse(next if next.startswith("/") else "/", status_code=303)

    @app.get("/signin", response_class=HTMLResponse)
    def signin_page(request: Request, next: str = "/"):
        return render(request, "signin.html", title="Sign in", next=next)

    @app.post("/signin")
    def signin(
        request: Request,
        name: str = Form(""),
        password: str = Form(""),
        csrf: str = Form(""),
        next: str = Form("/"),
    ):
        check_csrf(request, csrf)
        address = request.client.host if request.client else ""
        if server.locked_out(name, address):
            raise HTTPException(429, "too many failed sign-ins: wait 10 minutes")
        with server.lock:
            valid = check_password(server.store.conn, name, password)
        if not valid:
            server.sign_in_failed(name, address)
            request.session["error"] = "name or password wrong"
            return RedirectResponse("/signin", status_code=303)
        request.session["who"] = name
        return RedirectResponse(next if next.startswith("/") else "/", status_code=303)

    @app.get("/", response_class=HTMLResponse)
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

    @app.get("/patient/{patient_id}", response_class=HTMLResponse)
    def patient_page(request: Request, patient_id: str, panel: str = ""):
        if not who(request):
            return login_page(request)
        panel = panel or next(iter(server.study.panels))
        if panel not in server.study.panels:
            raise HTTPException(404, f"no panel {panel!r} in this study")
        with server.lock:
            context = patient_context(server, patient_id, panel)
        return render(request, "patient.html", title=f"Patient {patient_id}", **context)

    @app.get("/sample/{sample_id}", response_class=HTMLResponse)
    def sample_page(request: Request, sample_id: str):
        if not who(request):
            return login_page(request)
        with server.lock:
            context = sample_context(server, sample_id)
        context["change"] = request.session.pop("change", None)
        return render(request, "sample.html", title=f"Sample {sample_id}", **context)

    @app.post("/sample/{sample_id}/adjust")
    def adjust(
        request: Request,
        sample_id: str,
        threshold: str = Form(...),
        value: str = Form(...),
        reason: str = Form(""),
        csrf: str = Form(""),
    ):
        person = acting(request, csrf)
        try:
            number = float(value)
        except ValueError:
            raise AuditError(f"{value!r} is not a number") from None
        before, after = server.adjust(sample_id, threshold, number, person, reason)
        request.session["change"] = [
            {"population": p, "before": before.get(p, ""), "after": after.get(p, "")}
            for p in dict.fromkeys([*before, *after])
        ]
        request.session["message"] = f"{threshold} set to {number:g}; {sample_id} re-gated"
        return RedirectResponse(f"/sample/{sample_id}", status_code=303)

    @app.post("/sample/{sample_id}/decide")
    def decide(
        request: Request,
        sample_id: str,
        action: str = Form(...),
        reason: str = Form(""),
        password: str = Form(""),
        csrf: str = Form(""),
    ):
        person = acting(request, csrf)
        if action not in ("approve", "exclude"):
            raise HTTPException(400, "action must be approve or exclude")
        reauthenticate(request, password)
        server.decide([sample_id], action, person, reason)
        request.session["message"] = f"{sample_id}: {action}d"
        return RedirectResponse(f"/sample/{sample_id}", status_code=303)

    @app.post("/sample/{sample_id}/undo")
    def undo(request: Request, sample_id: str, reason: str = Form(""), csrf: str = Form("")):
        person = acting(request, csrf)
        action = server.undo(sample_id, person, reason)
        request.session["message"] = f"{sample_id}: the last {action} is undone"
        return RedirectResponse(f"/sample/{sample_id}", status_code=303)

    @app.get("/signoff", response_class=HTMLResponse)
    def signoff_page(request: Request):
        if not who(request):
            return login_page(request)
        with server.lock:
            rows = signoff_rows(server)
            entries = len(server.log.entries())
            head = server.log.head()
        return render(
            request, "signoff.html", title="Sign-off", rows=rows, entries=entries, head=head
        )

    @app.post("/signoff/approve")
    def approve_visit(
        request: Request,
        visit: str = Form(...),
        panel: str = Form(...),
        reason: str = Form(""),
        password: str = Form(""),
        csrf: str = Form(""),
    ):
        person = acting(request, csrf)
        reauthenticate(request, password)
        with server.lock:
            rows = today_rows(server)
        pending = rows[
            (rows.visit == visit)
            & (rows.panel == panel)
            & (rows.status == "processed")
            & rows.review_status.isin(["to_review", "overridden"])
        ]
        count = server.decide(list(pending.sample_id), "approve", person, reason)
        request.session["message"] = f"{count} sample(s) of {visit} {panel} approved"
        return RedirectResponse("/signoff", status_code=303)

    @app.post("/publish")
    def publish(request: Request, csrf: str = Form("")):
        acting(request, csrf)
        error = server.publish()
        request.session["message"] = "results and the cohort report rewritten" + (
            f"; clinical input problem: {error}" if error else ""
        )
        return RedirectResponse("/signoff", status_code=303)

    @app.get("/plot/{sample_id}.png")
    def plot(request: Request, sample_id: str, compact: int = 0):
        if not who(request):
            raise HTTPException(401, "sign in first")
        with server.lock:
            server.sample(sample_id)
            png = sample_plot(server, sample_id, bool(compact))
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.get("/hist/{sample_id}/{threshold}.json")
    def threshold_histogram(request: Request, sample_id: str, threshold: str):
        """The events a threshold is placed among, binned, with its current value: what the
        sample page draws to drag the threshold on."""
        if not who(request):
            raise HTTPException(401, "sign in first")
        with server.lock:
            server.sample(sample_id)
            return threshold_bins(server, sample_id, threshold)

    @app.get("/audit.csv")
    def audit_csv(request: Request):
        if not who(request):
            raise HTTPException(401, "sign in first")
        with server.lock:
            entries = server.log.entries()
        frame = pd.DataFrame([e.__dict__ for e in entries])
        return PlainTextResponse(frame.to_csv(index=False), media_type="text/csv")

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
    flagged = drift.loc[drift.flagged.astype(bool)].groupby("sample_id").key.apply(list).to_dict()
    attention = []
    for r in samples.itertuples():
        items = []
        if r.status == "failed":
            items.append("failed")
        flags = str(r.qc_flags or "").split(";")
        items += [f for f in flags if f.startswith(("default_threshold", "default_gate"))]
        items += [f for f in flags if f.startswith(("low_count", "high_qc_loss"))]
        items += [f"drift {k}" for k in flagged.get(r.sample_id, [])]
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
    marks = server.store.current_gates()
    marks = marks[marks.kind == "threshold"]
    rows = [
        (
            r.sample_id,
            r.patient_id,
            r.visit,
            f"threshold {r.gate}",
            json.loads(r.parameters)["value"],
        )
        for r in marks.itertuples()
    ]
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
        for marker in getattr(gate, "limits", {})
        if not marker.startswith(("FSC", "SSC"))
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

    def grid(prefix: str, fmt: str) -> list:
        out = []
        for key in dict.fromkeys(k for k in mine.key if k.startswith(prefix)):
            cells = []
            for v in visits:
                hit = mine[(mine.key == key) & (mine.visit == v)]
                if hit.empty:
                    cells.append(None)
                    continue
                h = hit.iloc[0]
                flag = f"moved {h.move:+.3g} (z {h.z:+.1f})" if h.flagged else ""
                cells.append({"text": fmt.format(h.value), "flag": flag})
            out.append((key.removeprefix(prefix), cells))
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
            how = "data" if g.from_data else "default"
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
    return {
        "s": sample,
        "state": state,
        "flags": (sample["qc_flags"] or "").replace(";", "; "),
        "gates": gates,
        "thresholds": thresholds,
        "populations": populations,
        "qc": qc,
        "trail": trail,
    }


def _describe(detail: dict) -> str:
    if "threshold" in detail:
        old = detail.get("old")
        old_text = f"{old:.3f}" if isinstance(old, (int, float)) else "?"
        text = f"{detail['threshold']}: {old_text} -> {float(detail['new']):.3f}"
        if "undoes" in detail:
            text = f"undo #{detail['undoes']} ({text})"
        return text
    if "undoes" in detail:
        return f"undo #{detail['undoes']} ({detail.get('action', '')})"
    return ""


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


def sample_plot(server: ReviewServer, sample_id: str, compact: bool) -> bytes:
    """A PNG of the sample's gates on their parents' events (compact: fixed axes, for the
    patient page's side-by-side view)."""
    from reports.review_plots import gate_grid_png

    return gate_grid_png(server.study, server.store, sample_id, compact)
