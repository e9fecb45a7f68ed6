"""HTTP(S) downloads with urllib3: resumable, conditional, with per-host headers.

One call is one attempt; :mod:`zooload.retries` decides whether to make
another. A partial file left by an earlier attempt is resumed with a
``Range`` request guarded by ``If-Range``, so a file that changed on the
server restarts from zero instead of being spliced. An unpinned URL that is
cached is revalidated with the ETag and Last-Modified the cache recorded.

The body is read :data:`BODY_READ_BYTES` at a time, as much as has arrived:
large reads keep the receiving thread's share of the work small, so that it
overlaps the writing and hashing threads of the sink instead of competing
with them.

Redirects are followed here rather than by urllib3, because each hop must
carry only the headers configured for its own host: a token for the model
hub must not reach the CDN it redirects to. Proxies come from the
environment (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``)
and apply to every hop; CA bundles come from ``SSL_CERT_FILE``,
``SSL_CERT_DIR``, ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE``, in that
order, and otherwise from certifi.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import os
import re
import ssl
import time
import urllib.request
import warnings
from collections.abc import Iterator
from urllib.parse import SplitResult, unquote, urljoin, urlsplit, urlunsplit

import certifi
import urllib3
from urllib3 import exceptions as http_errors

from zooload.cache import UrlRecord
from zooload.errors import ConfigError, DownloadError
from zooload.partials import ChunkSink, PartialDownload
from zooload.retries import RetryPolicy
from zooload.settings import FetchOptions, HostHeaders
from zooload.sources.base import Transfer, Version, receive

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 10
BODY_READ_BYTES = 1 << 20
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
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
# What a failure of each kind is called in messages, most specific first.
_FAILURE_NAMES: tuple[tuple[type[Exception], str], ...] = (
    # A NewConnectionError is a ConnectTimeoutError too, for urllib3's history.
    (http_errors.NewConnectionError, "could not connect"),
    (http_errors.ConnectTimeoutError, "timed out connecting"),
    (http_errors.ReadTimeoutError, "stalled"),
    (http_errors.ProxyError, "the proxy failed"),
    (http_errors.SSLError, "the TLS connection failed"),
    (http_errors.ProtocolError, "the connection broke"),
    (http_errors.LocationParseError, "the URL is not valid"),
    (http_errors.URLSchemeUnknown, "the URL's scheme is not HTTP"),
    (http_errors.ProxySchemeUnknown, "the proxy's scheme is not supported"),
)
_NOT_RETRYABLE = (
    http_errors.LocationParseError,
    http_errors.URLSchemeUnknown,
    http_errors.ProxySchemeUnknown,
)


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
        When a CA bundle variable points at an unusable file, or a proxy
        needs a package that is not installed.

    Examples
    --------
    >>> download_http  # doctest: +ELLIPSIS
    <function download_http at ...>
    """
    headers = _request_headers(partial, known)
    try:
        with (
            _Connections(options.retry) as connections,
            _follow(connections, url, headers, options.headers) as response,
        ):
            return _receive(url, response, partial, known=known, options=options)
    except http_errors.HTTPError as err:
        raise _network_error(url, err) from err


