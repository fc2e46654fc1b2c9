"""pgolf.report.exps: the compact experiment table, on real `dvc exp show --json` output."""

import copy
import json

import pytest

from pgolf.errors import PgolfError
from pgolf.report import exps
from tests.helpers.report import table_cells

# `dvc exp show --json` (DVC 3.67) in a scratch repo: a baseline `master`, experiments run with `dvc exp run -S`
# (too-big, lr-up), one queued (waiting) and one failed in the queue (seed99), with the workspace's
# metrics/headline.json deleted. Trimmed: the deps/outs/meta of each row and a fourth experiment dropped, the repo
# root in the log path shortened to /tmp/x.
REAL = [
    {
        "rev": "workspace",
        "name": None,
        "data": {
            "rev": "workspace",
            "timestamp": None,
            "params": {
                "params.yaml": {
                    "data": {
                        "train": {"lr": 0.1, "seed": 1, "launcher": "python"},
                        "quant": {"lqer": {"rank": 4}, "bits": 6},
                        "eval": {"lora_ttt": False, "layers": []},
                    }
                }
            },
            "metrics": {
                "metrics/headline.json": {
                    "error": {
                        "type": "FileNotFoundError",
                        "msg": "[Errno 2] No such file or directory: 'metrics/headline.json'",
                    }
                }
            },
        },
        "error": None,
        "experiments": None,
    },
    {
        "rev": "c3835a1fd2ec24f689243ed9f3dd93cd778c9409",
        "name": "master",
        "data": {
            "rev": "c3835a1fd2ec24f689243ed9f3dd93cd778c9409",
            "timestamp": "2026-12-01T13:39:59",
            "params": {
                "params.yaml": {
                    "data": {
                        "train": {"lr": 0.1, "seed": 1, "launcher": "python"},
                        "quant": {"lqer": {"rank": 4}, "bits": 6},
                        "eval": {"lora_ttt": False, "layers": []},
                    }
                }
            },
            "metrics": {
                "metrics/headline.json": {
                    "data": {
                        "ladder": {
                            "prequant_raw": 1.596,
                            "prequant_ema": 1.5950000000000002,
                            "dequantized": 1.606,
                            "model_bin": 1.606,
                            "sliding": 1.604,
                        },
                        "bytes": {"total": 15600000, "limit": 16000000, "fits": True},
                        "compliance": {"reported_mode": "sliding", "compliant": True},
                    }
                }
            },
        },
        "error": None,
        "experiments": [
            {
                "revs": [
                    {
                        "rev": "67fe3a95bca84369933bb62cb8c931f86f55dd2e",
                        "name": "too-big",
                        "data": {
                            "rev": "67fe3a95bca84369933bb62cb8c931f86f55dd2e",
                            "timestamp": "2026-12-01T13:40:06",
                            "params": {
                                "params.yaml": {
                                    "data": {
                                        "train": {"lr": 0.2, "seed": 1, "launcher": "python"},
                                        "quant": {"lqer": {"rank": 8}, "bits": 12},
                                        "eval": {"lora_ttt": True, "layers": []},
                                    }
                                }
                            },
                            "metrics": {
                                "metrics/headline.json": {
                                    "data": {
                                        "ladder": {
                                            "prequant_raw": 1.602,
                                            "prequant_ema": 1.6010000000000002,
                                            "dequantized": 1.612,
                                            "model_bin": 1.612,
                                            "sliding": 1.61,
                                            "lora_ttt": 1.606,
                                        },
                                        "bytes": {"total": 16200000, "limit": 16000000, "fits": False},
                                        "compliance": {"reported_mode": "sliding", "compliant": False},
                                    }
                                }
                            },
                        },
                        "error": None,
                        "experiments": None,
                    }
                ],
                "executor": None,
                "name": "too-big",
            },
            {
                "revs": [
                    {
                        "rev": "4acb2a30719aea4fe96c313a1663991812e8063f",
                        "name": "lr-up",
                        "data": {
                            "rev": "4acb2a30719aea4fe96c313a1663991812e8063f",
                            "timestamp": "2026-12-01T13:40:00",
                            "params": {
                                "params.yaml": {
                                    "data": {
                                        "train": {"lr": 0.2, "seed": 1, "launcher": "python"},
                                        "quant": {"lqer": {"rank": 4}, "bits": 6},
                                        "eval": {"lora_ttt": False, "layers": []},
                                    }
                                }
                            },
                            "metrics": {
                                "metrics/headline.json": {
                                    "data": {
                                        "ladder": {
                                            "prequant_raw": 1.606,
                                            "prequant_ema": 1.6050000000000002,
                                            "dequantized": 1.616,
                                            "model_bin": 1.616,
                                            "sliding": 1.614,
                                        },
                                        "bytes": {"total": 15600000, "limit": 16000000, "fits": True},
                                        "compliance": {"reported_mode": "sliding", "compliant": True},
                                    }
                                }
                            },
                        },
                        "error": None,
                        "experiments": None,
                    }
                ],
                "executor": None,
                "name": "lr-up",
            },
            {
                "revs": [
                    {
                        "rev": "2b5544fc477349751413647ef9400aee366147ff",
                        "name": "waiting",
                        "data": {
                            "rev": "2b5544fc477349751413647ef9400aee366147ff",
                            "timestamp": "2026-12-01T13:40:29",
                            "params": {
                                "params.yaml": {
                                    "data": {
                                        "train": {"lr": 0.05, "seed": 1, "launcher": "python"},
                                        "quant": {"lqer": {"rank": 8}, "bits": 12},
                                        "eval": {"lora_ttt": True, "layers": []},
                                    }
                                }
                            },
                            "metrics": {},
                        },
                        "error": None,
                        "experiments": None,
                    }
                ],
                "executor": {
                    "state": "queued",
                    "name": "dvc-task",
                    "local": {
                        "root": None,
                        "log": None,
                        "pid": None,
                        "returncode": None,
                        "task_id": "2b5544fc477349751413647ef9400aee366147ff",
                    },
                },
                "name": "waiting",
            },
            {
                "revs": [
                    {
                        "rev": "d2f88e28a34b8e5b244bdb43e62c3b3bc1c9e6f2",
                        "name": "seed99",
                        "data": {
                            "rev": "d2f88e28a34b8e5b244bdb43e62c3b3bc1c9e6f2",
                            "timestamp": "2026-12-01T13:40:09",
                            "params": {
                                "params.yaml": {
                                    "data": {
                                        "train": {"lr": 0.2, "seed": 99, "launcher": "python"},
                                        "quant": {"lqer": {"rank": 8}, "bits": 12},
                                        "eval": {"lora_ttt": True, "layers": []},
                                    }
                                }
                            },
                            "metrics": {
                                "metrics/headline.json": {
                                    "data": {
                                        "ladder": {
                                            "prequant_raw": 1.602,
                                            "prequant_ema": 1.6010000000000002,
                                            "dequantized": 1.612,
                                            "model_bin": 1.612,
                                            "sliding": 1.61,
                                            "lora_ttt": 1.606,
                                        },
                                        "bytes": {"total": 16200000, "limit": 16000000, "fits": False},
                                        "compliance": {"reported_mode": "sliding", "compliant": False},
                                    }
                                }
                            },
                        },
                        "error": {"msg": "Experiment run failed", "type": ""},
                        "experiments": None,
                    }
                ],
                "executor": {
                    "state": "failed",
                    "name": None,
                    "local": {
                        "root": None,
                        "log": "/tmp/x/.dvc/tmp/exps/run/d2f88e28a34b8e5b244bdb43e62c3b3bc1c9e6f2/"
                        "d2f88e28a34b8e5b244bdb43e62c3b3bc1c9e6f2.out",
                        "pid": 23843,
                        "returncode": 255,
                        "task_id": "d2f88e28a34b8e5b244bdb43e62c3b3bc1c9e6f2",
                    },
                },
                "name": "seed99",
            },
        ],
    },
]


