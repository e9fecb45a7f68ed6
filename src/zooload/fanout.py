"""Fan-out: hand every chunk of a byte stream to several consumers at once.

A download writes each chunk, hashes it and may unpack it; an archive scan
hashes a member while another thread decodes the next one. Each consumer of
a :class:`Fanout` runs in a thread of its own and takes the chunks in order
from a queue of its own. hashlib, file writes and the decompressors release
the GIL on large buffers, so the consumers work at the same time on
different cores instead of taking turns.

A consumer is either *pushed* each chunk (a callable taking ``bytes``) or
*pulls* them as a stream (a callable that reads a binary file object, such
as an archive extractor, and may stop before its end). At most
:data:`MAX_PENDING_BYTES` wait in any one queue; beyond that the producer
waits, so the stream moves at the pace of its slowest consumer.
"""

from __future__ import annotations

import collections
import io
import logging
import threading
from collections.abc import Callable, Sequence
from typing import BinaryIO

logger = logging.getLogger(__name__)

MAX_PENDING_BYTES = 64 << 20
Push = Callable[[bytes], object]
Pull = Callable[[BinaryIO], None]


class _Lane:
    """The chunks one consumer has yet to take, and how many bytes they hold."""

    def __init__(self) -> None:
        self.chunks: collections.deque[bytes] = collections.deque()
        self.pending_bytes = 0


class Fanout:
    """Give each chunk to every consumer, each consumer in its own thread.

    A consumer that raises stops consuming; its error is raised by the next
    :meth:`put` and by :meth:`close`, and its remaining chunks are dropped so
    that the producer never waits on it. :meth:`close` marks the end of the
    stream: pulling consumers then read to its end.

    Examples
    --------
    >>> import hashlib
    >>> digest, seen = hashlib.sha256(), []
    >>> fanout = Fanout(push=[digest.update, seen.append])
    >>> for chunk in (b"wei", b"ghts"):
    ...     fanout.put(chunk)
    >>> fanout.close()
    >>> b"".join(seen), digest.hexdigest() == hashlib.sha256(b"weights").hexdigest()
    (b'weights', True)
    """

    def __init__(
        self,
        *,
        push: Sequence[Push] = (),
        pull: Sequence[Pull] = (),
        name: str = "zooload-fanout",
    ) -> None:
        self._ready = threading.Condition()
        self._closing = False
        self._failure: BaseException | None = None
        self._lanes: list[_Lane] = []
        self._threads: list[threading.Thread] = []
        for consumer in push:
            self._start(self._run_push, consumer, name)
        for reader in pull:
            self._start(self._run_pull, reader, name)

    def put(self, chunk: bytes) -> None:
        """Queue ``chunk`` for every consumer; wait while a queue is full."""
        with self._ready:
            while self._is_full() and self._failure is None:
                self._ready.wait()
            self._raise_failure()
            for lane in self._lanes:
                lane.chunks.append(chunk)
                lane.pending_bytes += len(chunk)
            self._ready.notify_all()

    def close(self, *, quiet: bool = False) -> None:
        """End the stream, wait for every consumer, raise the first failure.

        With ``quiet`` the failure is not raised (for a producer that is
        already failing on its own). Closing twice is harmless.
        """
        with self._ready:
            self._closing = True
            self._ready.notify_all()
        for thread in self._threads:
            thread.join()
        if not quiet:
            with self._ready:
                self._raise_failure()

    def _start(self, target: Callable[..., None], consumer: object, name: str) -> None:
        lane = _Lane()
        self._lanes.append(lane)
        thread = threading.Thread(
            target=target,
            args=(lane, consumer),
            name=f"{name}-{len(self._threads)}",
            daemon=True,
        )
        self._threads.append(thread)
        thread.start()

    def _is_full(self) -> bool:
        return any(lane.pending_bytes >= MAX_PENDING_BYTES for lane in self._lanes)

    def _take(self, lane: _Lane) -> bytes | None:
        """The lane's next chunk, waiting for one; ``None`` at the stream's end."""
        with self._ready:
            while not lane.chunks and not self._closing:
                self._ready.wait()
            if not lane.chunks:
                return None
            chunk = lane.chunks.popleft()
            lane.pending_bytes -= len(chunk)
            self._ready.notify_all()
            return chunk

    def _run_push(self, lane: _Lane, consume: Push) -> None:
        try:
            while (chunk := self._take(lane)) is not None:
                consume(chunk)
        except BaseException as err:
            # Raised again in the producer's thread, by put() or close().
            self._fail(err)
        self._drain(lane)

    def _run_pull(self, lane: _Lane, read: Pull) -> None:
        stream = io.BufferedReader(_LaneReader(self, lane), buffer_size=1 << 20)
        try:
            read(stream)
        except BaseException as err:
            self._fail(err)
        # A reader may stop early (it found no archive, say); the rest of its
        # chunks are dropped so that the other consumers go on.
        self._drain(lane)

    def _drain(self, lane: _Lane) -> None:
        while self._take(lane) is not None:
            pass

    def _fail(self, err: BaseException) -> None:
        with self._ready:
            if self._failure is None:
                self._failure = err
            self._ready.notify_all()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure


class _LaneReader(io.RawIOBase):
    """The chunks of one lane as a readable stream, for pulling consumers."""

    def __init__(self, fanout: Fanout, lane: _Lane) -> None:
        self._fanout = fanout
        self._lane = lane
        self._current = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if not self._current:
            chunk = self._fanout._take(self._lane)
            if chunk is None:
                return 0
            self._current = memoryview(chunk)
        size = min(len(buffer), len(self._current))
        buffer[:size] = self._current[:size]
        self._current = self._current[size:]
        return size
