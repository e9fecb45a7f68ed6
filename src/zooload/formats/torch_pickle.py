"""Reader for ``torch.save`` files, zip and legacy, with weights-only unpickling.

Weights-only unpickling builds tensors, containers and plain numbers, and
refuses every other global; such a file raises
:class:`~zooload.errors.UnsafeCheckpointError` naming the globals, and the
caller opts in by name (``trust_pickle=True``). Zip files are memory-mapped
(private, copy-on-write) so the weights are not read into memory twice.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from zooload.errors import FormatError, UnsafeCheckpointError
from zooload.formats.common import StateDict

logger = logging.getLogger(__name__)

_GLOBAL_IN_MESSAGE = re.compile(r"(?:GLOBAL|global) ([\w.]+(?: [\w.]+)?)")


def read(
    path: Path, *, map_location: str | torch.device, trust_pickle: bool
) -> StateDict:
    """Read the tensors of a ``torch.save`` file.

    Examples
    --------
    >>> import tempfile, pathlib, torch
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder, "w.pt")
    ...     torch.save({"w": torch.ones(2)}, path)
    ...     read(path, map_location="cpu", trust_pickle=False)["w"].tolist()
    [1.0, 1.0]
    """
    content = load_pickle(path, map_location=map_location, trust_pickle=trust_pickle)
    return tensors_of(content, str(path))


def load_pickle(
    path: Path, *, map_location: str | torch.device, trust_pickle: bool
) -> Any:
    """Unpickle a ``torch.save`` file, weights-only unless trusted.

    Raises
    ------
    UnsafeCheckpointError
        When weights-only unpickling refuses a global.
    FormatError
        When the file is truncated or not a torch file.
    """
    mmap = zipfile.is_zipfile(path)
    try:
        return torch.load(
            path, map_location=map_location, weights_only=not trust_pickle, mmap=mmap
        )
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Weights only" in str(err):
            raise UnsafeCheckpointError(str(path), _unsafe_globals(path, err)) from err
        raise _damaged(path, err) from err
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as err:
        raise _damaged(path, err) from err


def _damaged(path: Path, err: Exception) -> FormatError:
    first_line = (
        str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    )
    hint = "The file is truncated or damaged; download it again."
    return FormatError(str(path), "a readable torch checkpoint", first_line, hint)


def _unsafe_globals(path: Path, err: Exception) -> list[str]:
    """The globals a refused pickle needs, as ``module.name`` strings."""
    if zipfile.is_zipfile(path):
        try:
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except (RuntimeError, ValueError, pickle.UnpicklingError):
            logger.debug("could not list the globals of %s", path)
    found = _GLOBAL_IN_MESSAGE.findall(str(err))
    return sorted({name.replace(" ", ".") for name in found})


def tensors_of(content: Any, source: str) -> StateDict:
    """Return ``content`` as a flat ``{name: tensor}`` mapping, or raise.

    Raises
    ------
    FormatError
        When the content holds anything besides tensors.
    """
    if isinstance(content, Mapping) and all(
        isinstance(key, str) and isinstance(value, torch.Tensor)
        for key, value in content.items()
    ):
        return dict(content)
    seen = f"a {type(content).__name__} that is not a mapping of names to tensors"
    hint = "Pass key= to pick the entry that holds the weights."
    raise FormatError(source, "a state dict", seen, hint)
