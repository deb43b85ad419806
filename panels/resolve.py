"""Panel definitions and the resolution of markers to the channels of one file.

Real files name the same marker in many ways ("CD19", "CD19 PE-Cy7", "PE-Cy7-CD19",
"CD19-PECy7", "HLADR"), in $PnS or only in $PnN. A label is cut into words at spaces and
punctuation other than hyphens; hyphen-joined pieces are re-joined in every contiguous run, so
"HLA-DR-BV605" offers "HLADR" and "PE-Cy7-CD19" offers "CD19", while "CD45RA" never offers
"CD45". A marker must match exactly one channel, from $PnS first, else from $PnN.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from panels.config_files import find_config_file, load_yaml_model
from panels.errors import ImmunomonError
from panels.fcs import FcsHeader

SCATTER_ALIASES: dict[str, tuple[str, ...]] = {
    "FSC-A": ("FSC-A", "FS-A", "FSC_A", "FSC-AREA", "FS INT", "FSC"),
    "FSC-H": ("FSC-H", "FS-H", "FSC_H", "FSC-HEIGHT", "FS PEAK"),
    "FSC-W": ("FSC-W", "FS-W", "FSC_W", "FSC-WIDTH", "FS TOF"),
    "SSC-A": ("SSC-A", "SS-A", "SSC_A", "SSC-AREA", "SS INT", "SSC"),
    "SSC-H": ("SSC-H", "SS-H", "SSC_H", "SSC-HEIGHT", "SS PEAK"),
    "SSC-W": ("SSC-W", "SS-W", "SSC_W", "SSC-WIDTH"),
}
# Scatter roles every YAML strategy needs (the lymphocyte gate); pulse roles are optional.
REQUIRED_SCATTER = ("FSC-A", "SSC-A")
TIME_ALIASES = ("TIME", "HDR-T", "TIME-A", "CLOCK")


class PanelError(ImmunomonError):
    """A file whose channels do not fit its panel; ``reason`` names the markers."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)

    def __reduce__(self):  # picklable, so a worker process can report it
        return (type(self), (self.reason,))


@dataclass(frozen=True)
class Panel:
    """A staining panel: its markers (with spellings), transform parameters and strategy."""

    name: str
    title: str
    markers: dict[str, tuple[str, ...]]
    logicle_w: float = 0.5
    logicle_m: float = 4.5
    logicle_a: float = 0.0
    strategy: str = ""
    source: str = ""
    # With a FlowJo workspace as strategy: group, template_sample, populations (name -> gate).
    workspace: dict = field(default_factory=dict)
    # The gate at which the files enter the strategy's tree, for exports of an already gated
    # population (FlowJo, Diva, CyTOF-style; no scatter): the QC and gates above it are not
    # run and the samples are flagged so (``gating.pipeline``). Empty: the whole tree.
    enters_at: str = ""

    @property
    def uses_workspace(self) -> bool:
        """Gated by a FlowJo workspace (its gates name the channels they need): a .wsp file,
        or an .xml one (``gating.apply`` checks that its content is a workspace)."""
        return self.strategy.lower().endswith((".wsp", ".xml"))


@dataclass(frozen=True)
class ResolvedPanel:
    """A panel bound to one file: marker -> $PnN, plus scatter and time channels."""

    panel: Panel
    marker_channels: dict[str, str]
    scatter_channels: dict[str, str]
    time_channel: str | None
    notes: list[str] = field(default_factory=list)
    # Markers of the panel this tube does not carry: populations that need them are not
    # measured (see gating.pipeline), the others are.
    missing: tuple[str, ...] = ()


class _Logicle(BaseModel):
    model_config = ConfigDict(extra="forbid")

    w: float = Field(0.5, ge=0.0)
    m: float = Field(4.5, gt=0.0)
    a: float = Field(0.0, ge=0.0)


class _WorkspaceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    populations: dict[str, str] = Field(min_length=1)
    group: str = "All Samples"
    template_sample: str | None = None


class PanelFile(BaseModel):
    """The contents of a panel YAML file."""

    model_config = ConfigDict(extra="forbid")

    name: str
    title: str | None = None
    # marker -> the ways real files write it in $PnS/$PnN (null: the marker's own name)
    markers: dict[str, list[str] | None] = Field(min_length=1)
    logicle: _Logicle = _Logicle()
    strategy: str | None = None  # built-in name, YAML path or FlowJo workspace; default: name
    workspace: _WorkspaceOptions | None = None
    # a gate of the strategy (e.g. lymphocytes) the files are already gated to
    enters_at: str | None = None


