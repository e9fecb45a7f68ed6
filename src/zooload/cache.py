"""The content-addressed cache: layout, locks, references and atomic publish.

Layout under the cache root (see ``docs/CACHE.md``)::

    blobs/<sha256>          downloaded bytes, immutable once published
    trees/<sha256>/         the extracted archive of that blob, whole or absent
    refs/<sha256 of url>.json   url -> blob hash, ETag, Last-Modified, size
    partial/                downloads and extractions in progress
    locks/                  one lock file per URL or blob

Everything is published by writing under ``partial/`` and renaming into place,
so a reader sees a whole file or none. Locks only avoid duplicate work; the
rename is what keeps the cache correct, because file locks silently do nothing
on some network filesystems.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import platformdirs
from filelock import FileLock

from zooload.errors import CacheError

logger = logging.getLogger(__name__)

CACHE_ENV = "ZOOLOAD_CACHE"
LOCK_TIMEOUT_SECONDS = 3600.0
_SUBFOLDERS = ("blobs", "trees", "refs", "partial", "locks")


@dataclass(frozen=True, slots=True)
class UrlRecord:
    """What the cache remembers about a URL, for revalidation."""

    url: str
    sha256: str
    size: int
    etag: str | None
    last_modified: str | None
    fetched_at: float


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

        The process id lets a later run resume a download whose process died
        (see :meth:`partial_paths`); the random part keeps threads apart.
        """
        name = f"{kind}-{os.getpid()}-{uuid.uuid4().hex}"
        return self.root / "partial" / name

    @contextlib.contextmanager
    def locked(self, key: str) -> Iterator[None]:
        """Hold the lock for ``key`` (a URL or a digest) while the block runs."""
        name = hashlib.sha256(key.encode()).hexdigest()
        lock = FileLock(self.root / "locks" / f"{name}.lock")
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
        try:
            yield
        finally:
            lock.release()

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

    def forget(self, url: str, sha256: str) -> None:
        """Remove a URL's record and its blob and tree (a bad entry)."""
        self._record_path(url).unlink(missing_ok=True)
        self.blob_path(sha256).unlink(missing_ok=True)
        shutil.rmtree(self.tree_path(sha256), ignore_errors=True)
        logger.debug("removed cache entry of %s (%s)", url, sha256)

    def _record_path(self, url: str) -> Path:
        name = hashlib.sha256(url.encode()).hexdigest()
        return self.root / "refs" / f"{name}.json"


def now() -> float:
    """Seconds since the epoch; one place to read the clock."""
    return time.time()
