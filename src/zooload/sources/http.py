"""HTTP(S) downloads with httpx: streaming, hashing as bytes arrive.

The file is written under the cache's ``partial/`` folder and hashed while it
streams, so a second pass over the bytes is never needed. Revalidation of an
unpinned URL uses the ETag and Last-Modified the cache recorded. One attempt
is made per call; resuming and retrying are KL-001 in
docs/KNOWN_LIMITATIONS.md.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from zooload.cache import UrlRecord
from zooload.errors import DownloadError, SizeMismatchError
from zooload.progress import progress_bar

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 60.0
_STATUS_HINTS = {
    401: "the server wants credentials; supply them and try again",
    403: "the server refused the credentials or the request; check access rights",
    404: "the URL was not found; check it for typos or ask the publisher",
    410: "the file was removed from this URL; ask the publisher for a new one",
}


@dataclass(frozen=True, slots=True)
class Transfer:
    """The outcome of one transfer: new bytes in the partial file, or none."""

    not_modified: bool
    sha256: str = ""
    size: int = 0
    etag: str | None = None
    last_modified: str | None = None


def download_http(
    url: str,
    partial: Path,
    *,
    known: UrlRecord | None,
    progress: bool | None,
) -> Transfer:
    """Stream ``url`` into ``partial``, hashing on the way.

    Parameters
    ----------
    url
        An ``http://`` or ``https://`` URL, without fragment.
    partial
        The file to write; created, and left for the caller to publish or
        remove.
    known
        The cache's record of this URL; when given, the request is made
        conditional on its ETag and Last-Modified.
    progress
        Show a progress bar: ``None`` when stderr is a terminal.

    Returns
    -------
    Transfer
        ``not_modified=True`` when the server answered 304, else the digest,
        size and validators of the new bytes.

    Raises
    ------
    DownloadError
        On a connection failure, a timeout or an HTTP error status; the
        message says what to do next and ``retryable`` tells whether trying
        again may help.
    SizeMismatchError
        When the body is shorter or longer than its Content-Length.

    Examples
    --------
    >>> download_http  # doctest: +ELLIPSIS
    <function download_http at ...>
    """
    timeout = httpx.Timeout(READ_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS)
    headers = _conditional_headers(known)
    try:
        with (
            httpx.Client(follow_redirects=True, timeout=timeout) as client,
            client.stream("GET", url, headers=headers) as response,
        ):
            if response.status_code == httpx.codes.NOT_MODIFIED and known:
                logger.debug("%s not modified since %s", url, known.fetched_at)
                return Transfer(not_modified=True)
            _raise_for_status(url, response)
            return _stream_to_file(url, response, partial, progress)
    except httpx.HTTPError as err:
        message = (
            f"download of {url} failed: {err or type(err).__name__}. "
            "Check the network and try again."
        )
        raise DownloadError(message, url, retryable=True) from err


def _conditional_headers(known: UrlRecord | None) -> dict[str, str]:
    # Identity encoding keeps the bytes on the wire equal to the file, so the
    # digest and Content-Length describe what lands in the cache.
    headers = {"Accept-Encoding": "identity"}
    if known and known.etag:
        headers["If-None-Match"] = known.etag
    if known and known.last_modified:
        headers["If-Modified-Since"] = known.last_modified
    return headers


def _raise_for_status(url: str, response: httpx.Response) -> None:
    status = response.status_code
    if status < httpx.codes.BAD_REQUEST:
        return
    retryable = status in {408, 429} or status >= httpx.codes.INTERNAL_SERVER_ERROR
    hint = _STATUS_HINTS.get(status)
    if hint is None:
        hint = "try again later" if retryable else "check the URL"
    message = f"download of {url} failed with HTTP {status}: {hint}."
    raise DownloadError(message, url, status=status, retryable=retryable)


def _stream_to_file(
    url: str, response: httpx.Response, partial: Path, progress: bool | None
) -> Transfer:
    declared = response.headers.get("Content-Length")
    expected = int(declared) if declared and declared.isdigit() else None
    digest = hashlib.sha256()
    size = 0
    started = time.perf_counter()
    bar = progress_bar(expected, Path(response.url.path).name, enabled=progress)
    try:
        with partial.open("wb") as stream:
            for chunk in response.iter_raw(CHUNK_BYTES):
                stream.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                bar.update(len(chunk))
            # Flushed to disk before the caller renames it into the cache, so
            # that a crash cannot leave a published blob with missing bytes;
            # measured cost in docs/CACHE.md.
            stream.flush()
            os.fsync(stream.fileno())
    finally:
        bar.close()
    if expected is not None and size != expected:
        raise SizeMismatchError(url, expected, size)
    seconds = time.perf_counter() - started
    logger.info("downloaded %s: %d bytes in %.2f s", url, size, seconds)
    return Transfer(
        not_modified=False,
        sha256=digest.hexdigest(),
        size=size,
        etag=response.headers.get("ETag"),
        last_modified=response.headers.get("Last-Modified"),
    )
