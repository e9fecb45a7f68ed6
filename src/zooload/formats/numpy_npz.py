"""Reader for NumPy ``.npz`` archives of arrays (``numpy.savez``).

Arrays are loaded with ``allow_pickle=False``, so object arrays, the one part
of the format that can run code, are refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy
import torch

from zooload.errors import FormatError
from zooload.formats.common import DAMAGED_FILE_ERRORS, NO_TRUST, PickleTrust, StateDict


def read(
    path: Path, *, map_location: str | torch.device, trust: PickleTrust = NO_TRUST
) -> StateDict:
    """Read every array of an ``.npz`` file as a tensor.

    Examples
    --------
    >>> import tempfile, pathlib, numpy
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder, "w.npz")
    ...     numpy.savez(path, w=numpy.ones(2, dtype="float32"))
    ...     read(path, map_location="cpu")["w"].tolist()
    [1.0, 1.0]
    """
    try:
        with numpy.load(path, allow_pickle=False) as arrays:
            return {
                name: torch.from_numpy(arrays[name]).to(map_location)
                for name in arrays.files
            }
    except ValueError as err:
        hint = "Object arrays need pickle; save plain numeric arrays instead."
        seen = f"an npz file with object arrays or bad data ({err})"
        raise FormatError(
            str(path), "an npz file of numeric arrays", seen, hint
        ) from err
    except DAMAGED_FILE_ERRORS as err:
        hint = "The file is truncated or damaged; download it again."
        raise FormatError(str(path), "a readable npz file", f"{err}", hint) from err
