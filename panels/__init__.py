"""Panels: which markers a tube carries and which channels of a file hold them."""

from panels.fcs import FcsData, FcsHeader, FcsReadError, FcsTruncatedError, read_events, scan_header
from panels.resolve import Panel, PanelError, ResolvedPanel, load_panel, resolve_panel

__all__ = [
    "FcsData",
    "FcsHeader",
    "FcsReadError",
    "FcsTruncatedError",
    "Panel",
    "PanelError",
    "ResolvedPanel",
    "load_panel",
    "read_events",
    "resolve_panel",
    "scan_header",
]
