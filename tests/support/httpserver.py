"""A real HTTP/1.1 server on the loopback interface for download tests.

`LoopbackServer` serves in-memory files over GET and HEAD with ETag and
Last-Modified validators, conditional requests (304), byte ranges (206/416)
and ``If-Range``. Per-path `Fault` objects make it misbehave on purpose:
error statuses, redirects, truncated or mis-announced bodies, stalls and
ignored ranges. Every request is logged as a `RequestRecord`.

Built on the standard library only: ``ThreadingHTTPServer`` serving from a
daemon thread on an ephemeral port. Bodies are written in 64 KiB chunks, so
truncations and stalls happen on the wire. ``stop()`` interrupts stalls and
shuts down open connections, so it returns promptly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import socket
import socketserver
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from email.message import Message
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal
from urllib.parse import unquote

__all__ = ["CHUNK_SIZE", "Fault", "LoopbackServer", "RequestRecord"]

CHUNK_SIZE = 64 * 1024
"""Bodies are written to the socket in pieces of at most this many bytes."""

_EPOCH = 1_704_067_200  # 2024-01-01T00:00:00Z, the auto Last-Modified.
_POLL_INTERVAL = 0.01  # bounds how long stop() waits for the accept loop
_JOIN_SECONDS = 2.0
_IDLE_TIMEOUT = 30.0

_RequestType = socket.socket | tuple[bytes, socket.socket]
_Span = tuple[int, int] | Literal["ignore", "unsatisfiable"]


@dataclass(frozen=True, slots=True)
class Fault:
    """How to misbehave for one path (see `LoopbackServer.fault`)."""

    status: int | None = None
    truncate_after: int | None = None
    content_length: int | None = None
    stall_seconds: float = 0.0
    retry_after: str | None = None
    ignore_range: bool = False
    location: str | None = None
    times: int | None = None


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the server saw and answered it."""

    method: str
    path: str
    headers: dict[str, str]
    status: int
    body_bytes: int


@dataclass(frozen=True, slots=True)
class _Resource:
    data: bytes
    etag: str | None
    last_modified: str | None


@dataclass(slots=True)
class _Reply:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    send_length: bool = True


def _http_date(timestamp: float) -> str:
    return formatdate(timestamp, usegmt=True)


def _auto_etag(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:16] + '"'


def _path_key(path: str) -> str:
    """Normalise a path given to the API: always one leading slash."""
    return "/" + path.lstrip("/")


def _request_key(target: str) -> str:
    """Normalise a request target: drop query/fragment, percent-decode.

    An absolute-form target (``http://host/path``, what a client sends to a
    proxy) is reduced to its path, so a server can stand in as a proxy.
    """
    path = target.split("?", 1)[0].split("#", 1)[0]
    if "://" in path:
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    return _path_key(unquote(path))


def _strip_weak(tag: str) -> str:
    return tag[2:] if tag.startswith("W/") else tag


def _not_modified(resource: _Resource, headers: Message) -> bool:
    """Whether If-None-Match (or, failing that, If-Modified-Since) matches."""
    if_none_match = headers.get("If-None-Match")
    if if_none_match is not None:
        if resource.etag is None:
            return False
        tags = {_strip_weak(tag.strip()) for tag in if_none_match.split(",")}
        return "*" in tags or _strip_weak(resource.etag) in tags
    since = headers.get("If-Modified-Since")
    return since is not None and since.strip() == resource.last_modified


def _if_range_holds(resource: _Resource, value: str | None) -> bool:
    """Whether a Range may be honoured given the request's If-Range."""
    if value is None:
        return True
    value = value.strip()
    return value in (resource.etag, resource.last_modified)


def _parse_range(spec: str, size: int) -> _Span:
    """Parse a single ``bytes=`` range into inclusive (start, end)."""
    unit, _, ranges = spec.partition("=")
    first, dash, last = ranges.strip().partition("-")
    first, last = first.strip(), last.strip()
    if unit.strip().lower() != "bytes" or "," in ranges or not dash:
        return "ignore"
    if not first:
        return _parse_suffix(last, size)
    if not _is_number(first) or (last and not _is_number(last)):
        return "ignore"
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return "ignore"
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size - 1)


