"""Retries: what is retried, how long to wait, and when to give up."""

from __future__ import annotations

import logging
import os
import pickle
import socket
from email.utils import formatdate
from pathlib import Path

import pytest

import zooload
from support.builders import cache_files, sha256_of
from support.httpserver import Fault

DATA = os.urandom(300_000)


def _pinned(url: str) -> str:
    return f"{url}#sha256={sha256_of(DATA)}"


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retries_transient_statuses_until_the_file_arrives(
    status: int, served, cache_dir: Path, retry: zooload.RetryPolicy, fake_time
) -> None:
    url = served.add("m.bin", DATA)
    served.server.fault(served.path("m.bin"), Fault(status=status, times=2))

    path = zooload.fetch(_pinned(url), cache_dir=cache_dir, retry=retry)

    assert path.read_bytes() == DATA
    assert served.count("m.bin") == 3
    # Exponential backoff: 1 s, then 2 s (jitter off in the fixture).
    assert fake_time.waits == [1.0, 2.0]


def test_retries_honour_retry_after_in_seconds(
    served, cache_dir: Path, retry: zooload.RetryPolicy, fake_time
) -> None:
    url = served.add("m.bin", DATA)
    fault = Fault(status=503, retry_after="7", times=1)
    served.server.fault(served.path("m.bin"), fault)

    zooload.fetch(_pinned(url), cache_dir=cache_dir, retry=retry)

    assert fake_time.waits == [7.0]


def test_retries_honour_retry_after_as_a_date(
    served, cache_dir: Path, retry: zooload.RetryPolicy, fake_time
) -> None:
    url = served.add("m.bin", DATA)
    fault = Fault(status=429, retry_after=formatdate(0, usegmt=True), times=1)
    served.server.fault(served.path("m.bin"), fault)

    zooload.fetch(_pinned(url), cache_dir=cache_dir, retry=retry)

    # A date in the past asks for no wait beyond the backoff.
    assert fake_time.waits == [1.0]


def test_retries_give_up_after_the_attempts_with_a_clear_error(
    served, cache_dir: Path, fake_time
) -> None:
    url = served.add("m.bin", DATA)
    served.server.fault(served.path("m.bin"), Fault(status=503))
    retry = zooload.RetryPolicy(
        attempts=3, jitter=0.0, sleep=fake_time.sleep, clock=fake_time.clock
    )

    with pytest.raises(zooload.DownloadError, match="HTTP 503") as caught:
        zooload.fetch(_pinned(url), cache_dir=cache_dir, retry=retry)

    assert "Gave up after 3 failed attempts in a row" in str(caught.value)
    assert caught.value.status == 503
    assert caught.value.retryable
    assert served.count("m.bin") == 3
    assert fake_time.waits == [1.0, 2.0]
    assert cache_files(cache_dir) == []


def test_retries_stop_when_retry_after_exceeds_the_time_budget(
    served, cache_dir: Path, retry: zooload.RetryPolicy, fake_time
) -> None:
    url = served.add("m.bin", DATA)
    served.server.fault(served.path("m.bin"), Fault(status=503, retry_after="3600"))

    with pytest.raises(zooload.DownloadError, match="3600 s more to wait"):
        zooload.fetch(_pinned(url), cache_dir=cache_dir, retry=retry)

    assert served.count("m.bin") == 1
    assert fake_time.waits == []


