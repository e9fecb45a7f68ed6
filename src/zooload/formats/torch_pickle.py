"""Reader for ``torch.save`` files, zip and legacy, with weights-only unpickling.

Weights-only unpickling builds tensors, containers, plain numbers and NumPy
arrays and scalars, and refuses every other global. Such a file raises
:class:`~zooload.errors.UnsafeCheckpointError` naming the globals, and the
caller opts in by name: ``allow_globals=[...]`` for the globals it trusts,
or ``trust_pickle=True`` for everything. Zip files are memory-mapped
(private, copy-on-write) so the weights are not read into memory twice.
"""

from __future__ import annotations

import _compat_pickle
import importlib
import logging
import pickle
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy
import torch

from zooload.errors import ConfigError, FormatError, UnsafeCheckpointError
from zooload.formats.common import DAMAGED_FILE_ERRORS, NO_TRUST, PickleTrust

logger = logging.getLogger(__name__)

_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([\w.]+)")
_HINT = "The file is truncated or damaged; download it again."


def _numpy_constructors() -> list[Any]:
    """NumPy's data constructors: they build arrays and scalars, nothing else."""
    multiarray = getattr(numpy, "_core", None) or numpy.core
    dtype_classes = [
        value for value in vars(numpy.dtypes).values() if isinstance(value, type)
    ]
    return [
        multiarray.multiarray.scalar,
        multiarray.multiarray._reconstruct,
        numpy.ndarray,
        numpy.dtype,
        *dtype_classes,
    ]


SAFE_NUMPY_GLOBALS = _numpy_constructors()
"""Allowed in weights-only unpickling beside torch's own allowlist."""


def read(
    path: Path, *, map_location: str | torch.device, trust: PickleTrust = NO_TRUST
) -> Any:
    """Unpickle a ``torch.save`` file, weights-only unless trusted.

    Returns what the file holds: a state dict, or a training checkpoint
    for :func:`zooload.unwrap.unwrap`.

    Raises
    ------
    UnsafeCheckpointError
        When weights-only unpickling refuses a global; names them all.
    FormatError
        When the file is truncated or not a torch file.

    Examples
    --------
    >>> import tempfile, pathlib, torch
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder, "w.pt")
    ...     torch.save({"w": torch.ones(2)}, path)
    ...     read(path, map_location="cpu")["w"].tolist()
    [1.0, 1.0]
    """
    mmap = zipfile.is_zipfile(path)
    allowed = [*SAFE_NUMPY_GLOBALS, *resolve_globals(trust.allowed_globals)]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(
                path,
                map_location=map_location,
                weights_only=not trust.everything,
                mmap=mmap,
            )
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Weights only" in str(err):
            needed = _unsafe_globals(path, err, trust.allowed_globals)
            if not needed:
                # Weights-only unpickling also fails on a corrupt pickle
                # stream; with no global to name, the file is damaged.
                raise _damaged(path, err) from err
            raise UnsafeCheckpointError(str(path), needed) from err
        raise _damaged(path, err) from err
    except DAMAGED_FILE_ERRORS as err:
        raise _damaged(path, err) from err


def resolve_globals(names: Sequence[str]) -> list[Any]:
    """Import the globals a caller allows by name (``"mypkg.models.Config"``).

    Importing a module the caller named is the caller's decision; nothing is
    imported from the checkpoint's own say-so.

    Raises
    ------
    ConfigError
        When a name does not lead to an importable object.

    Examples
    --------
    >>> resolve_globals(["collections.OrderedDict"])
    [<class 'collections.OrderedDict'>]
    """
    return [_import_global(name) for name in names]


def _import_global(name: str) -> Any:
    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            target: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        try:
            for attribute in parts[split:]:
                target = getattr(target, attribute)
        except AttributeError:
            break
        return target
    message = (
        f"allow_globals names {name!r}, which cannot be imported; give the full "
        "module path and name, for example 'mypkg.models.Config'."
    )
    raise ConfigError(message)


def _damaged(path: Path, err: Exception) -> FormatError:
    text = str(err).strip()
    first_line = text.splitlines()[0] if text else type(err).__name__
    return FormatError(str(path), "a readable torch checkpoint", first_line, _HINT)


def _unsafe_globals(
    path: Path, err: Exception, allowed_by_caller: Sequence[str]
) -> list[str]:
    """The globals a refused pickle needs, as ``module.name`` strings.

    For zip files torch lists every global the pickle names; for legacy
    files only the first refused one is known, from the error message.
    """
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_NUMPY_GLOBALS}
    allowed |= set(allowed_by_caller)
    listed = _GLOBAL_IN_MESSAGE.findall(str(err))
    if zipfile.is_zipfile(path):
        try:
            listed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except DAMAGED_FILE_ERRORS:
            logger.debug("could not list the globals of %s", path)
    named = {_python3_name(name) for name in listed}
    return sorted(name for name in named if name not in allowed)


def _python3_name(name: str) -> str:
    """The name a global resolves to when unpickled by Python 3.

    Pickles of protocol 2 and lower spell globals the Python 2 way
    (``__builtin__.exec``, ``commands.Popen``); the unpickler maps them back
    with the standard library's compatibility tables, and so do we, so that
    the error names what would really be called.
    """
    module, _, attribute = name.rpartition(".")
    # torch names builtins without their module ("GLOBAL exec").
    module = module or "builtins"
    module, attribute = _compat_pickle.NAME_MAPPING.get(
        (module, attribute),
        (_compat_pickle.IMPORT_MAPPING.get(module, module), attribute),
    )
    return f"{module}.{attribute}"
