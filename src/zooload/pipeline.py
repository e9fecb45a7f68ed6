"""The main job: :func:`load_url` and :func:`load`, stage after stage.

Each stage lives in its own module; this one only strings them together:
fetch, verify and unpack (:mod:`zooload.retrieval`), describe
(:mod:`zooload.manifest`), build (:mod:`zooload.architectures`), read
(:mod:`zooload.formats`), load (:mod:`zooload.loading`) and check
(:mod:`zooload.checks`).
"""

from __future__ import annotations

import difflib
import inspect
import logging
import time
from collections.abc import Sequence
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
    ExtractionLimits,
)
from zooload.checks import ExampleResult, check_examples, check_materialised
from zooload.errors import (
    ConfigError,
    UntrustedCodeError,
)
from zooload.formats import (
    CheckpointFormat,
    PickleTrust,
    StateDict,
    sniff_format,
)
from zooload.formats.common import shown_path
from zooload.formats.torchscript import load_program
from zooload.loading import LoadReport, ShapeMismatchPolicy, load_into, plan_load
from zooload.manifest import Description, Manifest, describe
from zooload.retries import RetryPolicy
from zooload.retrieval import (
    Fetched,
    PathOrUrl,
    evicted_if_unusable,
    fetch_source,
    read_weights,
)
from zooload.settings import (
    HeadersArgument,
    MirrorsArgument,
    resolve_options,
)

logger = logging.getLogger(__name__)


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
    fetched = fetch_source(url, sha256, cache_dir, settings)
    with evicted_if_unusable(fetched):
        description = describe(fetched.root, archive=fetched.archive)
        factory, kwargs = _architecture(
            description, arch, arch_kwargs, trust_code=trust_code
        )
    clock.lap("fetch")
    report: LoadReport | None = None
    if factory is None:
        # A TorchScript program is always a file of its own: only
        # safetensors files are read in place from an archive.
        program = shown_path(description.weights[0])
        model: nn.Module = load_program(program, map_location=map_location)
    else:
        trust = PickleTrust(trust_pickle, tuple(allow_globals))
        options = _WeightOptions(strict, key, trust, on_shape_mismatch)
        model, report = _build_and_load(
            factory, kwargs, fetched, description, options, clock=clock
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


def _build_and_load(
    factory: Factory,
    kwargs: dict[str, Any],
    fetched: Fetched,
    description: Description,
    options: _WeightOptions,
    *,
    clock: _StageClock,
) -> tuple[nn.Module, LoadReport]:
    """Build on the meta device, adopt the weights; rebuild for a partial load."""
    model = build_without_parameters(factory, kwargs)
    clock.lap("build")
    with evicted_if_unusable(fetched):
        tensors = read_weights(
            description.weights, key=options.key, trust=options.trust
        )
    manifest = description.manifest
    rules = [(r.pattern, r.replacement) for r in manifest.rename] if manifest else []
    plan = plan_load(
        model,
        tensors,
        strict=options.strict,
        rename=rules,
        on_shape_mismatch=options.on_shape_mismatch,
    )
    if plan.missing or plan.mismatched:
        return _load_partially(factory, kwargs, tensors, description, options)
    return model, _load_weights(model, tensors, description, options)


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
    meta-device build cannot know that initialisation, so when the plan
    leaves tensors unloaded, the model is built allocated instead.
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


def _check(
    model: nn.Module, description: Description, *, check: bool
) -> ExampleResult | None:
    check_materialised(model)
    examples = description.manifest.examples if description.manifest else None
    if not check or examples is None:
        return None
    return check_examples(model, description.file(examples.path), examples)