LABELS = ["workspace", "master", "├─ too-big", "├─ lr-up", "├─ waiting", "└─ seed99"]


DIFFERING = ["train.lr", "train.seed", "quant.lqer.rank", "quant.bits", "eval.lora_ttt"]


def _cells(text: str, labels: list[str] = LABELS) -> dict[str, list[str]]:
    """Label -> cells of each table row (the tree prefix joined to its name)."""
    return table_cells(text, labels)


def _subset(*names: str) -> list:
    """REAL with only the named experiments under master (and no workspace)."""
    rows = copy.deepcopy(REAL[1:])
    rows[0]["experiments"] = [e for e in rows[0]["experiments"] if e["name"] in names]
    return rows


def test_rows_of_real_output():
    rows = exps.parse(REAL)
    assert [r.label for r in rows] == LABELS
    assert [r.state for r in rows] == ["", "", "", "", "queued", "failed"]
    assert rows[1].params["quant.lqer.rank"] == 4 and rows[1].metrics["ladder.model_bin"] == 1.606


def test_ladder_columns():
    text = exps.table(REAL)
    assert text.splitlines()[0].split() == ["experiment", "state", "raw", "ema", "deq", "bin", "slide", "ttt",
                                            "bytes", "fits", "ok"]  # fmt: skip
    cells = _cells(text)
    assert cells["master"] == ["1.5960", "1.5950", "1.6060", "1.6060", "1.6040", "-", "15,600,000", "yes", "yes"]
    assert cells["├─ too-big"] == ["1.6020", "1.6010", "1.6120", "1.6120", "1.6100", "1.6060", "16,200,000", "no",
                                   "no"]  # fmt: skip
    swa = copy.deepcopy(REAL)
    swa[1]["data"]["metrics"]["metrics/headline.json"]["data"]["ladder"]["prequant_swa"] = 1.59
    assert exps.table(swa).splitlines()[0].split()[2:5] == ["raw", "ema", "swa"]


