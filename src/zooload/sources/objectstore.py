"""Object stores (``s3://``, ``gs://``, ``az://``, ...) through fsspec.

fsspec and the store's package are optional extras (``zooload[s3]`` for S3).
The bytes go through the same partial file, hash, lock and publish steps as
HTTP downloads. The object's ETag stands for the ETag of HTTP: it revalidates
an unpinned cached URL and guards a resumed transfer, which reads on from the
end of the partial file. Credentials and endpoints come from the store's own
configuration (for S3: ``AWS_*`` variables, profiles, ``AWS_ENDPOINT_URL_S3``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from zooload.cache import UrlRecord
from zooload.errors import ConfigError, DownloadError
from zooload.partials import ChunkSink, PartialDownload
from zooload.retries import RetryPolicy
from zooload.settings import FetchOptions
from zooload.sources.base import Transfer, Version, receive

logger = logging.getLogger(__name__)

_Errors = tuple[type[BaseException], ...]

OBJECT_STORE_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")
CHUNK_BYTES = 8 << 20
# Errors of the stores' client libraries, looked up only in modules already
# imported (a store in use has imported its client), by module and name.
_CREDENTIAL_ERRORS = {
    "botocore.exceptions": ("NoCredentialsError", "PartialCredentialsError"),
    "google.auth.exceptions": ("DefaultCredentialsError",),
}
_NETWORK_ERRORS = {
    "botocore.exceptions": ("BotoCoreError",),
    "aiohttp": ("ClientError",),
    "google.auth.exceptions": ("TransportError",),
    "azure.core.exceptions": ("ServiceRequestError", "ServiceResponseError"),
}


def download_object(
    url: str,
    partial: PartialDownload,
    *,
    known: UrlRecord | None,
    options: FetchOptions,
) -> Transfer:
    """Copy the object at ``url`` into ``partial``, resuming where it allows.

    Parameters
    ----------
    url
        ``s3://bucket/key`` or another fsspec URL of an object store.
    partial
        The partial download to resume or restart.
    known
        The cache's record of this URL; an object with the same ETag and size
        is reported as not modified.
    options
        Timeouts (from the retry policy) and progress.

    Returns
    -------
    Transfer

    Raises
    ------
    DownloadError
        When the object is missing (``status=404``), access is refused
        (``status=403``), or the store cannot be reached (retryable).
    ConfigError
        When fsspec or the store's package is not installed.

    Examples
    --------
    >>> download_object  # doctest: +ELLIPSIS
    <function download_object at ...>
    """
    filesystem, path = _filesystem(url, options.retry)
    with _translated_errors(url):
        version = _version(url, filesystem.info(path))
        if known and known.etag == version.etag and known.size == version.total:
            logger.debug("%s not modified since %s", url, known.fetched_at)
            partial.discard()
            return Transfer(not_modified=True)
        sink = _open_sink(partial, version)
        with filesystem.open(
            path, "rb", block_size=CHUNK_BYTES, cache_type="none"
        ) as f:
            f.seek(sink.size)
            chunks = iter(functools.partial(f.read, CHUNK_BYTES), b"")
            return receive(
                url, chunks, sink, version=version, progress=options.progress
            )


def _filesystem(url: str, policy: RetryPolicy) -> tuple[Any, str]:
    scheme = url.partition("://")[0]
    storage: dict[str, Any] = {}
    # Only S3's timeouts are passed through; other stores keep their own
    # (KL-009).
    if scheme in {"s3", "s3a"}:
        timeouts = {"connect_timeout": policy.connect_timeout}
        storage["config_kwargs"] = {**timeouts, "read_timeout": policy.stall_timeout}
    try:
        import fsspec  # noqa: PLC0415 (an optional extra)

        filesystem, path = fsspec.core.url_to_fs(url, **storage)
    except ImportError as err:
        message = (
            f"{scheme}:// URLs need fsspec and the store's package ({err}); "
            "install them, for S3 with pip install 'zooload[s3]'."
        )
        raise ConfigError(message) from err
    return filesystem, str(path)


def _version(url: str, info: Mapping[str, Any]) -> Version:
    if info.get("type", "file") != "file":
        message = f"{url} is a folder, not a file; name one object in it."
        raise DownloadError(message, url)
    etag = info.get("ETag") or info.get("etag")
    modified = (
        info.get("LastModified") or info.get("last_modified") or info.get("updated")
    )
    size = info.get("size")
    return Version(
        etag=str(etag) if etag else None,
        last_modified=str(modified) if modified else None,
        total=int(size) if size is not None else None,
    )


def _open_sink(partial: PartialDownload, version: Version) -> ChunkSink:
    if version.validator and partial.validator == version.validator:
        logger.debug("%s resumes at byte %d", partial.url, partial.offset)
        return partial.resume()
    return partial.restart(validator=version.validator, total=version.total)


@contextlib.contextmanager
def _translated_errors(url: str) -> Iterator[None]:
    """Turn the store's exceptions into :class:`DownloadError` with a next step."""
    refused: _Errors = (PermissionError, *_client_errors(_CREDENTIAL_ERRORS))
    unreachable: _Errors = (
        OSError,
        asyncio.TimeoutError,
        *_client_errors(_NETWORK_ERRORS),
    )
    try:
        yield
    except DownloadError:
        # Already ours (an interrupted transfer, a folder); an OSError too.
        raise
    except FileNotFoundError as err:
        message = f"{url} was not found ({err}); check the bucket and the key."
        raise DownloadError(message, url, status=404) from err
    except refused as err:
        message = (
            f"access to {url} was refused ({err}): credentials are missing or "
            "were refused; configure the store's credentials (for S3, "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)."
        )
        raise DownloadError(message, url, status=403) from err
    except unreachable as err:
        message = f"download of {url} failed ({type(err).__name__}: {err}); try again."
        raise DownloadError(message, url, retryable=True) from err


def _client_errors(
    table: dict[str, tuple[str, ...]],
) -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = []
    for module_name, names in table.items():
        module = sys.modules.get(module_name)
        found.extend(getattr(module, name) for name in names if hasattr(module, name))
    return tuple(found)
