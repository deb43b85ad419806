"""What the simulators share when they write a study: the spillover matrix and its keyword,
the study folder with its study.yaml, and the per-event truth."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import yaml


def spillover_matrix(names: Sequence[str], pairs: Mapping[tuple[str, str], float]) -> np.ndarray:
    """The spillover matrix over ``names`` (rows: the emitting dye or detector), the share
    each pair ``(a, b)`` of ``pairs`` names, 1 on the diagonal, 0 elsewhere."""
    matrix = np.eye(len(names))
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            matrix[i, j] = pairs.get((a, b), matrix[i, j])
    return matrix


def spillover_keyword(detectors: Sequence[str], matrix: np.ndarray) -> str:
    """The $SPILLOVER keyword's value: the count, the detectors, the matrix row by row."""
    return ",".join([str(len(detectors)), *detectors, *(f"{v:.6g}" for v in matrix.ravel())])


def start_study(
    root: str | Path, study: Mapping, folders: Sequence[str] = ("inbox", "truth")
) -> Path:
    """Create the study folder with ``folders`` and write ``study`` as its study.yaml."""
    root = Path(root)
    for sub in folders:
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "study.yaml").write_text(yaml.safe_dump(dict(study), sort_keys=False))
    return root


def save_truth(root: Path, sample_id: str, labels: np.ndarray, label_names: Sequence[str]) -> None:
    """truth/SAMPLE.npz: one label per event written, and the label names."""
    np.savez_compressed(
        root / "truth" / f"{sample_id}.npz", labels=labels, label_names=np.array(label_names)
    )
