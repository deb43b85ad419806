"""The immunomon command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from panels.errors import ImmunomonError


def _cmd_demo(args: argparse.Namespace) -> int:
    from simulate.demo import DemoOptions, simulate_study

    root = Path(args.study)
    if (root / "study.yaml").exists() and not args.force:
        print(f"{root} already holds a study: running a pass on it (--force writes a new demo)")
        return 0 if args.no_run else _run(root, args.workers)
    events = 1_000_000 if args.large else args.events
    started = time.perf_counter()
    simulate_study(root, DemoOptions(events_per_file=events, seed=args.seed))
    n_files = len(list((root / "inbox").iterdir()))
    print(
        f"demo study written to {root} ({n_files} inbox files, "
        f"{events} events per file) in {time.perf_counter() - started:.1f} s"
    )
    if args.no_run:
        return 0
    return _run(root, args.workers)


@contextmanager
def _ready_for_passes(workers: int | None, dask_address: str | None) -> Iterator[None]:
    """Worker processes loaded, Prefect's API up and the flow imported, all three started in
    parallel; the workers stay open for the passes run inside the block.

    The pool is opened before anything imports Prefect, so the workers load while this process
    imports the flow and Prefect's server starts.
    """
    from flows.worker_pool import dask_worker_pool, local_workers, sample_worker_pool

    # Connected first: the Dask workers load the sample code while Prefect starts here.
    pool = dask_worker_pool(dask_address) if dask_address else None
    with pool or sample_worker_pool(local_workers(workers)):
        from flows.prefect_api import prefect_api_running, prefect_api_starting

        with prefect_api_running():
            with prefect_api_starting():
                import flows.nightly  # noqa: F401
            yield


def _check_study(root: Path, wait: bool = True) -> None:
    """Fail fast, before any worker or Prefect starts: the folder, study.yaml, its panels and
    their strategies must load, and with ``wait`` False no other pass may hold the study (each
    problem is one line, exit code 2)."""
    from cohort.study import Study
    from flows.prefect_api import retention

    retention()  # a bad IMMUNOMON_PREFECT_RETENTION_DAYS is a mistake like the others
    study = Study(root)
    study.strategies  # noqa: B018 (loading is the check)
    study.inbox_files()
    if not wait:
        with study.exclusive(wait=False):
            pass


def _run(
    root: Path, workers: int | None, dask_address: str | None = None, wait: bool = True
) -> int:
    started = time.perf_counter()
    _check_study(root, wait)
    with _ready_for_passes(workers, dask_address):
        from flows.nightly import run_study

        summary = run_study(root, workers, dask_address=dask_address, wait=wait)
    print(
        f"run {summary.run_id}: {summary.seen} files seen, {summary.processed} processed, "
        f"{summary.unchanged} unchanged, {summary.quarantined_total} quarantined "
        f"({summary.quarantined} new), {summary.failed} failed in "
        f"{time.perf_counter() - started:.1f} s"
    )
    if summary.quarantined_total:
        print(f"  reasons: {root / 'quarantine'}/*.reason.txt")
    if summary.cohort_error:  # bad clinical input: the user's to fix
        print(f"incomplete: {summary.outputs}", file=sys.stderr)
        return 2
    if summary.failed:
        print(
            f"failed to process (retried next run): {', '.join(summary.failed_files)}",
            file=sys.stderr,
        )
        return 1
    print(f"  results: {root / 'results'}  report: {root / 'reports' / 'cohort_report.pdf'}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    return _run(Path(args.study), args.workers, args.dask, wait=not args.no_wait)


def _cmd_watch(args: argparse.Namespace) -> int:
    root = Path(args.study)
    _check_study(root)
    mode = "polling" if args.polling else "inotify"
    # Ready before the first file lands, so a drop costs only its own work.
    with _ready_for_passes(args.workers, args.dask):
        from flows.nightly import run_study
        from flows.watch import watch_inbox

        def run(hold: list[str]) -> None:
            summary = run_study(
                root,
                args.workers,
                hold,
                dask_address=args.dask,
                copy_window=(args.settle, args.timeout),  # intake judges copies as we do
            )
            print(
                f"run {summary.run_id}: {summary.processed} processed, "
                f"{summary.quarantined_total} quarantined ({summary.quarantined} new), "
                f"{summary.failed} failed; "
                f"still copying: {len(hold)}",
                flush=True,
            )

        print(
            f"watching {root / 'inbox'} ({mode}, settle {args.settle:g} s); Ctrl-C to stop",
            flush=True,
        )
        watch_inbox(
            root,
            run,
            settle_seconds=args.settle,
            incomplete_timeout=args.timeout,
            polling=args.polling,
            poll_interval=args.poll_interval,
        )
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from flows.prefect_api import prefect_api_running
    from flows.serve import serve_study

    _check_study(Path(args.study))
    with prefect_api_running():
        serve_study(args.study, args.workers, args.dask)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from cohort.study import Study
    from flows.outcome import rewrite_cohort_outputs, study_store
    from reports.outputs import write_qc_report_from_store

    study = Study(args.study)
    if args.sample:
        with study_store(study) as store:
            try:
                path = write_qc_report_from_store(study, store, args.sample)
            except LookupError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
        print(f"QC report written: {path}")
        return 0
    outputs, error = rewrite_cohort_outputs(
        study, waiting=lambda line: print(line, file=sys.stderr, flush=True)
    )
    if error:
        print(f"incomplete: {outputs}", file=sys.stderr)
        return 2
    print(outputs)
    return 0


def _cmd_gates_export(args: argparse.Namespace) -> int:
    from cohort.study import Study
    from flows.gates_export import check_export, export_study_gates
    from flows.outcome import study_store

    study = Study(args.study)
    with study_store(study) as store:
        one = args.format == "gatingml" and args.sample and len(args.sample) == 1
        out = args.out
        if one and not out:  # one sample's GatingML: one file, as before
            out = study.results_dir / "gates" / f"{args.sample[0]}.xml"
        started = time.perf_counter()
        export = export_study_gates(study, store, args.format, out, args.sample)
        if args.format == "wsp":
            print(
                f"FlowJo 10 workspace with {len(export.samples)} samples: {export.path} "
                f"({time.perf_counter() - started:.1f} s)"
            )
        elif one:
            sample_id = args.sample[0]
            record = store.current_sample(sample_id)
            print(
                f"GatingML 2.0 for {sample_id} ({record['file_name']}, result "
                f"{record['sample_key']}): {export.files[sample_id]}"
            )
        else:
            print(
                f"GatingML 2.0, one file per sample, {len(export.samples)} samples: "
                f"{export.path} ({time.perf_counter() - started:.1f} s)"
            )
        for sample_id, reason in export.skipped.items():
            print(f"left out {sample_id}: {reason}", file=sys.stderr)
        if args.check:
            checks = check_export(export, args.format)
            wrong = [c for c in checks if not c.agrees]
            for c in wrong:
                print(
                    f"check: {c.sample_id} {c.gate}: ours {c.ours}, flowkit {c.theirs}",
                    file=sys.stderr,
                )
            equal = sum(c.theirs == c.ours for c in checks)
            print(
                f"check: flowkit reads back {len(checks)} gate counts of {len(export.samples)} "
                f"samples: {equal} equal to ours, {len(checks) - len(wrong) - equal} within "
                f"the ellipse tolerance, {len(wrong)} different"
            )
            if wrong:
                return 1
    return 0


def _cmd_reference_build(args: argparse.Namespace) -> int:
    from cohort.references import build_panel_reference
    from cohort.study import Study, StudyError
    from flows.outcome import study_store
    from reports.outputs import software_version

    study = Study(args.study)
    if args.panel not in study.config.panels:
        raise StudyError(
            f"{study.root / 'study.yaml'}: no panel {args.panel!r} (panels: "
            f"{', '.join(study.config.panels)})"
        )
    visits = set(args.visits.split(",")) if args.visits else None
    # Under the study's lock: not while a run is writing results.
    with study_store(study, exclusive=True) as store:
        current = store.current_populations().drop_duplicates("sample_id")
        chosen = current[
            (current.panel == args.panel) & current.visit.isin(visits or current.visit)
        ]
        files = [study.inbox / store.current_sample(s)["file_name"] for s in chosen.sample_id]
        files = [path for path in files if path.is_file()]
        reference, path = build_panel_reference(study, args.panel, files, software_version())
        _audit_reference_build(study, args.panel, path, len(files), args.visits)
    for name, t in reference.thresholds.items():
        print(
            f"{name}: offset {t.offset:+.4f} from the landmark, placed by {t.method} on "
            f"{t.events} events of {t.samples} samples"
        )
    print(f"wrote {path}; the next run re-gates the {args.panel} samples with it")
    return 0


def _audit_reference_build(study, panel: str, path: Path, samples: int, visits) -> None:
    """A built reference re-gates the panel: who built it, on what, and the file's sha256 go
    in the trail (anchored), as a template's setting does."""
    import hashlib

    from cohort.audit import AuditLog, anchors_path
    from cohort.review import reviewer_name
    from flows.outcome import study_store
    from reports.outputs import software_version

    with study_store(study) as store:
        AuditLog(store.conn, anchors=anchors_path(study.root)).append(
            reviewer_name(),
            "reference",
            f"study reference built for {panel} on {samples} samples"
            + (f" of visits {visits}" if visits else ""),
            software_version(),
            detail={
                "panel": panel,
                "path": path.name,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "samples": samples,
            },
        )


