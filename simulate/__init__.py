"""Simulated studies with per-event ground truth, for the demo, tests and benchmarks."""

from simulate.demo import (
    B_TRUTH,
    LABELS,
    PANEL_CHANNELS,
    T_TRUTH,
    DemoOptions,
    channel_label,
    population_frequencies,
    simulate_sample,
    simulate_study,
    truth_counts,
)
from simulate.fcs_writer import write_fcs

__all__ = [
    "B_TRUTH",
    "LABELS",
    "PANEL_CHANNELS",
    "T_TRUTH",
    "DemoOptions",
    "channel_label",
    "population_frequencies",
    "simulate_sample",
    "simulate_study",
    "truth_counts",
    "write_fcs",
]
