"""The content-addressed cache: layout, locks, references and atomic publish.

Layout under the cache root (see ``docs/CACHE.md``)::

    blobs/<sha256>          downloaded bytes, immutable once published
    trees/<sha256>/         the extracted archive of that blob, whole or absent
    refs/<sha256 of url>.json   url -> blob hash, ETag, Last-Modified, size
    verified/<sha256 of path>.json  a local file's digest, size and mtime
    partial/                downloads and extractions in progress
    locks/                  one lock file per URL or blob

Everything is published by writing under ``partial/`` and renaming into place,
so a reader sees a whole file or none. Locks only avoid duplicate work; the
rename is what keeps the cache correct, because file locks silently do nothing
on some network filesystems.

A partial name ends in ``-<host>-<pid>-<random>``: the owner. A partial whose
owner died on this host, or that was released for a later resume, or that
nobody touched for a day, is abandoned; :meth:`Cache.abandoned_partials` finds
those for resuming and pruning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import platformdirs
from filelock import FileLock, Timeout

from zooload.errors import CacheError

logger = logging.getLogger(__name__)

CACHE_ENV = "ZOOLOAD_CACHE"
LOCK_TIMEOUT_SECONDS = 3600.0
ABANDONED_AFTER_SECONDS = 86400.0
RELEASED = "released"
_SUBFOLDERS = ("blobs", "trees", "refs", "partial", "locks", "verified")
# The host part of partial names: short, and free of the dashes that
# separate the name's fields.
_HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


@dataclass(frozen=True, slots=True)
class UrlRecord:
    """What the cache remembers about a URL, for revalidation.

    ``fetched_at`` is when the bytes were last confirmed current: downloaded,
    or revalidated with a 304. ``source`` is the URL they came from, which
    differs from ``url`` when a mirror served them.
    """

    url: str
    sha256: str
    size: int
    etag: str | None
    last_modified: str | None
    fetched_at: float
    source: str | None = None


def default_cache_dir() -> Path:
    """Return the cache root: ``$ZOOLOAD_CACHE`` or the platform's user cache.

    Examples
    --------
    >>> default_cache_dir().name in {"zooload", os.environ.get(CACHE_ENV, "")}
    True
    """
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path(platformdirs.user_cache_dir("zooload", appauthor=False))


@dataclass(frozen=True, slots=True)
class Cache:
    """A cache root and the operations on its layout.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     cache = Cache.open(folder)
    ...     cache.blob_path("ab" * 32).parent.name
    'blobs'
    """

    root: Path

    @classmethod
    def open(cls, cache_dir: str | os.PathLike[str] | None = None) -> Cache:
        """Create the layout under ``cache_dir`` (or the default) and return it.

        Raises
        ------
        CacheError
            When the folder cannot be created or written.
        """
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        try:
            for name in _SUBFOLDERS:
                (root / name).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            message = (
                f"cannot use {root} as the zooload cache: {err.strerror}. "
                f"Point {CACHE_ENV} or cache_dir= at a writable folder."
            )
            raise CacheError(message) from err
        return cls(root.resolve())

    def blob_path(self, sha256: str) -> Path:
        """Where the bytes with this digest live once published."""
        return self.root / "blobs" / sha256

    def tree_path(self, sha256: str) -> Path:
        """Where the extracted archive of this blob lives once published."""
        return self.root / "trees" / sha256

    def has_blob(self, sha256: str) -> bool:
        """Whether the blob with this digest is published."""
        return self.blob_path(sha256).is_file()

    def new_partial_path(self, kind: str) -> Path:
        """Return a fresh path under ``partial/``, unique to this process and call.

        The host and process id let a later run resume a download whose
        process died (see :meth:`abandoned_partials`); the random part keeps
        threads apart.
        """
        name = f"{kind}-{_HOST_TAG}-{os.getpid()}-{uuid.uuid4().hex}"
        return self.root / "partial" / name

    def released_partial_path(self, kind: str) -> Path:
        """Return a fresh path for a partial that any later run may take over."""
        return self.root / "partial" / f"{kind}-{RELEASED}-0-{uuid.uuid4().hex}"

    def abandoned_partials(self, kind: str = "") -> list[Path]:
        """Partials of ``kind`` (all, by default) whose owner is gone, largest first.

        Gone means: released, owned by a dead process on this host, or not
        modified for :data:`ABANDONED_AFTER_SECONDS` (the only test that works
        for other hosts sharing the cache).
        """
        found = []
        for path in (self.root / "partial").glob(f"{kind}*"):
            with contextlib.suppress(FileNotFoundError):
                status = path.stat()
                if _owner_is_gone(path.name, status.st_mtime):
                    found.append((status.st_size, path))
        return [path for _, path in sorted(found, reverse=True)]

    @contextlib.contextmanager
    def locked(self, key: str) -> Iterator[None]:
        """Hold the lock for ``key`` (a URL or a digest) while the block runs."""
        lock = self._lock(key)
        logger.debug("waiting for the lock on %s", key)
        try:
            lock.acquire(timeout=LOCK_TIMEOUT_SECONDS)
        except TimeoutError as err:
            message = (
                f"gave up after {LOCK_TIMEOUT_SECONDS:.0f} s waiting for another "
                f"process to finish with {key}. If no other zooload process runs, "
                f"delete {lock.lock_file} and try again."
            )
            raise CacheError(message) from err
        except OSError as err:
            raise self.unwritable(err, "take a lock") from err
        try:
            yield
        finally:
            lock.release()

    def lock_if_free(self, keys: Iterable[str]) -> contextlib.ExitStack | None:
        """Take every lock in ``keys`` now, or none: ``None`` if one is held.

        The returned stack releases the locks when closed.
        """
        stack = contextlib.ExitStack()
        for key in keys:
            lock = self._lock(key)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                stack.close()
                return None
            except OSError as err:
                stack.close()
                raise self.unwritable(err, "take a lock") from err
            stack.callback(lock.release)
        return stack

    @contextlib.contextmanager
    def changing(self, action: str) -> Iterator[None]:
        """Run a block that writes to the cache; its OSError becomes CacheError.

        ``action`` says what the block does, for the message ("remove
        entries").
        """
        try:
            yield
        except CacheError:
            raise
        except OSError as err:
            raise self.unwritable(err, action) from err

    def unwritable(self, err: OSError, action: str) -> CacheError:
        """The error for a cache folder that refused a write, with the fix."""
        message = (
            f"cannot {action} in the zooload cache {self.root}: "
            f"{err.strerror or err}. The cache folder must be writable; point "
            f"{CACHE_ENV} or cache_dir= at a writable folder."
        )
        return CacheError(message)

    def mark_used(self, sha256: str) -> None:
        """Record that a blob was used: its access time is its last use.

        The access time is set explicitly, since mounts with ``noatime`` or
        ``relatime`` do not keep it; the modification time stays that of the
        download.
        """
        # A read-only cache still serves its blobs; it just ages them wrongly.
        with contextlib.suppress(OSError):
            path = self.blob_path(sha256)
            os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns))

    def publish_blob(self, partial: Path, sha256: str) -> Path:
        """Move a verified partial file to its blob path and return that path.

        When the blob is already there (another process won the race), the
        partial file is dropped: identical digests mean identical bytes.
        """
        target = self.blob_path(sha256)
        try:
            partial.replace(target)
        except OSError as err:
            partial.unlink(missing_ok=True)
            message = f"cannot publish {target}: {err.strerror}. Check the disk."
            raise CacheError(message) from err
        logger.debug("published blob %s", sha256)
        return target

    def publish_tree(self, partial: Path, sha256: str) -> Path:
        """Rename an extracted folder to its tree path, or drop it if one won."""
        target = self.tree_path(sha256)
        try:
            partial.rename(target)
        except OSError:
            if not target.is_dir():
                shutil.rmtree(partial, ignore_errors=True)
                raise
            shutil.rmtree(partial, ignore_errors=True)
        return target

    def read_record(self, url: str) -> UrlRecord | None:
        """Return what the cache knows of ``url``, if its blob is still there."""
        path = self._record_path(url)
        try:
            record = UrlRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        return record if self.has_blob(record.sha256) else None

    def write_record(self, record: UrlRecord) -> None:
        """Store the record for its URL, replacing any older one atomically."""
        partial = self.new_partial_path("ref")
        partial.write_text(json.dumps(asdict(record)))
        partial.replace(self._record_path(record.url))

    def records(self) -> list[UrlRecord]:
        """Every readable URL record, whether or not its blob is still there."""
        found = []
        for path in (self.root / "refs").glob("*.json"):
            with contextlib.suppress(OSError, ValueError, TypeError):
                found.append(UrlRecord(**json.loads(path.read_text())))
        return found

    def forget(self, url: str, sha256: str) -> None:
        """Remove a URL's record and its blob and tree (a bad entry)."""
        self.forget_url(url)
        self.evict(sha256)
        logger.debug("removed cache entry of %s (%s)", url, sha256)

    def forget_url(self, url: str) -> None:
        """Remove the record of ``url``; its blob stays."""
        self._record_path(url).unlink(missing_ok=True)

    def evict(self, sha256: str) -> None:
        """Remove a blob and its extracted tree."""
        self.evict_tree(sha256)
        self.blob_path(sha256).unlink(missing_ok=True)

    def evict_tree(self, sha256: str) -> None:
        """Remove the extracted tree of a blob; the blob stays.

        The tree is first renamed out of ``trees/``, so that no reader ever
        sees it half deleted.
        """
        doomed = self.new_partial_path("evicted")
        with contextlib.suppress(FileNotFoundError):
            self.tree_path(sha256).rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def recorded_digest(self, path: Path) -> str | None:
        """The digest recorded for a local file whose size and mtime still match.

        A file rewritten in place changes its modification time (kept in
        nanoseconds), so a match means the bytes hashed earlier are still
        there; ``verify="full"`` skips this shortcut.
        """
        try:
            status = path.stat()
            record = json.loads(self._verified_path(path).read_text())
        except (OSError, ValueError):
            return None
        current = [str(path.resolve()), status.st_size, status.st_mtime_ns]
        if not isinstance(record, dict) or record.get("file") != current:
            return None
        digest = record.get("sha256")
        return digest if isinstance(digest, str) else None

    def record_digest(self, path: Path, sha256: str, size: int, mtime_ns: int) -> None:
        """Remember that ``path``, at this size and mtime, hashed to ``sha256``."""
        # A read-only cache still works; it only hashes local files each time.
        with contextlib.suppress(OSError):
            partial = self.new_partial_path("verified")
            document = {"file": [str(path.resolve()), size, mtime_ns], "sha256": sha256}
            partial.write_text(json.dumps(document))
            partial.replace(self._verified_path(path))

    def local_digests(self) -> list[tuple[str, str]]:
        """The ``(absolute path, sha256)`` of every local file hashed and recorded."""
        found = []
        for record_path in (self.root / "verified").glob("*.json"):
            with contextlib.suppress(OSError, ValueError, TypeError, LookupError):
                record = json.loads(record_path.read_text())
                path, digest = record["file"][0], record["sha256"]
                if isinstance(path, str) and isinstance(digest, str):
                    found.append((path, digest))
        return found

    def _verified_path(self, path: Path) -> Path:
        name = hashlib.sha256(str(path.resolve()).encode()).hexdigest()
        return self.root / "verified" / f"{name}.json"

    def _record_path(self, url: str) -> Path:
        name = hashlib.sha256(url.encode()).hexdigest()
        return self.root / "refs" / f"{name}.json"

    def _lock(self, key: str) -> FileLock:
        name = hashlib.sha256(key.encode()).hexdigest()
        return FileLock(self.root / "locks" / f"{name}.lock")


def now() -> float:
    """Seconds since the epoch; one place to read the clock."""
    return time.time()


def _owner_is_gone(name: str, modified: float) -> bool:
    # Names end in -<host>-<pid>-<random>; anything else is judged by age.
    parts = name.rsplit("-", 3)
    host, pid = (parts[1], parts[2]) if len(parts) == 4 else ("", "")
    if host == RELEASED:
        return True
    if host == _HOST_TAG and pid.isdigit() and not _is_process_alive(int(pid)):
        return True
    return now() - modified > ABANDONED_AFTER_SECONDS


def _is_process_alive(pid: int) -> bool:
    # On Windows, os.kill(pid, 0) would terminate the process; there, only
    # released and old partials are taken over (KL-008).
    if sys.platform == "win32":  # pragma: no cover - not tested off Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
