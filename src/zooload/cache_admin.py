"""Cache management: list, measure, remove, prune and verify cache entries.

An entry is one blob (downloaded bytes, named by their sha256), its extracted
tree if any, and the URLs whose records point at it. An entry's last use is
its blob's access time, which every fetch that serves the blob renews.
Removal takes the entry's locks without waiting: an entry that another
process is downloading, revalidating or extracting is left alone. The layout
is described in ``docs/CACHE.md``; ``zooload cache`` is the command line
over these functions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from zooload.cache import Cache
from zooload.errors import CacheError, IntegrityError, ManifestError
from zooload.hashing import file_digest
from zooload.manifest import verify_manifest_files

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
_DIGEST = re.compile(r"^(sha256:)?[0-9a-fA-F]{64}$")


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One blob in the cache, with its tree and the URLs that point at it.

    Attributes
    ----------
    sha256
        The digest that names the blob.
    urls
        The URLs whose records point at the blob, sorted; empty for bytes
        that only a pin refers to.
    size
        Bytes on disk: the blob plus its extracted tree.
    last_used
        When a fetch last served the blob, in seconds since the epoch.
    path
        The blob file.
    """

    sha256: str
    urls: tuple[str, ...]
    size: int
    last_used: float
    path: Path


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What :func:`prune_cache` did.

    Attributes
    ----------
    removed
        The entries removed, least recently used first.
    skipped
        Entries that would have gone but were in use by another process.
    freed
        Bytes freed, abandoned partial downloads included.
    size
        The cache's size afterwards.
    """

    removed: tuple[CacheEntry, ...]
    skipped: tuple[CacheEntry, ...]
    freed: int
    size: int


@dataclass(frozen=True, slots=True)
class CorruptBlob:
    """A blob whose bytes no longer hash to its name, or whose tree was altered.

    Attributes
    ----------
    entry
        The entry as listed by :func:`cache_entries`.
    actual
        The digest the bytes have now.
    removed
        Whether :func:`verify_cache` removed it (``remove_corrupt=True``
        and no other process held it).
    tree_problem
        When the blob is intact but a file of its extracted tree no longer
        matches the manifest: what is wrong. The tree is re-extracted from
        the blob once removed.
    """

    entry: CacheEntry
    actual: str
    removed: bool
    tree_problem: str = ""


def cache_entries(*, cache_dir: PathLike | None = None) -> tuple[CacheEntry, ...]:
    """List the cache's entries, most recently used first.

    Parameters
    ----------
    cache_dir
        Cache root; defaults to ``$ZOOLOAD_CACHE`` or the user cache folder.

    Returns
    -------
    tuple of CacheEntry

    Raises
    ------
    CacheError
        When the cache folder cannot be used.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     cache_entries(cache_dir=folder)
    ()
    """
    cache = Cache.open(cache_dir)
    urls = _urls_by_blob(cache)
    entries = []
    for path in (cache.root / "blobs").iterdir():
        with contextlib.suppress(FileNotFoundError):
            entries.append(_entry(cache, path, urls.get(path.name, ())))
    return tuple(sorted(entries, key=lambda entry: entry.last_used, reverse=True))


def cache_root(*, cache_dir: PathLike | None = None) -> Path:
    """Return the cache folder, creating its layout if needed.

    Parameters
    ----------
    cache_dir
        Cache root; defaults to ``$ZOOLOAD_CACHE`` or the user cache folder.

    Returns
    -------
    pathlib.Path
        The absolute path of the cache root.

    Raises
    ------
    CacheError
        When the cache folder cannot be used.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     cache_root(cache_dir=folder) == pathlib.Path(folder).resolve()
    True
    """
    return Cache.open(cache_dir).root


def cache_size(*, cache_dir: PathLike | None = None) -> int:
    """Return the bytes the cache holds: blobs, trees, records and partials.

    Parameters
    ----------
    cache_dir
        Cache root; defaults to ``$ZOOLOAD_CACHE`` or the user cache folder.

    Returns
    -------
    int

    Raises
    ------
    CacheError
        When the cache folder cannot be used.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     cache_size(cache_dir=folder)
    0
    """
    cache = Cache.open(cache_dir)
    folders = ("blobs", "trees", "refs", "partial")
    return sum(_disk_size(cache.root / name) for name in folders)


def remove_from_cache(
    url_or_sha256: str, *, cache_dir: PathLike | None = None
) -> tuple[CacheEntry, ...]:
    """Remove the entry a URL points at, or the entry with a digest.

    The entry goes whole: its blob, its tree and every URL record that points
    at it. Removing what is not cached does nothing.

    Parameters
    ----------
    url_or_sha256
        A URL as it was fetched (a ``#sha256=`` fragment is ignored), or a
        sha256 digest (optionally prefixed ``sha256:``).
    cache_dir
        Cache root; defaults to ``$ZOOLOAD_CACHE`` or the user cache folder.

    Returns
    -------
    tuple of CacheEntry
        The entries removed.

    Raises
    ------
    CacheError
        When another process is using the entry; nothing is removed then.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     remove_from_cache("https://example.org/model.bin", cache_dir=folder)
    ()
    """
    cache = Cache.open(cache_dir)
    target = url_or_sha256.strip()
    if _DIGEST.match(target):
        digest = target.lower().removeprefix("sha256:")
        chosen = [e for e in cache_entries(cache_dir=cache.root) if e.sha256 == digest]
    else:
        url = target.partition("#")[0]
        chosen = [e for e in cache_entries(cache_dir=cache.root) if url in e.urls]
        cache.forget_url(url)
    for entry in chosen:
        if not _remove(cache, entry):
            message = (
                f"cannot remove {entry.sha256} ({target}): another process is "
                "using it. Try again when that process has finished."
            )
            raise CacheError(message)
    return tuple(chosen)


def prune_cache(max_bytes: int, *, cache_dir: PathLike | None = None) -> PruneResult:
    """Shrink the cache to ``max_bytes``, least recently used entries first.

    Abandoned partial downloads (of processes that died, or released long
    ago) and records whose blob is gone are removed first. An entry that
    another process holds a lock on is skipped, never removed.

    Parameters
    ----------
    max_bytes
        The size budget in bytes.
    cache_dir
        Cache root; defaults to ``$ZOOLOAD_CACHE`` or the user cache folder.

    Returns
    -------
    PruneResult

    Raises
    ------
    CacheError
        When the cache folder cannot be used.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     prune_cache(0, cache_dir=folder).removed
    ()
    """
    cache = Cache.open(cache_dir)
    before = cache_size(cache_dir=cache.root)
    _drop_leftovers(cache)
    estimate = cache_size(cache_dir=cache.root)
    removed, skipped = [], []
    for entry in reversed(cache_entries(cache_dir=cache.root)):
        if estimate <= max_bytes:
            break
        if _remove(cache, entry):
            removed.append(entry)
            estimate -= entry.size
        else:
            skipped.append(entry)
    after = cache_size(cache_dir=cache.root)
    logger.info("pruned %d entries, %d bytes", len(removed), before - after)
    return PruneResult(tuple(removed), tuple(skipped), before - after, after)


def verify_cache(
    *, cache_dir: PathLike | None = None, remove_corrupt: bool = False
) -> tuple[CorruptBlob, ...]:
    """Hash every blob and extracted tree; report what no longer matches.

    A blob must hash to its name; an extracted archive's files must match
    the sha256 its manifest lists (a tree edited after extraction).

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
        actual = _digest_keeping_last_use(entry)
        if actual != entry.sha256:
            removed = remove_corrupt and _remove(cache, entry)
            corrupt.append(CorruptBlob(entry, actual, removed))
            continue
        problem = _tree_problem(cache.tree_path(entry.sha256))
        if problem:
            removed = remove_corrupt and _remove_tree(cache, entry)
            corrupt.append(CorruptBlob(entry, actual, removed, problem))
    return tuple(corrupt)


def _tree_problem(tree: Path) -> str:
    """What is wrong with an extracted tree, or ``""`` when it matches."""
    if not tree.is_dir():
        return ""
    try:
        verify_manifest_files(tree)
    except (IntegrityError, ManifestError) as err:
        return str(err)
    return ""


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
    modified = entry.path.stat().st_mtime_ns
    digest = file_digest(entry.path)
    os.utime(entry.path, ns=(int(entry.last_used * 1e9), modified))
    return digest


def _urls_by_blob(cache: Cache) -> dict[str, tuple[str, ...]]:
    found: defaultdict[str, list[str]] = defaultdict(list)
    for record in cache.records():
        found[record.sha256].append(record.url)
    return {digest: tuple(sorted(urls)) for digest, urls in found.items()}


def _entry(cache: Cache, path: Path, urls: tuple[str, ...]) -> CacheEntry:
    status = path.stat()
    tree = _disk_size(cache.tree_path(path.name))
    return CacheEntry(path.name, urls, status.st_size + tree, status.st_atime, path)


def _disk_size(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += (Path(root) / name).lstat().st_size
    return total


def _remove(cache: Cache, entry: CacheEntry) -> bool:
    """Remove an entry under its locks; ``False`` if another process holds one."""
    stack = cache.lock_if_free([entry.sha256, *entry.urls])
    if stack is None:
        logger.debug("%s is in use; not removed", entry.sha256)
        return False
    with stack:
        for url in entry.urls:
            cache.forget_url(url)
        cache.evict(entry.sha256)
    logger.debug("removed %s (%d bytes)", entry.sha256, entry.size)
    return True


def _drop_leftovers(cache: Cache) -> None:
    """Delete abandoned partial downloads and records without a blob."""
    for path in cache.abandoned_partials():
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    for record in cache.records():
        if not cache.has_blob(record.sha256):
            cache.forget_url(record.url)
