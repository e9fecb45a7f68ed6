"""Transports: how bytes get from a URL into a partial download in the cache.

Each transport is a function of the :class:`Transport` shape, picked by the
URL's scheme in :data:`TRANSPORTS`: HTTP(S) through urllib3, object stores
through fsspec. Local paths are not transported at all;
:mod:`zooload.fetching` reads them in place.
"""

from __future__ import annotations

from zooload.sources.base import Transfer, Transport
from zooload.sources.http import download_http
from zooload.sources.objectstore import OBJECT_STORE_SCHEMES, download_object

__all__ = ["TRANSPORTS", "Transfer", "Transport"]

TRANSPORTS: dict[str, Transport] = {
    "http": download_http,
    "https": download_http,
    **dict.fromkeys(OBJECT_STORE_SCHEMES, download_object),
}
