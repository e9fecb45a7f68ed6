"""Reader for safetensors files.

The file is read into memory rather than mapped (KL-003 in
docs/KNOWN_LIMITATIONS.md).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from zooload.errors import FormatError
from zooload.formats.common import StateDict


def read(
    path: Path, *, map_location: str | torch.device, trust_pickle: bool
) -> StateDict:
    """Read every tensor of a safetensors file (no pickle is involved).

    Examples
    --------
    >>> import tempfile, pathlib, torch
    >>> from safetensors.torch import save_file
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder, "w.safetensors")
    ...     save_file({"w": torch.ones(2)}, path)
    ...     read(path, map_location="cpu", trust_pickle=False)["w"].tolist()
    [1.0, 1.0]
    """
    device = str(torch.device(map_location))
    try:
        return dict(load_file(path, device=device))
    except (SafetensorError, OSError, ValueError) as err:
        hint = "The file is truncated or damaged; download it again."
        seen = f"a damaged safetensors file ({err})"
        raise FormatError(str(path), "a readable safetensors file", seen, hint) from err
