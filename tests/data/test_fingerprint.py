"""pgolf.data.fingerprint: the figures auditors read first (train shards, val tokens and targets, a hash of the
val stream), and which differ from the published shards'."""

import hashlib

import numpy as np

from pgolf.data import fingerprint
from stages.tokenize import fingerprint_line
from tests.helpers.data import write_shards


def test_the_fingerprint_counts_shards_tokens_and_targets_and_hashes_the_val_stream(tmp_path):
    val = [list(range(1, 3000)), list(range(7, 2000))]  # 4,992 tokens in two shards: 2 windows of 2048 targets
    write_shards(tmp_path, "val", val)
    write_shards(tmp_path, "train", [[1, 2, 3], [4, 5], [6]])
    found = fingerprint.fingerprint(tmp_path)
    stream = np.concatenate([np.array(v, dtype="<u2") for v in val])
    assert found == {"train_shards": 3, "train_tokens": 6, "val_tokens": 4992, "val_targets": 4096,
                     "val_sha256": hashlib.sha256(stream.tobytes()).hexdigest()}  # fmt: skip
    write_shards(tmp_path, "val", [val[0], [8, *val[1][1:]]])  # one token changed
    assert fingerprint.fingerprint(tmp_path)["val_sha256"] != found["val_sha256"]


def test_the_records_val_tokens_figure_is_the_targets_of_whole_2048_token_windows():
    assert fingerprint.val_targets(47_851_521) == 47_851_520  # the record's loaded stream and its log line
    assert fingerprint.val_targets(47_853_000) == 47_851_520 and fingerprint.val_targets(2048) == 0


def test_published_figures_are_checked_and_a_difference_is_named():
    caseops = "sp8192_lossless_caps_caseops_v1_reserved"
    clean = {"train_shards": 80, "val_targets": 47_851_520}
    assert fingerprint.published_check(clean, caseops)["matches"]
    cut = {"train_shards": 2, "val_targets": 47_851_520, "val_sha256": "ab" * 32}
    check = fingerprint.published_check(cut, caseops)
    assert check["differs"] == ["train_shards"] and not check["matches"]
    assert fingerprint.published_check(cut, "sotu-local") is None
    line = fingerprint_line(cut | {"published": check})
    assert line.endswith(f"warning: data.variant={caseops} differs from the published shards: "
                         "train_shards 2 (published 80)")  # fmt: skip
    assert line.startswith("tokenize: train_shards: 2 val_tokens: 47851520 (val stream sha256 abababababab)")