def _parse_suffix(last: str, size: int) -> _Span:
    if not _is_number(last):
        return "ignore"
    length = int(last)
    if length == 0 or size == 0:
        return "unsatisfiable"
    return max(size - length, 0), size - 1


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _validators(resource: _Resource) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    if resource.etag is not None:
        headers.append(("ETag", resource.etag))
    if resource.last_modified is not None:
        headers.append(("Last-Modified", resource.last_modified))
    return headers


def _plan_content(resource: _Resource, headers: Message, *, ranges: bool) -> _Reply:
    """The 200/206/416 answer for an existing resource."""
    data = resource.data
    base = [("Content-Type", "application/octet-stream"), *_validators(resource)]
    spec = headers.get("Range")
    if not ranges or spec is None:
        return _Reply(200, base, data)
    if not _if_range_holds(resource, headers.get("If-Range")):
        return _Reply(200, base, data)
    span = _parse_range(spec, len(data))
    if span == "unsatisfiable":
        return _Reply(416, [("Content-Range", f"bytes */{len(data)}")])
    if isinstance(span, str):  # "ignore": serve the whole body
        return _Reply(200, base, data)
    start, end = span
    base.append(("Content-Range", f"bytes {start}-{end}/{len(data)}"))
    return _Reply(206, base, data[start : end + 1])


def _plan(resource: _Resource | None, fault: Fault | None, headers: Message) -> _Reply:
    """Decide status, headers and (unfaulted) body for one request."""
    ranges = fault is None or not fault.ignore_range
    if fault is not None and fault.status is not None:
        reply = _Reply(fault.status)
    elif resource is None:
        reply = _Reply(404)
    elif _not_modified(resource, headers):
        reply = _Reply(304, _validators(resource))
    else:
        reply = _plan_content(resource, headers, ranges=ranges)
    reply.send_length = reply.status >= 200 and reply.status not in (204, 304)
    if ranges:
        reply.headers.append(("Accept-Ranges", "bytes"))
    if fault is not None and fault.retry_after is not None:
        reply.headers.append(("Retry-After", fault.retry_after))
    if fault is not None and fault.location is not None:
        reply.headers.append(("Location", fault.location))
    return reply


