"""The main job: :func:`load_url` and :func:`fetch`, stage after stage.

Each stage lives in its own module; this one only strings them together:
fetch (:mod:`zooload.fetching`), unpack (:mod:`zooload.archive`), describe
(:mod:`zooload.manifest`), build (:mod:`zooload.architectures`), read
(:mod:`zooload.formats`), load (:mod:`zooload.loading`) and check
(:mod:`zooload.checks`).
"""

from __future__ import annotations

import difflib
import functools
import inspect
import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zooload.architectures import (
    Factory,
    build_without_parameters,
    load_code_architecture,
    resolve_architecture,
)
from zooload.archive import (
    ArchiveKind,
    ExtractionLimits,
    extract_to_cache,
    sniff_archive,
)
from zooload.cache import Cache
from zooload.checks import ExampleResult, check_examples, check_materialised
from zooload.errors import (
    ArchiveError,
    ConfigError,
    FormatError,
    IntegrityError,
    ManifestError,
    StateDictError,
    UntrustedCodeError,
)
from zooload.fetching import Blob, fetch_blob, parse_location
from zooload.formats import (
    CheckpointFormat,
    PickleTrust,
    StateDict,
    read_state_dict,
    sniff_format,
)
from zooload.formats.common import NO_TRUST
from zooload.formats.torchscript import load_program
from zooload.loading import LoadReport, ShapeMismatchPolicy, load_into
from zooload.manifest import Description, Manifest, describe, verify_manifest_files
from zooload.retries import RetryPolicy
from zooload.settings import (
    FetchOptions,
    HeadersArgument,
    MirrorsArgument,
    Verification,
    resolve_options,
)

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
    return _fetch(url, sha256, cache_dir, options, extract=extract).root


@dataclass(frozen=True, slots=True)
class _Fetched:
    """A fetched source: its bytes, the cache that holds them, the local root."""

    blob: Blob
    cache: Cache
    root: Path


def _fetch(
    url: PathOrUrl,
    sha256: str | None,
    cache_dir: PathOrUrl | None,
    options: FetchOptions,
    *,
    extract: bool = True,
) -> _Fetched:
    location = parse_location(url, sha256)
    cache = Cache.open(cache_dir)
    blob = fetch_blob(location, cache, options=options)
    fetched = _Fetched(blob, cache, blob.path)
    if not extract:
        return fetched
    with _evicted_if_unusable(fetched):
        return _Fetched(blob, cache, _unpack(blob, cache, options))