def test_only_differing_params_shown():
    assert list(exps.differing_params(exps.parse(REAL))) == DIFFERING
    text = exps.table(_subset("too-big", "lr-up"))  # train.seed is 1 in all three; they fit inline
    assert text.splitlines()[0].split()[-4:] == ["train.lr", "…lqer.rank", "quant.bits", "…lora_ttt"]
    assert _cells(text)["├─ too-big"][-4:] == ["0.2", "8", "12", "true"]
    assert "launcher" not in text and "layers" not in text and "seed" not in text
    assert exps.short_key("quant.lqer.rank", 12) == "…lqer.rank" and exps.short_key("train.lr", 12) == "train.lr"
    assert exps.short_key("a.very_long_last_part", 12) == "…very_long_last_part"  # never shorter than its last part


@pytest.mark.parametrize("width", [120, 100, 80])
def test_every_line_fits(width):
    wide = copy.deepcopy(REAL)  # a few more differing params, with long keys and values
    tips = [wide[0], wide[1], *(e["revs"][0] for e in wide[1]["experiments"])]
    for i, entry in enumerate(tips):
        params = entry["data"]["params"]["params.yaml"]["data"]
        params["eval"]["multi_phase"] = {"grad_clip_norm": 0.1 * i, "schedule": f"cosine-{i}" * 8}
    tips[3]["name"] = "lr-up-and-a-name-too-long-for-80-columns"  # names (never numbers) end in "…" if need be
    for rows in (REAL, wide, _subset("lr-up")):
        text = exps.table(rows, width)
        assert max(map(len, text.splitlines())) <= width, text
        for r in exps.parse(rows):  # no number cut: every value of every row is in the text
            for key in ("ladder.prequant_raw", "ladder.sliding") if r.metrics else ():
                assert f"{r.metrics[key]:.4f}" in text
    text = exps.table(wide, 120)  # too many params for columns: key=value lines under each row
    assert "    train.lr=0.2  train.seed=99  quant.lqer.rank=8" in text
    assert "eval.multi_phase.grad_clip_norm=0.5" in text
    assert "├─ lr-up-and-a-name-too-long-for-80-columns " in text and "├─ lr-up-a… " in exps.table(wide, 80)


