"""What every checkpoint reader shares: the types and the reader's shape."""

from __future__ import annotations

import pickle
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True, slots=True)
class PickleTrust:
    """What a pickle may build beyond weights; see SECURITY.md.

    ``everything`` lifts every restriction (the file may run code).
    ``allowed_globals`` names the extra globals (``"mypkg.Config"``) that
    weights-only unpickling may build; the caller names each one.
    """

    everything: bool = False
    allowed_globals: tuple[str, ...] = ()


NO_TRUST = PickleTrust()

DAMAGED_FILE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    OSError,
    RuntimeError,
    EOFError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    OverflowError,
    MemoryError,
    UnicodeDecodeError,
    struct.error,
    zlib.error,
    zipfile.BadZipFile,
    pickle.UnpicklingError,
    tarfile.TarError,
    # torch's legacy loader checks its storage table with assert statements.
    AssertionError,
)
"""What torch, numpy, zipfile and pickle raise on damaged input.

Fuzzing the readers (tests/test_fuzz_readers.py) found each of these coming
out of a third-party reader for some truncated or bit-flipped file. Readers
turn them into :class:`~zooload.errors.FormatError`; our own errors are
raised outside these handlers, so none is swallowed.
"""


class ContentReader(Protocol):
    """Read what one checkpoint file holds, in one format.

    Flat formats return a state dict; pickles may return a nested training
    checkpoint, which :func:`zooload.unwrap.unwrap` takes apart.
    """

    def __call__(
        self,
        path: Path,
        *,
        map_location: str | torch.device,
        trust: PickleTrust = NO_TRUST,
    ) -> Any: ...
