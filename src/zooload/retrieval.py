"""Retrieval: from a URL or path to verified, unpacked bytes and their weights.

:func:`fetch` runs the first stages of the pipeline (fetch, verify, unpack)
and :func:`load_state_dict` reads the weights of what it fetched; both are
public. Downloads whose content turns out unusable are evicted here, so that
the cache never keeps bytes that can only fail again.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from zooload.archive import (
    ArchiveKind,
    ExtractionLimits,
    StagedTree,
    extract_to_cache,
    sniff_archive,
)
from zooload.cache import Cache
from zooload.errors import (
    ArchiveError,
    FormatError,
    IntegrityError,
    ManifestError,
    StateDictError,
)
from zooload.fetching import Blob, fetch_blob, parse_location
from zooload.formats import (
    PickleTrust,
    StateDict,
    read_state_dict,
)
from zooload.formats.common import NO_TRUST, WeightsSource
from zooload.local_files import local_file_digest
from zooload.manifest import describe, verify_manifest_files
from zooload.retries import RetryPolicy
from zooload.settings import (
    FetchOptions,
    HeadersArgument,
    MirrorsArgument,
    Verification,
    resolve_options,
)
from zooload.trees import TreeIndex, archive_needed
from zooload.unpacking import Unpacker, finish_unpacking, materialise

logger = logging.getLogger(__name__)

PathOrUrl = str | os.PathLike[str]
_UNUSABLE = (ArchiveError, ManifestError, IntegrityError, FormatError)


def fetch(
    url: PathOrUrl,
    *,
    sha256: str | None = None,
    cache_dir: PathOrUrl | None = None,
    progress: bool | None = None,
    extract: bool = True,
    offline: bool | None = None,
    mirrors: MirrorsArgument | None = None,
    headers: HeadersArgument | None = None,
    retry: RetryPolicy | None = None,
    limits: ExtractionLimits | None = None,
    verify: str = "recorded",
) -> Path:
    """Download, verify and unpack ``url``; return the local file or folder.

    Parameters
    ----------
    url
        ``http(s)://`` or ``file://`` URL, or a local path. A URL may pin its
        content with a ``#sha256=<hex>`` fragment.
    sha256
        The expected sha256 of the bytes; a pinned URL that is cached opens
        no connection.
    cache_dir
        Cache root; defaults to ``$ZOOLOAD_CACHE`` or the user cache folder.
    progress
        Progress bar on stderr: ``None`` shows it when stderr is a terminal.
    extract
        Unpack archives (tar, tar.gz/bz2/xz, zip) into the cache; when false,
        return the downloaded file as it is.
    offline
        Never open a connection: serve from the cache or raise
        ``NotCachedError``. ``None`` reads ``ZOOLOAD_OFFLINE``.
    mirrors
        URL prefix rewrites tried in order before the URL itself, as
        ``{prefix: replacement}`` or ``[(prefix, replacement), ...]``;
        ``None`` reads ``ZOOLOAD_MIRRORS``.
    headers
        Extra request headers by host, ``{host: {name: value}}``, for
        example a bearer token; never logged, and not sent to other hosts
        on redirects. ``None`` reads ``ZOOLOAD_HEADERS`` (JSON).
    retry
        Attempts, backoff and timeouts; ``None`` uses the defaults of
        :class:`RetryPolicy`.
    limits
        Bounds on what an archive may extract (members, bytes, compression
        ratio); ``None`` uses the defaults of :class:`ExtractionLimits`.
    verify
        ``"recorded"`` (the default) trusts a local file whose size and
        modification time match the record of its last hashing, and a
        pinned cache entry by its name; ``"full"`` hashes them again.

    Returns
    -------
    pathlib.Path
        The verified file, or the folder an archive was extracted into.

    Raises
    ------
    DownloadError
        When the bytes cannot be had; ``status`` holds the HTTP status.
        ``NotCachedError`` when offline and the URL is not cached.
    IntegrityError
        When the bytes differ from the pin (nothing is cached).
    ArchiveError
        When an archive is corrupt or a member unsafe (nothing is extracted).
    ManifestError
        When an archive's manifest is invalid or names an absent file.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder, "weights.bin")
    ...     _ = path.write_bytes(b"abc")
    ...     fetch(path, cache_dir=folder) == path
    True
    """
    options = resolve_options(
        offline=offline,
        mirrors=mirrors,
        headers=headers,
        retry=retry,
        limits=limits,
        progress=progress,
        verify=verify,
    )
    fetched = fetch_source(url, sha256, cache_dir, options, extract=extract)
    if fetched.archive is not None and fetched.blob.sha256:
        # The caller gets the folder itself and may expect every file in it.
        with evicted_if_unusable(fetched):
            materialise(
                fetched.root,
                fetched.archive,
                fetched.cache,
                fetched.blob.sha256,
                recheck=not fetched.blob.in_cache,
            )
    return fetched.root


@dataclass(frozen=True, slots=True)
class Fetched:
    """A fetched source: its bytes, the cache that holds them, the local root."""

    blob: Blob
    cache: Cache
    root: Path

    @property
    def archive(self) -> Path | None:
        """The archive the root was extracted from, if it is a tree."""
        return self.blob.path if self.root != self.blob.path else None


def fetch_source(
    url: PathOrUrl,
    sha256: str | None,
    cache_dir: PathOrUrl | None,
    options: FetchOptions,
    *,
    extract: bool = True,
) -> Fetched:
    location = parse_location(url, sha256)
    cache = Cache.open(cache_dir)
    pinned = location.sha256 is not None
    unpacker = Unpacker(cache, options.limits, pinned) if extract else None
    blob = fetch_blob(location, cache, options=options, unpacker=unpacker)
    fetched = Fetched(blob, cache, blob.path)
    if not extract:
        return fetched
    with evicted_if_unusable(fetched):
        return Fetched(blob, cache, _unpack(blob, cache, options, pinned=pinned))


def _unpack(blob: Blob, cache: Cache, options: FetchOptions, *, pinned: bool) -> Path:
    """The tree of an archive (staged while it was read, or extracted now).

    Large stored weights stay in the archive and are read in place; see
    :mod:`zooload.trees`. When the blob matched a pin, that pin covers them.
    """
    if blob.path.is_dir():
        _refuse_bare_tree(blob.path)
        # A local folder's files are hashed once; later loads trust the
        # digests recorded for them while their size and mtime are unchanged.
        digest = functools.partial(
            local_file_digest, cache=cache, verify=options.verify
        )
        verify_manifest_files(blob.path, hash_file=digest)
        return blob.path
    if options.verify is Verification.FULL:
        _drop_altered_tree(blob, cache)
    validate = functools.partial(_check_staged, source=blob.url)
    if blob.unpacked is not None:
        tree = finish_unpacking(
            blob.unpacked, blob.sha256, cache, validate=validate, source=blob.url
        )
        if tree is not None:
            return tree
    if sniff_archive(blob.path) is ArchiveKind.FILE:
        return blob.path
    return extract_to_cache(
        blob.path,
        blob.sha256,
        cache,
        validate=validate,
        limits=options.limits,
        source=blob.url,
        in_place=True,
        covered_by_pin=pinned,
    )


def _refuse_bare_tree(folder: Path) -> None:
    """A cache tree whose weights stay in its archive is no folder to load."""
    if TreeIndex.read(folder).in_place:
        raise archive_needed(folder)


def _check_staged(staged: StagedTree, *, source: str) -> None:
    """The staged tree's files against its manifest, by their digests."""
    verify_manifest_files(
        staged.folder,
        source=source,
        digests=staged.digests,
        covered_by_pin=staged.covered_by_pin,
    )


