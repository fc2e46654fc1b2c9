"""pgolf.params: the registry of sections holds params.yaml's, in order, and every section of params.yaml
loads into its model; every numeric key of every section has a declared range that the loader enforces on
params.yaml and every preset (negative, zero, NaN, infinity, a string: a value the range admits or one line naming
the key)."""

import copy
import math
import typing
from pathlib import Path

import annotated_types as at
import pytest
from pydantic import BaseModel

from pgolf.config import ConfigError, parse_section, read_params
from pgolf.params import SECTIONS, load_section, section_model


@pytest.mark.parametrize("name", SECTIONS)
def test_repository_params_load(name):
    cfg = load_section(name)
    model = section_model(name)
    assert type(cfg) is model
    with pytest.raises(Exception, match="frozen"):
        setattr(cfg, next(iter(model.model_fields)), None)


def test_the_registry_holds_exactly_params_yamls_sections_in_order():
    assert list(SECTIONS) == list(read_params("params.yaml"))


ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "params.yaml", *sorted((ROOT / "presets").rglob("*.yaml"))]
BOUNDS = (at.Gt, at.Ge, at.Lt, at.Le)


def _model_of(annotation: object) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _numeric(annotation: object) -> bool:
    return annotation in (int, float)


def leaves(model: type[BaseModel], raw: dict, path: tuple = ()) -> typing.Iterator[tuple[tuple, object]]:
    """(key path, field info) of every numeric leaf of ``raw`` under ``model`` (list items by index)."""
    for name, field in model.model_fields.items():
        value, key = raw[name], (*path, name)
        annotation = field.annotation
        if sub := _model_of(annotation):
            yield from leaves(sub, value, key)
        elif typing.get_origin(annotation) is list:
            (item,) = typing.get_args(annotation)
            for i, element in enumerate(value):
                if sub := _model_of(item):
                    yield from leaves(sub, element, (*key, i))
                elif _numeric(typing.get_origin(item) or item) or _numeric(getattr(item, "__origin__", None)):
                    yield (*key, i), item
        elif _numeric(annotation) and not isinstance(value, bool):
            yield key, field


def bounds_of(info: object) -> list:
    """The annotated_types bounds of a field (or of an ``Annotated`` list item)."""
    metadata = getattr(info, "metadata", None)
    if metadata is None:  # an Annotated[...] list item
        metadata = list(getattr(info, "__metadata__", ()))
        metadata = [m for x in metadata for m in ([x] if not hasattr(x, "metadata") else x.metadata)]
    return [m for m in metadata if isinstance(m, BOUNDS) or type(m).__name__ == "AfterValidator"]


def admits(bounds: list, value: float) -> bool:
    """Whether the declared numeric bounds admit ``value`` (a validator-only range, like the bit widths, admits
    nothing outside what the loader accepts, so it is checked by the loader alone)."""
    for b in bounds:
        if isinstance(b, at.Gt) and not value > b.gt or isinstance(b, at.Ge) and not value >= b.ge:
            return False
        if isinstance(b, at.Lt) and not value < b.lt or isinstance(b, at.Le) and not value <= b.le:
            return False
        if type(b).__name__ == "AfterValidator":
            return False
    return True


def _set(raw: dict, key: tuple, value: object) -> dict:
    raw = copy.deepcopy(raw)
    node = raw
    for part in key[:-1]:
        node = node[part]
    node[key[-1]] = value
    return raw


def _value(raw: dict, key: tuple) -> object:
    for part in key:
        raw = raw[part]
    return raw


def problems_of(path: Path) -> tuple[int, list[str]]:
    """(numeric leaves probed, what is wrong) for one params file: every leaf has a declared range, and each probe
    value is a value its range admits or one line of ConfigError naming the key (NaN, infinity and strings never
    load)."""
    params, probed, problems = read_params(path), 0, []
    for section in SECTIONS:
        model, raw = section_model(section), params[section]
        for key, info in leaves(model, raw):
            probed += 1
            name = ".".join([section, *map(str, key)])
            bounds = bounds_of(info)
            if not bounds:
                problems.append(f"{name}: no declared range (give it one of pgolf.config's range types)")
                continue
            integer = isinstance(_value(raw, key), int)
            for value in (-1 if integer else -0.5, 0 if integer else 0.0, math.nan, math.inf, "7"):
                try:
                    parse_section(_set(raw, key, value), section, model, source=path.name)
                except ConfigError as err:
                    named = name if isinstance(key[-1], str) else ".".join([section, *map(str, key[:-1])])
                    if "\n" in str(err) or named.rsplit(".", 1)[-1] not in str(err):
                        problems.append(f"{name}={value!r}: the error is not one line naming the key: {err}")
                    continue
                if not isinstance(value, int | float) or not math.isfinite(value) or not admits(bounds, value):
                    problems.append(f"{name} accepted {value!r} (declared range {bounds})")
    return probed, problems


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_numeric_key_has_a_range_the_loader_enforces(path):
    probed, problems = problems_of(path)
    assert probed > 150 and not problems, "\n".join(problems)
