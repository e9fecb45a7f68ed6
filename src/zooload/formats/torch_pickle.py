"""Reader for ``torch.save`` files, zip and legacy, with weights-only unpickling.

Weights-only unpickling builds tensors, containers, plain numbers and NumPy
arrays and scalars, and refuses every other global. Such a file raises
:class:`~zooload.errors.UnsafeCheckpointError` naming the globals, and the
caller opts in by name (``trust_pickle=True``). Zip files are memory-mapped
(private, copy-on-write) so the weights are not read into memory twice.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy
import torch

from zooload.errors import FormatError, UnsafeCheckpointError

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


def read(path: Path, *, map_location: str | torch.device, trust_pickle: bool) -> Any:
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
    ...     read(path, map_location="cpu", trust_pickle=False)["w"].tolist()
    [1.0, 1.0]
    """
    mmap = zipfile.is_zipfile(path)
    try:
        with _numpy_allowed():
            return torch.load(
                path,
                map_location=map_location,
                weights_only=not trust_pickle,
                mmap=mmap,
            )
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Weights only" in str(err):
            raise UnsafeCheckpointError(str(path), _unsafe_globals(path, err)) from err
        raise _damaged(path, err) from err
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as err:
        raise _damaged(path, err) from err


@contextmanager
def _numpy_allowed() -> Iterator[None]:
    with torch.serialization.safe_globals(SAFE_NUMPY_GLOBALS):
        yield


def _damaged(path: Path, err: Exception) -> FormatError:
    text = str(err).strip()
    first_line = text.splitlines()[0] if text else type(err).__name__
    return FormatError(str(path), "a readable torch checkpoint", first_line, _HINT)


def _unsafe_globals(path: Path, err: Exception) -> list[str]:
    """The globals a refused pickle needs, as ``module.name`` strings.

    For zip files torch lists every global the pickle names; for legacy
    files only the first refused one is known, from the error message.
    """
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_NUMPY_GLOBALS}
    if zipfile.is_zipfile(path):
        try:
            listed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except (RuntimeError, ValueError, pickle.UnpicklingError):
            logger.debug("could not list the globals of %s", path)
        else:
            return [name for name in listed if name not in allowed]
    return sorted(set(_GLOBAL_IN_MESSAGE.findall(str(err))))
