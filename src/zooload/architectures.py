"""Build: the architecture registry, and building modules without weights.

An architecture is a class or factory that returns a ``torch.nn.Module``.
It is registered under a name with :func:`register`; the architectures that
ship with zooload are registered lazily (imported on first use). Modules are
built with their parameters on the meta device, so no memory is allocated
and no random initialisation is paid for weights that a checkpoint is about
to replace; buffers are built normally, so values computed in ``__init__``
stay right.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.util
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from zooload.errors import ConfigError, UnknownArchitectureError

logger = logging.getLogger(__name__)

Factory = Callable[..., nn.Module]
F = TypeVar("F", bound=Factory)

BUILTIN_ARCHITECTURES = {
    "silero-vad-16k": "zooload.zoo.silero_vad:SileroVad16k",
}
"""Names registered by zooload itself, as ``module:attribute`` to import lazily."""

_registry: dict[str, Factory] = {}
_registry_lock = threading.Lock()
_meta_build = threading.local()


def register(name: str) -> Callable[[F], F]:
    """Register a class or factory function as an architecture named ``name``.

    Parameters
    ----------
    name
        The name manifests and ``arch=`` use.

    Returns
    -------
    Callable
        A decorator that registers its argument and returns it unchanged.

    Raises
    ------
    ConfigError
        When ``name`` is empty or already names a different factory.

    Examples
    --------
    >>> @register("doc-tiny-linear")
    ... def tiny_linear(features: int = 2) -> torch.nn.Module:
    ...     return torch.nn.Linear(features, 1)
    >>> resolve_architecture("doc-tiny-linear") is tiny_linear
    True
    """
    if not name:
        message = "an architecture name must not be empty; give a short stable name."
        raise ConfigError(message)

    def decorator(factory: F) -> F:
        with _registry_lock:
            existing = _registry.get(name)
            if existing is not None and existing is not factory:
                message = (
                    f"architecture {name!r} is already registered to "
                    f"{_qualified_name(existing)}; choose another name."
                )
                raise ConfigError(message)
            _registry[name] = factory
        logger.debug("registered architecture %s", name)
        return factory

    return decorator


def registered_names() -> list[str]:
    """Every architecture name known, registered or built in, sorted.

    Examples
    --------
    >>> "silero-vad-16k" in registered_names()
    True
    """
    return sorted({*_registry, *BUILTIN_ARCHITECTURES})


def resolve_architecture(arch: str | Factory) -> Factory:
    """Return the factory for a registered name, or ``arch`` if it is callable.

    Raises
    ------
    UnknownArchitectureError
        When no architecture has that name; lists the closest names.

    Examples
    --------
    >>> resolve_architecture("silero-vad-16k").__name__
    'SileroVad16k'
    """
    if isinstance(arch, nn.Module):
        message = (
            f"arch= got a built {type(arch).__name__} module; pass its class "
            "or a factory function, which zooload calls to build the model."
        )
        raise ConfigError(message)
    if callable(arch):
        return arch
    if not isinstance(arch, str):
        message = (
            f"arch= must be a registered name, a class or a factory, not "
            f"{type(arch).__name__} {arch!r}."
        )
        raise ConfigError(message)
    registered = _registry.get(arch)
    if registered is not None:
        return registered
    target = BUILTIN_ARCHITECTURES.get(arch)
    if target is None:
        closest = difflib.get_close_matches(arch, registered_names(), n=3, cutoff=0.5)
        raise UnknownArchitectureError(arch, closest)
    module_name, _, attribute = target.partition(":")
    factory: Factory = getattr(importlib.import_module(module_name), attribute)
    return register(arch)(factory)


def load_code_architecture(path: Path, name: str) -> Factory:
    """Import a Python file of an archive and return the factory it defines.

    This runs the file: call it only for code the caller chose to trust
    (``trust_code=True``). The module gets a name of its own, so two
    archives never share one.

    Raises
    ------
    ConfigError
        When the file does not define a callable ``name``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder, "model.py")
    ...     _ = path.write_text("import torch; Net = torch.nn.Identity")
    ...     load_code_architecture(path, "Net").__name__
    'Identity'
    """
    module_name = f"zooload_code_{hashlib.sha256(str(path).encode()).hexdigest()[:16]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        message = f"cannot import {path}; ship the architecture as a .py file."
        raise ConfigError(message)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    factory: Factory | None = getattr(module, name, None)
    if not callable(factory):
        message = (
            f"{path.name} defines no class or function {name!r}; fix "
            "architecture.name in the manifest."
        )
        raise ConfigError(message)
    logger.warning("imported architecture %s from %s (trust_code=True)", name, path)
    return register(f"{module_name}.{name}")(factory)


def build_without_parameters(factory: Factory, kwargs: dict[str, Any]) -> nn.Module:
    """Build a module whose parameters are on the meta device.

    Parameters
    ----------
    factory
        A class or function returning a ``torch.nn.Module``.
    kwargs
        Keyword arguments for the factory.

    Returns
    -------
    torch.nn.Module
        Parameters on ``meta`` (shape and dtype, no storage); buffers as the
        factory made them.

    Raises
    ------
    ConfigError
        When the factory rejects the arguments or returns no module.

    Examples
    --------
    >>> import torch
    >>> module = build_without_parameters(torch.nn.Linear, {"in_features": 2,
    ...                                                      "out_features": 1})
    >>> module.weight.device.type
    'meta'
    """
    with _parameters_on_meta():
        try:
            module = factory(**kwargs)
        except TypeError as err:
            message = (
                f"cannot build {_qualified_name(factory)} with {kwargs}: {err}. "
                "Check the architecture's keyword arguments; keywords that "
                "load_url does not know go to the architecture, so a misspelt "
                "option (strcit=, sha265=) ends up here."
            )
            raise ConfigError(message) from err
    if not isinstance(module, nn.Module):
        message = (
            f"{_qualified_name(factory)} returned {type(module).__name__}, not a "
            "torch.nn.Module; register a class or a factory that returns one."
        )
        raise ConfigError(message)
    return module


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Move parameters registered by this thread to meta while the block runs.

    The registration hook is global in torch, so it checks a thread-local
    flag: modules built by other threads at the same time are unaffected.
    """
    # torch types the hook as returning None, but documents (and uses) a
    # returned parameter as the replacement.
    handle = nn.modules.module.register_module_parameter_registration_hook(
        _parameter_to_meta  # type: ignore[arg-type]
    )
    previous = getattr(_meta_build, "active", False)
    _meta_build.active = True
    try:
        yield
    finally:
        _meta_build.active = previous
        handle.remove()


def _parameter_to_meta(
    module: nn.Module, name: str, parameter: nn.Parameter
) -> nn.Parameter | None:
    if not getattr(_meta_build, "active", False) or parameter.device.type == "meta":
        return None
    extra = dict(parameter.__dict__)
    meta_parameter = type(parameter)(
        parameter.data.to("meta"), requires_grad=parameter.requires_grad
    )
    meta_parameter.__dict__.update(extra)
    return meta_parameter


def _qualified_name(factory: Callable[..., Any]) -> str:
    module = getattr(factory, "__module__", "?")
    return f"{module}.{getattr(factory, '__qualname__', repr(factory))}"
