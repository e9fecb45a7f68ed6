"""HTTP(S) downloads with httpx: resumable, conditional, with per-host headers.

One call is one attempt; :mod:`zooload.retries` decides whether to make
another. A partial file left by an earlier attempt is resumed with a
``Range`` request guarded by ``If-Range``, so a file that changed on the
server restarts from zero instead of being spliced. An unpinned URL that is
cached is revalidated with the ETag and Last-Modified the cache recorded.

Redirects are followed here rather than by httpx, because each hop must carry
only the headers configured for its own host: a token for the model hub must
not reach the CDN it redirects to. Proxies (``HTTP_PROXY``, ``HTTPS_PROXY``,
``ALL_PROXY``, ``NO_PROXY``) apply to every hop through httpx's
``trust_env``; CA bundles come from ``SSL_CERT_FILE``, ``SSL_CERT_DIR``,
``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE``, in that order.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import os
import re
import ssl
import time
from collections.abc import Iterator

import httpx

from zooload.cache import UrlRecord
from zooload.errors import ConfigError, DownloadError
from zooload.partials import ChunkSink, PartialDownload
from zooload.retries import RetryPolicy
from zooload.settings import FetchOptions, HostHeaders
from zooload.sources.base import Transfer, Version, receive

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 10
_CA_VARIABLES = (
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
)
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_STATUS_HINTS = {
    401: (
        "credentials are missing or were not accepted; pass headers={host: "
        "{'Authorization': ...}} or set ZOOLOAD_HEADERS"
    ),
    403: (
        "access was refused: the credentials are missing or were refused; "
        "check the token and its access rights"
    ),
    404: "the URL was not found; check it for typos or ask the publisher",
    410: "the file was removed from this URL; ask the publisher for a new one",
}


def download_http(
    url: str,
    partial: PartialDownload,
    *,
    known: UrlRecord | None,
    options: FetchOptions,
) -> Transfer:
    """Stream ``url`` into ``partial``, resuming and hashing on the way.

    Parameters
    ----------
    url
        An ``http://`` or ``https://`` URL, without fragment.
    partial
        The partial download to resume or restart; left for the caller to
        publish, release or discard.
    known
        The cache's record of this URL; when given, the request is made
        conditional on its ETag and Last-Modified.
    options
        Headers by host, timeouts (from the retry policy) and progress.

    Returns
    -------
    Transfer
        ``not_modified=True`` when the server answered 304, else the digest,
        size and validators of the bytes now in the partial file.

    Raises
    ------
    DownloadError
        On a connection failure, a timeout, a stall or an HTTP error status;
        ``retryable`` tells whether trying again may help.
    SizeMismatchError
        When more bytes arrive than the server announced.
    ConfigError
        When a CA bundle variable points at an unusable file.

    Examples
    --------
    >>> download_http  # doctest: +ELLIPSIS
    <function download_http at ...>
    """
    headers = _request_headers(partial, known)
    try:
        with (
            _client(options.retry) as client,
            _follow(client, url, headers, options.headers) as response,
        ):
            return _receive(url, response, partial, known=known, options=options)
    except (httpx.HTTPError, httpx.InvalidURL) as err:
        raise _network_error(url, err) from err


def _client(policy: RetryPolicy) -> httpx.Client:
    # A stall is a read that waits longer than the stall timeout; httpx
    # applies the read timeout to each read from the socket.
    timeout = httpx.Timeout(policy.stall_timeout, connect=policy.connect_timeout)
    return httpx.Client(
        timeout=timeout, verify=_ssl_context(), follow_redirects=False, trust_env=True
    )


def _ssl_context() -> ssl.SSLContext | bool:
    for name in _CA_VARIABLES:
        value = os.environ.get(name)
        if not value:
            continue
        try:
            if name == "SSL_CERT_DIR":
                return ssl.create_default_context(capath=value)
            return ssl.create_default_context(cafile=value)
        except (OSError, ssl.SSLError) as err:
            message = (
                f"{name}={value} cannot be used as trusted certificates ({err}); "
                "point it at a PEM bundle (or a folder of them), or unset it."
            )
            raise ConfigError(message) from err
    return True


def _request_headers(
    partial: PartialDownload, known: UrlRecord | None
) -> dict[str, str]:
    # Identity encoding keeps the bytes on the wire equal to the file, so the
    # digest, the sizes and the byte ranges all describe what lands in the cache.
    headers = {"Accept-Encoding": "identity"}
    if known and known.etag:
        headers["If-None-Match"] = known.etag
    if known and known.last_modified:
        headers["If-Modified-Since"] = known.last_modified
    if partial.validator:
        headers["Range"] = f"bytes={partial.offset}-"
        headers["If-Range"] = partial.validator
    return headers


@contextlib.contextmanager
def _follow(
    client: httpx.Client, url: str, headers: dict[str, str], secrets: HostHeaders
) -> Iterator[httpx.Response]:
    """Send the GET and follow redirects, each hop with its own host's headers."""
    target = httpx.URL(url)
    downgraded = False
    for _ in range(MAX_REDIRECTS + 1):
        extra = {} if downgraded else secrets.for_url(str(target))
        request = client.build_request("GET", target, headers={**headers, **extra})
        response = client.send(request, stream=True)
        if response.next_request is None:
            with contextlib.closing(response):
                yield response
            return
        response.close()
        following = response.next_request.url
        # Query strings of redirect targets often hold signatures: not logged.
        logger.debug(
            "%s redirects to %s",
            target.copy_with(query=None),
            following.copy_with(query=None),
        )
        # Headers never go back to plain HTTP once a hop left HTTPS.
        downgraded = downgraded or (target.scheme, following.scheme) == (
            "https",
            "http",
        )
        target = following
    message = (
        f"{url} redirected more than {MAX_REDIRECTS} times, a loop on the "
        "server's side; report it to the publisher."
    )
    raise DownloadError(message, url)


