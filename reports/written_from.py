"""What the results and the cohort report were last written from, kept beside them in
results/written_from.json: the sha256 of each input (``reports.outputs.output_inputs``) and of
each output, so an unchanged pass can leave them as they are and a changed input, a missing
or an altered output has them written again."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

# What the cohort step writes, relative to the study folder.
COHORT_OUTPUTS = (
    "results/samples.csv",
    "results/populations.csv",
    "results/mfi.csv",
    "results/clinical_windows.csv",
    "results/km_curves.csv",
    "results/statistics.csv",
    "reports/cohort_report.pdf",
)
WRITTEN_FROM = "results/written_from.json"


def sha256_of_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _record(root: Path) -> dict:
    try:
        record = json.loads((root / WRITTEN_FROM).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def written_at(root: Path) -> str:
    """When the outputs were last written completely (UTC), 'before' without a record."""
    return str(_record(root).get("written_at", "before"))


def changed_inputs(root: Path, inputs: dict[str, str]) -> list[str]:
    """Why the outputs of the study at ``root`` must be written again ([] when they need
    not): the inputs that changed since they were last written completely, and the outputs
    missing or altered since. No record (never written, or the last write left something
    out): they must."""
    record = _record(root)
    before, outputs = record.get("inputs"), record.get("outputs")
    if not isinstance(before, dict) or not isinstance(outputs, dict):
        return ["no record of a complete write"]
    changed = sorted(
        name for name in set(before) | set(inputs) if before.get(name) != inputs.get(name)
    )
    for name in COHORT_OUTPUTS:
        path = root / name
        if not path.is_file() or outputs.get(name) != sha256_of_file(path):
            changed.append(f"{name} missing or altered")
    return changed


def forget_written_from(root: Path) -> None:
    """Drop the record before the outputs are written: a write that stops half way leaves
    none, so the next pass writes them again."""
    (root / WRITTEN_FROM).unlink(missing_ok=True)


def record_written_from(root: Path, inputs: dict[str, str]) -> None:
    """After a complete write: the inputs' sha256 and the outputs' own."""
    record = {
        "written_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        "inputs": inputs,
        "outputs": {
            name: sha256_of_file(root / name) for name in COHORT_OUTPUTS if (root / name).is_file()
        },
    }
    path = root / WRITTEN_FROM
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(record, indent=1, sort_keys=True))
    temporary.replace(path)  # whole or not at all
