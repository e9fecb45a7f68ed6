"""Unit tests for zooload.fetching: locations, pins, cache hits, revalidation."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

import zooload
from support.builders import cache_files, sha256_of
from zooload.cache import Cache
from zooload.errors import CacheError, ConfigError, DownloadError, HashMismatchError
from zooload.fetching import fetch_blob, parse_location

DATA = b"tiny weights, version 1"
DIGEST = sha256_of(DATA)


# -- parse_location ----------------------------------------------------------------


def test_parse_location_fragment_pin() -> None:
    location = parse_location(f"https://host/m.tar.gz#sha256={DIGEST.upper()}")

    assert location.url == "https://host/m.tar.gz"
    assert location.scheme == "https"
    assert location.sha256 == DIGEST
    assert not location.is_local


def test_parse_location_argument_pin() -> None:
    location = parse_location("http://host/m.pt", sha256=f"sha256:{DIGEST}")

    assert (location.url, location.scheme, location.sha256) == (
        "http://host/m.pt",
        "http",
        DIGEST,
    )


def test_parse_location_no_pin() -> None:
    assert parse_location("https://host/m.pt").sha256 is None


def test_parse_location_equal_pins_agree() -> None:
    location = parse_location(f"https://host/m.pt#sha256={DIGEST}", sha256=DIGEST)

    assert location.sha256 == DIGEST


def test_parse_location_different_pins_raise() -> None:
    with pytest.raises(
        ConfigError,
        match=r"two different sha256 pins given for https://host/m\.pt; keep one\.",
    ):
        parse_location(f"https://host/m.pt#sha256={DIGEST}", sha256="0" * 64)


@pytest.mark.parametrize(
    "fragment", ["md5=abc", "sha256=", "sha256", "latest"], ids=str
)
def test_parse_location_bad_fragment_raises(fragment: str) -> None:
    with pytest.raises(ConfigError, match=rf"must be #sha256=<hex>, not #{fragment}\."):
        parse_location(f"https://host/m.pt#{fragment}")


def test_parse_location_malformed_pin_raises() -> None:
    with pytest.raises(ConfigError, match=r"'xyz' is not a sha256 digest; give 64 hex"):
        parse_location("https://host/m.pt#sha256=xyz")


def test_parse_location_unsupported_scheme_raises() -> None:
    with pytest.raises(
        ConfigError,
        match=r"unsupported URL scheme 'ftp' in ftp://host/m\.pt; use one of: "
        r"abfs, abfss, az, file, gcs, gs, http, https, s3, s3a\.",
    ):
        parse_location("ftp://host/m.pt")


def test_parse_location_file_url_is_local() -> None:
    location = parse_location(f"file:///models/m.pt#sha256={DIGEST}")

    assert location.scheme == "file"
    assert location.url == "file:///models/m.pt"
    assert location.is_local
    assert location.sha256 == DIGEST


@pytest.mark.parametrize(
    "path", ["C:\\models\\x.pt", "d:/models/x.pt", "relative/x.pt", "/abs/x.pt"]
)
def test_parse_location_paths_are_local(path: str) -> None:
    location = parse_location(path)

    assert location.scheme == ""
    assert location.url == path
    assert location.is_local


def test_parse_location_accepts_path_objects(tmp_path: Path) -> None:
    location = parse_location(tmp_path / "x.pt")

    assert location.url == str(tmp_path / "x.pt")
    assert location.is_local


# -- fetch: pins and the cache -------------------------------------------------------


def test_fetch_pinned_and_cached_makes_no_request(served: Any, cache_dir: Path) -> None:
    url = served.add("w.bin", DATA)

    first = zooload.fetch(f"{url}#sha256={DIGEST}", cache_dir=cache_dir)
    second = zooload.fetch(url, sha256=DIGEST, cache_dir=cache_dir)

    assert first == second == cache_dir.resolve() / "blobs" / DIGEST
    assert second.read_bytes() == DATA
    assert served.count("w.bin") == 1


def test_fetch_pinned_blob_serves_other_urls_without_request(
    served: Any, cache_dir: Path
) -> None:
    zooload.fetch(served.add("a.bin", DATA), sha256=DIGEST, cache_dir=cache_dir)
    mirror = served.server.url(served.path("never-published.bin"))

    path = zooload.fetch(mirror, sha256=DIGEST, cache_dir=cache_dir)

    assert path.read_bytes() == DATA
    assert served.count("never-published.bin") == 0


def test_fetch_unpinned_revalidates_and_reuses_blob_on_304(
    served: Any, cache_dir: Path
) -> None:
    url = served.add("w.bin", DATA)
    first = zooload.fetch(url, cache_dir=cache_dir)
    files_before = cache_files(cache_dir)
    published_at = first.stat().st_mtime_ns

    second = zooload.fetch(url, cache_dir=cache_dir)

    assert second == first
    assert served.count("w.bin") == 2
    revalidation = served.server.requests[-1]
    assert revalidation.status == 304
    assert revalidation.body_bytes == 0
    assert revalidation.headers["if-none-match"].startswith('"')
    assert "if-modified-since" in revalidation.headers
    assert cache_files(cache_dir) == files_before
    assert second.stat().st_mtime_ns == published_at
    assert second.read_bytes() == DATA


def test_fetch_changed_content_gives_new_blob(served: Any, cache_dir: Path) -> None:
    url = served.add("w.bin", DATA)
    first = zooload.fetch(url, cache_dir=cache_dir)
    changed = b"tiny weights, version 2"
    served.server.replace(served.path("w.bin"), changed)

    second = zooload.fetch(url, cache_dir=cache_dir)

    assert second != first
    assert second.name == sha256_of(changed)
    assert second.read_bytes() == changed
    assert first.read_bytes() == DATA
    assert served.server.requests[-1].status == 200
    blobs = [name for name in cache_files(cache_dir) if name.startswith("blobs/")]
    assert blobs == sorted([f"blobs/{DIGEST}", f"blobs/{sha256_of(changed)}"])
    # The record now points at the new bytes: the next call revalidates them.
    assert zooload.fetch(url, cache_dir=cache_dir) == second
    assert served.server.requests[-1].status == 304


def test_fetch_unpinned_logs_computed_digest(
    served: Any, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = served.add("w.bin", DATA)
    caplog.set_level(logging.WARNING, logger="zooload")

    zooload.fetch(url, cache_dir=cache_dir)

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.name for r in warnings] == ["zooload.fetching"]
    assert warnings[0].getMessage() == (
        f"no sha256 pinned for {url} over plain http (anyone on the network path "
        f"can change it); to pin these bytes, append #sha256={DIGEST}"
    )


def test_fetch_require_hash_refuses_unpinned_urls_before_any_request(
    served: Any, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = served.add("w.bin", DATA)
    connections = served.server.connections
    monkeypatch.setenv("ZOOLOAD_REQUIRE_HASH", "1")

    with pytest.raises(
        zooload.ConfigError, match=r"ZOOLOAD_REQUIRE_HASH is set"
    ) as caught:
        zooload.fetch(url, cache_dir=cache_dir)

    assert "Append #sha256=<hex>" in str(caught.value)
    assert served.server.connections == connections
    assert zooload.fetch(url, sha256=DIGEST, cache_dir=cache_dir).read_bytes() == DATA


def test_fetch_pinned_logs_no_warning(
    served: Any, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = served.add("w.bin", DATA)
    caplog.set_level(logging.WARNING, logger="zooload")

    zooload.fetch(url, sha256=DIGEST, cache_dir=cache_dir)

    assert caplog.records == []


def test_fetch_same_bytes_from_two_urls_stored_once(
    served: Any, cache_dir: Path
) -> None:
    first = zooload.fetch(served.add("mirror-a/w.bin", DATA), cache_dir=cache_dir)
    second = zooload.fetch(served.add("mirror-b/w.bin", DATA), cache_dir=cache_dir)

    assert first == second
    files = cache_files(cache_dir)
    assert [name for name in files if name.startswith("blobs/")] == [f"blobs/{DIGEST}"]
    assert len([name for name in files if name.startswith("refs/")]) == 2
    assert served.count("mirror-a/w.bin") == served.count("mirror-b/w.bin") == 1


def test_fetch_wrong_pin_caches_nothing(served: Any, cache_dir: Path) -> None:
    url = served.add("w.bin", DATA)

    with pytest.raises(HashMismatchError, match=f"expected {'0' * 64}, got {DIGEST}"):
        zooload.fetch(url, sha256="0" * 64, cache_dir=cache_dir)

    assert cache_files(cache_dir) == []


# -- fetch: local files ----------------------------------------------------------------


def test_fetch_local_file_is_used_in_place(tmp_path: Path, cache_dir: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(DATA)

    assert zooload.fetch(path, sha256=DIGEST, cache_dir=cache_dir) == path
    assert zooload.fetch(path.as_uri(), cache_dir=cache_dir) == path
    assert cache_files(cache_dir) == []


def test_fetch_blob_local_file_reports_digest(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(DATA)

    blob = fetch_blob(parse_location(path), Cache.open(tmp_path), progress=False)

    assert (blob.path, blob.sha256, blob.in_cache) == (path, DIGEST, False)


def test_fetch_local_file_with_wrong_pin_raises(
    tmp_path: Path, cache_dir: Path
) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(DATA)

    with pytest.raises(HashMismatchError, match=f"sha256 mismatch for {path}"):
        zooload.fetch(path, sha256="0" * 64, cache_dir=cache_dir)


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-url"])
def test_fetch_missing_local_path_raises(
    tmp_path: Path, cache_dir: Path, as_uri: bool
) -> None:
    missing = tmp_path / "no-such-file.pt"
    source = missing.as_uri() if as_uri else str(missing)

    with pytest.raises(
        DownloadError, match=rf"{missing} does not exist.*; check the path\."
    ) as caught:
        zooload.fetch(source, cache_dir=cache_dir)

    assert caught.value.url == source
    assert caught.value.status is None


def test_fetch_cache_dir_under_a_file_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    path = tmp_path / "w.bin"
    path.write_bytes(DATA)

    with pytest.raises(
        CacheError,
        match=r"cannot use .*not-a-folder/cache as the zooload cache: .*\. Point "
        r"ZOOLOAD_CACHE or cache_dir= at a writable folder\.",
    ) as caught:
        zooload.fetch(path, cache_dir=blocker / "cache")

    assert isinstance(caught.value, OSError)
    assert isinstance(caught.value.__cause__, OSError)
