"""Shared fixtures: one loopback HTTP server for the run, a private cache, and
the real published weights that the silero-vad package ships."""

from __future__ import annotations

import importlib.resources
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.httpserver import LoopbackServer
from zooload import RetryPolicy

_paths = itertools.count()


_OUTSIDE_SETTINGS = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "ZOOLOAD_OFFLINE",
    "ZOOLOAD_MIRRORS",
    "ZOOLOAD_HEADERS",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
)


@pytest.fixture(autouse=True)
def _isolated_environment(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep every test off the user's cache, proxies and zooload settings."""
    monkeypatch.setenv("ZOOLOAD_CACHE", str(tmp_path_factory.mktemp("default-cache")))
    for name in _OUTSIDE_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,127.0.0.2,localhost")


@pytest.fixture(scope="session")
def loopback() -> Iterator[LoopbackServer]:
    """The HTTP server on 127.0.0.1 that every download test talks to."""
    with LoopbackServer() as server:
        yield server


@pytest.fixture(scope="session")
def other_host() -> Iterator[LoopbackServer]:
    """A second server on 127.0.0.2: another host, for redirects that leave."""
    with LoopbackServer("127.0.0.2") as server:
        yield server


class FakeTime:
    """A clock and a sleep for :class:`zooload.RetryPolicy`: sleeping is instant
    and only moves the clock; every wait is recorded."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_time() -> FakeTime:
    """Instant waits for retries, recorded."""
    return FakeTime()


@pytest.fixture
def retry(fake_time: FakeTime) -> RetryPolicy:
    """The default retry policy, without jitter and without real waiting."""
    return RetryPolicy(jitter=0.0, sleep=fake_time.sleep, clock=fake_time.clock)


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