def _check_signer(study, who: str, role: str) -> None:
    """With personal accounts in the study, a study-wide change from the command line is
    signed as in review: ``--who`` is an account the audit trail vouches for, whose roles
    give ``role``, and its password is asked (first line of stdin from a script); without
    accounts the machine's users are trusted, as in loopback review."""
    import getpass

    from cohort.accounts import (
        AccountError,
        account_problem,
        check_password,
        role_refusal,
        user_names,
        user_roles,
    )
    from flows.outcome import study_store

    with study_store(study) as store:
        if not user_names(store.conn):
            return
        if who not in user_names(store.conn):
            raise AccountError(
                f"--who {who!r} is not an account of this study: give your own user name "
                "(a change is signed by the person who makes it)"
            )
        problem = account_problem(store.conn, study.root, who)
        if problem:
            raise AccountError(f"{problem}; nothing was changed")
        refusal = role_refusal(who, user_roles(store.conn, who), role)
        if refusal:
            raise AccountError(f"{refusal}; nothing was changed")
        if sys.stdin.isatty():
            password = getpass.getpass(f"password of {who} (signs this change): ")
        else:
            password = sys.stdin.readline().rstrip("\n")
        if not check_password(store.conn, who, password):
            raise AccountError(f"the password of {who} does not match: nothing was changed")


