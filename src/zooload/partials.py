"""Partial downloads: bytes on their way into the cache, kept for resuming.

A download writes to its own file under ``partial/`` (unique per process and
call) with a JSON sidecar that says which URL and which version of it the
bytes belong to: the validator (a strong ETag, or Last-Modified) that a
resumed request sends as ``If-Range``. A download that fails with bytes worth
keeping is released; a process killed mid-download leaves its file behind.
Either way the next download of the URL takes the file over with an atomic
rename, so two processes never write to one file, even where file locks do
not work. Only verified bytes leave ``partial/``, by another rename, into
``blobs/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from zooload.cache import Cache
from zooload.errors import DownloadError
from zooload.hashing import CHUNK_BYTES

logger = logging.getLogger(__name__)

META_SUFFIX = ".json"
MAX_PENDING_BYTES = 64 << 20
SYNC_EVERY_BYTES = 128 << 20


@dataclass(frozen=True, slots=True)
class PartialMeta:
    """Which URL a partial file holds, which version, and its full size."""

    url: str
    validator: str | None
    total: int | None


class _Lane:
    """The chunks one consumer thread of a :class:`ChunkSink` has yet to take."""

    def __init__(self, consume: Callable[[bytes], None]) -> None:
        self.consume = consume
        self.chunks: list[bytes] = []
        self.pending_bytes = 0


class ChunkSink:
    """Writes arriving chunks to a partial file and hashes them, in order.

    The receiving thread only queues chunks. Two threads of the sink's own
    take them: one writes them to the file, the other hashes them. File
    writes and hashlib release the GIL on large buffers, so receiving,
    writing and hashing overlap instead of taking turns. Every
    :data:`SYNC_EVERY_BYTES` the writer flushes the file to disk, so that
    the disk works while the transfer runs and the flush before publishing
    has little left to do. Whatever has arrived reaches the file as soon as
    the writer is free, so an interrupted transfer leaves it to resume. At
    most :data:`MAX_PENDING_BYTES` wait in memory; beyond that the receiver
    waits.

    Examples
    --------
    >>> import hashlib, io
    >>> sink = ChunkSink(io.BytesIO(), hashlib.sha256(), 0)
    >>> with sink:
    ...     sink.write(b"weights")
    ...     sink.size
    7
    """

    def __init__(self, stream: BinaryIO, digest: hashlib._Hash, size: int) -> None:
        self._stream = stream
        self._digest = digest
        self.size = size
        self._unsynced = 0
        self._closing = False
        self._failure: OSError | None = None
        self._ready = threading.Condition()
        self._lanes = (_Lane(self._write_chunk), _Lane(digest.update))
        self._threads = [
            threading.Thread(
                target=self._run, args=(lane,), name=f"zooload-sink-{n}", daemon=True
            )
            for n, lane in enumerate(self._lanes)
        ]
        for thread in self._threads:
            thread.start()

    def write(self, chunk: bytes) -> None:
        """Take ``chunk``; it reaches the file and the digest in order."""
        self._raise_failure()
        with self._ready:
            while max(lane.pending_bytes for lane in self._lanes) >= MAX_PENDING_BYTES:
                self._ready.wait()
            for lane in self._lanes:
                lane.chunks.append(chunk)
                lane.pending_bytes += len(chunk)
            self._ready.notify_all()
        self.size += len(chunk)

    def finish(self) -> str:
        """Flush the bytes to disk, close the file, return the hex digest."""
        self._stop_threads()
        self._raise_failure()
        # Flushed to disk before the file is renamed into the cache, so that
        # a crash cannot leave a published blob with missing bytes; the cost
        # is measured in docs/CACHE.md.
        self._stream.flush()
        os.fsync(self._stream.fileno())
        self._stream.close()
        return self._digest.hexdigest()

    def _run(self, lane: _Lane) -> None:
        """Hand ``lane`` its chunks, everything queued so far at a time."""
        while True:
            with self._ready:
                while not lane.chunks and not self._closing:
                    self._ready.wait()
                chunks, lane.chunks = lane.chunks, []
            if not chunks:
                return
            for chunk in chunks:
                lane.consume(chunk)
                # Chunk by chunk, so that the receiver goes on while this
                # lane is still busy with the rest of what it took.
                with self._ready:
                    lane.pending_bytes -= len(chunk)
                    self._ready.notify_all()

    def _write_chunk(self, chunk: bytes) -> None:
        if self._failure is not None:
            # Keep taking chunks, so that the receiver never waits on a full
            # queue; it raises the failure at its next write.
            return
        try:
            _write_all(self._stream, chunk)
            self._unsynced += len(chunk)
            if self._unsynced >= SYNC_EVERY_BYTES:
                self._stream.flush()
                _flush_data(self._stream.fileno())
                self._unsynced = 0
        except OSError as err:
            self._failure = err

    def _stop_threads(self) -> None:
        with self._ready:
            self._closing = True
            self._ready.notify_all()
        for thread in self._threads:
            thread.join()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def __enter__(self) -> ChunkSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Bytes received so far reach the file, to be resumed.
        self._stop_threads()
        self._stream.close()


def _write_all(stream: BinaryIO, chunk: bytes) -> None:
    """Write all of ``chunk``; an unbuffered file may take part of it per call."""
    view = memoryview(chunk)
    while view:
        written = stream.write(view)
        view = view[written if written is not None else len(view) :]


def _flush_data(descriptor: int) -> None:
    """Flush a file's data to disk; macOS has no ``fdatasync``."""
    flush = getattr(os, "fdatasync", os.fsync)
    flush(descriptor)


