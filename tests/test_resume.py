"""Interrupted downloads resume with Range and If-Range, or restart cleanly."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

import zooload
from support.builders import blobs_intact, cache_files, partial_files, sha256_of
from support.httpserver import Fault

DATA = os.urandom(600_000)
PIN = sha256_of(DATA)


def _pinned(url: str, data: bytes = DATA) -> str:
    return f"{url}#sha256={sha256_of(data)}"


def _interrupt(served, cache_dir: Path, *, after: int) -> str:
    """Serve DATA, and make one call that fails after ``after`` bytes."""
    url = served.add("m.bin", DATA)
    served.server.fault(served.path("m.bin"), Fault(truncate_after=after, times=1))
    once = zooload.RetryPolicy(attempts=1)
    with pytest.raises(zooload.DownloadError, match="1 failed attempt in a row"):
        zooload.fetch(_pinned(url), cache_dir=cache_dir, retry=once)
    return url


def test_resume_continues_a_dropped_connection_with_a_range_request(
    served, cache_dir: Path, retry: zooload.RetryPolicy
) -> None:
    url = served.add("m.bin", DATA)
    served.server.fault(served.path("m.bin"), Fault(truncate_after=200_000, times=2))

    path = zooload.fetch(_pinned(url), cache_dir=cache_dir, retry=retry)

    assert path.read_bytes() == DATA
    gets = [r for r in served.server.requests if r.path == served.path("m.bin")]
    assert [r.status for r in gets] == [200, 206, 206]
    assert [r.headers.get("range") for r in gets] == [
        None,
        "bytes=200000-",
        "bytes=400000-",
    ]
    assert gets[1].headers["if-range"].startswith('"')
    # Every byte crossed the network once.
    assert sum(r.body_bytes for r in gets) == len(DATA)
    assert partial_files(cache_dir) == []


def test_resume_after_a_failed_call_the_next_call_resumes(
    served, cache_dir: Path, retry: zooload.RetryPolicy
) -> None:
    url = _interrupt(served, cache_dir, after=250_000)

    # Nothing half-written is visible as a blob; the bytes wait in partial/.
    assert not (cache_dir / "blobs").exists() or not any(
        (cache_dir / "blobs").iterdir()
    )
    assert any("released" in name for name in partial_files(cache_dir))
    path = zooload.fetch(_pinned(url), cache_dir=cache_dir, retry=retry)
    assert path.read_bytes() == DATA
    assert served.server.requests[-1].headers["range"] == "bytes=250000-"
    assert partial_files(cache_dir) == []


def test_resume_restarts_from_zero_when_the_server_ignores_range(
    served, cache_dir: Path, retry: zooload.RetryPolicy
) -> None:
    url = _interrupt(served, cache_dir, after=300_000)
    served.server.fault(served.path("m.bin"), Fault(ignore_range=True))

    path = zooload.fetch(_pinned(url), cache_dir=cache_dir, retry=retry)

    last = served.server.requests[-1]
    assert last.headers["range"] == "bytes=300000-"
    assert last.status == 200
    assert path.read_bytes() == DATA


def test_resume_restarts_cleanly_when_the_file_changed(
    served, cache_dir: Path, fake_time
) -> None:
    url = served.add("m.bin", DATA)
    changed = os.urandom(500_000)
    served.server.fault(served.path("m.bin"), Fault(truncate_after=100_000, times=1))

    def change_while_waiting(seconds: float) -> None:
        served.server.replace(served.path("m.bin"), changed)
        fake_time.sleep(seconds)

    retry = zooload.RetryPolicy(sleep=change_while_waiting, clock=fake_time.clock)
    path = zooload.fetch(url, cache_dir=cache_dir, retry=retry, extract=False)

    # If-Range carried the old ETag, so the server sent the new file whole:
    # never old bytes spliced with new ones.
    last = served.server.requests[-1]
    assert last.headers["if-range"] != f'"{sha256_of(changed)[:16]}"'
    assert last.status == 200
    assert path.read_bytes() == changed
    assert blobs_intact(cache_dir)


def test_resume_a_lying_content_length_ends_verified(
    served, cache_dir: Path, retry: zooload.RetryPolicy
) -> None:
    # The server announces more than it sends: the transfer looks cut short,
    # the resume asks for bytes past the end (416), and a restart completes.
    url = served.add("m.bin", DATA)
    fault = Fault(content_length=len(DATA) + 1000, times=1)
    served.server.fault(served.path("m.bin"), fault)

    path = zooload.fetch(_pinned(url), cache_dir=cache_dir, retry=retry)

    assert path.read_bytes() == DATA
    statuses = [r.status for r in served.server.requests[-3:]]
    assert statuses == [200, 416, 200]
    assert blobs_intact(cache_dir)


def test_resume_a_short_content_length_never_reaches_the_cache(
    served, cache_dir: Path, retry: zooload.RetryPolicy
) -> None:
    # The server announces less than the file: only the pin can tell.
    url = served.add("m.bin", DATA)
    fault = Fault(content_length=len(DATA) - 1000, times=1)
    served.server.fault(served.path("m.bin"), fault)

    with pytest.raises(zooload.HashMismatchError, match="pin the new hash"):
        zooload.fetch(_pinned(url), cache_dir=cache_dir, retry=retry)

    assert cache_files(cache_dir) == []
    assert zooload.fetch(_pinned(url), cache_dir=cache_dir).read_bytes() == DATA


def test_resume_of_corrupt_kept_bytes_is_redone_from_zero(
    served, cache_dir: Path, retry: zooload.RetryPolicy, caplog
) -> None:
    url = _interrupt(served, cache_dir, after=300_000)
    (kept,) = [
        path
        for path in (cache_dir / "partial").iterdir()
        if not path.name.endswith(".json")
    ]
    with kept.open("r+b") as stream:
        stream.write(b"\0" * 10)

    with caplog.at_level(logging.DEBUG, logger="zooload"):
        path = zooload.fetch(_pinned(url), cache_dir=cache_dir, retry=retry)

    assert path.read_bytes() == DATA
    assert [r.status for r in served.server.requests[-2:]] == [206, 200]
    assert "does not match its pin; downloading again" in caplog.text


def test_resume_needs_a_validator_otherwise_restarts(
    served, cache_dir: Path, retry: zooload.RetryPolicy
) -> None:
    path_name = served.path("plain.bin")
    url = served.server.add(path_name, DATA, etag=None, last_modified=None)
    served.server.fault(path_name, Fault(truncate_after=200_000, times=1))

    path = zooload.fetch(_pinned(url), cache_dir=cache_dir, retry=retry)

    assert path.read_bytes() == DATA
    assert "range" not in served.server.requests[-1].headers


def test_resume_uses_last_modified_when_the_etag_is_weak(
    served, cache_dir: Path, retry: zooload.RetryPolicy
) -> None:
    path_name = served.path("weak.bin")
    url = served.server.add(path_name, DATA, etag='W/"v1"')
    served.server.fault(path_name, Fault(truncate_after=200_000, times=1))

    zooload.fetch(_pinned(url), cache_dir=cache_dir, retry=retry)

    last = served.server.requests[-1]
    assert last.status == 206
    assert last.headers["if-range"].endswith("GMT")


def test_resume_logs_how_many_bytes_were_resumed(
    served, cache_dir: Path, retry: zooload.RetryPolicy, caplog
) -> None:
    url = served.add("m.bin", DATA)
    served.server.fault(served.path("m.bin"), Fault(truncate_after=200_000, times=1))
    with caplog.at_level(logging.INFO, logger="zooload"):
        zooload.fetch(_pinned(url), cache_dir=cache_dir, retry=retry)
    (done,) = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert f"{len(DATA)} bytes" in done
    assert "200000 of them resumed" in done