def _cmd_reference_set(args: argparse.Namespace) -> int:
    from cohort.study import Study
    from cohort.templates import TemplateError, set_template
    from flows.outcome import study_store
    from reports.outputs import software_version

    if args.from_wsp:
        return _reference_from_workspace(args)
    if args.threshold is None or args.value is None:
        raise TemplateError(
            "reference set needs --threshold and --value (or --from-wsp FILE: a FlowJo "
            "workspace's gates as the panel's template)"
        )
    if args.sample_group or args.template_sample:
        raise TemplateError("--sample-group and --template-sample go with --from-wsp")
    study = Study(args.study)
    _check_signer(study, args.who, "expert")
    with study_store(study, exclusive=True) as store:  # not while a run writes results
        change = set_template(
            study,
            store,
            args.panel,
            args.threshold,
            args.value,
            who=args.who,
            reason=args.reason,
            sample_id=args.sample,
            software=software_version(),
        )
    t = change.template
    on = f"sample {t.given_on}" if args.sample else "the pooled aligned samples"
    print(
        f"{t.threshold}: {t.value:.3f} on {on} (landmark {t.landmark:.3f}) = each sample's "
        f"landmark {t.offset:+.4f}, set by {t.set_by} (audit entry {change.audit_seq})"
    )
    if change.regates:
        print(f"wrote {change.path}; the next run re-gates the {args.panel} samples with it")
    else:
        print(f"wrote {change.path}; the offset is unchanged, so no sample is re-gated")
    return 0


