"""Spillover compensation and the display transforms gates are placed in."""

from __future__ import annotations

import numpy as np
from flowutils import transforms


class CompensationError(Exception):
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


def compensate(
    events: np.ndarray, pnn: list[str], spill_channels: list[str], spill: np.ndarray
) -> np.ndarray:
    """Return a copy of ``events`` with the spillover removed from ``spill_channels``.

    Observed detector signal is true signal times the spillover matrix (rows: fluorochromes,
    columns: detectors), so the true signal solves ``observed = true @ S``.
    """
    check_spillover_channels(spill_channels, spill, pnn)
    idx = [pnn.index(c) for c in spill_channels]
    out = events.copy()
    out[:, idx] = np.linalg.solve(spill.T, events[:, idx].T).T
    return out


def logicle(values: np.ndarray, t: float, w: float, m: float, a: float) -> np.ndarray:
    """Logicle (Parks 2006, GatingML 2.0 scaling to [0, 1]) of a 1-D array."""
    column = np.ascontiguousarray(values, dtype=np.float64).reshape(-1, 1)
    return transforms.logicle(column, [0], t=t, m=m, w=w, a=a).ravel()


def linear_unit(values: np.ndarray, t: float) -> np.ndarray:
    """Scatter scaled to [0, 1] of the channel range (GatingML 'flin' with A=0)."""
    return np.asarray(values, dtype=np.float64) / t
