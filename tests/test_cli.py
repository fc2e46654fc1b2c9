"""pgolf.cli: a stage ends with its wall time, a report does not; every entry point (the stages, pgolf.presets,
pgolf.report.*) answers bad arguments and bad inputs with one ``error:`` line and exit status 1, never a traceback."""

import functools
import importlib
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pgolf.cli import run
from pgolf.config import read_params


def test_a_stage_ends_with_its_wall_time_and_a_report_does_not(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    stage = subprocess.run([sys.executable, "-m", "stages.size", "--help"], cwd=root, capture_output=True, text=True)
    assert stage.returncode == 0 and "done in" not in stage.stdout  # --help exits before the stage runs
    script = tmp_path / "stages" / "demo.py"
    script.parent.mkdir()
    script.write_text("from pgolf.cli import run\nrun(lambda: print('working'))\n")
    out = subprocess.run([sys.executable, str(script)], cwd=root, capture_output=True, text=True,
                         env={"PYTHONPATH": str(root), "PATH": ""}).stdout.splitlines()  # fmt: skip
    assert out[0] == "working" and out[1].startswith("demo: done in ") and out[1].endswith(" s")
    report = tmp_path / "report.py"
    report.write_text(script.read_text())
    assert "done in" not in subprocess.run([sys.executable, str(report)], cwd=root, capture_output=True, text=True,
                                           env={"PYTHONPATH": str(root), "PATH": ""}).stdout  # fmt: skip


ROOT = Path(__file__).resolve().parents[1]
STAGES = sorted(p.stem for p in (ROOT / "stages").glob("*.py") if p.stem not in ("__init__", "program"))
"""The stage scripts (program.py runs them all: its own test below)."""
NOWHERE = "/nonexistent/pgolf"

# For each stage: a numeric key of a section it loads, and a flag that points at an input it needs.
BAD = {
    "prepare": (("data", "val_fraction"), None),
    "tokenizer": (("tokenizer", "character_coverage"), ("--docs", NOWHERE)),
    "tokenize": (("data", "shard_tokens"), ("--docs", NOWHERE)),
    "train": (("train", "min_lr"), ("--shards", NOWHERE)),
    "export": (("score", "seq_len"), ("--train", NOWHERE)),
    "calibrate": (("calibrate", "batches"), ("--export", NOWHERE)),
    "quantize": (("quantize", "damping"), ("--export", NOWHERE)),
    "compress": (("compress", "rest_shuffle"), ("--quant", NOWHERE)),
    "bundle": (None, ("--out", "/proc/train_gpt.py")),
    "size": (("artifact", "limit_bytes"), ("--submission", NOWHERE)),
    "evaluate": (("eval", "audit"), ("--submission", NOWHERE)),
    "summary": (("compliance", "train_budget_seconds"), ("--metrics-dir", NOWHERE)),
}


def call(monkeypatch, capsys, module: str, args: list[str]) -> tuple[int, list[str], list[str]]:
    """Run an entry point's main through pgolf.cli.run as its command line does: (exit status, out, err lines)."""
    mod = importlib.import_module(module)
    script = ROOT / (module.replace(".", "/") + ".py")
    monkeypatch.setattr(sys, "argv", [str(script), *map(str, args)])
    code = 0
    try:
        run(mod.main)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), [line for line in captured.err.splitlines() if line.strip()]


def one_error(code: int, err: list[str], *words: str) -> None:
    assert code == 1 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    for word in words:
        assert word in err[0], (word, err[0])


def _params(tmp_path: Path, section: str, key: str, value: object) -> Path:
    params = read_params(ROOT / "params.yaml")
    node = params[section]
    if isinstance(node.get(key), dict):
        node[key]["docs"] = value  # eval.audit.docs
    else:
        node[key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_answers_bad_arguments_and_inputs_with_one_line(stage, tmp_path, monkeypatch, capsys):
    module = f"stages.{stage}"
    one_error(*call(monkeypatch, capsys, module, ["--nope", "1"])[::2], "unrecognized arguments: --nope")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    one_error(*call(monkeypatch, capsys, module, ["--params", empty])[::2], "is empty")
    key, missing = BAD[stage]
    if key is not None:
        for value in (math.nan, math.inf, "x"):
            path = _params(tmp_path, *key, value)
            one_error(*call(monkeypatch, capsys, module, ["--params", path])[::2], key[1])
    if missing is not None:
        one_error(*call(monkeypatch, capsys, module, [*missing])[::2])


def test_the_submission_program_answers_bad_arguments_and_missing_files_with_one_line(tmp_path, monkeypatch, capsys):
    """train_gpt.py's entry (stages/program.py) in a folder without the challenge's files."""
    from stages import program

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(program, "main", functools.partial(program.main, (ROOT / "params.yaml").read_text()))
    one_error(*call(monkeypatch, capsys, "stages.program", ["--nope", "1"])[::2], "unrecognized arguments: --nope")
    one_error(*call(monkeypatch, capsys, "stages.program", [])[::2], "data/tokenizers: 0 *.model files")
    (tmp_path / "t.model").write_bytes(b"")
    one_error(*call(monkeypatch, capsys, "stages.program", ["--tokenizer-path", "t.model"])[::2],
              "data/datasets/sp8192: needs fineweb_train_*.bin and fineweb_val_*.bin")  # fmt: skip


REPORTS = {
    "pgolf.presets": [["check", NOWHERE], ["apply", NOWHERE], ["frobnicate"]],
    "pgolf.report.significance": [["--candidate", "nan", "1.1", "--baseline", "1.2", "1.3"],
                                  ["--candidate", "1.1", "inf", "--baseline", "1.2", "1.3"],
                                  ["--candidate", "1.1", "1.2", "--baseline", "1.2", "1.3", "--alpha", "nan"],
                                  ["--candidate", "1.1"], ["--candidate", "1.1", "1.2", "--baseline", "1.2"]],
    "pgolf.report.exps": [["--json", NOWHERE], ["--width", "x"]],
    "pgolf.report.plots": [["--repo", NOWHERE]],
    "pgolf.report.records": [[], ["--out", NOWHERE, "--repo", NOWHERE]],
}  # fmt: skip


@pytest.mark.parametrize(("module", "args"), [(m, a) for m, cases in REPORTS.items() for a in cases])
def test_a_report_command_answers_bad_input_with_one_line(module, args, monkeypatch, capsys):
    code, _, err = call(monkeypatch, capsys, module, args)
    one_error(code, err)


def test_a_stage_process_prints_one_line_too():
    """The same through a real process: no traceback reaches the terminal."""
    result = subprocess.run([sys.executable, "-m", "stages.size", "--submission", NOWHERE], cwd=ROOT,
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
