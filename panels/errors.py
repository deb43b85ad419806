"""The one base of every error a user can act on (a bad file, folder, setting or input).

It lives in the lowest package so that every package can raise it. The CLI catches it once and
prints its message as one line, with exit code 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class ImmunomonError(Exception):
    """An input or setting a user can fix; the message names it and says what to do."""


class InputPathError(ImmunomonError):
    """A path given on the command line that is missing, a directory, or unreadable."""


def readable_file(path: str) -> str:
    """``path`` if it is a readable file, else InputPathError saying what it is instead."""
    import os

    if not os.path.exists(path):
        raise InputPathError(f"{path}: no such file")
    if os.path.isdir(path):
        raise InputPathError(f"{path}: is a folder, not an FCS file")
    if not os.access(path, os.R_OK):
        raise InputPathError(f"{path}: not readable (check its permissions)")
    return path
