"""Functions that tests run in other processes (importable by forkserver)."""

from __future__ import annotations

from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

import zooload


def fetch_together(url: str, cache_dir: str, barrier: Barrier, results: Queue) -> None:
    """Wait for every sibling, then fetch ``url`` and report the path."""
    barrier.wait()
    results.put(str(zooload.fetch(url, cache_dir=cache_dir, extract=False)))


def fetch_quietly(url: str, cache_dir: str) -> None:
    """Fetch ``url`` (a test kills this process midway)."""
    zooload.fetch(url, cache_dir=cache_dir, extract=False)