def _unpack(blob: Blob, cache: Cache, options: FetchOptions) -> Path:
    if blob.path.is_dir():
        verify_manifest_files(blob.path)
        return blob.path
    if sniff_archive(blob.path) is ArchiveKind.FILE:
        return blob.path
    if options.verify is Verification.FULL:
        _drop_altered_tree(blob, cache)
    limits = options.limits
    validate = functools.partial(verify_manifest_files, source=blob.url)
    return extract_to_cache(
        blob.path,
        blob.sha256,
        cache,
        validate=validate,
        limits=limits,
        source=blob.url,
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
def _evicted_if_unusable(fetched: _Fetched) -> Iterator[None]:
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


def _named_by_url(err: FormatError, fetched: _Fetched) -> FormatError:
    """The same error, naming the URL rather than the evicted cache path."""
    path, *rest = err._arguments
    where = Path(path)
    if not where.is_relative_to(fetched.cache.root):
        return FormatError(path, *rest)
    inside = ""
    if where != fetched.root and where.is_relative_to(fetched.root):
        inside = f" ({where.relative_to(fetched.root)})"
    return FormatError(fetched.blob.url + inside, *rest)


@dataclass(frozen=True, slots=True)
class LoadResult:
    """A loaded model and the account of how it was loaded.

    Attributes
    ----------
    model
        The ready model (eval mode, on the requested device).
    report
        What the weights step did; ``None`` for a TorchScript program, which
        carries its own weights.
    path
        The cached file or extracted folder the model came from.
    manifest
        The archive's manifest, if it had one.
    example
        The example check's result, if one ran.
    seconds
        Wall time of each stage: ``fetch``, ``build``, ``load``, ``check``.
    """

    model: nn.Module
    report: LoadReport | None
    path: Path
    manifest: Manifest | None
    example: ExampleResult | None
    seconds: dict[str, float]


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
    fetched = _fetch(source, sha256, cache_dir, settings)
    with _evicted_if_unusable(fetched):
        description = describe(fetched.root)
        return _read_weights(
            description.weights,
            key=key,
            map_location=map_location,
            trust=PickleTrust(trust_pickle, tuple(allow_globals)),
        )


def load_url(
    url: PathOrUrl,
    *,
    arch: str | Factory | None = None,
    sha256: str | None = None,
    map_location: str | torch.device = "cpu",
    strict: bool = True,
    check: bool = True,
    cache_dir: PathOrUrl | None = None,
    progress: bool | None = None,
    key: str | None = None,
    trust_pickle: bool = False,
    allow_globals: Sequence[str] = (),
    on_shape_mismatch: ShapeMismatchPolicy | str = ShapeMismatchPolicy.ERROR,
    trust_code: bool = False,
    offline: bool | None = None,
    mirrors: MirrorsArgument | None = None,
    headers: HeadersArgument | None = None,
    retry: RetryPolicy | None = None,
    limits: ExtractionLimits | None = None,
    verify: str = "recorded",
    **arch_kwargs: Any,
) -> nn.Module:
    """Turn a URL into a ready model: fetch, verify, unpack, build, load, check.

    Parameters
    ----------
    url
        An archive with a ``zooload.json`` manifest, a TorchScript file, or a
        bare checkpoint (which needs ``arch=``): ``http(s)://``, ``file://``
        or a local path, optionally ending in ``#sha256=<hex>``.
    arch
        A registered architecture name, a class or a factory; overrides the
        manifest's.
    sha256
        The expected sha256 of the downloaded bytes.
    map_location
        Device of the returned model.
    strict
        Refuse weights that do not fit exactly (the default).
    check
        Run the manifest's example inputs and compare the outputs.
    cache_dir
        Cache root; defaults to ``$ZOOLOAD_CACHE`` or the user cache folder.
    progress
        Progress bar on stderr: ``None`` shows it when stderr is a terminal.
    key
        Dotted key path of the weights inside a training checkpoint
        (``"model"``, ``"ema.module"``); found automatically when omitted.
    trust_pickle
        Allow pickled weights to build any object, which runs code from the
        file; only for publishers you trust.
    allow_globals
        Names of the extra globals pickled weights may build, as an
        :class:`~zooload.UnsafeCheckpointError` lists them.
    on_shape_mismatch
        ``"skip"`` keeps the architecture's own initialised tensor where the
        checkpoint's shape differs (see :func:`load_into`).
    trust_code
        Import the architecture from a Python file the archive ships, when
        its manifest names one (``architecture.code``); that runs the file.
        Off by default: nothing from an archive runs unless asked for.
    offline, mirrors, headers, retry, limits, verify
        How the bytes are fetched and unpacked; see :func:`fetch`.
    **arch_kwargs
        Keyword arguments for the architecture, over the manifest's.

    Returns
    -------
    torch.nn.Module
        In eval mode on ``map_location``; a TorchScript module when the
        source is a TorchScript program and no ``arch`` is given.

    Raises
    ------
    ZooloadError
        Every failure is one of its subclasses: ``DownloadError``,
        ``IntegrityError``, ``ArchiveError``, ``ManifestError``,
        ``FormatError``, ``UnsafeCheckpointError``,
        ``UnknownArchitectureError``, ``IncompatibleStateDictError``,
        ``VerificationError``, ``ConfigError``.

    Examples
    --------
    >>> import tempfile, pathlib, torch
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder, "linear.pt")
    ...     torch.save(torch.nn.Linear(2, 1).state_dict(), path)
    ...     model = load_url(path, arch=torch.nn.Linear, in_features=2,
    ...                      out_features=1, cache_dir=folder)
    ...     model.weight.shape
    torch.Size([1, 2])
    """
    result = load(
        url,
        arch=arch,
        sha256=sha256,
        map_location=map_location,
        strict=strict,
        check=check,
        cache_dir=cache_dir,
        progress=progress,
        key=key,
        trust_pickle=trust_pickle,
        allow_globals=allow_globals,
        on_shape_mismatch=on_shape_mismatch,
        trust_code=trust_code,
        offline=offline,
        mirrors=mirrors,
        headers=headers,
        retry=retry,
        limits=limits,
        verify=verify,
        **arch_kwargs,
    )
    return result.model


def load(
    url: PathOrUrl,
    *,
    arch: str | Factory | None = None,
    sha256: str | None = None,
    map_location: str | torch.device = "cpu",
    strict: bool = True,
    check: bool = True,
    cache_dir: PathOrUrl | None = None,
    progress: bool | None = None,
    key: str | None = None,
    trust_pickle: bool = False,
    allow_globals: Sequence[str] = (),
    on_shape_mismatch: ShapeMismatchPolicy | str = ShapeMismatchPolicy.ERROR,
    trust_code: bool = False,
    offline: bool | None = None,
    mirrors: MirrorsArgument | None = None,
    headers: HeadersArgument | None = None,
    retry: RetryPolicy | None = None,
    limits: ExtractionLimits | None = None,
    verify: str = "recorded",
    **arch_kwargs: Any,
) -> LoadResult:
    """Do what :func:`load_url` does, and return the model with its account.

    Takes the same arguments as :func:`load_url` and raises the same errors.

    Returns
    -------
    LoadResult
        The model, the load report, the source path, the manifest, the
        example check's result and the time of each stage.

    Examples
    --------
    >>> import tempfile, pathlib, torch
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder, "linear.pt")
    ...     torch.save(torch.nn.Linear(2, 1).state_dict(), path)
    ...     result = load(path, arch=torch.nn.Linear, in_features=2,
    ...                   out_features=1, cache_dir=folder)
    ...     result.report.loaded
    ('weight', 'bias')
    """
    map_location = _device(map_location)
    clock = _StageClock()
    settings = resolve_options(
        offline=offline,
        mirrors=mirrors,
        headers=headers,
        retry=retry,
        limits=limits,
        progress=progress,
        verify=verify,
    )
    fetched = _fetch(url, sha256, cache_dir, settings)
    with _evicted_if_unusable(fetched):
        description = describe(fetched.root)
    clock.lap("fetch")
    with _evicted_if_unusable(fetched):
        factory, kwargs = _architecture(
            description, arch, arch_kwargs, trust_code=trust_code
        )
    report: LoadReport | None = None
    if factory is None:
        model: nn.Module = load_program(
            description.weights[0], map_location=map_location
        )
        clock.lap("load")
    else:
        model = build_without_parameters(factory, kwargs)
        clock.lap("build")
        trust = PickleTrust(trust_pickle, tuple(allow_globals))
        options = _WeightOptions(strict, key, trust, on_shape_mismatch)
        with _evicted_if_unusable(fetched):
            tensors = _read_weights(description.weights, key=key, trust=trust)
        report = _load_weights(model, tensors, description, options)
        if report.missing or report.mismatched:
            model, report = _load_partially(
                factory, kwargs, tensors, description, options
            )
        model = model.to(map_location).eval()
        clock.lap("load")
    example = _check(model, description, check=check)
    clock.lap("check")
    logger.info("loaded %s in %.3f s", type(model).__name__, clock.total)
    return LoadResult(
        model, report, fetched.root, description.manifest, example, clock.laps
    )


@dataclass(slots=True)
class _StageClock:
    """Wall time of each pipeline stage."""

    laps: dict[str, float] = field(default_factory=dict)
    mark: float = field(default_factory=time.perf_counter)
    total: float = 0.0

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage] = now - self.mark
        self.total += now - self.mark
        self.mark = now


