"""pgolf.score.unigram: the unigram baseline is add-one counts of the training shards."""

import pytest
import torch

pytest.importorskip("dvclive")  # the guard of its former file (tests/test_train.py)


def test_unigram_baseline_is_add_one_counts(tmp_path):
    from pgolf.data import shards
    from pgolf.score.unigram import unigram_log_probs

    shards.write_shard(tmp_path / "train_000000.bin", [1, 2, 2, 3])
    shards.write_shard(tmp_path / "train_000001.bin", [1, 2])
    logp = unigram_log_probs(tmp_path, vocab_size=5)
    expected = torch.tensor([1, 3, 4, 2, 1], dtype=torch.float64) / 11
    torch.testing.assert_close(logp.exp(), expected)
    capped = unigram_log_probs(tmp_path, vocab_size=5, max_tokens=4)  # the first 4 tokens only
    torch.testing.assert_close(capped.exp(), torch.tensor([1, 2, 3, 2, 1], dtype=torch.float64) / 9)
    shards.write_shard(tmp_path / "train_000002.bin", [7])  # an id beyond the vocabulary: named, not dropped
    with pytest.raises(shards.ShardError, match=r"train_000002.bin: token id 7 is out of range for vocab_size 5"):
        unigram_log_probs(tmp_path, vocab_size=5)
