"""Measure an interrupted-then-resumed 200 MB download against a clean one.

Run from the repository root:

    PYTHONPATH=src:tests python benchmarks/resume.py

Serves 200 MB of random bytes from the tests' loopback server and fetches
them into a fresh cache three ways, five runs each: clean; cut after 100 MB
and resumed with a Range request; cut after 100 MB with a server that ignores
Range (a restart from zero, what zooload did before resuming existed). The
retry wait is set to zero so that the figures show the transfer, not the
backoff. Prints the median time and the bytes the server sent for each.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import tempfile
import time

import zooload
from support.httpserver import Fault, LoopbackServer

SIZE = 200 * 1000 * 1000
CUT = SIZE // 2
RUNS = 5


def measure(
    server: LoopbackServer, url: str, first: Fault | None, then: Fault | None
) -> tuple[float, int]:
    """Seconds for one fetch into a fresh cache, and bytes the server sent.

    ``first`` applies to the first request; ``then`` is set while the retry
    waits (zero seconds), so it applies to the next one.
    """
    server.reset_log()
    if first is not None:
        server.fault("/model.bin", first)

    def between_attempts(seconds: float) -> None:
        if then is not None:
            server.fault("/model.bin", then)

    retry = zooload.RetryPolicy(backoff=0.0, jitter=0.0, sleep=between_attempts)
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        zooload.fetch(url, cache_dir=cache, retry=retry, progress=False)
        seconds = time.perf_counter() - started
    server.clear_faults()
    return seconds, sum(record.body_bytes for record in server.requests)


def main() -> None:
    data = os.urandom(SIZE)
    cut = Fault(truncate_after=CUT, times=1)
    cases = {
        "clean": (None, None),
        "cut at 100 MB, resumed": (cut, None),
        "cut at 100 MB, restarted (Range ignored)": (
            cut,
            Fault(ignore_range=True, times=1),
        ),
    }
    with LoopbackServer() as server:
        url = server.add("/model.bin", data)
        url += "#sha256=" + hashlib.sha256(data).hexdigest()
        measure(server, url, None, None)  # warm up page cache and imports
        for name, (first, then) in cases.items():
            runs = [measure(server, url, first, then) for _ in range(RUNS)]
            seconds = statistics.median(run[0] for run in runs)
            sent = {run[1] for run in runs}
            print(
                f"{name}: {seconds:.2f} s (runs: "
                f"{', '.join(f'{run[0]:.2f}' for run in runs)}), bytes sent {sent}"
            )


if __name__ == "__main__":
    main()
