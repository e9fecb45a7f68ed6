"""s3:// through fsspec, against a real S3-compatible server (moto) on 127.0.0.1."""

from __future__ import annotations

import itertools
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import zooload
from support.builders import blobs_intact, cache_files, partial_files, sha256_of
from zooload.cache import Cache
from zooload.partials import PartialDownload

boto3 = pytest.importorskip("boto3")
pytest.importorskip("s3fs")
threaded_moto_server = pytest.importorskip("moto.moto_server.threaded_moto_server")

DATA = os.urandom(3_000_000)
_buckets = itertools.count()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free port of 127.0.0.1, for the whole run."""
    server = threaded_moto_server.ThreadedMotoServer(
        ip_address="127.0.0.1", port=0, verbose=False
    )
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@dataclass
class Bucket:
    """A fresh bucket on the moto server."""

    client: Any
    name: str

    def put(self, key: str, data: bytes) -> str:
        self.client.put_object(Bucket=self.name, Key=key, Body=data)
        return f"s3://{self.name}/{key}"

    def etag(self, key: str) -> str:
        return str(self.client.head_object(Bucket=self.name, Key=key)["ETag"])


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Bucket:
    settings = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": s3_endpoint,
        # Keep any real AWS configuration of the machine out of the tests.
        "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    name = f"zooload-{next(_buckets)}"
    client.create_bucket(Bucket=name)
    return Bucket(client, name)


def test_s3_pinned_object_is_fetched_and_verified(
    bucket: Bucket, cache_dir: Path
) -> None:
    url = bucket.put("models/m.bin", DATA)

    path = zooload.fetch(f"{url}#sha256={sha256_of(DATA)}", cache_dir=cache_dir)

    assert path == cache_dir.resolve() / "blobs" / sha256_of(DATA)
    assert path.read_bytes() == DATA
    assert partial_files(cache_dir) == []


def test_s3_unpinned_object_is_revalidated_by_etag(
    bucket: Bucket, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = bucket.put("m.bin", DATA)
    first = zooload.fetch(url, cache_dir=cache_dir)

    with caplog.at_level(logging.DEBUG, logger="zooload"):
        again = zooload.fetch(url, cache_dir=cache_dir)
    changed = os.urandom(1000)
    bucket.put("m.bin", changed)
    newer = zooload.fetch(url, cache_dir=cache_dir)

    assert again == first
    assert "not modified" in caplog.text
    assert newer.read_bytes() == changed
    assert blobs_intact(cache_dir)


def test_s3_resumes_kept_bytes_of_the_same_version(
    bucket: Bucket, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = bucket.put("m.bin", DATA)
    _leave_partial(cache_dir, url, DATA[:1_000_000], validator=bucket.etag("m.bin"))

    with caplog.at_level(logging.INFO, logger="zooload"):
        path = zooload.fetch(f"{url}#sha256={sha256_of(DATA)}", cache_dir=cache_dir)

    assert path.read_bytes() == DATA
    assert "1000000 of them resumed" in caplog.text
    assert partial_files(cache_dir) == []


def test_s3_restarts_when_the_object_changed_since(
    bucket: Bucket, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = bucket.put("m.bin", DATA)
    _leave_partial(cache_dir, url, os.urandom(1_000_000), validator='"old-etag"')

    with caplog.at_level(logging.INFO, logger="zooload"):
        path = zooload.fetch(f"{url}#sha256={sha256_of(DATA)}", cache_dir=cache_dir)

    assert path.read_bytes() == DATA
    assert "resumed" not in caplog.text


def test_s3_missing_object_is_a_clear_error(bucket: Bucket, cache_dir: Path) -> None:
    url = f"s3://{bucket.name}/absent.bin"
    with pytest.raises(zooload.DownloadError, match="check the bucket and the key"):
        zooload.fetch(url, cache_dir=cache_dir)
    assert cache_files(cache_dir) == []


def test_s3_wrong_bytes_never_enter_the_cache(bucket: Bucket, cache_dir: Path) -> None:
    url = bucket.put("m.bin", DATA)
    with pytest.raises(zooload.HashMismatchError):
        zooload.fetch(f"{url}#sha256={'0' * 64}", cache_dir=cache_dir)
    assert cache_files(cache_dir) == []


def test_s3_offline_serves_the_cached_object(bucket: Bucket, cache_dir: Path) -> None:
    url = bucket.put("m.bin", DATA)
    cached = zooload.fetch(url, cache_dir=cache_dir)
    bucket.client.delete_object(Bucket=bucket.name, Key="m.bin")
    assert zooload.fetch(url, cache_dir=cache_dir, offline=True) == cached


def test_s3_without_the_extra_says_what_to_install(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "fsspec", None)
    with pytest.raises(zooload.ConfigError, match=r"zooload\[s3\]"):
        zooload.fetch("s3://bucket/m.bin", cache_dir=cache_dir)


def _leave_partial(cache_dir: Path, url: str, data: bytes, *, validator: str) -> None:
    """What a download killed midway leaves: some bytes and their version."""
    partial = PartialDownload.open(Cache.open(cache_dir), url)
    sink = partial.restart(validator=validator, total=len(DATA))
    sink.write(data)
    sink.finish()
    partial.release()
