"""Many processes and threads on one URL: one download, one verified result."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import zooload
from support import workers
from support.builders import blobs_intact, partial_files, sha256_of
from support.httpserver import Fault
from zooload.cache import Cache

DATA = os.urandom(2_000_000)
PROCESSES = 16
DEADLINE_SECONDS = 60.0


@pytest.fixture(scope="module")
def context() -> multiprocessing.context.BaseContext:
    # forkserver: children fork from a clean single-threaded server that has
    # imported zooload (and torch) once, so sixteen of them start quickly.
    multiprocessing.set_forkserver_preload(["zooload", "support.workers"])
    return multiprocessing.get_context("forkserver")


def test_concurrency_sixteen_processes_make_one_download(
    served, cache_dir: Path, context: multiprocessing.context.BaseContext
) -> None:
    url = served.add("m.bin", DATA)
    # The first download stalls halfway, so every other process arrives while
    # it is still running.
    served.server.fault(served.path("m.bin"), Fault(stall_seconds=1.0, times=1))
    barrier = context.Barrier(PROCESSES)
    results = context.Queue()
    processes = [
        context.Process(
            target=workers.fetch_together, args=(url, str(cache_dir), barrier, results)
        )
        for _ in range(PROCESSES)
    ]

    for process in processes:
        process.start()
    paths = [results.get(timeout=DEADLINE_SECONDS) for _ in processes]
    for process in processes:
        process.join(DEADLINE_SECONDS)

    assert [p.exitcode for p in processes] == [0] * PROCESSES
    assert served.count("m.bin") == 1
    assert set(paths) == {str(cache_dir.resolve() / "blobs" / sha256_of(DATA))}
    assert blobs_intact(cache_dir)
    assert partial_files(cache_dir) == []


@pytest.mark.parametrize("pinned", [True, False])
def test_concurrency_threads_make_one_download(
    pinned: bool, served, cache_dir: Path
) -> None:
    url = served.add("m.bin", DATA)
    if pinned:
        url += f"#sha256={sha256_of(DATA)}"
    served.server.fault(served.path("m.bin"), Fault(stall_seconds=0.2, times=1))
    barrier = threading.Barrier(8)

    def fetch() -> Path:
        barrier.wait()
        return zooload.fetch(url, cache_dir=cache_dir)

    with ThreadPoolExecutor(8) as pool:
        paths = set(pool.map(lambda _: fetch(), range(8)))

    assert served.count("m.bin") == 1
    assert paths == {cache_dir.resolve() / "blobs" / sha256_of(DATA)}


def test_concurrency_correct_without_working_locks(
    served, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Locks silently do nothing on some network filesystems: the unique
    # partial names and the atomic rename must keep the cache right alone.
    @contextlib.contextmanager
    def no_lock(self: Cache, key: str) -> Iterator[None]:
        yield

    monkeypatch.setattr(Cache, "locked", no_lock)
    url = served.add("m.bin", DATA) + f"#sha256={sha256_of(DATA)}"
    served.server.fault(served.path("m.bin"), Fault(stall_seconds=0.1, times=6))
    barrier = threading.Barrier(6)

    def fetch() -> Path:
        barrier.wait()
        return zooload.fetch(url, cache_dir=cache_dir)

    with ThreadPoolExecutor(6) as pool:
        paths = set(pool.map(lambda _: fetch(), range(6)))

    assert served.count("m.bin") > 1  # the locks really did nothing
    assert paths == {cache_dir.resolve() / "blobs" / sha256_of(DATA)}
    assert blobs_intact(cache_dir)
    assert partial_files(cache_dir) == []


def _wait_for_partial(cache_dir: Path, size: int) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        folder = cache_dir / "partial"
        sizes = [p.stat().st_size for p in folder.glob("download-*[0-9a-f]")]
        if sizes and max(sizes) >= size:
            return
        time.sleep(0.01)
    pytest.fail(f"no partial download of {size} bytes appeared")


def test_concurrency_sigkill_midway_leaves_bytes_the_next_caller_resumes(
    served, cache_dir: Path, context: multiprocessing.context.BaseContext
) -> None:
    url = served.add("m.bin", DATA) + f"#sha256={sha256_of(DATA)}"
    served.server.fault(served.path("m.bin"), Fault(stall_seconds=30.0, times=1))
    child = context.Process(target=workers.fetch_quietly, args=(url, str(cache_dir)))
    child.start()
    half = len(DATA) // 2
    _wait_for_partial(cache_dir, half)

    os.kill(child.pid or 0, signal.SIGKILL)
    child.join(DEADLINE_SECONDS)
    path = zooload.fetch(url, cache_dir=cache_dir)

    assert child.exitcode == -signal.SIGKILL
    assert path.read_bytes() == DATA
    last = served.server.requests[-1]
    assert (last.status, last.headers["range"]) == (206, f"bytes={half}-")
    assert last.body_bytes == len(DATA) - half
    assert partial_files(cache_dir) == []