def _architecture(
    description: Description,
    arch: str | Factory | None,
    arch_kwargs: dict[str, Any],
    *,
    trust_code: bool,
) -> tuple[Factory | None, dict[str, Any]]:
    """The factory and its arguments; ``None`` for a TorchScript program."""
    spec = description.manifest.architecture if description.manifest else None
    if arch is not None:
        return resolve_architecture(arch), dict(arch_kwargs)
    if spec is not None and spec.code is not None:
        if not trust_code:
            raise UntrustedCodeError(str(description.root), spec.code.path)
        factory = load_code_architecture(description.root / spec.code.path, spec.name)
        return factory, {**spec.kwargs, **arch_kwargs}
    if spec is not None:
        return resolve_architecture(spec.name), {**spec.kwargs, **arch_kwargs}
    weights = description.weights
    if len(weights) == 1 and sniff_format(weights[0]) is CheckpointFormat.TORCHSCRIPT:
        if arch_kwargs:
            raise _unknown_options(arch_kwargs, weights[0].name)
        return None, {}
    message = (
        f"{weights[0].name} holds weights but does not say which architecture "
        "they belong to; pass arch= (a registered name, a class or a factory), "
        "or load an archive whose zooload.json names it."
    )
    raise ConfigError(message)


def _device(map_location: str | torch.device) -> torch.device:
    """``map_location`` as a device this torch build can use, or ConfigError."""
    try:
        device = torch.device(map_location)
    except (RuntimeError, TypeError) as err:
        message = f"map_location={map_location!r} is not a device: {err}."
        raise ConfigError(message) from err
    if device.type == "cuda" and not torch.cuda.is_available():
        message = (
            f"map_location={map_location!r} asks for CUDA, which this torch "
            "build or machine does not have; use map_location='cpu'."
        )
        raise ConfigError(message)
    return device