def _drop_altered_tree(blob: Blob, cache: Cache) -> None:
    """Remove an extracted tree whose files no longer match its manifest.

    The blob was verified before this runs, so the tree is rebuilt from
    trusted bytes by the extraction that follows.
    """
    tree = cache.tree_path(blob.sha256)
    if not tree.is_dir():
        return
    try:
        verify_manifest_files(tree, source=blob.url)
    except (IntegrityError, ManifestError) as err:
        logger.warning(
            "the extracted tree of %s was altered; extracting again: %s", blob.url, err
        )
        with cache.locked(blob.sha256):
            cache.evict_tree(blob.sha256)


@contextmanager
def evicted_if_unusable(fetched: Fetched) -> Iterator[None]:
    """Drop a cached download whose content turns out to be unusable.

    Bytes that can never be unpacked or read (a truncated archive, a bad
    manifest, an HTML page instead of weights) are not worth keeping: a later
    call would fail the same way, or, for an unpinned URL, find them current.
    A checkpoint refused as unsafe stays: it may be loaded once trusted.
    """
    try:
        yield
    except _UNUSABLE as err:
        if not fetched.blob.in_cache:
            raise
        fetched.cache.forget(fetched.blob.url, fetched.blob.sha256)
        if isinstance(err, FormatError):
            raise _named_by_url(err, fetched) from err
        raise


