"""Fetch: turn a URL or path into verified bytes on the local disk.

Local files are used in place; remote ones go through a transport into the
cache. A pinned digest that is already cached is served without any network
request; an unpinned URL is revalidated with a conditional request. Around
the transport sit the behaviours that make fetching survive real networks
(see ``docs/CACHE.md``, "Resilience"): one download per URL at a time across
processes and threads, resuming, retries, offline mode, mirrors, and the
fallback to a cached copy when revalidation cannot reach the server.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit
from urllib.request import url2pathname

from zooload.cache import Cache, UrlRecord, now
from zooload.errors import (
    ConfigError,
    DownloadError,
    HashMismatchError,
    NotCachedError,
)
from zooload.hashing import normalize_digest, verify_file
from zooload.local_files import scanned_digest
from zooload.partials import PartialDownload, TapFactory
from zooload.retries import with_retries
from zooload.settings import (
    OFFLINE_ENV,
    REQUIRE_HASH_ENV,
    FetchOptions,
    Verification,
    resolve_options,
)
from zooload.sources import TRANSPORTS, Transfer, Transport
from zooload.unpacking import Unpacker, Unpacking, UnpackTap

logger = logging.getLogger(__name__)

_PLAIN_HTTP_RISK = " over plain http (anyone on the network path can change it)"

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
    ``unpacked`` is the tree staged while the bytes were read, when an
    :class:`~zooload.unpacking.Unpacker` was given and the bytes were read
    at all (a cache hit reads nothing).
    """

    path: Path
    sha256: str
    url: str
    in_cache: bool
    unpacked: Unpacking | None = None


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
    try:
        parts = urlsplit(base)
    except ValueError as err:
        message = f"{base} is not a valid URL ({err}); fix the URL."
        raise ConfigError(message) from err
    try:
        parts.port  # noqa: B018 -- urlsplit checks the port only when asked
    except ValueError as err:
        message = f"{base} has an invalid port ({err}); fix the URL."
        raise ConfigError(message) from err
    scheme = parts.scheme.lower()
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


def fetch_blob(
    location: Location,
    cache: Cache,
    *,
    progress: bool | None = None,
    options: FetchOptions | None = None,
    unpacker: Unpacker | None = None,
) -> Blob:
    """Return verified bytes for ``location``, downloading into ``cache`` if needed.

    Parameters
    ----------
    location
        From :func:`parse_location`.
    cache
        The cache to read and publish into.
    progress
        Show a progress bar for downloads (``None``: when stderr is a
        terminal); used when ``options`` is not given.
    options
        Offline mode, mirrors, headers, retries and progress; ``None`` reads
        them from the environment (:func:`~zooload.settings.resolve_options`).
    unpacker
        Stage an archive's tree while its bytes are downloaded or hashed
        (:mod:`zooload.unpacking`); the result is ``Blob.unpacked``.

    Returns
    -------
    Blob

    Raises
    ------
    DownloadError
        When the bytes cannot be had (missing local file, HTTP failure).
    NotCachedError
        When offline and the URL is not in the cache.
    HashMismatchError
        When the bytes differ from the pin; nothing is cached then.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder, "weights.bin")
    ...     _ = path.write_bytes(b"abc")
    ...     blob = fetch_blob(parse_location(path), Cache.open(folder))
    ...     blob.sha256[:8], blob.in_cache
    ('ba7816bf', False)
    """
    options = options or resolve_options(progress=progress)
    location, options = _credentials_to_header(location, options)
    if location.is_local:
        return _read_local(location, cache, options.verify, unpacker)
    _check_pin_policy(location, options)
    if location.sha256 and cache.has_blob(location.sha256):
        logger.debug("cache hit for pinned %s", location.url)
        if options.verify is Verification.FULL:
            _recheck_blob(cache, location.sha256)
        return _cached_blob(location, cache, location.sha256)
    if options.offline:
        return _offline_blob(location, cache)
    waiting_since = now()
    with cache.locked(location.url):
        return _download(location, cache, options, waiting_since, unpacker)


def _credentials_to_header(
    location: Location, options: FetchOptions
) -> tuple[Location, FetchOptions]:
    """Move ``user:password@`` out of the URL into an Authorization header.

    The URL then appears in logs, errors and cache records without the
    secret, and the header, like any per-host header, never leaves its host.
    """
    parts = urlsplit(location.url)
    if "@" not in parts.netloc or location.is_local:
        return location, options
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
    clean = urlunsplit(parts._replace(netloc=hostport))
    headers = options.headers.with_header(clean, "Authorization", f"Basic {token}")
    return replace(location, url=clean), replace(options, headers=headers)


