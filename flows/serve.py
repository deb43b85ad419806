"""Prefect deployments for a study: the nightly flow on its cron schedule, and reports on demand.

    immunomon serve --study STUDY

serves both from this process against the Prefect API in use: the ephemeral one by default, or
a server given by PREFECT_API_URL (e.g. one started with `prefect server start`, whose UI then
shows every run).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from cohort.study import Study
from flows.nightly import nightly_flow, report_flow
from flows.worker_pool import local_workers


def deployment_name(study: Study) -> str:
    """The study's name and a short digest of its folder: two folders whose study.yaml carry
    the same name (a copy, a training study) never take each other's deployments."""
    slug = re.sub(r"[^a-z0-9]+", "-", study.config.study.lower()).strip("-") or "study"
    return f"{slug}-{hashlib.sha256(str(study.root).encode()).hexdigest()[:6]}"


def build_deployments(
    study_root: str | Path, workers: int | None = None, dask_address: str | None = None
) -> list:
    """The nightly deployment (cron and time zone from study.yaml) and the report deployment.

    With ``dask_address`` the nightly pass runs its per-sample tasks on that Dask cluster."""
    study = Study(study_root)
    name = deployment_name(study)
    root = str(study.root)
    parameters = {"study_root": root, "workers": local_workers(workers, dask_address)}
    if dask_address:
        parameters["dask_address"] = dask_address
    nightly = nightly_flow.to_deployment(
        name=f"{name}-nightly",
        cron=study.config.schedule,
        parameters=parameters,
        description=f"Nightly pass over {root}: intake, processing, statistics, reports.",
        tags=["immunomon", name],
    )
    # to_deployment takes no time zone; set it on the schedule it built.
    for schedule in nightly.schedules or []:
        schedule.schedule.timezone = study.config.timezone
    report = report_flow.to_deployment(
        name=f"{name}-report",
        parameters={"study_root": root},
        description=f"Rewrite results and reports of {root} from the store.",
        tags=["immunomon", name],
    )
    return [nightly, report]


def serve_study(
    study_root: str | Path, workers: int | None = None, dask_address: str | None = None
) -> None:
    """Serve the study's deployments until interrupted; schedules stay active on shutdown."""
    from prefect import serve

    serve(*build_deployments(study_root, workers, dask_address), pause_on_shutdown=False)
