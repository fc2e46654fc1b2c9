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
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pgolf.errors import PgolfError

PARAMS_FILE = Path("params.yaml")
RENAMED = {"size": "artifact"}
"""Former section names, for the hint on a params file written before the rename."""


class ConfigError(PgolfError, ValueError):
    """A params file or section that does not match its model."""


class Section(BaseModel):
    """Base of every params section: frozen, no unknown keys, no silent coercion, finite floats only (a NaN or an
    infinity is an error naming the key, never a value that reaches the math)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


# The ranges of numeric keys: every int or float field of a section is one of these (a test walks every numeric
# key of params.yaml and the presets and checks that it has a declared range and that the loader enforces it).
Count = Annotated[int, Field(gt=0)]
"""A count or a size: at least 1."""
CountOrZero = Annotated[int, Field(ge=0)]
"""A count where 0 means none, all or off (the field says which)."""
Seed = Annotated[int, Field(ge=0)]
"""A random seed."""
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
"""A share, a probability, a point of the training progress or an LR multiplier: in [0, 1]."""
Positive = Annotated[float, Field(gt=0.0)]
"""A strictly positive real (a scale, a base, an epsilon, a budget)."""
NonNegative = Annotated[float, Field(ge=0.0)]
"""A learning rate, a weight decay, a clip norm, a standard deviation, seconds: >= 0 (0 often means off)."""
Decay = Annotated[float, Field(ge=0.0, lt=1.0)]
"""A momentum, an Adam beta or an EMA decay: in [0, 1)."""
TokenId = Annotated[int, Field(ge=-1)]
"""A special token id; -1 disables it."""
OpenFraction = Annotated[float, Field(gt=0.0, lt=1.0)]
"""A share strictly between 0 and 1 (both sides of the split must exist)."""
VocabSize = Annotated[int, Field(gt=0, le=65536)]
"""A vocabulary size: token ids are stored as uint16 in the shards."""


S = TypeVar("S", bound=Section)


_MISSING: Any = object()


def dotted(tree: dict, key: str, default: Any = _MISSING) -> Any:
    """The value at a dotted ``key`` of nested dicts (``"eval.lora_ttt.rank"``); where a part is missing,
    ``default`` when given, else a KeyError naming the key."""
    value: Any = tree
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            if default is _MISSING:
                raise KeyError(f"params have no {key!r}")
            return default
        value = value[part]
    return value


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
    if params is None:
        raise ConfigError(f"{path}: the file is empty; restore it with `git checkout {path}`")
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


_BOUNDS = {"greater_than": ("gt", "> {}"), "greater_than_equal": ("ge", ">= {}"), "less_than": ("lt", "< {}"),
           "less_than_equal": ("le", "<= {}")}  # fmt: skip
_TYPES = {"int_type": "an integer", "int_from_float": "an integer", "float_type": "a number",
          "bool_type": "true or false", "string_type": "a string", "list_type": "a list", "dict_type": "a mapping",
          "model_type": "a mapping", "finite_number": "a finite number"}  # fmt: skip


def _what(problem: dict) -> str:
    """One problem of a key in words: ``must be > 0 (got -5)``, ``must be a number (got 'x')``, ..."""
    kind, ctx = problem["type"], problem.get("ctx") or {}
    got = f" (got {problem.get('input')!r})"
    if kind == "extra_forbidden":
        return "unknown key (remove it or check its spelling)"
    if kind == "missing":
        return "missing key"
    if kind in _BOUNDS:
        bound, text = _BOUNDS[kind]
        return f"must be {text.format(ctx[bound])}{got}"
    if kind in _TYPES:
        return f"must be {_TYPES[kind]}{got}"
    if kind == "value_error":
        return str(ctx.get("error", problem["msg"]))
    return f"{problem['msg']}{got}"


def _describe(err: ValidationError, name: str, source: str) -> str:
    """Every problem of a section, one per line, each naming the file and the full key path."""
    lines = []
    for problem in err.errors():
        key = name + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in problem["loc"])
        if problem["type"] == "value_error":  # a model's own check: its message names the keys itself
            lines.append(f"{source}: {_what(problem)}")
        else:
            lines.append(f"{source}: {key}: {_what(problem)}")
    return "\n".join(lines)
