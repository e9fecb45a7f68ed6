"""Read: recognise a checkpoint by its bytes and read what it holds.

:func:`sniff_format` names the format from magic bytes and structure, never
from the file name; :data:`READERS` maps each format to its reader. Anything
unreadable raises :class:`~zooload.errors.FormatError` saying what the file
looks like instead. :func:`read_state_dict` adds the unwrapping of training
checkpoints (:mod:`zooload.unwrap`).
"""

from __future__ import annotations

import enum
import json
import logging
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zooload.errors import FormatError
from zooload.formats import (
    numpy_npz,
    safetensors_file,
    sharded,
    torch_pickle,
    torchscript,
)
from zooload.formats.common import (
    DAMAGED_FILE_ERRORS,
    NO_TRUST,
    ContentReader,
    FileRegion,
    PickleTrust,
    StateDict,
    WeightsSource,
)
from zooload.unwrap import unwrap

logger = logging.getLogger(__name__)

__all__ = [
    "READERS",
    "Checkpoint",
    "CheckpointFormat",
    "PickleTrust",
    "StateDict",
    "read_checkpoint",
    "read_state_dict",
    "sniff_format",
]

_HEAD_BYTES = 512
_LEGACY_PICKLE_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_EXPECTED = (
    "a checkpoint (safetensors, torch zip, legacy torch, TorchScript, npz, "
    "or a shard index)"
)


