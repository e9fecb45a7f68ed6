"""Unpack while reading: stage an archive's tree in the same pass as its bytes.

Extracting after the download means reading every byte twice and waiting
for the slow part (decoding gzip runs at a fraction of the network's speed)
until the transfer is over. Instead, an :class:`UnpackTap` reads a
download's bytes as they arrive, in a thread of its own beside the threads
that write and hash them (:class:`~zooload.partials.ChunkSink`), and
extracts a compressed tar while the transfer runs. A local
archive that is hashed for the first time is extracted in one thread while
another hashes it (:meth:`Unpacker.scan_file`).

What either produces is an :class:`Unpacking`: a staged tree under
``partial/``, or the error the archive gave. It is only a candidate: it is
published under the archive's digest once that digest is known and matches
any pin (:func:`finish_unpacking`), and thrown away otherwise. A download
that resumes, a zip arriving over the network (its directory comes last),
a plain tar (read by seeking instead, its stored weights left in place) and
a stream of unknown length are extracted after the transfer instead.
"""

from __future__ import annotations

import io
import logging
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from zooload.archive import (
    TAR_HEAD_BYTES,
    ArchiveKind,
    StagedTree,
    Validator,
    compression_of,
    decoded,
    is_tar_head,
    publish_staged,
    read_errors_named,
    sniff_archive,
    stage_file,
    staged_from,
)
from zooload.cache import Cache
from zooload.errors import ArchiveError, HashMismatchError, ZooloadError
from zooload.extraction import TreeBuilder, extract_tar
from zooload.hashing import file_digest
from zooload.member_rules import ExtractionLimits
from zooload.trees import TREE_INDEX_NAME, Span, TreeIndex

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Unpacking:
    """What staging an archive beside its read gave: a tree, an error, or neither.

    Neither means the bytes were no archive this path unpacks (a bare
    file, a plain tar, or a zip still downloading); they are looked at
    again afterwards.
    """

    staged: StagedTree | None = None
    error: ZooloadError | None = None

    def discard(self) -> None:
        """Remove the staged tree, if any."""
        if self.staged is not None:
            self.staged.discard()


class UnpackTap:
    """Stages the tree of a compressed tar from its bytes while they arrive.

    :meth:`read` is the pulling consumer of a
    :class:`~zooload.fanout.Fanout`; :meth:`outcome` is valid once the
    fan-out is closed.
    """

    def __init__(
        self,
        cache: Cache,
        *,
        limits: ExtractionLimits,
        total: int,
        source: str,
        pinned: bool = False,
    ) -> None:
        self._cache = cache
        self._limits = limits
        self._total = total
        self._source = source
        self._pinned = pinned
        self._outcome = Unpacking()

    def read(self, stream: BinaryIO) -> None:
        """Extract the tar ``stream`` carries; record the tree or the error."""
        try:
            self._outcome = Unpacking(staged=self._stage(stream))
        except ZooloadError as err:
            logger.debug(
                "unpacking %s while it downloads failed: %s", self._source, err
            )
            self._outcome = Unpacking(error=err)

    def outcome(self) -> Unpacking:
        """The staged tree or the error; neither when the bytes held no tar."""
        return self._outcome

    def discard(self) -> None:
        """Remove what was staged."""
        self._outcome.discard()
        self._outcome = Unpacking()

    def _stage(self, stream: BinaryIO) -> StagedTree | None:
        with read_errors_named(self._source):
            head = stream.read(TAR_HEAD_BYTES)
            compression = compression_of(head)
            if compression is None:
                # A plain tar has nothing to decode: after the download its
                # headers are read by seeking, and its large members stay in
                # place without being read at all (1 GiB pinned over
                # loopback here: 1.2 s so, against 1.6 s streamed).
                return None
            data = decoded(_replayed(head, stream), compression, name=self._source)
            tar_head = data.read(TAR_HEAD_BYTES)
            if not is_tar_head(tar_head):
                return None
            logger.debug("unpacking %s while it downloads", self._source)
            folder = self._cache.new_partial_path("tree")
            folder.mkdir()
            builder = TreeBuilder(
                folder, self._limits, self._total, covered_by_pin=self._pinned
            )
            try:
                count = extract_tar(_replayed(tar_head, data), builder)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
        return staged_from(builder, count)


@dataclass(frozen=True, slots=True)
class Unpacker:
    """How trees are staged while an archive's bytes are read.

    ``pinned`` says the bytes must match a pin; staged trees are published
    only if they do, so members left in place need no digest of their own.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder, "weights.bin")
    ...     _ = path.write_bytes(b"abc")
    ...     unpacker = Unpacker(Cache.open(folder), ExtractionLimits())
    ...     digest, unpacking = unpacker.scan_file(path, source=str(path))
    ...     digest[:8], unpacking.staged
    ('ba7816bf', None)
    """

    cache: Cache
    limits: ExtractionLimits
    pinned: bool = False

    def tap(self, source: str, total: int | None) -> UnpackTap | None:
        """A tap for a download of ``total`` bytes; none when the size is unknown.

        The inflation ratio of an archive is judged against its size, so a
        stream of unknown length is extracted after it has arrived.
        """
        if total is None:
            return None
        return UnpackTap(
            self.cache,
            limits=self.limits,
            total=total,
            source=source,
            pinned=self.pinned,
        )

    def scan_file(self, path: Path, *, source: str) -> tuple[str, Unpacking]:
        """Hash a local file and, if it is an archive, stage its tree meanwhile.

        Returns
        -------
        tuple[str, Unpacking]
            The file's sha256, and its staged tree (or the archive's error).
        """
        if sniff_archive(path) is ArchiveKind.FILE:
            return file_digest(path), Unpacking()
        with ThreadPoolExecutor(1, thread_name_prefix="zooload-hash") as pool:
            digest = pool.submit(file_digest, path)
            unpacking = self._stage(path, source)
            try:
                return digest.result(), unpacking
            except BaseException:
                unpacking.discard()
                raise

    def _stage(self, path: Path, source: str) -> Unpacking:
        try:
            staged = stage_file(
                path,
                self.cache,
                limits=self.limits,
                source=source,
                in_place=True,
                covered_by_pin=self.pinned,
            )
        except ZooloadError as err:
            return Unpacking(error=err)
        return Unpacking(staged=staged)