def _receive(
    url: str,
    response: httpx.Response,
    partial: PartialDownload,
    *,
    known: UrlRecord | None,
    options: FetchOptions,
) -> Transfer:
    if response.status_code == httpx.codes.NOT_MODIFIED and known:
        logger.debug("%s not modified since %s", url, known.fetched_at)
        partial.discard()
        return Transfer(not_modified=True)
    _raise_for_status(url, response, partial)
    version, sink = _open_sink(url, response, partial)
    return receive(
        url,
        # Chunks as they arrive: a fixed chunk size would hold back bytes
        # that a dropped connection then loses instead of leaving to resume.
        response.iter_raw(),
        sink,
        version=version,
        progress=options.progress,
    )


def _open_sink(
    url: str, response: httpx.Response, partial: PartialDownload
) -> tuple[Version, ChunkSink]:
    """Resume the partial file on a 206, restart it on a 200."""
    headers = response.headers
    etag, modified = headers.get("ETag"), headers.get("Last-Modified")
    if response.status_code == httpx.codes.PARTIAL_CONTENT:
        start, total = _content_range(url, headers.get("Content-Range"), partial)
        logger.debug("%s resumes at byte %d of %s", url, start, total)
        return Version(etag, modified, total), partial.resume()
    declared = headers.get("Content-Length", "")
    version = Version(etag, modified, int(declared) if declared.isdigit() else None)
    if partial.offset:
        logger.debug("%s restarts from zero: the server sent the whole file", url)
    sink = partial.restart(validator=version.validator, total=version.total)
    return version, sink


def _content_range(
    url: str, value: str | None, partial: PartialDownload
) -> tuple[int, int | None]:
    match = _CONTENT_RANGE.match(value or "")
    if match and int(match[1]) == partial.offset:
        return int(match[1]), None if match[3] == "*" else int(match[3])
    # Bytes from anywhere but the end of the file cannot be appended to it.
    partial.discard()
    message = (
        f"{url} answered a resumed request with Content-Range {value!r} where "
        f"bytes {partial.offset}- were asked for; starting again from zero."
    )
    raise DownloadError(message, url, status=206, retryable=True)


def _raise_for_status(
    url: str, response: httpx.Response, partial: PartialDownload
) -> None:
    status = response.status_code
    if status in (httpx.codes.OK, httpx.codes.PARTIAL_CONTENT):
        return
    if status == httpx.codes.REQUESTED_RANGE_NOT_SATISFIABLE:
        # The partial file is as long as the file or longer: it cannot be
        # trusted, so the next attempt starts from zero.
        partial.discard()
        message = f"{url} refused to resume (HTTP 416); starting again from zero."
        raise DownloadError(message, url, status, retryable=True)
    retryable = status in {408, 429} or status >= httpx.codes.INTERNAL_SERVER_ERROR
    hint = _STATUS_HINTS.get(status) or (
        "try again later" if retryable else "check the URL"
    )
    message = f"download of {url} failed with HTTP {status}: {hint}."
    retry_after = _retry_after(response.headers.get("Retry-After"))
    raise DownloadError(message, url, status, retryable, retry_after)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    with contextlib.suppress(TypeError, ValueError):
        moment = email.utils.parsedate_to_datetime(text)
        return max(moment.timestamp() - time.time(), 0.0)
    return None


def _network_error(url: str, err: httpx.HTTPError | httpx.InvalidURL) -> DownloadError:
    if _is_certificate_failure(err):
        message = (
            f"download of {url} failed: the server's TLS certificate is not "
            f"trusted ({err}). If a private CA signed it, point SSL_CERT_FILE at "
            "a bundle that holds that CA."
        )
        return DownloadError(message, url)
    retryable = isinstance(err, httpx.TransportError) and not isinstance(
        err, httpx.UnsupportedProtocol
    )
    detail = str(err) or "no detail"
    hint = "Check the network and try again." if retryable else "Check the URL."
    message = f"download of {url} failed ({type(err).__name__}: {detail}). {hint}"
    return DownloadError(message, url, retryable=retryable)


def _is_certificate_failure(err: BaseException) -> bool:
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False