def test_missing_metrics_and_failed_experiment():
    text = exps.table(REAL)
    cells = _cells(text)
    assert cells["workspace"][:9] == ["-"] * 9  # no metrics/headline.json in the workspace
    assert cells["└─ seed99"][:10] == ["failed"] + ["-"] * 9  # the commit's stale metrics are not shown
    assert cells["├─ waiting"][:2] == ["queued", "-"]
    assert "seed99: failed (exit 255), log" in text and "/tmp/x/.dvc/tmp/exps/run/d2f88e28a34b8" in text
    none = copy.deepcopy(REAL[:1])
    assert "no row has metrics/headline.json" in exps.table(none)


def test_a_failed_experiment_says_why_from_its_queue_log(tmp_path):
    """The row of an experiment stopped by a stage's one-line error (e.g. train.abort_above) carries that line."""
    rows = copy.deepcopy(REAL)
    failed = next(e for e in rows[1]["experiments"] if e["executor"] and e["executor"]["state"] == "failed")
    log = tmp_path / "run.out"
    log.write_text("Reproducing experiment 'seed99'\nRunning stage 'train':\nerror: train: val_bpb 2.4568 at step 20 "
                   "is above train.abort_above.val_bpb (1.0); stopped early, no weights written\nERROR: failed to "
                   "reproduce 'train'\n")  # fmt: skip
    failed["executor"]["local"]["log"] = str(log)
    text = exps.table(rows, 200)
    assert "seed99: failed (exit 255): error: train: val_bpb 2.4568 at step 20 is above train.abort_above" in text
    log.unlink()  # the log is gone: its path, as before
    assert f"seed99: failed (exit 255), log {log}" in exps.table(rows, 200)


def test_errors(tmp_path, monkeypatch):
    with pytest.raises(PgolfError, match="is not a DVC repository"):
        exps.exp_show(tmp_path, [])
    with pytest.raises(PgolfError, match="--csv: this command reads dvc's JSON"):
        exps.exp_show(tmp_path, ["--csv"])
    with pytest.raises(PgolfError, match="not `dvc exp show --json` output"):
        exps.table({"rev": "workspace"})
    (tmp_path / "bad.json").write_text("Experiment  raw\n")
    with pytest.raises(PgolfError, match="bad.json is not JSON"):
        exps.main(["--json", str(tmp_path / "bad.json")])
    with pytest.raises(PgolfError, match="-A: dvc arguments do nothing with --json FILE"):
        exps.main(["--json", str(tmp_path / "bad.json"), "-A"])
    monkeypatch.setattr(exps.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(exps.shutil, "which", lambda name: None)
    with pytest.raises(PgolfError, match=r'needs dvc .*pip install "dvc>=3.60"'):
        exps.exp_show(tmp_path, [])


def test_main_reads_saved_json(tmp_path, capsys):
    (tmp_path / "show.json").write_text(json.dumps(REAL))
    exps.main(["--json", str(tmp_path / "show.json"), "--width", "100"])
    out = capsys.readouterr().out
    assert out.startswith("experiment") and max(map(len, out.splitlines())) <= 100


def test_device_hours_and_cost_columns_when_some_row_has_them():
    rows = _subset("too-big", "lr-up")
    assert "dev-h" not in exps.table(rows) and "cost" not in exps.table(rows)  # headlines before the run card
    headline = lambda entry: entry["data"]["metrics"]["metrics/headline.json"]["data"]  # noqa: E731
    headline(rows[0])["device_time"] = {"device_hours": 2.02778, "cost": 6.0833}
    headline(rows[0]["experiments"][0]["revs"][0])["device_time"] = {"device_hours": 0.5}  # too-big: no price
    text = exps.table(rows)
    assert text.splitlines()[0].split()[-4:] == ["fits", "ok", "dev-h", "cost"]
    cells = table_cells(text, ["master", "├─ too-big", "└─ lr-up"])
    assert cells["master"][-2:] == ["2.028", "6.08"] and cells["├─ too-big"][-2:] == ["0.500", "-"]
    assert cells["└─ lr-up"][-2:] == ["-", "-"]
