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


@dataclass(frozen=True, slots=True)
class FileRegion:
    """A file that lies uncompressed inside an archive, read where it lies.

    Its bytes are ``size`` bytes of ``path`` (the archive) from ``offset``.
    ``shown_as`` is where the file would be in the archive's extracted tree;
    messages name it by that path (see :mod:`zooload.trees`).
    """

    path: Path
    offset: int
    size: int
    shown_as: Path

    @property
    def name(self) -> str:
        """The file's own name, as a path's ``name``."""
        return self.shown_as.name

    def __str__(self) -> str:
        return str(self.shown_as)


WeightsSource = Path | FileRegion
"""A checkpoint file on its own, or one lying inside an archive."""


def shown_path(source: WeightsSource) -> Path:
    """The path that names ``source`` in messages and reports."""
    return source.shown_as if isinstance(source, FileRegion) else source


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