class _Connections:
    """Connection pools for one download: direct, and one per proxy in use."""

    def __init__(self, policy: RetryPolicy) -> None:
        # A stall is a read that waits longer than the stall timeout; urllib3
        # applies the read timeout to each read from the socket.
        self.timeout = urllib3.Timeout(
            connect=policy.connect_timeout, read=policy.stall_timeout
        )
        self._context = _ssl_context()
        self._pools: dict[str, urllib3.PoolManager] = {}

    def get(self, url: str, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        """Send one GET for ``url``, through the proxy the environment names."""
        return self._pool_for(url).request(
            "GET",
            url,
            headers=headers,
            preload_content=False,
            decode_content=False,
            redirect=False,
            retries=False,
            timeout=self.timeout,
        )

    def _pool_for(self, url: str) -> urllib3.PoolManager:
        proxy = _proxy_for(url)
        key = proxy or ""
        if key not in self._pools:
            self._pools[key] = _pool(proxy, self._context)
        return self._pools[key]

    def __enter__(self) -> _Connections:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for pool in self._pools.values():
            pool.clear()


def _proxy_for(url: str) -> str | None:
    """The proxy URL the environment names for ``url``, or ``None``."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.netloc):
        return None
    return proxy


def _pool(proxy: str | None, context: ssl.SSLContext) -> urllib3.PoolManager:
    if proxy is None:
        return urllib3.PoolManager(ssl_context=context)
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    headers = {}
    if parts.username:
        # Reserved characters in URL credentials are percent-encoded.
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers = urllib3.make_headers(proxy_basic_auth=credentials)
    address = urlunsplit(parts._replace(netloc=_host_and_port(parts)))
    if parts.scheme.startswith("socks"):
        return _socks_pool(address, parts, context)
    return urllib3.ProxyManager(address, proxy_headers=headers, ssl_context=context)


def _host_and_port(parts: SplitResult) -> str:
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{parts.port}" if parts.port else host


def _socks_pool(
    address: str, parts: SplitResult, context: ssl.SSLContext
) -> urllib3.PoolManager:
    try:
        # urllib3 warns before it raises; the error below says it all.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", http_errors.DependencyWarning)
            from urllib3.contrib.socks import SOCKSProxyManager
    except ImportError as err:
        message = (
            f"the proxy {address} is a SOCKS proxy, which needs the PySocks "
            "package: pip install pysocks"
        )
        raise ConfigError(message) from err
    return SOCKSProxyManager(
        address,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        ssl_context=context,
    )


def _ssl_context() -> ssl.SSLContext:
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
    return ssl.create_default_context(cafile=certifi.where())


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
    connections: _Connections,
    url: str,
    headers: dict[str, str],
    secrets: HostHeaders,
) -> Iterator[urllib3.BaseHTTPResponse]:
    """Send the GET and follow redirects, each hop with its own host's headers."""
    target = url
    downgraded = False
    for _ in range(MAX_REDIRECTS + 1):
        extra = {} if downgraded else secrets.for_url(target)
        response = connections.get(target, {**headers, **extra})
        location = response.headers.get("Location")
        if response.status not in _REDIRECT_STATUSES or not location:
            with contextlib.closing(response):
                yield response
            return
        response.close()
        following = urljoin(target, location)
        # Query strings of redirect targets often hold signatures: not logged.
        logger.debug(
            "%s redirects to %s", _without_query(target), _without_query(following)
        )
        # Headers never go back to plain HTTP once a hop left HTTPS.
        schemes = (urlsplit(target).scheme, urlsplit(following).scheme)
        downgraded = downgraded or schemes == ("https", "http")
        target = following
    message = (
        f"{url} redirected more than {MAX_REDIRECTS} times, a loop on the "
        "server's side; report it to the publisher."
    )
    raise DownloadError(message, url)


def _without_query(url: str) -> str:
    return urlunsplit(urlsplit(url)._replace(query=""))


def _receive(
    url: str,
    response: urllib3.BaseHTTPResponse,
    partial: PartialDownload,
    *,
    known: UrlRecord | None,
    options: FetchOptions,
) -> Transfer:
    if response.status == 304 and known:
        logger.debug("%s not modified since %s", url, known.fetched_at)
        partial.discard()
        return Transfer(not_modified=True)
    _raise_for_status(url, response, partial)
    version, sink = _open_sink(url, response, partial)
    # As much as has arrived, up to BODY_READ_BYTES: a read that waited for
    # a full buffer would hold back bytes that a dropped connection then
    # loses instead of leaving to resume.
    chunks = iter(lambda: response.read1(BODY_READ_BYTES), b"")
    return receive(url, chunks, sink, version=version, progress=options.progress)


def _open_sink(
    url: str, response: urllib3.BaseHTTPResponse, partial: PartialDownload
) -> tuple[Version, ChunkSink]:
    """Resume the partial file on a 206, restart it on a 200."""
    headers = response.headers
    etag, modified = headers.get("ETag"), headers.get("Last-Modified")
    if response.status == 206:
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
    url: str, response: urllib3.BaseHTTPResponse, partial: PartialDownload
) -> None:
    status = response.status
    if status in (200, 206):
        return
    if status == 416:
        # The partial file is as long as the file or longer: it cannot be
        # trusted, so the next attempt starts from zero.
        partial.discard()
        message = f"{url} refused to resume (HTTP 416); starting again from zero."
        raise DownloadError(message, url, status, retryable=True)
    retryable = status in {408, 429} or status >= 500
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


def _network_error(url: str, err: http_errors.HTTPError) -> DownloadError:
    if _is_certificate_failure(err):
        message = (
            f"download of {url} failed: the server's TLS certificate is not "
            f"trusted ({_detail(err)}). If a private CA signed it, point "
            "SSL_CERT_FILE at a bundle that holds that CA."
        )
        return DownloadError(message, url)
    retryable = not isinstance(err, _NOT_RETRYABLE)
    what = next(
        (name for kind, name in _FAILURE_NAMES if isinstance(err, kind)), "failed"
    )
    hint = "Check the network and try again." if retryable else "Check the URL."
    message = f"download of {url} {_failed(what)} ({_detail(err)}). {hint}"
    return DownloadError(message, url, retryable=retryable)


def _failed(what: str) -> str:
    return what if what == "failed" else f"failed: {what}"


def _detail(err: BaseException) -> str:
    """The innermost cause's words, without urllib3's object descriptions."""
    cause: BaseException = err
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
    text = str(cause) or str(err) or type(cause).__name__
    return text.rsplit(": ", 1)[-1] if text.startswith("<") else text


def _is_certificate_failure(err: BaseException) -> bool:
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False
