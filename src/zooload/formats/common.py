"""What every checkpoint reader shares: the state dict type and reader shape."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

StateDict = dict[str, torch.Tensor]


class StateDictReader(Protocol):
    """Read the tensors of one checkpoint file in one format."""

    def __call__(
        self, path: Path, *, map_location: str | torch.device, trust_pickle: bool
    ) -> StateDict: ...
