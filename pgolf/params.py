"""params.yaml's sections: the one registry that maps each section name to the typed model that owns it.

Each model lives beside the code that consumes it (``ModelParams`` in :mod:`pgolf.model.config`, ``QuantizeConfig``
in :mod:`pgolf.quant.policy`, ...); this module only lists them, so it sits at the top of the package and every
stage, preset check and report reads sections through it. A params file holds exactly these sections:
:func:`load_section` refuses a misspelled or missing one before validating the one asked for.

A new key touches params.yaml, the presets and the model that owns it; a new section adds one line here.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from pgolf.config import PARAMS_FILE, ConfigError, Section, check_sections, parse_section, read_params

SECTIONS: dict[str, str] = {
    "data": "pgolf.data.sources:DataConfig",
    "tokenizer": "pgolf.data.tokenizer:TokenizerConfig",
    "model": "pgolf.model.config:ModelParams",
    "score": "pgolf.score.scorer:ScoreConfig",
    "train": "pgolf.train.config:TrainConfig",
    "export": "pgolf.train.export:ExportConfig",
    "calibrate": "pgolf.quant.hessian:CalibrateConfig",
    "quantize": "pgolf.quant.policy:QuantizeConfig",
    "compress": "pgolf.compress.pergroup:CompressConfig",
    "bundle": "pgolf.compress.bundle:BundleConfig",
    "artifact": "pgolf.compress.size:SizeConfig",
    "eval": "pgolf.eval.config:EvalConfig",
    "compliance": "pgolf.report.summary:ComplianceConfig",
}
"""Every section of a params file, in params.yaml's order, with the model that validates it (``module:Class``,
imported when the section is loaded: a stage imports only the models of the sections it reads, so its import
closure, its ``dvc.yaml`` deps and the counted code stay its own)."""


def section_model(name: str) -> type[Section]:
    """The model class of section ``name``."""
    if name not in SECTIONS:  # a bug in the caller, not a user error
        raise KeyError(f"{name!r} is not a params section; the sections are {', '.join(SECTIONS)}")
    module, cls = SECTIONS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def load_section(name: str, path: Path | str = PARAMS_FILE) -> Any:
    """Section ``name`` of the params file, validated by its model, after checking the file's section names."""
    model = section_model(name)
    params = read_params(path)
    check_sections(params, path, SECTIONS)
    return parse_section(params[name], name, model, source=str(path))


def load_all(path: Path | str = PARAMS_FILE) -> dict[str, Section]:
    """Every section of a params file, validated (one ConfigError listing the problems of all of them)."""
    params = read_params(path)
    check_sections(params, path, SECTIONS)
    loaded, problems = {}, []
    for name in SECTIONS:
        try:
            loaded[name] = parse_section(params[name], name, section_model(name), source=str(path))
        except ConfigError as err:
            problems.append(str(err))
    if problems:
        raise ConfigError("\n".join(problems))
    return loaded
