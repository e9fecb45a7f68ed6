"""Cache management: list, measure, remove and prune cache entries.

An entry is one blob (downloaded bytes, named by their sha256), its extracted
tree if any, and the URLs whose records point at it. An entry's last use is
its blob's access time, which every fetch that serves the blob renews.

An archive loaded from a local file leaves a tree without a blob, since the
blob would be a copy of the user's file. Such a tree is an entry too: its
size is the tree's, its "URLs" are the local paths the cache recorded with
that digest, and its last use is the newest access time of its files.
Removal takes the entry's locks without waiting: an entry that another
process is downloading, revalidating or extracting is left alone. The layout
is described in ``docs/CACHE.md``; ``zooload cache`` is the command line
over these functions, and over :mod:`zooload.cache_verification`.
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
from zooload.errors import (
    CacheError,
    ConfigError,
)

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
_DIGEST = re.compile(r"^(sha256:)?[0-9a-fA-F]{64}$")
_TREE_NAME = re.compile(r"^[0-9a-f]{64}$")
_HASH_PREFIX = "sha256:"


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One blob in the cache, with its tree and the URLs that point at it.

    Attributes
    ----------
    sha256
        The digest that names the blob.
    urls
        The URLs whose records point at the blob, sorted; empty for bytes
        that only a pin refers to. For a tree extracted from a local
        archive: the local paths the cache recorded with its digest.
    size
        Bytes on disk: the blob plus its extracted tree.
    last_used
        When a fetch last served the blob, in seconds since the epoch; for
        a tree without a blob, the newest access time of its files.
    path
        The blob file, or the tree folder when there is no blob (an archive
        extracted from a local file).
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
    entries.extend(_orphan_trees(cache))
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
        A URL as it was fetched (a ``#sha256=`` fragment is ignored), the
        path of a local archive that was loaded, or a sha256 digest
        (optionally prefixed ``sha256:``).
    cache_dir
        Cache root; defaults to ``$ZOOLOAD_CACHE`` or the user cache folder.

    Returns
    -------
    tuple of CacheEntry
        The entries removed.

    Raises
    ------
    CacheError
        When another process is using the entry (nothing is removed then),
        or the cache folder is not writable.
    ConfigError
        When ``url_or_sha256`` starts with ``sha256:`` but is not followed
        by 64 hex characters.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     remove_from_cache("https://example.org/model.bin", cache_dir=folder)
    ()
    """
    cache = Cache.open(cache_dir)
    target = url_or_sha256.strip()
    entries = cache_entries(cache_dir=cache.root)
    url = ""
    if _DIGEST.match(target):
        digest = target.lower().removeprefix(_HASH_PREFIX)
        chosen = [e for e in entries if e.sha256 == digest]
    elif target.lower().startswith(_HASH_PREFIX):
        message = (
            f"{target!r} is not a sha256 digest: a digest is 64 hex characters "
            "(0-9, a-f), optionally after 'sha256:'. Copy it whole from "
            "`zooload cache ls`."
        )
        raise ConfigError(message)
    else:
        url = target.partition("#")[0]
        names = {url, _local_name(url)}
        chosen = [e for e in entries if names.intersection(e.urls)]
    for entry in chosen:
        if not remove_entry(cache, entry):
            message = (
                f"cannot remove {entry.sha256} ({target}): another process is "
                "using it. Try again when that process has finished."
            )
            raise CacheError(message)
    # A record whose blob is gone is no entry, but it goes too.
    with cache.changing("remove a URL record"):
        if url:
            cache.forget_url(url)
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
        When the cache folder cannot be used or is not writable.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     prune_cache(0, cache_dir=folder).removed
    ()
    """
    cache = Cache.open(cache_dir)
    before = cache_size(cache_dir=cache.root)
    with cache.changing("remove abandoned downloads"):
        _drop_leftovers(cache)
    estimate = cache_size(cache_dir=cache.root)
    removed, skipped = [], []
    for entry in reversed(cache_entries(cache_dir=cache.root)):
        if estimate <= max_bytes:
            break
        if remove_entry(cache, entry):
            removed.append(entry)
            estimate -= entry.size
        else:
            skipped.append(entry)
    after = cache_size(cache_dir=cache.root)
    logger.info("pruned %d entries, %d bytes", len(removed), before - after)
    return PruneResult(tuple(removed), tuple(skipped), before - after, after)


def _orphan_trees(cache: Cache) -> list[CacheEntry]:
    """Entries for the trees that have no blob: archives loaded from local files."""
    paths = _local_paths_by_digest(cache)
    found = []
    for tree in (cache.root / "trees").iterdir():
        if not _TREE_NAME.match(tree.name) or cache.has_blob(tree.name):
            continue
        with contextlib.suppress(FileNotFoundError):
            size, last_used = _tree_usage(tree)
            local = paths.get(tree.name, ())
            found.append(CacheEntry(tree.name, local, size, last_used, tree))
    return found


def _local_paths_by_digest(cache: Cache) -> dict[str, tuple[str, ...]]:
    found: defaultdict[str, list[str]] = defaultdict(list)
    for path, digest in cache.local_digests():
        found[digest].append(path)
    return {digest: tuple(sorted(paths)) for digest, paths in found.items()}


def _tree_usage(tree: Path) -> tuple[int, float]:
    """A tree's bytes and the newest access time of its files.

    Folders are left out: listing one, as this function does, renews its
    access time, while only a load reads the files.
    """
    size, last_used = 0, tree.stat().st_mtime
    for root, _, files in os.walk(tree):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                status = (Path(root) / name).lstat()
                size += status.st_size
                last_used = max(last_used, status.st_atime)
    return size, last_used


def _local_name(target: str) -> str:
    """The absolute path a local target names, as the cache records it."""
    if "://" in target:
        return target
    return str(Path(target).expanduser().resolve())


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


def remove_entry(cache: Cache, entry: CacheEntry) -> bool:
    """Remove an entry under its locks; ``False`` if another process holds one."""
    stack = cache.lock_if_free([entry.sha256, *entry.urls])
    if stack is None:
        logger.debug("%s is in use; not removed", entry.sha256)
        return False
    with stack, cache.changing("remove entries"):
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
