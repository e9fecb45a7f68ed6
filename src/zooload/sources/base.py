"""What every transport shares: the shape of a transport, what one transfer
returns, and the loop that streams chunks into a partial download."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from zooload.cache import UrlRecord
from zooload.errors import DownloadError, SizeMismatchError
from zooload.partials import ChunkSink, PartialDownload
from zooload.progress import progress_bar
from zooload.settings import FetchOptions

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Version:
    """What a source says about the bytes it sends: validators and full size."""

    etag: str | None
    last_modified: str | None
    total: int | None

    @property
    def validator(self) -> str | None:
        """The ``If-Range`` value that resumes exactly this version, if any.

        A weak ETag may not be used for ranges (RFC 9110, 13.1.5), so
        Last-Modified stands in for it.
        """
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified


@dataclass(frozen=True, slots=True)
class Transfer:
    """The outcome of one transfer: new bytes in the partial file, or none.

    ``resumed_from`` counts the bytes that an earlier attempt had left in the
    partial file; the rest crossed the network in this one.
    """

    not_modified: bool
    sha256: str = ""
    size: int = 0
    etag: str | None = None
    last_modified: str | None = None
    resumed_from: int = 0


class Transport(Protocol):
    """Fetch ``url`` into ``partial``, or report that ``known`` is current.

    One call is one attempt. Failures are raised as
    :class:`~zooload.errors.DownloadError` with ``retryable`` set when trying
    again may help; retrying is the caller's job.
    """

    def __call__(
        self,
        url: str,
        partial: PartialDownload,
        *,
        known: UrlRecord | None,
        options: FetchOptions,
    ) -> Transfer: ...


def receive(
    url: str,
    chunks: Iterable[bytes],
    sink: ChunkSink,
    *,
    version: Version,
    progress: bool | None,
) -> Transfer:
    """Write ``chunks`` through ``sink`` and check the size against ``version``.

    Raises
    ------
    DownloadError
        Retryable, when the bytes stop before the announced size; they stay
        in the partial file for the next attempt to resume.
    SizeMismatchError
        When more bytes arrive than announced.
    """
    resumed_from = sink.size
    name = url.rstrip("/").rsplit("/", 1)[-1]
    bar = progress_bar(version.total, name, enabled=progress)
    bar.update(resumed_from)
    try:
        with sink:
            for chunk in chunks:
                sink.write(chunk)
                bar.update(len(chunk))
            _check_size(url, sink.size, version.total)
            sha256 = sink.finish()
    finally:
        bar.close()
    return Transfer(
        not_modified=False,
        sha256=sha256,
        size=sink.size,
        etag=version.etag,
        last_modified=version.last_modified,
        resumed_from=resumed_from,
    )


def _check_size(url: str, size: int, total: int | None) -> None:
    if total is None or size == total:
        return
    if size > total:
        raise SizeMismatchError(url, total, size)
    message = (
        f"the transfer of {url} stopped after {size} of {total} bytes; the "
        "bytes so far are kept and the next attempt resumes from them."
    )
    raise DownloadError(message, url, retryable=True)
