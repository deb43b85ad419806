"""Spillover compensation: checked against the file's channels, applied to the channels in use."""

from __future__ import annotations

import numpy as np

from panels.errors import ImmunomonError
from panels.fcs import FcsData


class CompensationError(ImmunomonError):
    """A spillover matrix that does not fit the file's channels."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)

    def __reduce__(self):  # picklable, so a worker process can report it
        return (type(self), (self.reason,))


def check_spillover_channels(spill_channels: list[str], spill: np.ndarray, pnn: list[str]) -> None:
    """Refuse a spillover matrix that does not fit the file's channels or cannot be inverted."""
    unknown = [c for c in spill_channels if c not in pnn]
    if unknown:
        raise CompensationError(
            f"the spillover matrix names channel(s) {', '.join(unknown)} that the file does not "
            f"have (its channels: {', '.join(pnn)}): re-export with the matching compensation"
        )
    if spill.shape != (len(spill_channels), len(spill_channels)):
        raise CompensationError("the spillover matrix is not square over its channels")
    if not np.all(np.isfinite(spill)) or abs(np.linalg.det(spill)) < 1e-12:
        raise CompensationError(
            "the spillover matrix is singular and cannot be inverted: re-export the file with "
            "the compensation set up in the acquisition software"
        )


def compensated_channels(
    data: FcsData,
    wanted: list[str],
    spillover: tuple[list[str], np.ndarray] | None,
    rows: np.ndarray | None = None,
    dtype: type = np.float64,
) -> dict[str, np.ndarray]:
    """Values of the ``wanted`` channels, with the spillover removed where it applies.

    Observed detector signal is true signal times the spillover matrix (rows: fluorochromes,
    columns: detectors), so true signal is ``observed @ inv(S)``. Only the wanted columns are
    computed, in float64, a block of events at a time (so a 30-channel file never exists as
    float64 whole), then stored as ``dtype``. ``rows`` (event indices) limits the work to
    those events.
    """
    n = data.header.n_events if rows is None else len(rows)

    def blocks():
        for start in range(0, n, _BLOCK_ROWS):
            block = slice(start, min(start + _BLOCK_ROWS, n))
            yield block, (block if rows is None else rows[block])

    out: dict[str, np.ndarray] = {}
    targets: list[str] = []
    if spillover is not None:
        spill_channels, spill = spillover
        check_spillover_channels(spill_channels, spill, data.header.pnn)
        targets = [c for c in wanted if c in spill_channels]
        unmix = np.linalg.inv(spill)[:, [spill_channels.index(c) for c in targets]]
        # One row per channel, so each channel's values are contiguous.
        result = np.empty((len(targets), n), dtype=dtype)
        for block, events in blocks():
            result[:, block] = unmix.T @ data.channels(spill_channels, events).T
        out = {c: result[k] for k, c in enumerate(targets)}
    for c in wanted:
        if c not in out:
            values = np.empty(n, dtype=dtype)
            for block, events in blocks():
                values[block] = data.channel(c, events)
            out[c] = values
    return out


_BLOCK_ROWS = 1 << 16