class PartialDownload:
    """The partial file of one download of ``url``, owned by this call.

    Use it as a context manager: leaving the block with a retryable
    :class:`DownloadError` or an interrupt releases the bytes for a later
    resume; any other error discards them, and so does success unless
    :meth:`publish` took them.
    """

    def __init__(
        self, cache: Cache, url: str, path: Path, meta: PartialMeta | None
    ) -> None:
        self.cache = cache
        self.url = url
        self.path = path
        self.meta = meta

    @classmethod
    def open(cls, cache: Cache, url: str) -> PartialDownload:
        """Take over an abandoned partial download of ``url``, or start afresh."""
        kind = _kind(url)
        for path in cache.abandoned_partials(kind):
            if path.name.endswith(META_SUFFIX):
                continue
            claimed = _claim(cache, path, kind)
            if claimed is not None and claimed.url == url:
                logger.debug("resuming %s from %d bytes", url, claimed.offset)
                return claimed
            if claimed is not None:
                claimed.discard()
        return cls(cache, url, cache.new_partial_path(kind), None)

    @property
    def offset(self) -> int:
        """How many bytes are on disk, that is where a resumed transfer starts."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    @property
    def validator(self) -> str | None:
        """The ``If-Range`` validator of the bytes on disk, if they can resume."""
        return self.meta.validator if self.meta and self.offset else None

    def restart(self, *, validator: str | None, total: int | None) -> ChunkSink:
        """Start the file from zero for the version named by ``validator``."""
        self.meta = PartialMeta(self.url, validator, total)
        _meta_path(self.path).write_text(json.dumps(asdict(self.meta)))
        # Unbuffered: chunks go to the file whole, at the offsets they arrive
        # at, rather than split at a buffer's edge into two writes.
        return ChunkSink(self.path.open("wb", buffering=0), hashlib.sha256(), 0)

    def resume(self) -> ChunkSink:
        """Continue the file where it ends, hashing the bytes already there."""
        digest = hashlib.sha256()
        stream = self.path.open("r+b", buffering=0)
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
        return ChunkSink(stream, digest, stream.tell())

    def publish(self, sha256: str) -> Path:
        """Move the verified bytes to their blob path and return it."""
        _meta_path(self.path).unlink(missing_ok=True)
        published = self.cache.publish_blob(self.path, sha256)
        self.meta = None
        return published

    def discard(self) -> None:
        """Delete the bytes and their sidecar."""
        self.path.unlink(missing_ok=True)
        _meta_path(self.path).unlink(missing_ok=True)
        self.meta = None

    def release(self) -> None:
        """Keep resumable bytes for whichever download of the URL comes next."""
        if self.validator is None:
            self.discard()
            return
        released = self.cache.released_partial_path(_kind(self.url))
        # The sidecar moves first: a crash in between leaves bytes without a
        # sidecar, which the next taker discards, never bytes with a stranger's.
        _meta_path(self.path).replace(_meta_path(released))
        self.path.replace(released)
        logger.debug("kept %d bytes of %s for a later resume", self.offset, self.url)

    def __enter__(self) -> PartialDownload:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        retryable = isinstance(exc, DownloadError) and exc.retryable
        if retryable or isinstance(exc, KeyboardInterrupt):
            self.release()
        else:
            self.discard()


def _kind(url: str) -> str:
    return "download-" + hashlib.sha256(url.encode()).hexdigest()[:32]


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + META_SUFFIX)


def _claim(cache: Cache, path: Path, kind: str) -> PartialDownload | None:
    """Rename an abandoned partial to a name of this call; ``None`` if lost."""
    claimed = cache.new_partial_path(kind)
    try:
        path.rename(claimed)
    except FileNotFoundError:
        # Another process took it first; the rename is the arbiter.
        return None
    meta = None
    with contextlib.suppress(OSError, ValueError, TypeError):
        _meta_path(path).rename(_meta_path(claimed))
        meta = PartialMeta(**json.loads(_meta_path(claimed).read_text()))
    url = meta.url if meta else ""
    return PartialDownload(cache, url, claimed, meta)
