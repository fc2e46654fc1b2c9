"""Strict params.yaml loading: one section -> one frozen, typed pydantic model.

Every section model derives from :class:`Section`, which forbids unknown keys, has no defaults for values that
params.yaml sets, and never coerces types. Errors name the file and the full key path, e.g.
``params.yaml: data.doc_charz: unknown key``. A params file holds exactly the sections of :data:`SECTIONS`:
:func:`load_section` refuses a misspelled or missing one (``params.yaml: unknown section 'qauntize' (did you mean
'quantize'?)``); :func:`parse_section` validates one section's dict and looks at nothing else.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from pgolf.errors import PgolfError

PARAMS_FILE = Path("params.yaml")
SECTIONS = (
    "data",
    "tokenizer",
    "model",
    "score",
    "train",
    "export",
    "calibrate",
    "quantize",
    "compress",
    "bundle",
    "artifact",
    "eval",
    "compliance",
)
"""The top-level sections every params file holds, no more and no fewer (pgolf.presets maps each to its model)."""
RENAMED = {"size": "artifact"}
"""Former section names, for the hint on a params file written before the rename."""


class ConfigError(PgolfError, ValueError):
    """A params file or section that does not match its model."""


class Section(BaseModel):
    """Base of every params section: frozen, no unknown keys, no silent coercion."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


S = TypeVar("S", bound=Section)


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


def check_sections(params: dict[str, Any], path: Path | str) -> None:
    """ConfigError unless ``params`` holds exactly :data:`SECTIONS`: one line naming every unknown section (with the
    closest known name) and every missing one, so a misspelled section is never silently ignored."""
    unknown = [_unknown_section(str(key)) for key in params if key not in SECTIONS]
    meant = {known for _, known in unknown}
    missing = [f"missing section '{name}' (add it)" for name in SECTIONS if name not in params and name not in meant]
    problems = [line for line, _ in unknown] + missing
    if problems:
        raise ConfigError(f"{path}: {'; '.join(problems)}")


def _unknown_section(name: str) -> tuple[str, str | None]:
    """The problem line of an unknown section and the known section it most likely stands for."""
    if name in RENAMED:
        return f"unknown section '{name}' (renamed '{RENAMED[name]}')", RENAMED[name]
    close = difflib.get_close_matches(name, SECTIONS, n=1)
    if close:
        return f"unknown section '{name}' (did you mean '{close[0]}'?)", close[0]
    return f"unknown section '{name}' (remove it; the sections are: {', '.join(SECTIONS)})", None


def load_section(name: str, model: type[S], path: Path | str = PARAMS_FILE) -> S:
    """Load section ``name`` of the params file into ``model``, after checking the file's section names."""
    params = read_params(path)
    check_sections(params, path)
    if name not in params:
        raise ConfigError(f"{path}: missing section '{name}' (expected keys: {', '.join(model.model_fields)})")
    return parse_section(params[name], name, model, source=str(path))


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
