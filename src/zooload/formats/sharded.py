"""Sharded checkpoints: an index file mapping tensor names to shard files.

The index (``model.safetensors.index.json``, ``pytorch_model.bin.index.json``)
holds ``{"weight_map": {tensor name: shard file}}``. Before any tensor is
read, every shard must exist inside the index's folder and, for safetensors
shards, hold exactly the tensors the index assigns to it; a missing or stale
shard is named.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from zooload.errors import FormatError
from zooload.formats import safetensors_file

_EXPECTED = "a sharded checkpoint index"


@dataclass(frozen=True, slots=True)
class ShardPlan:
    """The shards of a sharded checkpoint and the tensors each should hold."""

    index: Path
    shards: dict[Path, frozenset[str]]


def is_index(head: bytes) -> bool:
    """Whether the first bytes of a file look like a shard index."""
    return head.lstrip().startswith(b"{") and b'"weight_map"' in head


def plan_shards(index: Path) -> ShardPlan:
    """Read an index and check its shards before any tensor is read.

    Raises
    ------
    FormatError
        When the index is malformed, names a shard outside its folder, a
        shard is missing, or a safetensors shard does not hold the tensors
        the index assigns to it (a stale shard).

    Examples
    --------
    >>> import json, tempfile, pathlib, torch
    >>> from safetensors.torch import save_file
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     root = pathlib.Path(folder)
    ...     save_file({"w": torch.ones(1)}, root / "a.safetensors")
    ...     index = {"weight_map": {"w": "a.safetensors"}}
    ...     _ = (root / "i.json").write_text(json.dumps(index))
    ...     [p.name for p in plan_shards(root / "i.json").shards]
    ['a.safetensors']
    """
    weight_map = _weight_map(index)
    by_shard: dict[Path, set[str]] = defaultdict(set)
    for name, shard in weight_map.items():
        by_shard[_shard_path(index, shard)].add(name)
    missing = sorted(str(path.name) for path in by_shard if not path.is_file())
    if missing:
        hint = "Download every shard the index names into the same folder."
        seen = f"an index whose shards are missing: {', '.join(missing)}"
        raise FormatError(str(index), "a complete sharded checkpoint", seen, hint)
    for path, names in by_shard.items():
        _check_fresh(index, path, names)
    return ShardPlan(
        index, {path: frozenset(names) for path, names in by_shard.items()}
    )


def _weight_map(index: Path) -> dict[str, str]:
    hint = "Re-download the index file, or point at a single checkpoint file."
    try:
        document = json.loads(index.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise FormatError(str(index), _EXPECTED, f"invalid JSON ({err})", hint) from err
    weight_map = document.get("weight_map") if isinstance(document, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        seen = "JSON without a weight_map of tensor names to shard files"
        raise FormatError(str(index), _EXPECTED, seen, hint)
    return weight_map


def _shard_path(index: Path, shard: str) -> Path:
    posix = PurePosixPath(shard)
    if posix.is_absolute() or ".." in posix.parts or "\\" in shard or ":" in shard:
        hint = "Shards must sit beside the index; refusing to read outside its folder."
        seen = f"an index naming the shard {shard!r} outside its folder"
        raise FormatError(str(index), _EXPECTED, seen, hint)
    return index.parent / shard


def _check_fresh(index: Path, shard: Path, names: set[str]) -> None:
    """Compare a safetensors shard's header with the index; others are read later."""
    with shard.open("rb") as stream:
        head = stream.read(512)
    if is_index(head):
        hint = "An index must point at checkpoint files, not at another index."
        raise FormatError(str(index), _EXPECTED, f"{shard.name} is another index", hint)
    if not safetensors_file.looks_like_header(head, shard.stat().st_size):
        return
    held = set(safetensors_file.tensor_names(shard))
    if held != names:
        absent = sorted(names - held)[:5]
        extra = sorted(held - names)[:5]
        seen = (
            f"a stale shard {shard.name}: the index expects {sorted(absent)} there "
            f"but it lacks them, and it holds {extra} the index does not list"
        )
        hint = "Download the index and its shards again from the same revision."
        raise FormatError(str(index), "a consistent sharded checkpoint", seen, hint)
