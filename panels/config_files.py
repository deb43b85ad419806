"""Reading a YAML configuration file into a pydantic model, with errors a person can act on.

Panel files, strategy files and study.yaml are all checked this way: an unknown key, a wrong
type or an out-of-range value is one line naming the file, the key's path and what is allowed.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the model that holds the key at ``loc`` (best effort, for hints)."""
    current: object = model
    for part in loc[:-1]:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                continue  # a discriminator tag, or an index into a list/dict
            current = field.annotation
        for arg in getattr(current, "__args__", ()) or ():
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                if not (isinstance(part, str) and part in current.__args__):
                    current = arg
    for arg in (current, *getattr(current, "__args__", ())):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return list(arg.model_fields)
    return []


def describe(exc: ValidationError, model: type[BaseModel]) -> str:
    """One ``key.path: problem`` clause per error, joined by '; '."""
    problems = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        where = ".".join(str(p) for p in loc) or "(top level)"
        if error["type"] == "extra_forbidden":
            allowed = _fields_at(model, loc)
            near = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            problems.append(
                f"{where}: unknown key (allowed here: {', '.join(allowed) or 'none'}){hint}"
            )
        else:
            problems.append(f"{where}: {error['msg']}")
    return "; ".join(problems)


def load_yaml_model(path: Path, model: type[Model], error: type[Exception]) -> tuple[Model, dict]:
    """Parse and validate ``path``; returns the model and the raw document (for hashing).

    Raises ``error`` with one line naming the file and every problem.
    """
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise error(f"{path}:{line} not valid YAML ({getattr(exc, 'problem', exc)})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot be read ({exc})") from None
    if not isinstance(doc, dict):
        raise error(f"{path}: expected a mapping of keys to values at the top level")
    try:
        return model.model_validate(doc), doc
    except ValidationError as exc:
        raise error(f"{path}: {describe(exc, model)}") from None
