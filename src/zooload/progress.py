"""The one helper that builds progress bars (tqdm, on stderr)."""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


def progress_bar(total: int | None, description: str, *, enabled: bool | None) -> Any:
    """Return a byte-counting tqdm bar, or a disabled one.

    ``enabled=None`` shows the bar only when stderr is a terminal, so logs and
    CI output stay clean; ``True`` and ``False`` force it.

    Examples
    --------
    >>> bar = progress_bar(10, "demo", enabled=False)
    >>> bar.update(10)
    >>> bar.close()
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(
        total=total,
        desc=description,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not enabled,
        leave=False,
    )
