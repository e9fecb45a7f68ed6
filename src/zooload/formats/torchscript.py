"""Reader for TorchScript programs: the program itself, or its state dict.

A TorchScript archive runs no Python from the file: its code is TorchScript,
interpreted by torch, so loading it needs no opt-in.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from zooload.errors import FormatError
from zooload.formats.common import DAMAGED_FILE_ERRORS, NO_TRUST, PickleTrust, StateDict

_DEPRECATION = r"`torch\.jit\.load` is deprecated"


def load_program(path: Path, *, map_location: str | torch.device) -> nn.Module:
    """Load a TorchScript program, in eval mode.

    Raises
    ------
    FormatError
        When torch cannot read the program.

    Examples
    --------
    >>> import tempfile, pathlib, torch
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder, "m.jit")
    ...     torch.jit.save(torch.jit.script(torch.nn.Linear(2, 1)), path)
    ...     load_program(path, map_location="cpu").training
    False
    """
    try:
        with warnings.catch_warnings():
            # torch deprecates TorchScript in favour of torch.export; loading
            # a published program is still what the caller asked for (KL-002).
            warnings.filterwarnings("ignore", _DEPRECATION, DeprecationWarning)
            program: nn.Module = torch.jit.load(  # type: ignore[no-untyped-call]
                str(path), map_location=map_location
            )
    except DAMAGED_FILE_ERRORS as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else "error"
        hint = "The file is truncated or damaged; download it again."
        raise FormatError(str(path), "a TorchScript program", first_line, hint) from err
    return program.eval()


def read(
    path: Path, *, map_location: str | torch.device, trust: PickleTrust = NO_TRUST
) -> StateDict:
    """Read the state dict of a TorchScript program.

    Examples
    --------
    >>> import tempfile, pathlib, torch
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder, "m.jit")
    ...     torch.jit.save(torch.jit.script(torch.nn.Linear(2, 1)), path)
    ...     sorted(read(path, map_location="cpu"))
    ['bias', 'weight']
    """
    program = load_program(path, map_location=map_location)
    return {name: tensor.detach() for name, tensor in program.state_dict().items()}
