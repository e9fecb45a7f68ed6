"""Fetch: turn a URL or path into verified bytes on the local disk.

Local files are used in place; remote ones go through a transport into the
cache. A pinned digest that is already cached is served without any network
request; an unpinned URL is revalidated with a conditional request.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from zooload.cache import Cache, UrlRecord, now
from zooload.errors import ConfigError, DownloadError, HashMismatchError
from zooload.hashing import file_digest, normalize_digest
from zooload.sources import TRANSPORTS

logger = logging.getLogger(__name__)

_WINDOWS_DRIVE = re.compile(r"^[a-zA-Z]$")


@dataclass(frozen=True, slots=True)
class Location:
    """A parsed source: the URL without fragment, its scheme and its pin."""

    url: str
    scheme: str
    sha256: str | None

    @property
    def is_local(self) -> bool:
        """Whether the bytes are read in place rather than downloaded."""
        return self.scheme in {"", "file"}


@dataclass(frozen=True, slots=True)
class Blob:
    """Verified bytes on disk, with their digest and where they came from.

    A local folder is a blob too, read in place; its ``sha256`` is empty.
    """

    path: Path
    sha256: str
    url: str
    in_cache: bool


def parse_location(url: str | os.PathLike[str], sha256: str | None = None) -> Location:
    """Split a URL or path into its parts and merge the ``sha256`` pins.

    Parameters
    ----------
    url
        ``http(s)://`` or ``file://`` URL, or a local path; an URL may end
        in ``#sha256=<hex>``.
    sha256
        A pin given as an argument; must agree with the fragment's.

    Returns
    -------
    Location

    Raises
    ------
    ConfigError
        For an unsupported scheme, a malformed pin, or two pins that differ.

    Examples
    --------
    >>> parse_location("https://h/m.tar.gz#sha256=" + "0" * 64).sha256 == "0" * 64
    True
    >>> parse_location("/tmp/model.pt").scheme
    ''
    """
    text = os.fspath(url)
    base, _, fragment = text.partition("#")
    scheme = urlsplit(base).scheme.lower()
    if _WINDOWS_DRIVE.match(scheme):
        scheme = ""
    if scheme not in TRANSPORTS and scheme not in {"", "file"}:
        known = ", ".join(sorted({*TRANSPORTS, "file"}))
        message = f"unsupported URL scheme {scheme!r} in {base}; use one of: {known}."
        raise ConfigError(message)
    pins = {normalize_digest(p) for p in (_fragment_pin(fragment, text), sha256) if p}
    if len(pins) > 1:
        message = f"two different sha256 pins given for {base}; keep one."
        raise ConfigError(message)
    return Location(url=base, scheme=scheme, sha256=pins.pop() if pins else None)


def _fragment_pin(fragment: str, url: str) -> str | None:
    if not fragment:
        return None
    key, _, value = fragment.partition("=")
    if key.lower() != "sha256" or not value:
        message = f"the fragment of {url} must be #sha256=<hex>, not #{fragment}."
        raise ConfigError(message)
    return value


def fetch_blob(location: Location, cache: Cache, *, progress: bool | None) -> Blob:
    """Return verified bytes for ``location``, downloading into ``cache`` if needed.

    Parameters
    ----------
    location
        From :func:`parse_location`.
    cache
        The cache to read and publish into.
    progress
        Show a progress bar for downloads (``None``: when stderr is a terminal).

    Returns
    -------
    Blob

    Raises
    ------
    DownloadError
        When the bytes cannot be had (missing local file, HTTP failure).
    HashMismatchError
        When the bytes differ from the pin; nothing is cached then.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder, "weights.bin")
    ...     _ = path.write_bytes(b"abc")
    ...     blob = fetch_blob(parse_location(path), Cache.open(folder), progress=False)
    ...     blob.sha256[:8], blob.in_cache
    ('ba7816bf', False)
    """
    if location.is_local:
        return _read_local(location)
    if location.sha256 and cache.has_blob(location.sha256):
        logger.debug("cache hit for pinned %s", location.url)
        return _cached_blob(location, cache, location.sha256)
    with cache.locked(location.url):
        return _download(location, cache, progress)


def _read_local(location: Location) -> Blob:
    # Local files are hashed on every call; nothing records an earlier
    # verification yet (KL-004).
    path = _local_path(location)
    if path.is_dir():
        if location.sha256:
            message = f"{path} is a folder; a sha256 pin applies to files only."
            raise ConfigError(message)
        return Blob(path=path, sha256="", url=location.url, in_cache=False)
    if not path.is_file():
        message = f"{path} does not exist; check the path."
        raise DownloadError(message, location.url)
    digest = file_digest(path)
    if location.sha256 and digest != location.sha256:
        raise HashMismatchError(str(path), location.sha256, digest)
    return Blob(path=path, sha256=digest, url=location.url, in_cache=False)


def _local_path(location: Location) -> Path:
    if location.scheme == "file":
        return Path(url2pathname(unquote(urlsplit(location.url).path)))
    return Path(location.url).expanduser()


def _cached_blob(location: Location, cache: Cache, sha256: str) -> Blob:
    return Blob(cache.blob_path(sha256), sha256, location.url, in_cache=True)


def _download(location: Location, cache: Cache, progress: bool | None) -> Blob:
    # Another process may have finished the same download while this one
    # waited for the lock; the pinned case needs no request at all then.
    if location.sha256 and cache.has_blob(location.sha256):
        return _cached_blob(location, cache, location.sha256)
    known = cache.read_record(location.url)
    if known and location.sha256 and known.sha256 != location.sha256:
        known = None
    partial = cache.new_partial_path("download")
    try:
        transfer = TRANSPORTS[location.scheme](
            location.url, partial, known=known, progress=progress
        )
        if transfer.not_modified and known:
            return _cached_blob(location, cache, known.sha256)
        _check_pin(location, transfer.sha256)
        path = cache.publish_blob(partial, transfer.sha256)
    finally:
        partial.unlink(missing_ok=True)
    record = UrlRecord(
        location.url,
        transfer.sha256,
        transfer.size,
        transfer.etag,
        transfer.last_modified,
        now(),
    )
    cache.write_record(record)
    return Blob(path, transfer.sha256, location.url, in_cache=True)


def _check_pin(location: Location, actual: str) -> None:
    if location.sha256 is None:
        logger.warning(
            "no sha256 pinned for %s; to pin these bytes, append #sha256=%s",
            location.url,
            actual,
        )
    elif actual != location.sha256:
        raise HashMismatchError(location.url, location.sha256, actual)