def test_retries_cap_each_wait_and_bound_the_total_time(
    served, cache_dir: Path, fake_time
) -> None:
    url = served.add("m.bin", DATA)
    served.server.fault(served.path("m.bin"), Fault(status=500))
    retry = zooload.RetryPolicy(
        attempts=100,
        max_delay=4.0,
        total_seconds=20.0,
        jitter=0.0,
        sleep=fake_time.sleep,
        clock=fake_time.clock,
    )

    with pytest.raises(zooload.DownloadError, match="s of failures"):
        zooload.fetch(_pinned(url), cache_dir=cache_dir, retry=retry)

    assert fake_time.waits == [1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert sum(fake_time.waits) <= 20.0


def test_retries_jitter_spreads_the_waits(served, cache_dir: Path, fake_time) -> None:
    url = served.add("m.bin", DATA)
    served.server.fault(served.path("m.bin"), Fault(status=503, times=1))
    retry = zooload.RetryPolicy(
        jitter=0.5, sleep=fake_time.sleep, clock=fake_time.clock, draw=lambda: 1.0
    )
    zooload.fetch(_pinned(url), cache_dir=cache_dir, retry=retry)
    assert fake_time.waits == [0.5]


def test_retries_do_not_count_attempts_that_made_progress(
    served, cache_dir: Path, fake_time
) -> None:
    url = served.add("m.bin", DATA)
    served.server.fault(served.path("m.bin"), Fault(truncate_after=50_000, times=5))
    retry = zooload.RetryPolicy(
        attempts=2, sleep=fake_time.sleep, clock=fake_time.clock
    )

    path = zooload.fetch(_pinned(url), cache_dir=cache_dir, retry=retry)

    assert path.read_bytes() == DATA
    assert served.count("m.bin") == 6


@pytest.mark.parametrize(
    ("status", "hint"),
    [
        (404, "the URL was not found"),
        (401, "credentials are missing or were not accepted"),
        (403, "credentials are missing or were refused"),
        (410, "removed from this URL"),
        (400, "check the URL"),
    ],
)
def test_retries_never_retry_other_client_errors(
    status: int,
    hint: str,
    served,
    cache_dir: Path,
    retry: zooload.RetryPolicy,
    fake_time,
) -> None:
    url = served.add("m.bin", DATA)
    served.server.fault(served.path("m.bin"), Fault(status=status))

    with pytest.raises(zooload.DownloadError, match=hint) as caught:
        zooload.fetch(url, cache_dir=cache_dir, retry=retry)

    assert caught.value.status == status
    assert not caught.value.retryable
    assert served.count("m.bin") == 1
    assert fake_time.waits == []
    assert cache_files(cache_dir) == []


def test_retries_treat_a_stall_as_a_timeout_and_resume(
    served, cache_dir: Path, fake_time
) -> None:
    url = served.add("m.bin", DATA)
    served.server.fault(served.path("m.bin"), Fault(stall_seconds=5.0, times=1))
    retry = zooload.RetryPolicy(
        stall_timeout=0.05, sleep=fake_time.sleep, clock=fake_time.clock
    )

    path = zooload.fetch(_pinned(url), cache_dir=cache_dir, retry=retry)

    assert path.read_bytes() == DATA
    last = served.server.requests[-1]
    assert last.status == 206
    assert last.headers["range"] == f"bytes={len(DATA) // 2}-"


def test_retries_connection_refused_then_give_up(
    cache_dir: Path, retry: zooload.RetryPolicy, fake_time
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/m.bin"

    with pytest.raises(
        zooload.DownloadError, match="could not connect .*refused"
    ) as caught:
        zooload.fetch(url, cache_dir=cache_dir, retry=retry)

    assert caught.value.retryable
    assert len(fake_time.waits) == retry.attempts - 1


def test_retries_log_each_retry_and_its_delay(
    served, cache_dir: Path, retry: zooload.RetryPolicy, caplog
) -> None:
    url = served.add("m.bin", DATA)
    served.server.fault(served.path("m.bin"), Fault(status=503, times=1))
    with caplog.at_level(logging.DEBUG, logger="zooload.retries"):
        zooload.fetch(_pinned(url), cache_dir=cache_dir, retry=retry)
    (record,) = caplog.records
    assert record.levelno == logging.DEBUG
    assert "attempt 1 on" in record.getMessage()
    assert "retrying in 1.00 s" in record.getMessage()


@pytest.mark.parametrize(
    "arguments",
    [{"attempts": 0}, {"jitter": 2.0}, {"backoff": -1.0}, {"stall_timeout": 0.0}],
)
def test_retry_policy_rejects_impossible_settings(arguments: dict) -> None:
    with pytest.raises(zooload.ConfigError, match="RetryPolicy"):
        zooload.RetryPolicy(**arguments)


def test_retries_errors_keep_retry_after_through_pickling() -> None:
    error = zooload.DownloadError("m", "u", 503, retryable=True, retry_after=2.5)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.status, copy.retryable, copy.retry_after) == (503, True, 2.5)
