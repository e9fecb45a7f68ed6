"""The fan-out: order, pulling readers, failures, and the bound on queued bytes."""

from __future__ import annotations

import hashlib
import threading
from typing import BinaryIO

import pytest

from zooload import fanout
from zooload.fanout import Fanout


def test_fanout_gives_every_consumer_every_chunk_in_order() -> None:
    chunks = [bytes([i]) * (1000 + i) for i in range(50)]
    first: list[bytes] = []
    digest = hashlib.sha256()
    pulled: list[bytes] = []

    def read_all(stream: BinaryIO) -> None:
        pulled.append(stream.read())

    sink = Fanout(push=[first.append, digest.update], pull=[read_all])
    for chunk in chunks:
        sink.put(chunk)
    sink.close()

    whole = b"".join(chunks)
    assert first == chunks
    assert digest.hexdigest() == hashlib.sha256(whole).hexdigest()
    assert pulled == [whole]


def test_fanout_reader_that_stops_early_holds_up_nobody() -> None:
    seen: list[bytes] = []
    heads: list[bytes] = []

    def read_head(stream: BinaryIO) -> None:
        heads.append(stream.read(3))

    sink = Fanout(push=[seen.append], pull=[read_head])
    for _ in range(200):
        sink.put(b"x" * 1000)
    sink.close()

    assert heads == [b"xxx"]
    assert len(seen) == 200


def test_fanout_raises_a_consumer_failure_in_the_producer() -> None:
    def broken(chunk: bytes) -> None:
        message = "disk full"
        raise OSError(28, message)

    sink = Fanout(push=[broken])
    sink.put(b"a")

    with pytest.raises(OSError, match="disk full"):
        sink.close()
    with pytest.raises(OSError, match="disk full"):
        sink.put(b"b")
    sink.close(quiet=True)


def test_fanout_producer_waits_while_a_queue_is_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fanout, "MAX_PENDING_BYTES", 10)
    busy, release = threading.Event(), threading.Event()
    taken: list[bytes] = []

    def slow(chunk: bytes) -> None:
        busy.set()
        release.wait()
        taken.append(chunk)

    sink = Fanout(push=[slow])
    sink.put(b"0123456789")
    busy.wait()
    sink.put(b"0123456789")
    # The consumer holds one chunk and one waits in its queue: full.
    blocked = threading.Thread(target=sink.put, args=(b"more",))
    blocked.start()
    blocked.join(timeout=0.2)
    assert blocked.is_alive()

    release.set()
    blocked.join()
    sink.close()
    assert taken == [b"0123456789", b"0123456789", b"more"]
