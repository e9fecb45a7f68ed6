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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Protocol

from zooload.cache import Cache
from zooload.errors import DownloadError
from zooload.fanout import Fanout, Pull
from zooload.hashing import CHUNK_BYTES

logger = logging.getLogger(__name__)

META_SUFFIX = ".json"
SYNC_EVERY_BYTES = 128 << 20


@dataclass(frozen=True, slots=True)
class PartialMeta:
    """Which URL a partial file holds, which version, and its full size."""

    url: str
    validator: str | None
    total: int | None


class ChunkSink:
    """Writes arriving chunks to a partial file and hashes them, in order.

    The receiving thread only queues chunks; a :class:`~zooload.fanout.Fanout`
    writes them to the file in one thread and hashes them in another, so
    that receiving, writing and hashing overlap instead of taking turns.
    ``taps`` read the same bytes as a stream in threads of their own: an
    archive is unpacked while it downloads (:mod:`zooload.unpacking`). Every
    :data:`SYNC_EVERY_BYTES` the writer flushes the file to disk, so that the
    disk works while the transfer runs and the flush before publishing has
    little left to do. Whatever has arrived reaches the file as soon as the
    writer is free, so an interrupted transfer leaves it to resume.

    Examples
    --------
    >>> import hashlib, io
    >>> sink = ChunkSink(io.BytesIO(), hashlib.sha256(), 0)
    >>> with sink:
    ...     sink.write(b"weights")
    ...     sink.size
    7
    """

    def __init__(
        self,
        stream: BinaryIO,
        digest: hashlib._Hash,
        size: int,
        *,
        taps: Sequence[Pull] = (),
    ) -> None:
        self._stream = stream
        self._digest = digest
        self.size = size
        self._unsynced = 0
        self._fanout = Fanout(
            push=[self._write_chunk, digest.update], pull=taps, name="zooload-sink"
        )

    def write(self, chunk: bytes) -> None:
        """Take ``chunk``; it reaches the file and the digest in order."""
        self._fanout.put(chunk)
        self.size += len(chunk)

    def finish(self) -> str:
        """Flush the bytes to disk, close the file, return the hex digest."""
        self._fanout.close()
        # Flushed to disk before the file is renamed into the cache, so that
        # a crash cannot leave a published blob with missing bytes; the cost
        # is measured in docs/CACHE.md.
        self._stream.flush()
        os.fsync(self._stream.fileno())
        self._stream.close()
        return self._digest.hexdigest()

    def _write_chunk(self, chunk: bytes) -> None:
        _write_all(self._stream, chunk)
        self._unsynced += len(chunk)
        if self._unsynced >= SYNC_EVERY_BYTES:
            self._stream.flush()
            _flush_data(self._stream.fileno())
            self._unsynced = 0

    def __enter__(self) -> ChunkSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Bytes received so far reach the file, to be resumed; a failure of
        # the sink's own threads was raised already, or is masked by ``exc``.
        self._fanout.close(quiet=True)
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


class Tap(Protocol):
    """Reads a download's bytes as a stream while they arrive.

    :class:`zooload.unpacking.UnpackTap` is one: it unpacks an archive
    during its download.
    """

    def read(self, stream: BinaryIO) -> None: ...

    def discard(self) -> None: ...


TapFactory = Callable[[int | None], "Tap | None"]
"""Makes the tap of a transfer from zero, given its announced size."""


class PartialDownload:
    """The partial file of one download of ``url``, owned by this call.

    Use it as a context manager: leaving the block with a retryable
    :class:`DownloadError` or an interrupt releases the bytes for a later
    resume; any other error discards them, and so does success unless
    :meth:`publish` took them. A transfer from zero gets a tap from
    ``tap_factory``; a resumed one gets none, since the tap would have to
    read the kept bytes again. What an abandoned attempt's tap made is
    discarded with the attempt.
    """

    def __init__(
        self,
        cache: Cache,
        url: str,
        path: Path,
        meta: PartialMeta | None,
        *,
        tap_factory: TapFactory | None = None,
    ) -> None:
        self.cache = cache
        self.url = url
        self.path = path
        self.meta = meta
        self.tap_factory = tap_factory
        self._tap: Tap | None = None

    @classmethod
    def open(
        cls, cache: Cache, url: str, *, tap_factory: TapFactory | None = None
    ) -> PartialDownload:
        """Take over an abandoned partial download of ``url``, or start afresh."""
        kind = _kind(url)
        for path in cache.abandoned_partials(kind):
            if path.name.endswith(META_SUFFIX):
                continue
            claimed = _claim(cache, path, kind)
            if claimed is not None and claimed.url == url:
                logger.debug("resuming %s from %d bytes", url, claimed.offset)
                claimed.tap_factory = tap_factory
                return claimed
            if claimed is not None:
                claimed.discard()
        path = cache.new_partial_path(kind)
        return cls(cache, url, path, None, tap_factory=tap_factory)

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
        self._drop_tap()
        self._tap = self.tap_factory(total) if self.tap_factory else None
        taps = [self._tap.read] if self._tap else []
        # Unbuffered: chunks go to the file whole, at the offsets they arrive
        # at, rather than split at a buffer's edge into two writes.
        stream = self.path.open("wb", buffering=0)
        return ChunkSink(stream, hashlib.sha256(), 0, taps=taps)

    def resume(self) -> ChunkSink:
        """Continue the file where it ends, hashing the bytes already there."""
        self._drop_tap()
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
        # What the tap made now belongs to whoever made the tap.
        self._tap = None
        return published

    def discard(self) -> None:
        """Delete the bytes, their sidecar and what the tap made of them."""
        self.path.unlink(missing_ok=True)
        _meta_path(self.path).unlink(missing_ok=True)
        self.meta = None
        self._drop_tap()

    def _drop_tap(self) -> None:
        if self._tap is not None:
            self._tap.discard()
            self._tap = None

    def release(self) -> None:
        """Keep resumable bytes for whichever download of the URL comes next."""
        self._drop_tap()
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
