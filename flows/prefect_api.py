"""Prefect's API, brought up ahead of the first flow run of a command."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class PrefectApiError(RuntimeError):
    """Prefect's API did not answer; the message says which one and what to check."""


@contextmanager
def prefect_api_starting() -> Iterator[None]:
    """Bring Prefect's API up in a background thread while the block runs; when the block ends
    the API answers, or ``PrefectApiError`` is raised here.

    With no PREFECT_API_URL set, Prefect runs a temporary server in a subprocess, about 4 s of
    one core to start; a command overlaps that with loading its own code. Start no flow inside
    the block: a second caller of Prefect's start-up returns before the server answers.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        # The temporary server's module (~1.6 s) is imported here, not in the thread, so the
        # two threads do not import the same modules at once.
        import prefect.server.api.server  # noqa: F401

    failures: list[Exception] = []

    def start() -> None:
        try:
            with get_client(sync_client=True) as client:
                client.hello()
        except Exception as error:  # handed to the caller's thread below
            failures.append(error)

    # In the caller's context, so settings made for this block (a test harness) hold there.
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(start,), name="prefect-api-start")
    thread.daemon = True
    thread.start()
    try:
        yield
    finally:
        thread.join()
    if failures:
        if url:
            where = f"the Prefect server at {url}"
            advice = (
                "start it or check the address, "
                "or unset PREFECT_API_URL to use a temporary local one"
            )
        else:
            where = "Prefect's temporary local server"
            advice = "check that PREFECT_HOME (default ~/.prefect) is writable and has free space"
        raise PrefectApiError(f"{where} did not answer ({failures[0]}); {advice}") from failures[0]