def _check_pin_policy(location: Location, options: FetchOptions) -> None:
    """Refuse an unpinned URL before any request when pins are required."""
    if location.sha256:
        return
    if options.require_hash:
        message = (
            f"{REQUIRE_HASH_ENV} is set and {location.url} has no sha256 pin, so "
            "no request was made. Append #sha256=<hex> to the URL or pass "
            "sha256=; the publisher's page or `sha256sum` gives the value."
        )
        raise ConfigError(message)


def _read_local(
    location: Location, cache: Cache, verify: Verification, unpacker: Unpacker | None
) -> Blob:
    path = _local_path(location)
    if path.is_dir():
        if location.sha256:
            message = f"{path} is a folder; a sha256 pin applies to files only."
            raise ConfigError(message)
        return Blob(path=path, sha256="", url=location.url, in_cache=False)
    if not path.is_file():
        message = f"{path} does not exist; check the path."
        raise DownloadError(message, location.url)
    digest, unpacked = scanned_digest(path, cache, verify, unpacker, location.url)
    if location.sha256 and digest != location.sha256:
        if unpacked is not None:
            unpacked.discard()
        hint = "Check that the pinned hash belongs to this file."
        raise HashMismatchError(str(path), location.sha256, digest, hint)
    return Blob(path, digest, location.url, in_cache=False, unpacked=unpacked)


def _recheck_blob(cache: Cache, sha256: str) -> None:
    """Hash a cached blob again; remove it if its bytes changed on disk."""
    path = cache.blob_path(sha256)
    hint = "The cached copy was damaged and has been removed; load again."
    try:
        verify_file(path, sha256, hint=hint)
    except HashMismatchError:
        cache.evict(sha256)
        raise


def _local_path(location: Location) -> Path:
    if location.scheme == "file":
        return Path(url2pathname(unquote(urlsplit(location.url).path)))
    return Path(location.url).expanduser()


def _cached_blob(location: Location, cache: Cache, sha256: str) -> Blob:
    cache.mark_used(sha256)
    return Blob(cache.blob_path(sha256), sha256, location.url, in_cache=True)


def _offline_blob(location: Location, cache: Cache) -> Blob:
    known = None if location.sha256 else cache.read_record(location.url)
    if known is not None:
        logger.debug("offline: serving cached %s", location.url)
        return _cached_blob(location, cache, known.sha256)
    message = (
        f"{location.url} is not in the cache and offline mode is on "
        f"({OFFLINE_ENV}=1 or offline=True); fetch it once while online, or "
        "turn offline mode off."
    )
    raise NotCachedError(message, location.url)


def _download(
    location: Location,
    cache: Cache,
    options: FetchOptions,
    waiting_since: float,
    unpacker: Unpacker | None,
) -> Blob:
    # Another process may have finished the same download while this one
    # waited for the lock: its result is used without a request of our own.
    if location.sha256 and cache.has_blob(location.sha256):
        return _cached_blob(location, cache, location.sha256)
    known = None if location.sha256 else cache.read_record(location.url)
    if known and known.fetched_at >= waiting_since:
        logger.debug("%s was fetched by another caller meanwhile", location.url)
        return _cached_blob(location, cache, known.sha256)
    if known:
        # A revalidation gets one attempt: the cached copy is the fallback,
        # and an offline laptop should not wait out a backoff on every load.
        options = replace(options, retry=replace(options.retry, attempts=1))
    try:
        return _from_candidates(location, cache, known, options, unpacker)
    except DownloadError as err:
        if known is None or not err.retryable:
            raise
        logger.warning(
            "could not revalidate %s (%s); using the cached copy from %s",
            location.url,
            err,
            time.strftime("%Y-%m-%d %H:%M", time.localtime(known.fetched_at)),
        )
        return _cached_blob(location, cache, known.sha256)