def _reference_from_workspace(args: argparse.Namespace) -> int:
    from cohort.study import Study
    from cohort.templates import TemplateError, seed_from_workspace
    from flows.outcome import study_store
    from reports.outputs import software_version

    if args.threshold is not None or args.value is not None or args.sample:
        raise TemplateError(
            "--from-wsp reads every threshold from the workspace: leave out --threshold, "
            "--value and --sample (use --template-sample for the workspace's sample)"
        )
    study = Study(args.study)
    _check_signer(study, args.who, "expert")
    with study_store(study, exclusive=True) as store:  # not while a run writes results
        seeding = seed_from_workspace(
            study,
            store,
            args.panel,
            Path(args.from_wsp),
            who=args.who,
            reason=args.reason,
            group=args.sample_group or "All Samples",
            sample=args.template_sample,
            software=software_version(),
        )
    print(
        f"{seeding.workspace.name} (sha256 {seeding.sha256[:12]}), gates of sample "
        f"{seeding.sample_id}:"
    )
    for change in seeding.changes:
        t = change.template
        print(
            f"  {t.threshold}: {t.value:.3f} (landmark {t.landmark:.3f}) = each sample's "
            f"landmark {t.offset:+.4f} (audit entry {change.audit_seq})"
        )
    for what, why in seeding.not_used:
        print(f"  not used: {what}: {why}")
    print(f"wrote {seeding.changes[0].path}; the next run re-gates the {args.panel} samples")
    return 0


def _cmd_review(args: argparse.Namespace) -> int:
    import uvicorn

    from flows.review import create_app
    from flows.review_security import review_site, server_options

    study, site, accounts = review_site(args)
    app = create_app(study.root, accounts=accounts, site=site)
    print(f"review of {study.config.study}: {min(site.origins)}/ (Ctrl-C stops)")
    uvicorn.run(app, **server_options(site, args.tls_cert, args.tls_key))
    return 0


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    from cohort.audit import parse_anchor, verify_study_trail
    from cohort.study import Study
    from flows.outcome import study_store

    study = Study(args.study)
    anchors = [parse_anchor(text) for text in args.anchor or []]
    with study_store(study) as store:
        check = verify_study_trail(store.conn, study.root, anchors, args.anchors)
        unbound = [] if check.problems else _unbound_accounts(store.conn, study.root)
    for warning in check.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for problem in check.problems:
        print(f"{study.db_path}: audit trail broken: {problem}", file=sys.stderr)
    for problem in unbound:
        print(f"{study.db_path}: {problem}", file=sys.stderr)
    if check.problems or unbound:
        return 1
    print(
        f"audit trail intact: {check.entries} entries, head #{check.head_seq} sha256 "
        f"{check.head_hash}; {check.anchors} anchor(s) checked"
    )
    return 0


def _unbound_accounts(conn, study_root: Path) -> list[str]:
    """Why each account of the store that the trail does not vouch for cannot sign in."""
    from cohort.accounts import account_problem, user_names, vouched_accounts

    vouched = vouched_accounts(conn, study_root)
    problems = [account_problem(conn, study_root, name, vouched) for name in user_names(conn)]
    return [f"{p}; until then it cannot sign in or sign" for p in problems if p]


def _cmd_audit_export(args: argparse.Namespace) -> int:
    from cohort.audit import AuditLog
    from cohort.study import Study
    from flows.outcome import study_store

    study = Study(args.study)
    out = Path(args.out) if args.out else study.results_dir / "audit_trail.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with study_store(study) as store:
        count = AuditLog(store.conn).export_csv(out)
    print(f"wrote {count} audit entries to {out}")
    return 0


def _change_account(study_dir: str, change) -> Path:
    """Apply ``change(conn, by=..., software=..., anchors=...)`` (``cohort.accounts.add_user``
    or ``remove_user``, which audit and anchor it) under the login name; returns the store's
    path."""
    from cohort.audit import anchors_path
    from cohort.review import reviewer_name
    from cohort.study import Study
    from flows.outcome import study_store
    from reports.outputs import software_version

    study = Study(study_dir)
    with study_store(study) as store:
        change(
            store.conn,
            by=reviewer_name(),
            software=software_version(),
            anchors=anchors_path(study.root),
        )
    return study.db_path


