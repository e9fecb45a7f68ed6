"""Cache verification: re-hash every entry and report what no longer matches.

A blob is named by its sha256, so re-hashing it tells whether its bytes
changed on disk; an extracted tree is checked against its manifest. Hashing
reads every byte, so the entries' last use (access times) is kept as it
was: verifying the cache must not make old entries look recently used to
:func:`~zooload.cache_admin.prune_cache`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from zooload.cache import Cache
from zooload.cache_admin import CacheEntry, PathLike, cache_entries, remove_entry
from zooload.errors import HashMismatchError, IntegrityError, ManifestError
from zooload.hashing import file_digest
from zooload.manifest import (
    MANIFEST_NAME,
    FileSpec,
    read_manifest,
    verify_manifest_files,
)
from zooload.trees import TreeIndex

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CorruptBlob:
    """A blob whose bytes no longer hash to its name, or whose tree was altered.

    Attributes
    ----------
    entry
        The entry as listed by :func:`cache_entries`.
    actual
        The digest the bytes have now (the entry's own digest for a tree
        without a blob, which has no bytes to hash).
    removed
        Whether :func:`verify_cache` removed it (``remove_corrupt=True``
        and no other process held it).
    tree_problem
        When the blob is intact but a file of its extracted tree no longer
        matches the manifest: what changed. The tree is extracted again
        from the blob (or the local archive) by the next load once removed.
    """

    entry: CacheEntry
    actual: str
    removed: bool
    tree_problem: str = ""


def verify_cache(
    *, cache_dir: PathLike | None = None, remove_corrupt: bool = False
) -> tuple[CorruptBlob, ...]:
    """Hash every blob and extracted tree; report what no longer matches.

    A blob must hash to its name; an extracted archive's files must match
    the sha256 its manifest lists (a tree edited after extraction), trees
    of local archives included. Without ``remove_corrupt`` nothing is
    written, so a read-only cache can be checked.

    Parameters
    ----------
    cache_dir
        Cache root; defaults to ``$ZOOLOAD_CACHE`` or the user cache folder.
    remove_corrupt
        Also remove the corrupt entries (unless another process uses them),
        so that the next fetch downloads them again.

    Returns
    -------
    tuple of CorruptBlob
        Empty when every blob is intact.

    Raises
    ------
    CacheError
        When the cache folder cannot be used.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     verify_cache(cache_dir=folder)
    ()
    """
    cache = Cache.open(cache_dir)
    corrupt = []
    for entry in cache_entries(cache_dir=cache.root):
        has_blob = _has_blob(entry)
        actual = _digest_keeping_last_use(entry) if has_blob else entry.sha256
        if actual != entry.sha256:
            removed = remove_corrupt and remove_entry(cache, entry)
            corrupt.append(CorruptBlob(entry, actual, removed))
            continue
        origin = "the verified blob" if has_blob else "the local archive"
        tree = cache.tree_path(entry.sha256)
        problem = "" if has_blob else _local_archive_problem(tree, entry)
        problem = problem or _tree_problem(tree, origin=origin)
        if problem:
            removed = remove_corrupt and _remove_tree(cache, entry)
            corrupt.append(CorruptBlob(entry, actual, removed, problem))
    return tuple(corrupt)


def _local_archive_problem(tree: Path, entry: CacheEntry) -> str:
    """Why a local archive's tree can no longer read its in-place members.

    Such members are bytes of the user's archive file: it must still exist
    and still hash to the tree's name.
    """
    if not TreeIndex.read(tree).in_place:
        return ""
    for path in map(Path, entry.urls):
        if path.is_file() and file_digest(path) == entry.sha256:
            return ""
    archives = ", ".join(entry.urls) or "an archive no longer recorded"
    return (
        f"its weights stay in the local archive ({archives}), which is gone or "
        "was changed; remove_corrupt=True removes the tree and the next load "
        "of the archive extracts it again"
    )


def _tree_problem(tree: Path, *, origin: str) -> str:
    """What changed in an extracted tree, or ``""`` when it matches.

    A tree is published only after its files matched the manifest, so a
    mismatch now means the extracted copy was changed in the cache.
    """
    if not tree.is_dir():
        return ""
    try:
        with _keeping_access_times(tree):
            verify_manifest_files(tree)
    except (IntegrityError, ManifestError) as err:
        return (
            f"{_what_changed(tree, err)}: the extracted copy was changed after "
            "extraction; remove_corrupt=True removes it and the next load "
            f"extracts it again from {origin}"
        )
    return ""


def _what_changed(tree: Path, err: IntegrityError | ManifestError) -> str:
    """Name the file of ``tree`` that no longer matches, from the error's facts."""
    if isinstance(err, HashMismatchError):
        name = _listed_name(tree, lambda spec: spec.sha256 == err.expected)
        return (
            f"{name} no longer matches the sha256 its {MANIFEST_NAME} lists "
            f"(expected {err.expected}, now {err.actual})"
        )
    if isinstance(err, ManifestError) and err.field.endswith(".path"):
        name = _listed_name(tree, lambda spec: not (tree / spec.path).is_file())
        return f"{name}, which its {MANIFEST_NAME} lists, is gone"
    return f"its {MANIFEST_NAME} is no longer valid ({err})"


def _listed_name(tree: Path, matches: Callable[[FileSpec], bool]) -> str:
    """The first file the tree's manifest lists that ``matches``, or a stand-in."""
    with contextlib.suppress(ManifestError, OSError):
        for spec in read_manifest(tree / MANIFEST_NAME).files():
            if matches(spec):
                return spec.path
    return "a file"


@contextlib.contextmanager
def _keeping_access_times(folder: Path) -> Iterator[None]:
    """Restore the access times of a folder's files, its last use, after a read.

    Restoring is best effort: a read-only cache keeps the new times.
    """
    times = []
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            status = path.lstat()
            times.append((path, status.st_atime_ns, status.st_mtime_ns))
    try:
        yield
    finally:
        for path, accessed, modified in times:
            with contextlib.suppress(OSError):
                os.utime(path, ns=(accessed, modified), follow_symlinks=False)


def _remove_tree(cache: Cache, entry: CacheEntry) -> bool:
    """Remove an altered tree under the blob's lock; the blob stays."""
    stack = cache.lock_if_free([entry.sha256])
    if stack is None:
        return False
    with stack:
        shutil.rmtree(cache.tree_path(entry.sha256), ignore_errors=True)
    logger.debug("removed the altered tree of %s", entry.sha256)
    return True


def _digest_keeping_last_use(entry: CacheEntry) -> str:
    # Reading a blob may move its access time, which is its last use: a check
    # of the whole cache must not make every entry look fresh to pruning.
    # A read-only cache keeps the new access time: checking must not write.
    modified = entry.path.stat().st_mtime_ns
    digest = file_digest(entry.path)
    with contextlib.suppress(OSError):
        os.utime(entry.path, ns=(int(entry.last_used * 1e9), modified))
    return digest


def _has_blob(entry: CacheEntry) -> bool:
    """Whether the entry is a blob, not a tree extracted from a local archive."""
    return entry.path.parent.name == "blobs"