def finish_unpacking(
    unpacking: Unpacking,
    sha256: str,
    cache: Cache,
    *,
    validate: Validator,
    source: str,
) -> Path | None:
    """Publish a staged tree under the archive's digest, or raise its error.

    Returns ``None`` when nothing was staged: the caller extracts the file.
    A tree already published for the digest wins over what was staged.

    Raises
    ------
    ZooloadError
        The error staging gave, or what ``validate`` raises.
    """
    tree = cache.tree_path(sha256)
    if tree.is_dir():
        unpacking.discard()
        return tree
    if unpacking.error is not None:
        raise unpacking.error
    if unpacking.staged is None:
        return None
    return publish_staged(
        unpacking.staged, sha256, cache, validate=validate, source=source
    )


def materialise(
    tree: Path, archive: Path, cache: Cache, sha256: str, *, recheck: bool = False
) -> None:
    """Copy the members a tree reads in place out of ``archive``, into the tree.

    :func:`zooload.fetch` hands out the folder itself, whose users expect
    every file in it. Each copy is written beside the tree and renamed into
    it, then the index forgets the member, so a concurrent reader sees
    either the in-place member or the whole file. With ``recheck`` (a local
    archive, trusted so far by its size and mtime) the archive is hashed
    first: the copies must come from the bytes the tree was made from.

    Raises
    ------
    HashMismatchError
        When a rechecked archive changed; its stale tree is removed and
        its new digest recorded, so that the next load starts afresh.
    ArchiveError
        When the archive ends before a member does (a damaged file).
    """
    index = TreeIndex.read(tree)
    if not index.in_place:
        return
    if recheck:
        _recheck_archive(archive, cache, sha256)
    with cache.locked(sha256):
        index = TreeIndex.read(tree)
        remaining = dict(index.in_place)
        for name, span in index.in_place.items():
            partial = cache.new_partial_path("member")
            _copy_member(archive, name, span, partial)
            partial.replace(tree / name)
            del remaining[name]
            _rewrite_index(tree, remaining, cache)
    logger.debug("copied %d members of %s into its tree", len(index.in_place), tree)


def _recheck_archive(archive: Path, cache: Cache, sha256: str) -> None:
    status = archive.stat()
    actual = file_digest(archive)
    if actual == sha256:
        return
    cache.evict_tree(sha256)
    cache.record_digest(archive, actual, status.st_size, status.st_mtime_ns)
    hint = (
        "The file was rewritten without changing its size or modification "
        "time since it was loaded; fetch it again."
    )
    raise HashMismatchError(str(archive), sha256, actual, hint)


def _copy_member(archive: Path, name: str, span: Span, target: Path) -> None:
    offset, size = span
    try:
        with archive.open("rb") as source, target.open("xb") as sink:
            source.seek(offset)
            _copy_exactly(source.read, sink.write, size)
    except (EOFError, OSError) as err:
        target.unlink(missing_ok=True)
        message = (
            f"{name} could not be copied out of {archive} ({err}): the archive "
            "is damaged. Fetch again; a damaged download is removed from the "
            "cache first, so that the next fetch downloads it anew."
        )
        raise ArchiveError(message) from err


def _copy_exactly(
    read: Callable[[int], bytes], write: Callable[[bytes], object], size: int
) -> None:
    left = size
    while left:
        chunk = read(min(left, 1 << 20))
        if not chunk:
            message = f"the archive ended {left} bytes early"
            raise EOFError(message)
        write(chunk)
        left -= len(chunk)


def _rewrite_index(tree: Path, remaining: dict[str, Span], cache: Cache) -> None:
    """Replace the tree's index atomically; remove it once nothing is in place."""
    if not remaining:
        (tree / TREE_INDEX_NAME).unlink(missing_ok=True)
        return
    partial = cache.new_partial_path("index")
    partial.write_text(TreeIndex(remaining).text())
    partial.replace(tree / TREE_INDEX_NAME)


class _Replay(io.RawIOBase):
    """A stream's first bytes, already read, followed by the rest of it."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._head:
            size = min(len(buffer), len(self._head))
            buffer[:size] = self._head[:size]
            self._head = self._head[size:]
            return size
        chunk = self._rest.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def _replayed(head: bytes, rest: IO[bytes]) -> IO[bytes]:
    return io.BufferedReader(_Replay(head, rest), buffer_size=1 << 20)
