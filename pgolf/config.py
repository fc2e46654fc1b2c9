"""Strict params.yaml loading: one section -> one frozen, typed pydantic model.

Every section model derives from :class:`Section`, which forbids unknown keys, has no defaults for values that
params.yaml sets, and never coerces types. Errors name the file and the full key path, e.g.
``params.yaml: data.doc_charz: unknown key``. :func:`check_sections` refuses a params file whose sections are not
exactly the registry's (``params.yaml: unknown section 'qauntize' (did you mean 'quantize'?)``);
:func:`parse_section` validates one section's dict and looks at nothing else. The registry of sections (which
model each name maps to) is :mod:`pgolf.params`, the top of the package: this module knows none of them.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from pgolf.errors import PgolfError

PARAMS_FILE = Path("params.yaml")
RENAMED = {"size": "artifact"}
"""Former section names, for the hint on a params file written before the rename."""


class ConfigError(PgolfError, ValueError):
    """A params file or section that does not match its model."""


class Section(BaseModel):
    """Base of every params section: frozen, no unknown keys, no silent coercion."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


S = TypeVar("S", bound=Section)


def positive(prefix: str, **values: float) -> list[str]:
    """The problem lines of the ``values`` (keys under ``prefix``) that are not > 0."""
    return [f"{prefix}.{key} must be positive (got {value})" for key, value in values.items() if value <= 0]


def non_negative(prefix: str, **values: float) -> list[str]:
    """The problem lines of the ``values`` (keys under ``prefix``) that are < 0."""
    return [f"{prefix}.{key} must be >= 0 (got {value})" for key, value in values.items() if value < 0]


def raise_problems(problems: list[str]) -> None:
    """One ConfigError holding every problem line, if there is any."""
    if problems:
        raise ConfigError("; ".join(problems))


def read_params(path: Path | str = PARAMS_FILE) -> dict[str, Any]:
    """The whole params file as a dict (raises ConfigError when absent or not a mapping)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found (run from the repository root)")
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return params


def parse_section(raw: Any, name: str, model: type[S], *, source: str = str(PARAMS_FILE)) -> S:
    """Validate one section's raw mapping into ``model``; errors carry ``source: name.key.path``."""
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_describe(err, name, source)) from None


def check_sections(params: dict[str, Any], path: Path | str, sections: Iterable[str]) -> None:
    """ConfigError unless ``params`` holds exactly ``sections``: one line naming every unknown section (with the
    closest known name) and every missing one, so a misspelled section is never silently ignored."""
    sections = tuple(sections)
    unknown = [_unknown_section(str(key), sections) for key in params if key not in sections]
    meant = {known for _, known in unknown}
    missing = [f"missing section '{name}' (add it)" for name in sections if name not in params and name not in meant]
    problems = [line for line, _ in unknown] + missing
    if problems:
        raise ConfigError(f"{path}: {'; '.join(problems)}")


def _unknown_section(name: str, sections: tuple[str, ...]) -> tuple[str, str | None]:
    """The problem line of an unknown section and the known section it most likely stands for."""
    if name in RENAMED:
        return f"unknown section '{name}' (renamed '{RENAMED[name]}')", RENAMED[name]
    close = difflib.get_close_matches(name, sections, n=1)
    if close:
        return f"unknown section '{name}' (did you mean '{close[0]}'?)", close[0]
    return f"unknown section '{name}' (remove it; the sections are: {', '.join(sections)})", None


def _describe(err: ValidationError, name: str, source: str) -> str:
    lines = []
    for problem in err.errors():
        key = ".".join([name, *(str(part) for part in problem["loc"])])
        kind = problem["type"]
        if kind == "extra_forbidden":
            what = "unknown key (remove it or check its spelling)"
        elif kind == "missing":
            what = "missing key"
        else:
            what = f"{problem['msg']} (got {problem.get('input')!r})"
        lines.append(f"{source}: {key}: {what}")
    return "\n".join(lines)
