"""Offline mode opens no connection; a failed revalidation falls back to the cache."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

import zooload
from support.builders import sha256_of
from support.httpserver import Fault

DATA = os.urandom(50_000)


def test_offline_uncached_url_raises_not_cached_without_connecting(
    served, cache_dir: Path
) -> None:
    url = served.add("m.bin", DATA)
    before = served.server.connections

    with pytest.raises(zooload.NotCachedError, match="fetch it once while online") as e:
        zooload.fetch(url, cache_dir=cache_dir, offline=True)

    assert url in str(e.value)
    assert e.value.url == url
    assert served.server.connections == before


@pytest.mark.parametrize("pinned", [True, False])
def test_offline_environment_serves_cached_entries_without_connecting(
    pinned: bool, served, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = served.add("m.bin", DATA)
    if pinned:
        url += f"#sha256={sha256_of(DATA)}"
    cached = zooload.fetch(url, cache_dir=cache_dir)
    monkeypatch.setenv("ZOOLOAD_OFFLINE", "1")
    before = served.server.connections

    assert zooload.fetch(url, cache_dir=cache_dir) == cached
    assert served.server.connections == before


def test_offline_pinned_url_with_another_hash_is_not_cached(
    served, cache_dir: Path
) -> None:
    url = served.add("m.bin", DATA)
    zooload.fetch(url, cache_dir=cache_dir)
    other = f"{url}#sha256={'0' * 64}"
    with pytest.raises(zooload.NotCachedError):
        zooload.fetch(other, cache_dir=cache_dir, offline=True)


def test_offline_argument_overrides_the_environment(
    served, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZOOLOAD_OFFLINE", "yes")
    url = served.add("m.bin", DATA)
    assert zooload.fetch(url, cache_dir=cache_dir, offline=False).read_bytes() == DATA


def test_offline_rejects_an_unclear_environment_value(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZOOLOAD_OFFLINE", "maybe")
    with pytest.raises(zooload.ConfigError, match="set it to 1 or 0"):
        zooload.fetch("https://example.org/m.bin", cache_dir=cache_dir)


def test_offline_load_url_works_from_the_cache(
    served, cache_dir: Path, tmp_path: Path
) -> None:
    import torch

    torch.save(torch.nn.Linear(2, 1).state_dict(), tmp_path / "w.pt")
    url = served.add("w.pt", (tmp_path / "w.pt").read_bytes())
    kwargs = {"in_features": 2, "out_features": 1}
    zooload.load_url(url, arch=torch.nn.Linear, cache_dir=cache_dir, **kwargs)
    before = served.server.connections
    model = zooload.load_url(
        url, arch=torch.nn.Linear, cache_dir=cache_dir, offline=True, **kwargs
    )
    assert model.weight.shape == (1, 2)
    assert served.server.connections == before


@pytest.mark.parametrize("fault", [Fault(status=503), Fault(truncate_after=10)])
def test_offline_fallback_when_revalidation_fails_uses_the_cache_with_a_warning(
    fault: Fault, served, cache_dir: Path, retry, caplog
) -> None:
    url = served.add("m.bin", DATA)
    cached = zooload.fetch(url, cache_dir=cache_dir)
    served.server.replace(served.path("m.bin"), os.urandom(50_000))
    served.server.fault(served.path("m.bin"), fault)

    with caplog.at_level(logging.WARNING, logger="zooload"):
        path = zooload.fetch(url, cache_dir=cache_dir, retry=retry)

    assert path == cached
    assert path.read_bytes() == DATA
    (warning,) = [r for r in caplog.records if "revalidate" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert warning.getMessage().startswith(f"could not revalidate {url}")
    assert "using the cached copy" in warning.getMessage()
    # One attempt only: the cached copy is the fallback, not a long backoff.
    assert served.count("m.bin") == 2


def test_offline_fallback_is_not_used_for_a_missing_file(
    served, cache_dir: Path, retry
) -> None:
    url = served.add("m.bin", DATA)
    zooload.fetch(url, cache_dir=cache_dir)
    served.server.fault(served.path("m.bin"), Fault(status=404))
    with pytest.raises(zooload.DownloadError, match="not found"):
        zooload.fetch(url, cache_dir=cache_dir, retry=retry)


def test_offline_revalidation_not_modified_keeps_the_blob(
    served, cache_dir: Path
) -> None:
    url = served.add("m.bin", DATA)
    first = zooload.fetch(url, cache_dir=cache_dir)
    second = zooload.fetch(url, cache_dir=cache_dir)
    assert first == second
    assert served.server.requests[-1].status == 304


def test_offline_load_state_dict_takes_the_fetch_settings(
    served, cache_dir: Path, tmp_path: Path
) -> None:
    import torch

    torch.save({"w": torch.ones(2)}, tmp_path / "w.pt")
    url = served.add("w.pt", (tmp_path / "w.pt").read_bytes())
    with pytest.raises(zooload.NotCachedError):
        zooload.load_state_dict(url, cache_dir=cache_dir, offline=True)
    mirrors = {"https://unused.example/": "https://mirror.example/"}
    tensors = zooload.load_state_dict(url, cache_dir=cache_dir, mirrors=mirrors)
    assert tensors["w"].tolist() == [1.0, 1.0]
