"""Tests for the loopback HTTP test server in tests/support/httpserver.py."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import httpx
import pytest

from support.httpserver import Fault, LoopbackServer, RequestRecord

DATA = bytes(range(256)) * 1024  # 256 KiB: several 64 KiB chunks
ETAG = '"' + hashlib.sha256(DATA).hexdigest()[:16] + '"'
LAST_MODIFIED = "Mon, 01 Jan 2024 00:00:00 GMT"


def _drain(chunks: Iterator[bytes], into: bytearray) -> None:
    for chunk in chunks:
        into += chunk


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as srv:
        yield srv


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    # trust_env=False: never route loopback traffic through a proxy from env.
    with httpx.Client(timeout=5.0, trust_env=False) as http:
        yield http


def test_urls(server: LoopbackServer) -> None:
    assert server.base_url.startswith("http://127.0.0.1:")
    port = int(server.base_url.rsplit(":", 1)[1])
    assert port > 0
    assert server.url("/a/b.bin") == server.base_url + "/a/b.bin"
    assert server.url("a/b.bin") == server.base_url + "/a/b.bin"
    assert server.add("m.bin", b"x") == server.base_url + "/m.bin"


def test_full_get_body_and_headers(
    server: LoopbackServer, client: httpx.Client
) -> None:
    url = server.add("/models/w.bin", DATA)
    response = client.get(url)
    assert response.status_code == 200
    assert response.http_version == "HTTP/1.1"
    assert response.content == DATA
    assert response.headers["content-length"] == str(len(DATA))
    assert response.headers["etag"] == ETAG
    assert response.headers["last-modified"] == LAST_MODIFIED
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-type"] == "application/octet-stream"


def test_head_sends_headers_only(server: LoopbackServer, client: httpx.Client) -> None:
    url = server.add("w.bin", DATA)
    response = client.head(url)
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == str(len(DATA))
    assert response.headers["etag"] == ETAG
    assert server.requests[-1].body_bytes == 0


def test_validators_can_be_explicit_or_absent(
    server: LoopbackServer, client: httpx.Client
) -> None:
    plain = server.add("plain.bin", b"abc", etag=None, last_modified=None)
    tagged = server.add("tagged.bin", b"abc", etag='"v1"', last_modified="x-date")
    response = client.get(plain)
    assert "etag" not in response.headers
    assert "last-modified" not in response.headers
    response = client.get(tagged)
    assert response.headers["etag"] == '"v1"'
    assert response.headers["last-modified"] == "x-date"


def test_unknown_path_is_404(server: LoopbackServer, client: httpx.Client) -> None:
    response = client.get(server.url("missing.bin"))
    assert response.status_code == 404
    assert response.content == b""
    assert server.requests[-1].status == 404


def test_if_none_match_gives_304(server: LoopbackServer, client: httpx.Client) -> None:
    url = server.add("w.bin", DATA)
    response = client.get(url, headers={"If-None-Match": ETAG})
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == ETAG
    assert server.requests[-1].body_bytes == 0
    other = client.get(url, headers={"If-None-Match": '"other"'})
    assert other.status_code == 200
    assert other.content == DATA


def test_if_modified_since_gives_304(
    server: LoopbackServer, client: httpx.Client
) -> None:
    url = server.add("w.bin", DATA)
    response = client.get(url, headers={"If-Modified-Since": LAST_MODIFIED})
    assert response.status_code == 304
    assert response.content == b""


def test_range_gives_206(server: LoopbackServer, client: httpx.Client) -> None:
    url = server.add("w.bin", DATA)
    response = client.get(url, headers={"Range": "bytes=100-199"})
    assert response.status_code == 206
    assert response.content == DATA[100:200]
    assert response.headers["content-range"] == f"bytes 100-199/{len(DATA)}"
    assert response.headers["content-length"] == "100"

    start = len(DATA) - 70_000
    response = client.get(url, headers={"Range": f"bytes={start}-"})
    assert response.status_code == 206
    assert response.content == DATA[start:]
    last = len(DATA) - 1
    assert response.headers["content-range"] == f"bytes {start}-{last}/{len(DATA)}"


def test_range_end_is_clamped_and_suffix_works(
    server: LoopbackServer, client: httpx.Client
) -> None:
    url = server.add("small.bin", b"0123456789")
    response = client.get(url, headers={"Range": "bytes=5-999"})
    assert response.status_code == 206
    assert response.content == b"56789"
    assert response.headers["content-range"] == "bytes 5-9/10"
    response = client.get(url, headers={"Range": "bytes=-3"})
    assert response.status_code == 206
    assert response.content == b"789"


def test_unsatisfiable_range_is_416(
    server: LoopbackServer, client: httpx.Client
) -> None:
    url = server.add("small.bin", b"0123456789")
    response = client.get(url, headers={"Range": "bytes=10-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == "bytes */10"
    assert response.content == b""


def test_if_range_matching_etag_gives_206(
    server: LoopbackServer, client: httpx.Client
) -> None:
    url = server.add("w.bin", DATA)
    response = client.get(url, headers={"Range": "bytes=10-", "If-Range": ETAG})
    assert response.status_code == 206
    assert response.content == DATA[10:]
    by_date = client.get(url, headers={"Range": "bytes=10-", "If-Range": LAST_MODIFIED})
    assert by_date.status_code == 206


def test_if_range_with_stale_etag_gives_full_200(
    server: LoopbackServer, client: httpx.Client
) -> None:
    url = server.add("w.bin", DATA)
    response = client.get(url, headers={"Range": "bytes=10-", "If-Range": '"stale"'})
    assert response.status_code == 200
    assert response.content == DATA
    assert "content-range" not in response.headers


def test_replace_changes_validators(
    server: LoopbackServer, client: httpx.Client
) -> None:
    url = server.add("w.bin", b"old content")
    before = client.get(url)
    server.replace("w.bin", b"new content!")
    after = client.get(url, headers={"If-None-Match": before.headers["etag"]})
    assert after.status_code == 200
    assert after.content == b"new content!"
    new_etag = '"' + hashlib.sha256(b"new content!").hexdigest()[:16] + '"'
    assert after.headers["etag"] == new_etag
    assert after.headers["last-modified"] != before.headers["last-modified"]
    resumed = client.get(
        url, headers={"Range": "bytes=4-", "If-Range": before.headers["etag"]}
    )
    assert resumed.status_code == 200
    assert resumed.content == b"new content!"


def test_replace_unknown_path_raises(server: LoopbackServer) -> None:
    with pytest.raises(KeyError, match="nope.bin"):
        server.replace("nope.bin", b"x")


def test_ignore_range_serves_whole_body(
    server: LoopbackServer, client: httpx.Client
) -> None:
    url = server.add("w.bin", DATA)
    server.fault("w.bin", Fault(ignore_range=True))
    response = client.get(url, headers={"Range": "bytes=100-"})
    assert response.status_code == 200
    assert response.content == DATA
    assert "accept-ranges" not in response.headers
    assert "content-range" not in response.headers


def test_truncate_after_cuts_the_body(
    server: LoopbackServer, client: httpx.Client
) -> None:
    url = server.add("w.bin", DATA)
    server.fault("w.bin", Fault(truncate_after=100_000))
    received = bytearray()
    with client.stream("GET", url) as response:
        assert response.headers["content-length"] == str(len(DATA))
        with pytest.raises(httpx.RemoteProtocolError):
            _drain(response.iter_raw(), received)
    assert bytes(received) == DATA[:100_000]
    assert server.requests[-1].body_bytes == 100_000


def test_content_length_lie(server: LoopbackServer, client: httpx.Client) -> None:
    url = server.add("small.bin", b"0123456789")
    server.fault("small.bin", Fault(content_length=50))
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(url)
    server.fault("small.bin", Fault(content_length=4))
    response = client.get(url)
    assert response.headers["content-length"] == "4"
    assert response.content == b"0123"


def test_503_with_retry_after(server: LoopbackServer, client: httpx.Client) -> None:
    url = server.add("w.bin", DATA)
    server.fault("w.bin", Fault(status=503, retry_after="7"))
    response = client.get(url)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"
    assert response.content == b""
    assert server.requests[-1] == RequestRecord(
        "GET", "/w.bin", server.requests[-1].headers, 503, 0
    )


def test_fault_times_then_normal(server: LoopbackServer, client: httpx.Client) -> None:
    url = server.add("w.bin", DATA)
    server.fault("w.bin", Fault(status=429, retry_after="0", times=1))
    assert client.get(url).status_code == 429
    second = client.get(url)
    assert second.status_code == 200
    assert second.content == DATA


def test_clear_faults(server: LoopbackServer, client: httpx.Client) -> None:
    url = server.add("w.bin", b"abc")
    server.fault("w.bin", Fault(status=500))
    assert client.get(url).status_code == 500
    server.clear_faults()
    assert client.get(url).status_code == 200


def test_redirect_with_location(server: LoopbackServer, client: httpx.Client) -> None:
    target = server.add("new/w.bin", DATA)
    server.fault("old/w.bin", Fault(status=302, location=target))
    response = client.get(server.url("old/w.bin"), follow_redirects=True)
    assert response.status_code == 200
    assert response.content == DATA
    assert str(response.url) == target
    assert [r.status_code for r in response.history] == [302]
    assert response.history[0].headers["location"] == target


def test_request_log_and_count(server: LoopbackServer, client: httpx.Client) -> None:
    url = server.add("w.bin", b"abc")
    client.get(url, headers={"X-Test": "yes"})
    client.get(url + "?q=1")
    client.head(url)
    client.get(server.url("other.bin"))
    log = server.requests
    assert [(r.method, r.path, r.status) for r in log] == [
        ("GET", "/w.bin", 200),
        ("GET", "/w.bin?q=1", 200),
        ("HEAD", "/w.bin", 200),
        ("GET", "/other.bin", 404),
    ]
    assert log[0].headers["x-test"] == "yes"
    assert log[0].headers["host"] == server.base_url.removeprefix("http://")
    assert [r.body_bytes for r in log] == [3, 3, 0, 0]
    assert server.count("w.bin") == 2
    assert server.count("/w.bin", "HEAD") == 1
    assert server.count("other.bin") == 1
    log.clear()  # a copy: the server's log is unaffected
    assert len(server.requests) == 4
    server.reset_log()
    assert server.requests == []
    assert server.count("w.bin") == 0


def test_connections_counter(server: LoopbackServer, client: httpx.Client) -> None:
    url = server.add("w.bin", b"abc")
    assert server.connections == 0
    client.get(url)
    client.get(url)
    assert server.connections == 1  # keep-alive reuses the connection
    with httpx.Client(trust_env=False) as other:
        other.get(url)
    assert server.connections == 2


def test_stall_delays_the_body(server: LoopbackServer, client: httpx.Client) -> None:
    url = server.add("w.bin", DATA)
    server.fault("w.bin", Fault(stall_seconds=0.2))
    started = time.monotonic()
    response = client.get(url)
    elapsed = time.monotonic() - started
    assert response.content == DATA
    assert 0.2 <= elapsed < 0.9


def test_stop_interrupts_a_stall(client: httpx.Client) -> None:
    server = LoopbackServer().start()
    try:
        url = server.add("w.bin", DATA)
        server.fault("w.bin", Fault(stall_seconds=30.0))
        received = bytearray()
        with client.stream("GET", url) as response:
            chunks = response.iter_raw()
            while len(received) < len(DATA) // 2:
                received += next(chunks)
            assert len(received) == len(DATA) // 2  # the server is now stalling
            started = time.monotonic()
            server.stop()
            assert time.monotonic() - started < 0.5
            with pytest.raises(httpx.RemoteProtocolError):
                _drain(chunks, received)
        assert bytes(received) == DATA[: len(DATA) // 2]
    finally:
        server.stop()
    server.stop()  # idempotent


def test_start_twice_and_unstarted_use_raise() -> None:
    server = LoopbackServer()
    assert server.connections == 0
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.base_url
    with server:
        with pytest.raises(RuntimeError, match="only be started once"):
            server.start()
        assert server.__enter__() is server
