"""Shared fixtures: one loopback HTTP server for the run, a private cache, and
the real published weights that the silero-vad package ships."""

from __future__ import annotations

import importlib.resources
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.httpserver import LoopbackServer

_paths = itertools.count()


@pytest.fixture(autouse=True)
def _isolated_environment(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep every test off the user's cache and away from any proxy."""
    monkeypatch.setenv("ZOOLOAD_CACHE", str(tmp_path_factory.mktemp("default-cache")))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture(scope="session")
def loopback() -> Iterator[LoopbackServer]:
    """The HTTP server on 127.0.0.1 that every download test talks to."""
    with LoopbackServer() as server:
        yield server


class Served:
    """Publishes bytes on the shared server under paths unique to one test."""

    def __init__(self, server: LoopbackServer) -> None:
        self.server = server
        self.prefix = f"t{next(_paths)}"

    def add(self, name: str, data: bytes) -> str:
        """Serve ``data`` and return its URL."""
        return self.server.add(self.path(name), data)

    def path(self, name: str) -> str:
        """The server path of ``name`` for this test."""
        return f"/{self.prefix}/{name}"

    def count(self, name: str) -> int:
        """How many GET requests reached ``name``."""
        return self.server.count(self.path(name))


@pytest.fixture
def served(loopback: LoopbackServer) -> Iterator[Served]:
    """Serve files for one test; its faults are cleared afterwards."""
    yield Served(loopback)
    loopback.clear_faults()


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """An empty cache root for one test."""
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def silero_data() -> Path:
    """The data folder of the installed silero-vad package (real weights)."""
    return Path(str(importlib.resources.files("silero_vad") / "data"))
