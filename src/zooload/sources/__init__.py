"""Transports: how bytes get from a URL into a partial file in the cache.

Each transport is a function of the :class:`Transport` shape, picked by the
URL's scheme in :data:`TRANSPORTS`. Local paths are not transported at all;
:mod:`zooload.fetching` reads them in place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from zooload.cache import UrlRecord
from zooload.sources.http import Transfer, download_http

__all__ = ["TRANSPORTS", "Transfer", "Transport"]


class Transport(Protocol):
    """Download ``url`` into ``partial``, or report that ``known`` is current."""

    def __call__(
        self,
        url: str,
        partial: Path,
        *,
        known: UrlRecord | None,
        progress: bool | None,
    ) -> Transfer: ...


TRANSPORTS: dict[str, Transport] = {"http": download_http, "https": download_http}