class _Handler(BaseHTTPRequestHandler):
    """Answers GET/HEAD from the owning `LoopbackServer`'s state."""

    protocol_version = "HTTP/1.1"
    server_version = "zooload-loopback/1"
    timeout = _IDLE_TIMEOUT
    disable_nagle_algorithm = True  # no 40 ms Nagle/delayed-ACK stalls
    _body_sent: int = 0

    def do_GET(self) -> None:  # noqa: N802 (name fixed by http.server)
        """Serve a GET request."""
        self._serve()

    def do_HEAD(self) -> None:  # noqa: N802 (name fixed by http.server)
        """Serve a HEAD request: same headers as GET, no body."""
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output clean: no per-request logging."""

    @property
    def _owner(self) -> LoopbackServer:
        server = self.server
        if not isinstance(server, _Server):  # pragma: no cover - wiring error
            msg = "handler attached to a foreign server"
            raise TypeError(msg)
        return server.owner

    def _serve(self) -> None:
        owner = self._owner
        fault, resource = owner._take(_request_key(self.path))
        reply = _plan(resource, fault, self.headers)
        self._deliver(owner, reply, fault)

    def _deliver(
        self, owner: LoopbackServer, reply: _Reply, fault: Fault | None
    ) -> None:
        head = self.command == "HEAD"
        payload = b"" if head else reply.body
        announced = len(reply.body)
        stall = 0.0
        if fault is not None:
            if fault.content_length is not None:
                announced = fault.content_length
                self.close_connection = not head
            limit = fault.truncate_after
            if not head and limit is not None and limit < len(payload):
                payload = payload[: max(limit, 0)]
                self.close_connection = True
            stall = 0.0 if head else fault.stall_seconds
        headers = {name.lower(): value for name, value in self.headers.items()}
        record = RequestRecord(
            self.command, self.path, headers, reply.status, len(payload)
        )
        owner._log_request(record)
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        if reply.send_length:
            self.send_header("Content-Length", str(announced))
        self.end_headers()
        self._body_sent = 0
        try:
            self._write_body(owner, payload, stall)
        finally:
            if self._body_sent != len(payload):
                owner._amend_request(record, self._body_sent)

    def _write_body(self, owner: LoopbackServer, payload: bytes, stall: float) -> None:
        if stall <= 0:
            self._write_chunks(payload)
            return
        half = len(payload) // 2
        self._write_chunks(payload[:half])
        if owner._stopping.wait(stall):
            self.close_connection = True
            return
        self._write_chunks(payload[half:])

    def _write_chunks(self, data: bytes) -> None:
        view = memoryview(data)
        for offset in range(0, len(view), CHUNK_SIZE):
            chunk = view[offset : offset + CHUNK_SIZE]
            self.wfile.write(chunk)
            self._body_sent += len(chunk)


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that tracks connections and stays quiet."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], owner: LoopbackServer) -> None:
        self.owner = owner
        self.accepted = 0
        self._conn_lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._workers: list[threading.Thread] = []
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup (getfqdn)."""
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection, counting and tracking it."""
        request, address = super().get_request()
        with self._conn_lock:
            self.accepted += 1
            self._open.add(request)
        return request, address

    def process_request(self, request: _RequestType, client_address: Any) -> None:
        """Serve the connection from a tracked daemon thread."""
        worker = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="loopback-connection",
            daemon=True,
        )
        with self._conn_lock:
            self._workers = [w for w in self._workers if w.is_alive()]
            self._workers.append(worker)
        worker.start()

    def shutdown_request(self, request: _RequestType) -> None:
        """Forget the connection, then close it."""
        if isinstance(request, socket.socket):
            with self._conn_lock:
                self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: _RequestType, client_address: Any) -> None:
        """Ignore client disconnects (and socket errors caused by stop())."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            return
        if isinstance(error, OSError) and self.owner._stopping.is_set():
            return
        super().handle_error(request, client_address)

    def drop_connections(self) -> None:
        """Shut down every open connection so its handler thread ends."""
        with self._conn_lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def join_workers(self, timeout: float) -> None:
        """Wait (bounded) for connection threads to finish."""
        deadline = time.monotonic() + timeout
        with self._conn_lock:
            workers = list(self._workers)
        for worker in workers:
            worker.join(max(deadline - time.monotonic(), 0.0))


class _Server6(_Server):
    address_family = socket.AF_INET6