def _unknown_options(arch_kwargs: dict[str, Any], source: str) -> ConfigError:
    """Keywords left for an architecture that takes none: likely typos."""
    known = list(inspect.signature(load).parameters)
    hints = []
    for name in arch_kwargs:
        close = difflib.get_close_matches(name, known, n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    message = (
        f"{source} is a TorchScript program, which takes no architecture "
        f"arguments, and these are not options of load_url: {', '.join(hints)}. "
        "Fix the spelling, or drop them."
    )
    return ConfigError(message)


@dataclass(frozen=True, slots=True)
class _WeightOptions:
    """How the weights step of :func:`load` reads and maps tensors."""

    strict: bool
    key: str | None
    trust: PickleTrust
    on_shape_mismatch: ShapeMismatchPolicy | str


def _load_partially(
    factory: Factory,
    kwargs: dict[str, Any],
    tensors: StateDict,
    description: Description,
    options: _WeightOptions,
) -> tuple[nn.Module, LoadReport]:
    """Build the architecture for real, then load what fits into it.

    A partial load keeps the tensors the checkpoint does not provide as the
    architecture initialises them, custom initialisation included, as a
    plain ``load_state_dict(strict=False)`` into ``factory()`` would. The
    meta-device build cannot know that initialisation, so when the first
    load leaves tensors unloaded, the model is built again, allocated.
    """
    logger.debug("partial load: building %s with its own initialisation", factory)
    try:
        model = factory(**kwargs)
    except TypeError as err:
        message = f"cannot build the architecture with {kwargs}: {err}."
        raise ConfigError(message) from err
    return model, _load_weights(model, tensors, description, options)


def _load_weights(
    model: nn.Module,
    tensors: StateDict,
    description: Description,
    options: _WeightOptions,
) -> LoadReport:
    manifest = description.manifest
    if manifest and manifest.dtype:
        model.to(getattr(torch, manifest.dtype))
    rules = [(r.pattern, r.replacement) for r in manifest.rename] if manifest else []
    report = load_into(
        model,
        tensors,
        strict=options.strict,
        rename=rules,
        on_shape_mismatch=options.on_shape_mismatch,
    )
    logger.debug("load report:\n%s", report)
    return report


def _read_weights(
    paths: tuple[Path, ...],
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


def _check(
    model: nn.Module, description: Description, *, check: bool
) -> ExampleResult | None:
    check_materialised(model)
    examples = description.manifest.examples if description.manifest else None
    if not check or examples is None:
        return None
    return check_examples(model, description.root / examples.path, examples)
