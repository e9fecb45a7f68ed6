"""Unit tests for partial downloads and the transports' shared helpers."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import zooload
from support.builders import partial_files
from zooload.cache import Cache
from zooload.partials import PartialDownload
from zooload.sources import http, objectstore
from zooload.sources.base import Version, receive

URL = "https://example.org/m.bin"


@pytest.fixture
def cache(cache_dir: Path) -> Cache:
    return Cache.open(cache_dir)


def _released(cache: Cache, data: bytes, *, validator: str | None = '"v1"') -> None:
    partial = PartialDownload.open(cache, URL)
    sink = partial.restart(validator=validator, total=100)
    sink.write(data)
    sink.finish()
    partial.release()


def test_partial_release_and_take_over_keep_bytes_and_version(cache: Cache) -> None:
    _released(cache, b"x" * 40)

    partial = PartialDownload.open(cache, URL)

    assert (partial.offset, partial.validator) == (40, '"v1"')
    assert str(os.getpid()) in partial.path.name


def test_partial_without_a_validator_is_not_kept(cache: Cache) -> None:
    _released(cache, b"x" * 40, validator=None)
    assert partial_files(cache.root) == []
    assert PartialDownload.open(cache, URL).offset == 0


def test_partial_without_its_sidecar_is_discarded(cache: Cache) -> None:
    _released(cache, b"x" * 40)
    for path in (cache.root / "partial").glob("*.json"):
        path.unlink()

    partial = PartialDownload.open(cache, URL)

    assert partial.offset == 0
    assert partial_files(cache.root) == []


def test_partial_of_another_url_with_the_same_key_is_discarded(cache: Cache) -> None:
    _released(cache, b"x" * 40)
    (sidecar,) = (cache.root / "partial").glob("*.json")
    sidecar.write_text(sidecar.read_text().replace(URL, "https://other/"))

    assert PartialDownload.open(cache, URL).offset == 0
    assert partial_files(cache.root) == []


def test_partial_taken_by_another_process_first_is_skipped(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = cache.root / "partial" / "download-gone-released-0-ff"
    monkeypatch.setattr(Cache, "abandoned_partials", lambda self, kind="": [gone])
    assert PartialDownload.open(cache, URL).offset == 0


def test_partial_of_a_live_process_is_left_alone(cache: Cache) -> None:
    live = PartialDownload.open(cache, URL)
    with live.restart(validator='"v1"', total=10) as sink:
        sink.write(b"abc")
    assert PartialDownload.open(cache, URL).offset == 0
    assert live.offset == 3


def test_receive_more_bytes_than_announced_is_a_size_mismatch(cache: Cache) -> None:
    partial = PartialDownload.open(cache, URL)
    sink = partial.restart(validator=None, total=2)
    with pytest.raises(zooload.SizeMismatchError, match="expected 2 bytes, got 4"):
        receive(URL, [b"abcd"], sink, version=Version(None, None, 2), progress=False)


def test_receive_fewer_bytes_than_announced_is_retryable(cache: Cache) -> None:
    partial = PartialDownload.open(cache, URL)
    sink = partial.restart(validator='"v1"', total=10)
    with pytest.raises(zooload.DownloadError, match="stopped after 4 of 10") as e:
        receive(URL, [b"abcd"], sink, version=Version('"v1"', None, 10), progress=False)
    assert e.value.retryable
    assert partial.offset == 4


def test_http_content_range_from_elsewhere_restarts(cache: Cache) -> None:
    _released(cache, b"x" * 40)
    partial = PartialDownload.open(cache, URL)
    with pytest.raises(zooload.DownloadError, match="starting again from zero") as e:
        http._content_range(URL, "bytes 0-99/100", partial)
    assert e.value.retryable
    assert partial.offset == 0
    assert http._content_range(URL, "bytes 0-9/*", partial) == (0, None)


@pytest.mark.parametrize(
    ("value", "seconds"), [(None, None), ("12", 12.0), ("soon", None), ("-1", None)]
)
def test_http_retry_after_reads_seconds_and_ignores_nonsense(
    value: str | None, seconds: float | None
) -> None:
    assert http._retry_after(value) == seconds


@pytest.mark.parametrize(
    ("error", "status", "retryable"),
    [
        (FileNotFoundError(errno.ENOENT, "no such key"), 404, False),
        (PermissionError(errno.EACCES, "denied"), 403, False),
        (ConnectionResetError(errno.ECONNRESET, "reset"), None, True),
        (TimeoutError("read timed out"), None, True),
    ],
)
def test_objectstore_errors_become_download_errors(
    error: BaseException, status: int | None, retryable: bool
) -> None:
    with (
        pytest.raises(zooload.DownloadError) as caught,
        objectstore._translated_errors("s3://b/k"),
    ):
        raise error
    assert (caught.value.status, caught.value.retryable) == (status, retryable)
    assert caught.value.__cause__ is error


def test_objectstore_folder_is_not_a_file() -> None:
    with pytest.raises(zooload.DownloadError, match="is a folder"):
        objectstore._version("s3://b/k/", {"type": "directory", "size": 0})
