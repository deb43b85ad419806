"""Prefect's API, brought up ahead of the first flow run of a command."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def prefect_api_starting() -> Iterator[None]:
    """Bring Prefect's API up in a background thread while the block runs; when the block ends
    the API answers (or its start-up error is raised here).

    With no PREFECT_API_URL set, Prefect runs a temporary server in a subprocess, about 4 s of
    one core to start; a command overlaps that with loading its own code. Start no flow inside
    the block: a second caller of Prefect's start-up returns before the server answers.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        # The temporary server's module (~1.6 s) is imported here, not in the thread, so the
        # two threads do not import the same modules at once.
        import prefect.server.api.server  # noqa: F401

    failures: list[BaseException] = []

    def start() -> None:
        try:
            with get_client(sync_client=True) as client:
                client.hello()
        except BaseException as error:  # handed to the caller's thread below
            failures.append(error)

    thread = threading.Thread(target=start, name="prefect-api-start", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()
    if failures:
        raise failures[0]