def _cmd_users_add(args: argparse.Namespace) -> int:
    import getpass

    from cohort.accounts import DEFAULT_ROLES, AccountError, add_user, checked_roles
    from cohort.study import Study

    Study(args.study)  # a wrong study folder is named before a password is asked for
    roles = checked_roles(args.role or DEFAULT_ROLES)  # and a wrong role
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise AccountError("the two passwords differ: nothing was stored")
    else:  # from a script: the password on the first line of stdin
        password = sys.stdin.readline().rstrip("\n")
    db = _change_account(
        args.study, lambda conn, **audit: add_user(conn, args.name, password, roles, **audit)
    )
    print(f"account {args.name} ({', '.join(roles)}) added to {db}")
    return 0


def _cmd_users_remove(args: argparse.Namespace) -> int:
    from cohort.accounts import remove_user

    db = _change_account(args.study, lambda conn, **audit: remove_user(conn, args.name, **audit))
    print(f"account {args.name} removed from {db}; its review sessions have ended")
    return 0


def _cmd_process(args: argparse.Namespace) -> int:
    from panels.errors import readable_file
    from panels.resolve import PanelError, load_panel

    readable_file(args.file)  # before the gating stack (~1 s of imports) is loaded
    try:
        panel = load_panel(args.panel)
    except PanelError as as_given:
        # A study's panel token (BCELL, TREG) names the built-in panel of the same name: the
        # token a lab reads in its file names works here too.
        try:
            panel = load_panel(args.panel.lower())
        except PanelError:
            raise as_given from None
    from gating.apply import gate_file, load_panel_strategy
    from panels.fcs import FcsReadError

    # A panel file's strategy (YAML or .wsp) may be named relative to the panel file.
    strategy = load_panel_strategy(panel, Path(panel.source).parent)
    try:
        gating = gate_file(args.file, panel, strategy).gating
    except FcsReadError as exc:
        raise FcsReadError(args.file, exc.reason) from None  # name the path as given
    if args.json:
        print(
            json.dumps(
                {
                    "file": str(args.file),
                    "events": gating.n_events,
                    "needs_review": gating.needs_review,
                    "flags": gating.flags,
                    "not_measured": [
                        {"population": name, "missing_markers": list(markers)}
                        for name, markers in gating.not_measured.items()
                    ],
                    "populations": [
                        {
                            "population": p.population,
                            "parent": p.parent,
                            "count": p.count,
                            "parent_count": p.parent_count,
                            "pct_parent": round(p.pct_parent, 4),
                        }
                        for p in gating.populations
                    ],
                    "qc": [
                        {"step": q.name, "events_in": q.events_in, "removed": q.removed}
                        for q in gating.qc_steps
                    ],
                    "medians": [asdict(m) for m in gating.medians],
                },
                indent=2,
            )
        )
        return 0
    print(f"{args.file}: {gating.n_events} events, panel {panel.name}")
    for q in gating.qc_steps:
        print(f"  QC {q.name:15} removed {q.removed:8d} of {q.events_in:8d}  {q.detail}")
    print(f"  {'population':20} {'parent':14} {'count':>8} {'% parent':>9}")
    for p in gating.populations:
        print(f"  {p.population:20} {p.parent:14} {p.count:8d} {p.pct_parent:9.2f}")
    for name, markers in gating.not_measured.items():
        print(f"  {name:20} not measured: the tube has no {', '.join(markers)}")
    if gating.needs_review:
        print("  NEEDS REVIEW: a gate or threshold was placed by its default, or QC lost much")
    if gating.flags:
        print("  flags: " + "; ".join(gating.flags))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from panels.errors import readable_file
    from panels.fcs import FcsReadError, scan_header

    try:
        h = scan_header(readable_file(args.file))
    except FcsReadError as exc:
        print(f"{args.file}: rejected: {exc.reason}", file=sys.stderr)
        return 2
    print(f"file: {h.path}\nFCS version: {h.version}\ninstrument ($CYT): {h.instrument or '-'}")
    print(
        f"events: {h.n_events}\nchannels: {h.n_channels}\ndatatype: {h.datatype} "
        f"({'big' if h.byteorder == '>' else 'little'}-endian)"
    )
    spill = h.spillover()
    print(f"spillover: {f'{spill[1].shape[0]} x {spill[1].shape[1]}' if spill else 'none'}")
    for j, (n, s) in enumerate(zip(h.pnn, h.pns, strict=True), start=1):
        print(f"  P{j:<3} {n:24} {s:28} bits={h.pnb[j - 1]:<3} range={h.pnr[j - 1]:g}")
    for note in h.notes:
        print(f"repair: {note}")
    return 0


