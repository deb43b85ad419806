"""Reading a YAML configuration file into a pydantic model, with errors a person can act on.

Panel files, strategy files and study.yaml are all checked this way: an unknown key, a wrong
type or an out-of-range value is one line naming the file, the key's path and what is allowed.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)


def _models_in(annotation: object) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, unions, lists, dicts)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()) or ():
        found += _models_in(arg)
    origin = getattr(annotation, "__origin__", None)
    if origin is not None and not getattr(annotation, "__args__", None):
        found += _models_in(origin)
    for extra in getattr(annotation, "__metadata__", ()) or ():
        found += _models_in(extra)
    return found


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the model that holds the key at ``loc`` (for the hint)."""
    candidates = [model]
    for part in loc[:-1]:
        by_field = [m for m in candidates if str(part) in m.model_fields]
        if by_field:
            candidates = _models_in(by_field[0].model_fields[str(part)].annotation)
            continue
        # A discriminated union names the member it tried by its tag (the ``kind``).
        tagged = [m for m in candidates if _tag(m) == part]
        if tagged:
            candidates = tagged
        # else: a list index or a dict key; the element models stay the candidates
    return list(candidates[0].model_fields) if len(candidates) == 1 else []


def _tag(model: type[BaseModel]) -> object:
    field = model.model_fields.get("kind")
    args = getattr(field.annotation, "__args__", ()) if field is not None else ()
    return args[0] if len(args) == 1 else None


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


def find_config_file(
    name_or_path: str, package: str, folder: str, base_dir: Path | None, what: str, error: type
) -> Path:
    """A built-in file (``package/folder/NAME.yaml``) by name, else a path (relative paths
    from ``base_dir``); ``error`` names both places when neither exists."""
    builtin = resources.files(package) / folder / f"{name_or_path}.yaml"
    if builtin.is_file():
        return Path(str(builtin))
    path = Path(name_or_path)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        builtins = sorted(
            p.name.removesuffix(".yaml")
            for p in (resources.files(package) / folder).iterdir()
            if p.name.endswith(".yaml")
        )
        raise error(
            f"{what} {name_or_path!r}: neither a built-in ({', '.join(builtins)}) nor a file"
        )
    return path


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
