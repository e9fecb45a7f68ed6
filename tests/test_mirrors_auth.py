"""Mirrors, per-host headers (tokens), proxies and CA bundles."""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

import zooload
from support.builders import sha256_of
from support.httpserver import Fault, LoopbackServer
from zooload.settings import resolve_options

DATA = os.urandom(40_000)
SECRET = "Bearer s3cret-token-value"


def _pinned(url: str, data: bytes = DATA) -> str:
    return f"{url}#sha256={sha256_of(data)}"


@pytest.fixture
def proxy() -> Iterator[LoopbackServer]:
    """A server that stands in as an HTTP proxy (it answers absolute-form GETs)."""
    with LoopbackServer() as server:
        yield server


@pytest.fixture(scope="session")
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def tls_server(authority: trustme.CA) -> Iterator[LoopbackServer]:
    """An HTTPS server on 127.0.0.1 whose certificate a private CA signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    with LoopbackServer(tls=context) as server:
        yield server


@pytest.fixture
def ca_file(authority: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return path


# -- mirrors -------------------------------------------------------------------


def test_mirrors_serve_from_the_mirror_when_it_has_the_file(
    served, other_host: LoopbackServer, cache_dir: Path
) -> None:
    url = served.add("m.bin", DATA)
    other_host.add(served.path("m.bin"), DATA)
    mirrors = {served.server.base_url + "/": other_host.base_url + "/"}

    path = zooload.fetch(_pinned(url), cache_dir=cache_dir, mirrors=mirrors)

    assert path.read_bytes() == DATA
    assert other_host.count(served.path("m.bin")) == 1
    assert served.count("m.bin") == 0


def test_mirrors_fall_back_to_the_original_url(
    served, other_host: LoopbackServer, cache_dir: Path, caplog
) -> None:
    url = served.add("m.bin", DATA)
    mirrors = [(served.server.base_url + "/", other_host.base_url + "/")]

    path = zooload.fetch(_pinned(url), cache_dir=cache_dir, mirrors=mirrors)

    assert path.read_bytes() == DATA
    assert served.count("m.bin") == 1
    assert "trying the next source" in caplog.text


def test_mirrors_the_hash_decides_not_the_host(
    served, other_host: LoopbackServer, cache_dir: Path, caplog
) -> None:
    url = served.add("m.bin", DATA)
    other_host.add(served.path("m.bin"), b"tampered bytes")
    mirrors = {served.server.base_url + "/": other_host.base_url + "/"}

    path = zooload.fetch(_pinned(url), cache_dir=cache_dir, mirrors=mirrors)

    assert path.read_bytes() == DATA
    assert [p.name for p in (cache_dir / "blobs").iterdir()] == [sha256_of(DATA)]
    (warning,) = [r for r in caplog.records if "mirror" in r.getMessage()]
    assert "sha256 mismatch" in warning.getMessage()


def test_mirrors_from_the_environment_in_order(
    served,
    other_host: LoopbackServer,
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = served.add("m.bin", DATA)
    other_host.add(served.path("m.bin"), DATA)
    original = served.server.base_url + "/"
    rules = f"{original}={original}missing/ {original}={other_host.base_url}/"
    monkeypatch.setenv("ZOOLOAD_MIRRORS", rules)

    path = zooload.fetch(_pinned(url), cache_dir=cache_dir)

    assert path.read_bytes() == DATA
    assert served.server.count(f"/missing{served.path('m.bin')}") == 1
    assert other_host.count(served.path("m.bin")) == 1


def test_mirrors_revalidate_at_the_source_that_served(
    served, other_host: LoopbackServer, cache_dir: Path
) -> None:
    url = served.add("m.bin", DATA)
    other_host.add(served.path("m.bin"), DATA)
    mirrors = {served.server.base_url + "/": other_host.base_url + "/"}
    first = zooload.fetch(url, cache_dir=cache_dir, mirrors=mirrors)
    second = zooload.fetch(url, cache_dir=cache_dir, mirrors=mirrors)
    assert first == second
    assert other_host.requests[-1].status == 304


@pytest.mark.parametrize(
    "mirrors", [["https://a/"], [("https://a/", 3)], [("a/", "https://b/")]]
)
def test_mirrors_reject_malformed_rules(mirrors: list, cache_dir: Path) -> None:
    with pytest.raises(zooload.ConfigError, match="must pair two URL prefixes"):
        zooload.fetch("https://a/m.bin", cache_dir=cache_dir, mirrors=mirrors)


def test_mirrors_reject_a_malformed_environment_rule(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZOOLOAD_MIRRORS", "https://a/")
    with pytest.raises(zooload.ConfigError, match="ORIGINAL_PREFIX=MIRROR_PREFIX"):
        zooload.fetch("https://a/m.bin", cache_dir=cache_dir)


def test_mirrors_with_an_unknown_scheme_are_a_config_error(
    served, cache_dir: Path
) -> None:
    url = served.add("m.bin", DATA)
    mirrors = {served.server.base_url + "/": "ftp://mirror/"}
    with pytest.raises(zooload.ConfigError, match="'ftp' is not one of .*https"):
        zooload.fetch(url, cache_dir=cache_dir, mirrors=mirrors)
    assert served.count("m.bin") == 0


# -- per-host headers ------------------------------------------------------------


def _auth(server: LoopbackServer, path: str) -> list[str | None]:
    return [r.headers.get("authorization") for r in server.requests if r.path == path]


def test_headers_reach_their_host(served, cache_dir: Path) -> None:
    url = served.add("m.bin", DATA)
    headers = {"127.0.0.1": {"Authorization": SECRET}}
    zooload.fetch(url, cache_dir=cache_dir, headers=headers)
    assert _auth(served.server, served.path("m.bin")) == [SECRET]


def test_headers_match_host_and_port_first(served, cache_dir: Path) -> None:
    url = served.add("m.bin", DATA)
    port = url.split(":")[2].split("/")[0]
    headers = {
        "127.0.0.1": {"Authorization": "Bearer wrong"},
        f"127.0.0.1:{port}": {"Authorization": SECRET},
    }
    zooload.fetch(url, cache_dir=cache_dir, headers=headers)
    assert _auth(served.server, served.path("m.bin")) == [SECRET]


def test_headers_are_dropped_when_a_redirect_leaves_the_host(
    served, other_host: LoopbackServer, cache_dir: Path
) -> None:
    target = other_host.add(served.path("cdn.bin"), DATA)
    served.server.fault(served.path("m.bin"), Fault(status=302, location=target))
    url = served.server.url(served.path("m.bin"))
    headers = {"127.0.0.1": {"Authorization": SECRET, "X-Api-Key": "k"}}

    path = zooload.fetch(_pinned(url), cache_dir=cache_dir, headers=headers)

    assert path.read_bytes() == DATA
    assert _auth(served.server, served.path("m.bin")) == [SECRET]
    (hop,) = [r for r in other_host.requests if r.path == served.path("cdn.bin")]
    assert "authorization" not in hop.headers
    assert "x-api-key" not in hop.headers


def test_headers_are_kept_on_a_same_host_redirect(served, cache_dir: Path) -> None:
    target = served.add("moved.bin", DATA)
    served.server.fault(served.path("m.bin"), Fault(status=301, location=target))
    url = served.server.url(served.path("m.bin"))
    headers = {"127.0.0.1": {"Authorization": SECRET}}

    zooload.fetch(_pinned(url), cache_dir=cache_dir, headers=headers)

    assert _auth(served.server, served.path("moved.bin")) == [SECRET]


def test_headers_of_the_redirect_target_host_are_its_own(
    served, other_host: LoopbackServer, cache_dir: Path
) -> None:
    target = other_host.add(served.path("cdn.bin"), DATA)
    served.server.fault(served.path("m.bin"), Fault(status=307, location=target))
    headers = {"127.0.0.2": {"Authorization": "Bearer cdn"}}
    url = served.server.url(served.path("m.bin"))
    zooload.fetch(_pinned(url), cache_dir=cache_dir, headers=headers)
    assert _auth(served.server, served.path("m.bin")) == [None]
    assert _auth(other_host, served.path("cdn.bin")) == ["Bearer cdn"]


def test_headers_a_redirect_loop_is_a_clear_error(served, cache_dir: Path) -> None:
    url = served.server.url(served.path("loop.bin"))
    served.server.fault(served.path("loop.bin"), Fault(status=302, location=url))
    with pytest.raises(zooload.DownloadError, match="redirected more than 10 times"):
        zooload.fetch(url, cache_dir=cache_dir)


def test_headers_never_appear_in_logs_errors_or_reprs(
    served, other_host: LoopbackServer, cache_dir: Path, caplog, retry
) -> None:
    target = other_host.add(served.path("cdn.bin"), DATA)
    served.server.fault(served.path("m.bin"), Fault(status=302, location=target))
    served.server.fault(served.path("denied.bin"), Fault(status=401))
    headers = {"127.0.0.1": {"Authorization": SECRET}}

    with caplog.at_level(logging.DEBUG):
        zooload.fetch(
            served.server.url(served.path("m.bin")),
            cache_dir=cache_dir,
            headers=headers,
        )
        with pytest.raises(zooload.DownloadError) as caught:
            zooload.fetch(
                served.server.url(served.path("denied.bin")),
                cache_dir=cache_dir,
                headers=headers,
                retry=retry,
            )

    assert "credentials are missing" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value)
    assert SECRET not in caplog.text
    assert caplog.text  # DEBUG logging of every library was on
    options = resolve_options(headers=headers)
    assert SECRET not in repr(options)
    assert "127.0.0.1" in repr(options)


def test_headers_from_the_environment(
    served, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = served.add("m.bin", DATA)
    setting = json.dumps({"127.0.0.1": {"Authorization": SECRET}})
    monkeypatch.setenv("ZOOLOAD_HEADERS", setting)
    zooload.fetch(url, cache_dir=cache_dir)
    assert _auth(served.server, served.path("m.bin")) == [SECRET]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (f'{{"127.0.0.1": {{"Authorization": "{SECRET}"', "is not valid JSON"),
        (f'["{SECRET}"]', "must map a host"),
        (f'{{"h": "{SECRET}"}}', "must map header names"),
        (f'{{"h": {{"Authorization": "{SECRET}\\nX: y"}}}}', "one-line string"),
    ],
)
def test_headers_malformed_settings_never_echo_the_secret(
    text: str, match: str, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZOOLOAD_HEADERS", text)
    with pytest.raises(zooload.ConfigError, match=match) as caught:
        zooload.fetch("https://example.org/m.bin", cache_dir=cache_dir)
    assert "s3cret" not in str(caught.value)
    assert caught.value.__cause__ is None


# -- proxies ---------------------------------------------------------------------


def test_proxy_variables_route_requests_and_redirects(
    served,
    other_host: LoopbackServer,
    proxy: LoopbackServer,
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The origin (127.0.0.1) is in NO_PROXY; the redirect target is not.
    target = other_host.url(served.path("cdn.bin"))
    proxy.add(served.path("cdn.bin"), DATA)
    served.server.fault(served.path("m.bin"), Fault(status=302, location=target))
    monkeypatch.setenv("HTTP_PROXY", proxy.base_url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")

    path = zooload.fetch(
        _pinned(served.server.url(served.path("m.bin"))), cache_dir=cache_dir
    )

    assert path.read_bytes() == DATA
    assert served.count("m.bin") == 1
    assert [r.path for r in proxy.requests] == [target]
    assert other_host.count(served.path("cdn.bin")) == 0


def test_proxy_is_skipped_for_no_proxy_hosts(
    served, proxy: LoopbackServer, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = served.add("m.bin", DATA)
    monkeypatch.setenv("HTTP_PROXY", proxy.base_url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    zooload.fetch(url, cache_dir=cache_dir)
    assert proxy.requests == []
    assert served.count("m.bin") == 1


def test_all_proxy_applies_when_no_scheme_proxy_is_set(
    served,
    other_host: LoopbackServer,
    proxy: LoopbackServer,
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = other_host.url(served.path("all.bin"))
    proxy.add(served.path("all.bin"), DATA)
    monkeypatch.setenv("ALL_PROXY", proxy.base_url)
    monkeypatch.setenv("NO_PROXY", "localhost")

    path = zooload.fetch(_pinned(target), cache_dir=cache_dir)

    assert path.read_bytes() == DATA
    assert [r.path for r in proxy.requests] == [target]
    assert other_host.count(served.path("all.bin")) == 0


def test_proxy_credentials_become_a_proxy_authorization_header(
    served,
    other_host: LoopbackServer,
    proxy: LoopbackServer,
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = other_host.url(served.path("auth.bin"))
    proxy.add(served.path("auth.bin"), DATA)
    address = proxy.base_url.replace("http://", "http://ann:pa%3Ass@")
    monkeypatch.setenv("HTTP_PROXY", address)
    monkeypatch.setenv("NO_PROXY", "localhost")

    zooload.fetch(_pinned(target), cache_dir=cache_dir)

    (request,) = proxy.requests
    expected = "Basic " + base64.b64encode(b"ann:pa:ss").decode()
    assert request.headers["proxy-authorization"] == expected


def test_a_socks_proxy_without_pysocks_is_a_config_error(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if PySocks were not installed: the import of urllib3's support fails.
    monkeypatch.setitem(sys.modules, "urllib3.contrib.socks", None)
    monkeypatch.setenv("HTTP_PROXY", "socks5://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "localhost")

    with pytest.raises(zooload.ConfigError, match="SOCKS proxy.*pip install pysocks"):
        zooload.fetch("http://127.0.0.2:9/m.bin", cache_dir=cache_dir)

    assert not list(cache_dir.rglob("*.bin"))


def test_an_unreachable_proxy_is_named_in_the_error(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("NO_PROXY", "localhost")
    retry = zooload.RetryPolicy(attempts=1)

    with pytest.raises(zooload.DownloadError, match="the proxy failed") as caught:
        zooload.fetch("http://127.0.0.2:9/m.bin", cache_dir=cache_dir, retry=retry)

    assert caught.value.retryable


# -- CA bundles ------------------------------------------------------------------


@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"])
def test_tls_trusts_a_private_ca_from_the_usual_variables(
    variable: str,
    tls_server: LoopbackServer,
    ca_file: Path,
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = tls_server.add(f"/{variable}/m.bin", DATA)
    assert url.startswith("https://")
    monkeypatch.setenv(variable, str(ca_file))
    assert zooload.fetch(_pinned(url), cache_dir=cache_dir).read_bytes() == DATA


def test_tls_untrusted_certificate_fails_at_once_with_a_hint(
    tls_server: LoopbackServer, cache_dir: Path, retry, fake_time
) -> None:
    url = tls_server.add("/untrusted/m.bin", DATA)
    with pytest.raises(zooload.DownloadError, match="point SSL_CERT_FILE") as caught:
        zooload.fetch(url, cache_dir=cache_dir, retry=retry)
    assert not caught.value.retryable
    assert fake_time.waits == []


def test_tls_bad_ca_bundle_variable_is_a_config_error(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served
) -> None:
    url = served.add("m.bin", DATA)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(zooload.ConfigError, match="SSL_CERT_FILE=.*unset it"):
        zooload.fetch(url, cache_dir=cache_dir)


def test_tls_headers_are_not_sent_after_a_downgrade_to_http(
    tls_server: LoopbackServer,
    served,
    ca_file: Path,
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = served.add("plain.bin", DATA)
    tls_server.fault("/downgrade/m.bin", Fault(status=302, location=target))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    headers = {"127.0.0.1": {"Authorization": SECRET}}

    zooload.fetch(
        _pinned(tls_server.url("/downgrade/m.bin")),
        cache_dir=cache_dir,
        headers=headers,
    )

    assert _auth(tls_server, "/downgrade/m.bin") == [SECRET]
    assert _auth(served.server, served.path("plain.bin")) == [None]


def test_credentials_in_the_url_become_a_header_and_never_reach_logs_or_cache(
    served: Any, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = served.add("private.bin", b"weights")
    secret_url = url.replace("http://", "http://alice:s3cr3t%21@")
    caplog.set_level(logging.DEBUG, logger="zooload")

    path = zooload.fetch(secret_url, cache_dir=cache_dir)

    assert path.read_bytes() == b"weights"
    sent = served.server.requests[-1].headers["authorization"]
    assert base64.b64decode(sent.removeprefix("Basic ")) == b"alice:s3cr3t!"
    assert "s3cr3t" not in caplog.text
    stored = "".join(p.read_text() for p in (cache_dir / "refs").iterdir())
    assert "s3cr3t" not in stored
    assert url in stored
    missing = secret_url.replace("private.bin", "absent.bin")
    with pytest.raises(zooload.DownloadError) as caught:
        zooload.fetch(missing, cache_dir=cache_dir)
    assert "s3cr3t" not in str(caught.value)