def _named_by_url(err: FormatError, fetched: Fetched) -> FormatError:
    """The same error, naming the URL rather than the evicted cache path."""
    path, *rest = err._arguments
    where = Path(path)
    if not where.is_relative_to(fetched.cache.root):
        return FormatError(path, *rest)
    inside = ""
    if where != fetched.root and where.is_relative_to(fetched.root):
        inside = f" ({where.relative_to(fetched.root)})"
    return FormatError(fetched.blob.url + inside, *rest)


def load_state_dict(
    source: PathOrUrl,
    *,
    key: str | None = None,
    map_location: str | torch.device = "cpu",
    trust_pickle: bool = False,
    allow_globals: Sequence[str] = (),
    sha256: str | None = None,
    cache_dir: PathOrUrl | None = None,
    progress: bool | None = None,
    offline: bool | None = None,
    mirrors: MirrorsArgument | None = None,
    headers: HeadersArgument | None = None,
    retry: RetryPolicy | None = None,
    limits: ExtractionLimits | None = None,
    verify: str = "recorded",
) -> StateDict:
    """Read the weights of any checkpoint, local or remote, as a state dict.

    The format is recognised from the bytes: safetensors, torch zip, legacy
    torch, TorchScript, NumPy ``.npz``, or a shard index with its shards. A
    folder or archive is read through its manifest, or by its one checkpoint
    file. A training checkpoint is unwrapped (see :mod:`zooload.unwrap`).

    Parameters
    ----------
    source
        A path, a folder, or any URL :func:`load_url` accepts.
    key
        Dotted key path of the weights inside a training checkpoint
        (``"model"``, ``"ema.module"``); found automatically when omitted.
    map_location
        Device for the tensors.
    trust_pickle
        Allow pickles to build any object, which runs code from the file;
        only for files from publishers you trust.
    allow_globals
        Names of the extra globals a pickle may build (``"mypkg.Config"``),
        as an :class:`~zooload.UnsafeCheckpointError` lists them; the
        narrow alternative to ``trust_pickle``.
    sha256, cache_dir, progress, offline, mirrors, headers, retry, limits, verify
        As for :func:`fetch`.

    Returns
    -------
    dict[str, torch.Tensor]

    Raises
    ------
    FormatError
        When a file is not a readable checkpoint; says what it looks like.
    CheckpointError
        When several entries could be the weights and ``key`` is not given.
    UnsafeCheckpointError
        When a pickle needs globals that weights-only unpickling refuses.
    DownloadError, IntegrityError, ArchiveError, ManifestError
        As for :func:`fetch`.

    Examples
    --------
    >>> import tempfile, pathlib, torch
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder, "ckpt.pt")
    ...     torch.save({"epoch": 3, "model": {"w": torch.ones(2)}}, path)
    ...     load_state_dict(path, cache_dir=folder)["w"].tolist()
    [1.0, 1.0]
    """
    settings = resolve_options(
        offline=offline,
        mirrors=mirrors,
        headers=headers,
        retry=retry,
        limits=limits,
        progress=progress,
        verify=verify,
    )
    fetched = fetch_source(source, sha256, cache_dir, settings)
    with evicted_if_unusable(fetched):
        description = describe(fetched.root, archive=fetched.archive)
        return read_weights(
            description.weights,
            key=key,
            map_location=map_location,
            trust=PickleTrust(trust_pickle, tuple(allow_globals)),
        )


def read_weights(
    paths: tuple[WeightsSource, ...],
    *,
    key: str | None = None,
    map_location: str | torch.device = "cpu",
    trust: PickleTrust = NO_TRUST,
) -> StateDict:
    tensors: StateDict = {}
    for path in paths:
        part = read_state_dict(path, key=key, map_location=map_location, trust=trust)
        for name, tensor in part.items():
            if name in tensors:
                message = (
                    f"{name!r} appears in more than one weight file (again in "
                    f"{path.name}); list each tensor in one file only."
                )
                raise StateDictError(message)
            tensors[name] = tensor
    return tensors