class _ProgressLine(logging.Handler):
    """Progress on stderr: one line rewritten in place on a terminal, a line per file
    otherwise (log files, systemd's journal)."""

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        if sys.stderr.isatty():
            sys.stderr.write("\r\x1b[2K" + text[: os.get_terminal_size(2).columns - 1])
            if record.args and record.args[0] == record.args[1]:  # the last file
                sys.stderr.write("\n")
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()


def _show_progress() -> None:
    logger = logging.getLogger("immunomon.progress")  # flows.nightly.PROGRESS_LOGGER
    logger.setLevel(logging.INFO)
    logger.propagate = False  # not also through Prefect's console handler
    if not any(isinstance(h, _ProgressLine) for h in logger.handlers):
        logger.addHandler(_ProgressLine())


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("immunomon")
    except PackageNotFoundError:  # run from a source tree without installing
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="immunomon",
        description="Flow-cytometry immunomonitoring for clinical trials: FCS files in a study "
        "folder's inbox/ become population counts, statistics and PDF reports.",
    )
    parser.add_argument("--version", action="version", version=f"immunomon {_version()}")
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="store_true", help="show Prefect's INFO logs")
    loudness.add_argument("-q", "--quiet", action="store_true", help="errors only, no progress")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="write a realistic demo study and run the pipeline on it")
    demo.add_argument("study", help="folder to create the demo study in")
    demo.add_argument("--events", type=int, default=30000, help="events per file (default 30000)")
    demo.add_argument("--large", action="store_true", help="1,000,000 events per file")
    demo.add_argument("--seed", type=int, default=20261125, help="random seed")
    demo.add_argument("--no-run", action="store_true", help="only write the study")
    demo.add_argument("--force", action="store_true", help="write over an existing study")
    demo.add_argument("--workers", type=int, default=None, help="parallel workers (default: cores)")
    demo.set_defaults(func=_cmd_demo)

    run = sub.add_parser("run", help="one pass of the nightly flow over a study folder")
    run.add_argument("--study", required=True, help="study folder (holds study.yaml)")
    run.add_argument(
        "--no-wait",
        action="store_true",
        help="exit (code 2) instead of waiting when another pass holds the study",
    )
    run.add_argument("--workers", type=int, default=None, help="parallel workers (default: cores)")
    run.add_argument("--dask", metavar="ADDRESS", help=DASK_HELP)
    run.set_defaults(func=_cmd_run)

    watch = sub.add_parser("watch", help="process inbox files as their copies complete")
    watch.add_argument("--study", required=True, help="study folder")
    watch.add_argument(
        "--settle",
        type=float,
        default=10.0,
        help="seconds a file's size must stay unchanged (default 10)",
    )
    watch.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        help="seconds after which an incomplete file is quarantined (default 3600)",
    )
    watch.add_argument(
        "--polling",
        action="store_true",
        help="poll the folder instead of inotify (needed on NFS/SMB shares)",
    )
    watch.add_argument("--poll-interval", type=float, default=2.0, help="seconds between looks")
    watch.add_argument("--workers", type=int, default=None, help="parallel workers")
    watch.add_argument("--dask", metavar="ADDRESS", help=DASK_HELP)
    watch.set_defaults(func=_cmd_watch)

    serve = sub.add_parser("serve", help="serve Prefect deployments: nightly schedule, reports")
    serve.add_argument("--study", required=True, help="study folder")
    serve.add_argument("--workers", type=int, default=None, help="parallel workers")
    serve.add_argument("--dask", metavar="ADDRESS", help=DASK_HELP)
    serve.set_defaults(func=_cmd_serve)

    report = sub.add_parser("report", help="rewrite results and reports without reprocessing")
    report.add_argument("--study", required=True, help="study folder")
    report.add_argument("--sample", help="only this sample's QC report (e.g. P01_M3_BCELL)")
    report.set_defaults(func=_cmd_report)

    gates = sub.add_parser("gates", help="the gates applied to the study's samples")
    gates_sub = gates.add_subparsers(dest="gates_command", required=True)
    export = gates_sub.add_parser(
        "export",
        help="write the applied gates as a FlowJo 10 workspace or GatingML 2.0",
        description="--format wsp: one FlowJo workspace with every current sample; "
        "--format gatingml: one GatingML file per sample, in a folder (one file with a "
        "single --sample).",
    )
    export.add_argument("--study", required=True, help="study folder")
    export.add_argument(
        "--sample",
        action="append",
        help="sample id, e.g. P01_M3_BCELL (repeat for several; default: every current sample)",
    )
    export.add_argument(
        "--format",
        choices=("gatingml", "wsp"),
        default="gatingml",
        help="wsp: one FlowJo 10 workspace; gatingml: GatingML 2.0 (default)",
    )
    export.add_argument(
        "--out",
        help="output: the .wsp file (default STUDY/results/gates/STUDY.wsp), the GatingML "
        "folder (default STUDY/results/gates/gatingml/), or one sample's .xml file "
        "(default STUDY/results/gates/ID.xml)",
    )
    export.add_argument(
        "--check",
        action="store_true",
        help="read the files back with flowkit and compare every gate count with ours "
        "(exit 1 on a difference)",
    )
    export.set_defaults(func=_cmd_gates_export)

    reference = sub.add_parser(
        "reference", help="study references for registered thresholds (landmark registration)"
    )
    reference_sub = reference.add_subparsers(dest="reference_command", required=True)
    build = reference_sub.add_parser(
        "build",
        help="place a panel's registered thresholds once on the study's processed samples, "
        "aligned on their landmarks; the panel is re-gated with it on the next run",
    )
    build.add_argument("--study", required=True, help="study folder")
    build.add_argument("--panel", required=True, help="panel token of the file names, e.g. TREG")
    build.add_argument(
        "--visits", help="only samples of these visits, comma-separated (e.g. BL for baseline)"
    )
    build.set_defaults(func=_cmd_reference_build)
    template = reference_sub.add_parser(
        "set",
        help="an expert template: set a registered threshold once for the panel, mapped to "
        "every sample through its own landmark (audited; re-gates the panel on the next run)",
    )
    template.add_argument("--study", required=True, help="study folder")
    template.add_argument("--panel", required=True, help="panel token, e.g. TREG")
    template.add_argument("--threshold", help="threshold name, e.g. t_cd45ra")
    template.add_argument("--value", type=float, help="logicle value (0..1)")
    template.add_argument(
        "--sample",
        help="the reference sample the value is read on (default: the pooled aligned scale "
        "of the study reference)",
    )
    template.add_argument(
        "--from-wsp",
        metavar="FILE",
        help="a FlowJo workspace: its rectangles named as the strategy's gates give the "
        "thresholds (instead of --threshold/--value), read on one of its samples",
    )
    template.add_argument(
        "--sample-group", help="with --from-wsp: the workspace's sample group (All Samples)"
    )
    template.add_argument(
        "--template-sample",
        help="with --from-wsp: the workspace's sample (a file name of the study's inbox) whose "
        "gates are read (default: the group's first that the study has)",
    )
    template.add_argument("--reason", required=True, help="why, in words (audit trail)")
    template.add_argument("--who", required=True, help="the name of the person setting it")
    template.set_defaults(func=_cmd_reference_set)

    review = sub.add_parser(
        "review", help="the review and sign-off pages in the browser (http://127.0.0.1:8765)"
    )
    review.add_argument("--study", required=True, help="study folder")
    review.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    review.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: loopback only; any other needs personal "
        "accounts, see 'users add')",
    )
    review.add_argument(
        "--public-url",
        default="",
        help="the address people type when it is not the listening one, e.g. "
        "https://review.lab.example behind a TLS proxy (pages are served to it only)",
    )
    review.add_argument("--tls-cert", help="serve https with this certificate (PEM)")
    review.add_argument("--tls-key", help="the certificate's private key (PEM)")
    review.add_argument(
        "--trusted-proxy",
        default="",
        help="the reverse proxy's address: its X-Forwarded-For/-Proto are believed "
        "(no one's are by default)",
    )
    review.set_defaults(func=_cmd_review)

    audit = sub.add_parser("audit", help="the study's audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="recompute the hash chain of the audit trail")
    verify.add_argument("--study", required=True, help="study folder")
    verify.add_argument(
        "--anchor",
        action="append",
        metavar="ENTRY:SHA256",
        help="an anchor as the cohort report prints it (repeatable)",
    )
    verify.add_argument(
        "--anchors",
        action="append",
        metavar="FILE",
        help="anchor file(s) to check against (default: STUDY/audit_anchors.jsonl; give a "
        "copy kept outside the study folder to catch a rewritten one)",
    )
    verify.set_defaults(func=_cmd_audit_verify)
    dump = audit_sub.add_parser("export", help="write the audit trail as CSV")
    dump.add_argument("--study", required=True, help="study folder")
    dump.add_argument("--out", help="output file (default: STUDY/results/audit_trail.csv)")
    dump.set_defaults(func=_cmd_audit_export)

    users = sub.add_parser("users", help="personal accounts for review from another machine")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    add = users_sub.add_parser(
        "add",
        help="add an account (the password is asked twice; audited, anchored): its roles "
        "say what it may do",
    )
    add.add_argument("name", help="the person's user name, e.g. jdupont")
    add.add_argument("--study", required=True, help="study folder")
    add.add_argument(
        "--role",
        action="append",
        metavar="ROLE",
        help="reviewer: adjust, redraw, approve, exclude, undo, sign off; expert: also study "
        "templates (review pages, 'reference set') and publishing; monitor: read only "
        "(pages, audit trail, report). Repeat for several; default: reviewer. To change "
        "roles, remove the account and add it again",
    )
    add.set_defaults(func=_cmd_users_add)
    remove = users_sub.add_parser("remove", help="remove an account (its sessions end)")
    remove.add_argument("name", help="the person's user name")
    remove.add_argument("--study", required=True, help="study folder")
    remove.set_defaults(func=_cmd_users_remove)

    process = sub.add_parser("process", help="gate one FCS file outside any study")
    process.add_argument("file", help="FCS file")
    process.add_argument("--panel", required=True, help="panel name (bcell, treg) or panel file")
    process.add_argument("--json", action="store_true", help="print JSON")
    process.set_defaults(func=_cmd_process)

    inspect = sub.add_parser("inspect", help="show what an FCS file's header declares")
    inspect.add_argument("file", help="FCS file")
    inspect.set_defaults(func=_cmd_inspect)
    return parser


DASK_HELP = (
    "run the per-sample tasks on the Dask cluster whose scheduler is at ADDRESS "
    "(e.g. tcp://host:8786); its workers need immunomon installed and the study folder "
    "at the same path"
)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `immunomon` console script."""
    args = build_parser().parse_args(argv)
    # Before Prefect is imported: INFO reaches the Prefect server (the lab's window on the
    # runs), the terminal shows warnings (-v: everything, -q: errors only) and progress lines;
    # no telemetry from a machine that is offline.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    console = "INFO" if args.verbose else "ERROR" if args.quiet else "WARNING"
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", console)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if not args.quiet:
        _show_progress()
    stopped_by: list[int] = []

    def stop(signum: int, _frame) -> None:
        # SIGTERM (systemd, Docker, Prefect cancellation) stops a command as Ctrl-C does.
        stopped_by.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        name = "SIGTERM" if stopped_by else "Ctrl-C"
        print(
            f"stopped ({name}): samples already stored are kept, none is half-written; "
            "the next pass does the rest",
            file=sys.stderr,
        )
        return 143 if stopped_by else 130
    except ImmunomonError as exc:  # a user's mistake: one line, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