def _from_candidates(
    location: Location,
    cache: Cache,
    known: UrlRecord | None,
    options: FetchOptions,
    unpacker: Unpacker | None,
) -> Blob:
    """Try each mirror in order, then the URL itself; the pin judges the bytes."""
    *mirrors, original = options.candidates(location.url)
    for mirror in mirrors:
        _transport_for(mirror)
    attempt = _Attempt(location, cache, known, options, unpacker)
    for mirror in mirrors:
        try:
            return _from_source(mirror, attempt)
        except (DownloadError, HashMismatchError) as err:
            logger.warning("mirror %s failed (%s); trying the next source", mirror, err)
    return _from_source(original, attempt)


@dataclass(frozen=True, slots=True)
class _Attempt:
    """What every source tried for one location shares."""

    location: Location
    cache: Cache
    known: UrlRecord | None
    options: FetchOptions
    unpacker: Unpacker | None


def _from_source(source: str, attempt: _Attempt) -> Blob:
    location, cache, options = attempt.location, attempt.cache, attempt.options
    known = attempt.known
    if known and known.source not in (None, source):
        # Validators belong to the server that issued them.
        known = None
    started = time.perf_counter()
    taps: list[UnpackTap] = []
    factory = _tap_factory(attempt.unpacker, source, taps)
    with PartialDownload.open(cache, source, tap_factory=factory) as partial:
        transfer = _transfer(source, partial, known, options)
        if transfer.not_modified and known:
            cache.write_record(replace(known, fetched_at=now()))
            return _cached_blob(location, cache, known.sha256)
        transfer = _verified(location, source, partial, transfer, options)
        path = partial.publish(transfer.sha256)
    record = UrlRecord(
        location.url,
        transfer.sha256,
        transfer.size,
        transfer.etag,
        transfer.last_modified,
        now(),
        source,
    )
    cache.write_record(record)
    _log_download(source, transfer, time.perf_counter() - started, path)
    unpacked = taps[-1].outcome() if taps else None
    return Blob(path, transfer.sha256, location.url, True, unpacked)


def _tap_factory(
    unpacker: Unpacker | None, source: str, made: list[UnpackTap]
) -> TapFactory | None:
    """Make each transfer's unpacking tap, keeping the taps in ``made``."""
    if unpacker is None:
        return None

    def new_tap(total: int | None) -> UnpackTap | None:
        tap = unpacker.tap(source, total)
        if tap is not None:
            made.append(tap)
        return tap

    return new_tap


def _transfer(
    source: str,
    partial: PartialDownload,
    known: UrlRecord | None,
    options: FetchOptions,
) -> Transfer:
    transport = _transport_for(source)
    return with_retries(
        lambda: transport(source, partial, known=known, options=options),
        options.retry,
        position=lambda: partial.offset,
    )


def _transport_for(source: str) -> Transport:
    scheme = urlsplit(source).scheme.lower()
    transport = TRANSPORTS.get(scheme)
    if transport is None:
        known = ", ".join(sorted(TRANSPORTS))
        message = f"cannot download {source}: {scheme!r} is not one of {known}."
        raise ConfigError(message)
    return transport


def _verified(
    location: Location,
    source: str,
    partial: PartialDownload,
    transfer: Transfer,
    options: FetchOptions,
) -> Transfer:
    """Check the pin; a resumed transfer that fails it is tried once from zero."""
    if location.sha256 is None:
        # Over plain http anyone on the network path can change the bytes,
        # and a pin is the only thing that proves them; say so.
        risk = _PLAIN_HTTP_RISK if location.scheme == "http" else ""
        logger.warning(
            "no sha256 pinned for %s%s; to pin these bytes, append #sha256=%s",
            location.url,
            risk,
            transfer.sha256,
        )
        return transfer
    if transfer.sha256 != location.sha256 and transfer.resumed_from:
        # The bytes kept from an earlier attempt may be what is wrong.
        logger.debug("resumed %s does not match its pin; downloading again", source)
        partial.discard()
        transfer = _transfer(source, partial, None, options)
    if transfer.sha256 != location.sha256:
        raise HashMismatchError(source, location.sha256, transfer.sha256)
    return transfer


def _log_download(source: str, transfer: Transfer, seconds: float, path: Path) -> None:
    resumed = (
        f" ({transfer.resumed_from} of them resumed from an earlier attempt)"
        if transfer.resumed_from
        else ""
    )
    logger.info(
        "downloaded %s: %d bytes in %.2f s%s to %s",
        source,
        transfer.size,
        seconds,
        resumed,
        path,
    )
