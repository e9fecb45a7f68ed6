"""What every checkpoint reader shares: the types and the reader's shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

StateDict = dict[str, torch.Tensor]


class ContentReader(Protocol):
    """Read what one checkpoint file holds, in one format.

    Flat formats return a state dict; pickles may return a nested training
    checkpoint, which :func:`zooload.unwrap.unwrap` takes apart.
    """

    def __call__(
        self, path: Path, *, map_location: str | torch.device, trust_pickle: bool
    ) -> Any: ...

