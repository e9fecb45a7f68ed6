"""Local files: their digests, recorded so that unchanged files are not re-hashed.

A local file (a path or ``file://`` URL, or a file of a local folder) is
hashed once; the digest is recorded in the cache with the file's size and
modification time (:meth:`~zooload.cache.Cache.record_digest`), and later
loads that find both unchanged use the record. ``verify="full"`` hashes
again. ``docs/CACHE.md`` ("Cheap cache hits") describes this for users.
"""

from __future__ import annotations

import logging
from pathlib import Path

from zooload.cache import Cache
from zooload.hashing import file_digest
from zooload.settings import Verification
from zooload.unpacking import Unpacker, Unpacking

logger = logging.getLogger(__name__)


def scanned_digest(
    path: Path,
    cache: Cache,
    verify: Verification,
    unpacker: Unpacker | None,
    url: str,
) -> tuple[str, Unpacking | None]:
    """The file's digest: recorded, if size and mtime are unchanged, or hashed.

    A file that is hashed is also unpacked meanwhile, when asked for and
    its last known tree is gone.

    Returns
    -------
    tuple[str, Unpacking | None]
        The digest, and the tree staged while hashing (if any).
    """
    recorded = cache.recorded_digest(path)
    if verify is Verification.RECORDED and recorded is not None:
        logger.debug("%s unchanged since it was hashed; not hashing again", path)
        return recorded, None
    has_tree = recorded is not None and cache.tree_path(recorded).is_dir()
    if unpacker is None or has_tree:
        return local_file_digest(path, cache, Verification.FULL), None
    status = path.stat()
    digest, unpacked = unpacker.scan_file(path, source=url)
    cache.record_digest(path, digest, status.st_size, status.st_mtime_ns)
    return digest, unpacked


def local_file_digest(path: Path, cache: Cache, verify: Verification) -> str:
    """The sha256 of a local file, hashed only when it changed since last time.

    The digest is recorded with the file's size and modification time;
    while both are unchanged the record answers, unless ``verify`` is
    ``FULL``, which always hashes (and records afresh).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder, "w.bin")
    ...     _ = path.write_bytes(b"abc")
    ...     cache = Cache.open(pathlib.Path(folder, "cache"))
    ...     local_file_digest(path, cache, Verification.RECORDED)[:8]
    'ba7816bf'
    """
    if verify is Verification.RECORDED:
        recorded = cache.recorded_digest(path)
        if recorded is not None:
            logger.debug("%s unchanged since it was hashed; not hashing again", path)
            return recorded
    # The status is taken before hashing: a write during the hashing then
    # leaves a record that no longer matches, never a stale one that does.
    status = path.stat()
    digest = file_digest(path)
    cache.record_digest(path, digest, status.st_size, status.st_mtime_ns)
    return digest