class LoopbackServer:
    """In-memory HTTP/1.1 file server on an ephemeral loopback port."""

    def __init__(
        self, host: str = "127.0.0.1", *, tls: ssl.SSLContext | None = None
    ) -> None:
        """Prepare (but do not start) a server bound to ``host``.

        With ``tls`` (a server-side context), it serves HTTPS.
        """
        self._host = host
        self._tls = tls
        self._lock = threading.Lock()
        self._resources: dict[str, _Resource] = {}
        self._faults: dict[str, tuple[Fault, int | None]] = {}
        self._log: list[RequestRecord] = []
        self._revision = 0
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> LoopbackServer:
        """Bind to an ephemeral port and serve from a daemon thread."""
        if self._server is not None:
            msg = "LoopbackServer can only be started once"
            raise RuntimeError(msg)
        server_class = _Server6 if ":" in self._host else _Server
        self._server = server_class((self._host, 0), self)
        if self._tls is not None:
            self._server.socket = self._tls.wrap_socket(
                self._server.socket, server_side=True
            )
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL},
            name="loopback-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, interrupt stalls and close connections; idempotent."""
        server, thread = self._server, self._thread
        if server is None or thread is None or self._stopping.is_set():
            return
        self._stopping.set()
        server.shutdown()
        server.drop_connections()
        server.server_close()
        thread.join(_JOIN_SECONDS)
        server.join_workers(_JOIN_SECONDS)

    def __enter__(self) -> LoopbackServer:
        """Start (unless already started) and return the server."""
        return self if self._server is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()

    # -- addresses -----------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the running server."""
        if self._server is None:
            msg = "LoopbackServer is not started"
            raise RuntimeError(msg)
        host = f"[{self._host}]" if ":" in self._host else self._host
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://{host}:{self._server.server_port}"

    def url(self, path: str) -> str:
        """Absolute URL for ``path``."""
        return self.base_url + "/" + path.lstrip("/")

    # -- content -------------------------------------------------------------

    def add(
        self,
        path: str,
        data: bytes,
        *,
        etag: str | None = "auto",
        last_modified: str | None = "auto",
    ) -> str:
        """Serve ``data`` at ``path``; return its URL.

        ``etag="auto"`` is a quoted SHA-256 prefix of ``data``;
        ``last_modified="auto"`` is a fixed HTTP date; ``None`` omits the header.
        """
        url = self.url(path)
        resource = _Resource(
            bytes(data),
            _auto_etag(data) if etag == "auto" else etag,
            _http_date(_EPOCH) if last_modified == "auto" else last_modified,
        )
        with self._lock:
            self._resources[_path_key(path)] = resource
        return url

    def replace(self, path: str, data: bytes) -> None:
        """Change the content at ``path`` (as if the remote file changed).

        The ETag becomes the auto ETag of the new data and Last-Modified moves
        to a later date; a validator that was disabled (``None``) stays off.
        """
        key = _path_key(path)
        with self._lock:
            old = self._resources.get(key)
            if old is None:
                msg = f"no file at {key!r}; use add() first"
                raise KeyError(msg)
            self._revision += 1
            self._resources[key] = _Resource(
                bytes(data),
                None if old.etag is None else _auto_etag(data),
                None
                if old.last_modified is None
                else _http_date(_EPOCH + 60 * self._revision),
            )

    def fault(self, path: str, fault: Fault) -> None:
        """Set (replace) the fault for ``path``; it may be an unknown path."""
        key = _path_key(path)
        with self._lock:
            if fault.times is not None and fault.times <= 0:
                self._faults.pop(key, None)
            else:
                self._faults[key] = (fault, fault.times)

    def clear_faults(self) -> None:
        """Remove every fault."""
        with self._lock:
            self._faults.clear()

    # -- request log ---------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """A copy of the request log, oldest first."""
        with self._lock:
            return list(self._log)

    def count(self, path: str, method: str = "GET") -> int:
        """How many ``method`` requests were made for ``path`` (query ignored)."""
        key = _path_key(path)
        method = method.upper()
        with self._lock:
            return sum(
                1
                for record in self._log
                if record.method == method and _request_key(record.path) == key
            )

    def reset_log(self) -> None:
        """Forget all logged requests."""
        with self._lock:
            self._log.clear()

    @property
    def connections(self) -> int:
        """TCP connections accepted since start."""
        server = self._server
        if server is None:
            return 0
        with server._conn_lock:
            return server.accepted

    # -- used by the handler -------------------------------------------------

    def _take(self, key: str) -> tuple[Fault | None, _Resource | None]:
        """Snapshot the resource and consume one use of the fault for ``key``."""
        with self._lock:
            resource = self._resources.get(key)
            entry = self._faults.get(key)
            if entry is None:
                return None, resource
            fault, remaining = entry
            if remaining is not None and remaining <= 1:
                del self._faults[key]
            elif remaining is not None:
                self._faults[key] = (fault, remaining - 1)
            return fault, resource

    def _log_request(self, record: RequestRecord) -> None:
        with self._lock:
            self._log.append(record)

    def _amend_request(self, record: RequestRecord, body_bytes: int) -> None:
        """Correct ``body_bytes`` after a send was cut short."""
        with self._lock:
            for index, logged in enumerate(self._log):
                if logged is record:
                    self._log[index] = dataclasses.replace(
                        record, body_bytes=body_bytes
                    )
                    return