class CheckpointFormat(str, enum.Enum):
    """The checkpoint formats zooload reads."""

    SAFETENSORS = "safetensors"
    TORCH_ZIP = "torch-zip"
    TORCH_LEGACY = "torch-legacy"
    TORCHSCRIPT = "torchscript"
    NUMPY_NPZ = "npz"
    SHARDED_INDEX = "sharded-index"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What a checkpoint file holds, before any unwrapping."""

    path: WeightsSource
    format: CheckpointFormat
    content: Any
    metadata: Mapping[str, str] = field(default_factory=dict)


def _read_sharded(
    path: Path, *, map_location: str | torch.device, trust: PickleTrust = NO_TRUST
) -> StateDict:
    plan = sharded.plan_shards(path)
    tensors: StateDict = {}
    for shard, names in plan.shards.items():
        # plan_shards has refused indexes that name other indexes.
        shard_format = sniff_format(shard)
        content = READERS[shard_format](shard, map_location=map_location, trust=trust)
        part = unwrap(content, source=str(shard)).tensors
        if set(part) != names:
            hint = "Download the index and its shards again from the same revision."
            seen = f"a stale shard (its tensors differ from the index's {len(names)})"
            raise FormatError(str(shard), "a consistent shard", seen, hint)
        tensors.update(part)
        logger.debug("read shard %s: %d tensors", shard.name, len(part))
    return tensors


READERS: dict[CheckpointFormat, ContentReader] = {
    CheckpointFormat.SAFETENSORS: safetensors_file.read,
    CheckpointFormat.TORCH_ZIP: torch_pickle.read,
    CheckpointFormat.TORCH_LEGACY: torch_pickle.read,
    CheckpointFormat.TORCHSCRIPT: torchscript.read,
    CheckpointFormat.NUMPY_NPZ: numpy_npz.read,
    CheckpointFormat.SHARDED_INDEX: _read_sharded,
}


def sniff_format(path: WeightsSource) -> CheckpointFormat:
    """Name the checkpoint format of ``path`` from its content.

    Parameters
    ----------
    path
        A file, or a region of an archive (which can only be safetensors:
        only safetensors files are read in place).

    Returns
    -------
    CheckpointFormat

    Raises
    ------
    FormatError
        When the file is none of the formats; the message says what it looks
        like (an HTML page, a Git LFS pointer, an empty file, an archive...).

    Examples
    --------
    >>> import tempfile, pathlib, torch
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder, "w.pt")
    ...     torch.save({"w": torch.ones(1)}, path)
    ...     sniff_format(path).value
    'torch-zip'
    """
    if isinstance(path, FileRegion):
        return _region_format(path)
    with path.open("rb") as stream:
        head = stream.read(_HEAD_BYTES)
    if head.startswith(b"PK\x03\x04"):
        return _zip_format(path)
    if head.startswith(_LEGACY_PICKLE_MAGIC):
        return CheckpointFormat.TORCH_LEGACY
    if safetensors_file.looks_like_header(head, path.stat().st_size):
        return CheckpointFormat.SAFETENSORS
    if sharded.is_index(head):
        return CheckpointFormat.SHARDED_INDEX
    raise FormatError(str(path), _EXPECTED, describe_bytes(head), _next_step(head))


def _region_format(region: FileRegion) -> CheckpointFormat:
    with region.path.open("rb") as stream:
        stream.seek(region.offset)
        head = stream.read(min(_HEAD_BYTES, region.size))
    if safetensors_file.looks_like_header(head, region.size):
        return CheckpointFormat.SAFETENSORS
    raise FormatError(str(region), _EXPECTED, describe_bytes(head), _next_step(head))


def read_checkpoint(
    path: WeightsSource,
    *,
    map_location: str | torch.device = "cpu",
    trust: PickleTrust = NO_TRUST,
) -> Checkpoint:
    """Read what a checkpoint file holds, choosing the reader by content.

    Parameters
    ----------
    path
        A checkpoint file or shard index.
    map_location
        Device for the tensors.
    trust
        What pickles may build beyond weights; by default nothing
        (weights-only unpickling).

    Returns
    -------
    Checkpoint
        Its format, its content (a state dict, or a training checkpoint for a
        pickle) and any metadata the format keeps.

    Raises
    ------
    FormatError
        When the file is not a readable checkpoint.
    UnsafeCheckpointError
        When a pickle needs globals that weights-only unpickling refuses.

    Examples
    --------
    >>> import tempfile, pathlib, torch
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder, "w.pt")
    ...     torch.save({"epoch": 1, "model": {"w": torch.ones(2)}}, path)
    ...     read_checkpoint(path).content["epoch"]
    1
    """
    checkpoint_format = sniff_format(path)
    logger.debug("reading %s as %s", path, checkpoint_format.value)
    if isinstance(path, FileRegion):
        content = safetensors_file.read(path, map_location=map_location)
    else:
        content = READERS[checkpoint_format](
            path, map_location=map_location, trust=trust
        )
    metadata: Mapping[str, str] = {}
    if checkpoint_format is CheckpointFormat.SAFETENSORS:
        metadata = safetensors_file.header_metadata(path)
    return Checkpoint(path, checkpoint_format, content, metadata)


def read_state_dict(
    path: WeightsSource,
    *,
    key: str | None = None,
    map_location: str | torch.device = "cpu",
    trust: PickleTrust = NO_TRUST,
) -> StateDict:
    """Read the weights of a checkpoint file, unwrapping a training checkpoint.

    Parameters
    ----------
    path
        A checkpoint file or shard index.
    key
        Dotted key path of the weights inside a training checkpoint; found
        automatically when omitted.
    map_location
        Device for the tensors.
    trust
        What pickles may build beyond weights; see :func:`read_checkpoint`.

    Returns
    -------
    dict[str, torch.Tensor]

    Raises
    ------
    FormatError
        When the file is not a readable checkpoint or holds no weights.
    CheckpointError
        When several entries could be the weights and ``key`` is not given.
    UnsafeCheckpointError
        When a pickle needs globals that weights-only unpickling refuses.

    Examples
    --------
    >>> import tempfile, pathlib, torch
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder, "w.pt")
    ...     torch.save({"w": torch.ones(2)}, path)
    ...     read_state_dict(path)["w"].tolist()
    [1.0, 1.0]
    """
    checkpoint = read_checkpoint(path, map_location=map_location, trust=trust)
    tensors = unwrap(checkpoint.content, key=key, source=str(path)).tensors
    logger.info("read %d tensors from %s", len(tensors), path.name)
    return tensors


def _zip_format(path: Path) -> CheckpointFormat:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except DAMAGED_FILE_ERRORS as err:
        hint = "The file is truncated or damaged; download it again."
        raise FormatError(str(path), _EXPECTED, f"a damaged zip ({err})", hint) from err
    if names and all(name.endswith(".npy") for name in names):
        return CheckpointFormat.NUMPY_NPZ
    tails = {"/".join(name.split("/")[1:]) for name in names}
    if "constants.pkl" in tails or any(t.startswith("code/") for t in tails):
        return CheckpointFormat.TORCHSCRIPT
    if "data.pkl" in tails:
        return CheckpointFormat.TORCH_ZIP
    hint = "Extract it and point zooload at the checkpoint inside."
    raise FormatError(str(path), _EXPECTED, "a zip archive of other files", hint)


def describe_bytes(head: bytes) -> str:
    """Say in words what a file that is no checkpoint seems to be.

    Examples
    --------
    >>> describe_bytes(b"<!DOCTYPE html><html>")
    'an HTML page'
    >>> describe_bytes(b"")
    'an empty file'
    """
    if not head:
        return "an empty file"
    if head[257:262] == b"ustar":
        return "a tar archive"
    text = head.lstrip()[:64].lower()
    for prefix, description in _DESCRIPTIONS:
        if text.startswith(prefix):
            return description
    if head[8:9] == b"{":
        return "a truncated safetensors file (its header is cut short)"
    if _is_json(head):
        return "a JSON document"
    return "none of the known formats (first bytes: " + head[:16].hex(" ") + ")"


def _is_json(head: bytes) -> bool:
    try:
        json.loads(head)
    except ValueError:
        return head.lstrip()[:1] in {b"{", b"["}
    return True


def _next_step(head: bytes) -> str:
    text = head.lstrip()[:64].lower()
    if text.startswith(b"version https://git-lfs"):
        return "Run `git lfs pull` in the repository, or download the real file."
    if text.startswith((b"<!doctype html", b"<html")):
        return "The server sent a web page: check the URL and any login it needs."
    if not head:
        return "The download is empty; download it again."
    if head[8:9] == b"{":
        return "The file is cut short; download it again."
    return "Check that the URL or path points at the weights file."


_DESCRIPTIONS: tuple[tuple[bytes, str], ...] = (
    (b"<!doctype html", "an HTML page"),
    (b"<html", "an HTML page"),
    (b"version https://git-lfs", "a Git LFS pointer, not the file it points to"),
    (b"\x1f\x8b", "a gzip file"),
    (b"bzh", "a bzip2 file"),
    (b"\xfd7zxz", "an xz file"),
    (b"pk\x05\x06", "an empty zip archive"),
)