def load_panel(name_or_path: str, base_dir: Path | None = None) -> Panel:
    """Load a built-in panel by name ('bcell', 'treg') or a panel YAML file by path."""
    path = find_config_file(name_or_path, "panels", ".", base_dir, "panel", PanelError)
    parsed, _ = load_yaml_model(path, PanelFile, PanelError)
    workspace = parsed.workspace.model_dump(exclude_none=True) if parsed.workspace else {}
    return Panel(
        name=parsed.name,
        title=parsed.title or parsed.name,
        markers={k: tuple(v or [k]) for k, v in parsed.markers.items()},
        logicle_w=parsed.logicle.w,
        logicle_m=parsed.logicle.m,
        logicle_a=parsed.logicle.a,
        strategy=parsed.strategy or parsed.name,
        source=str(path),
        workspace=workspace,
        enters_at=parsed.enters_at or "",
    )


def _normalise(text: str) -> str:
    return re.sub(r"[^0-9A-Z]", "", text.upper())


def label_words(label: str) -> set[str]:
    """Every normalised word a channel label offers as a marker name."""
    words: set[str] = set()
    for chunk in re.split(r"[\s/_:;,()\[\]]+", label):
        pieces = [_normalise(p) for p in chunk.split("-") if _normalise(p)]
        for i in range(len(pieces)):
            for j in range(i + 1, len(pieces) + 1):
                words.add("".join(pieces[i:j]))
    return words


def _find(aliases: tuple[str, ...], labels: list[str]) -> list[int]:
    wanted = {_normalise(a) for a in aliases}
    return [j for j, label in enumerate(labels) if wanted & label_words(label)]


def _area_channel(hits: list[int], pnn: list[str]) -> list[int]:
    """Of several channels with one label, the area one when the others are its height or
    width (instruments that export -A, -H and -W of each detector under one $PnS)."""
    stems = {re.sub(r"[-_ ]?[AHW]$", "", pnn[j].upper()) for j in hits}
    areas = [j for j in hits if pnn[j].upper().endswith("A")]
    return areas if len(stems) == 1 and len(areas) == 1 else hits


def resolve_panel(panel: Panel, header: FcsHeader) -> ResolvedPanel:
    """Bind a panel to a file's channels.

    A marker the tube lacks is recorded in ``missing`` (only the populations that use it are
    lost); a tube with none of the panel's markers, a marker matching several channels, or a
    missing FSC-A/SSC-A (YAML strategies gate lymphocytes on them) raises PanelError naming
    what is wrong.
    """
    # Files entering below the lymphocyte gate are gated without scatter.
    required_scatter = () if panel.uses_workspace or panel.enters_at else REQUIRED_SCATTER
    missing, ambiguous = [], []
    marker_channels: dict[str, str] = {}
    for marker, aliases in panel.markers.items():
        hits = _find(aliases, header.pns)
        if not hits:
            hits = _find(aliases, header.pnn)
        hits = _area_channel(hits, header.pnn)
        if len(hits) == 1:
            marker_channels[marker] = header.pnn[hits[0]]
        elif not hits:
            missing.append(marker)
        else:
            names = ", ".join(f"{header.pnn[j]} ({header.pns[j] or 'no $PnS'})" for j in hits)
            ambiguous.append(f"{marker} matches {names}")
    scatter: dict[str, str] = {}
    upper_pnn = [n.upper() for n in header.pnn]
    for role, aliases in SCATTER_ALIASES.items():
        hit = next((header.pnn[upper_pnn.index(a)] for a in aliases if a in upper_pnn), None)
        if hit is not None:
            scatter[role] = hit
    time_channel = next(
        (header.pnn[upper_pnn.index(a)] for a in TIME_ALIASES if a in upper_pnn), None
    )
    problems = []
    if panel.markers and not marker_channels:
        problems.append(f"none of its markers ({', '.join(panel.markers)}) is in the file")
    absent_scatter = [role for role in required_scatter if role not in scatter]
    if absent_scatter:
        problems.append(f"missing scatter channel(s) {', '.join(absent_scatter)}")
    if ambiguous:
        problems.append("ambiguous marker(s): " + "; ".join(ambiguous))
    if problems:
        written = ", ".join(
            f"{n}={s}" if s else n for n, s in zip(header.pnn, header.pns, strict=True)
        )
        raise PanelError(
            f"the file does not fit panel {panel.name!r}: {' and '.join(problems)}. "
            f"Its channels are: {written}. Check the tube's staining and the $PnS labels "
            "in the acquisition template, or the panel token in the file name"
        )
    notes = [] if time_channel else ["no Time channel: time-based QC skipped"]
    if missing:
        notes.append(f"not in this tube: {', '.join(missing)}")
    return ResolvedPanel(panel, marker_channels, scatter, time_channel, notes, tuple(missing))
