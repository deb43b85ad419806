"""Plots for the review pages: a sample's gates on their parents' events, as PNG."""

from __future__ import annotations

import io

from cohort.store import Store
from cohort.study import Study
from gating.qc import QC_STEPS
from gating.records import AppliedGate
from gating.strategy import QC_ROOT
from reports.figures import plt
from reports.outputs import replay_current
from reports.qc_report import draw_gate, drawable

# Compact plots leave out the acquisition checks (margins, time, doublets): they are the
# instrument's, not the sample's populations, and the full plot shows them.
_ACQUISITION_CHECKS = frozenset(QC_STEPS) - {QC_ROOT}


def shown_gates(gates: list[AppliedGate], compact: bool) -> list[AppliedGate]:
    """The gates a sample's plot draws: every drawable gate, or (compact) the debris cut and
    every population gate whatever its kind (the Treg arm and the transitional tip are
    polygons)."""
    return [g for g in drawable(gates) if not (compact and g.name in _ACQUISITION_CHECKS)]


def gate_grid_png(study: Study, store: Store, sample_id: str, compact: bool = False) -> bytes:
    """Every drawable gate of the sample's current result on its parent's events. Compact:
    the population gates only, on fixed axes (logicle and scatter 0-1), so visits placed side
    by side compare by eye."""
    sample, gates, masks, space, data = replay_current(study, store, sample_id)
    shown = shown_gates(gates, compact)
    columns = 4 if compact else 5
    rows = max(1, -(-len(shown) // columns))
    size = (8.0, 2.0 * rows) if compact else (15.0, 3.0 * rows)
    fig, axes = plt.subplots(rows, columns, figsize=size, squeeze=False)
    fig.subplots_adjust(left=0.06, right=0.99, top=0.93, bottom=0.08, hspace=0.6, wspace=0.35)
    for ax, gate in zip(axes.ravel(), shown, strict=False):
        draw_gate(ax, gate, space, masks, data.channel)
        if compact:
            ax.set_xlim(0, 1)
            if ax.get_ylabel().endswith(("(logicle)", "(fraction of range)")):
                ax.set_ylim(0, 1)
            ax.tick_params(labelsize=5)
            ax.xaxis.label.set_size(5)
            ax.yaxis.label.set_size(5)
    for ax in axes.ravel()[len(shown) :]:
        ax.axis("off")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80 if compact else 90)
    plt.close(fig)
    return buffer.getvalue()
