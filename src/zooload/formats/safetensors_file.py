"""Reader and writer for safetensors files.

The reader maps the file privately (copy-on-write) and returns tensors that
are views of the mapping: no byte is copied until someone writes to a
tensor, and then only the pages written to are, so the file itself never
changes. The header is checked by safetensors' own parser before any view is
made. On the meta device only the header is read, which is how
:func:`zooload.inspect` sizes up large files cheaply. Tied tensors that
:func:`zooload.convert` stored once come back under each of their names,
from the aliases recorded in the metadata (:data:`ALIASES_KEY`).

The writer lays tensor data out on 64-byte boundaries (see
:func:`write_aligned`): a tensor adopted in place from the mapping is only as
aligned as its offset in the file, and CPU kernels take other code paths,
with other rounding, on memory that is not 64-byte aligned.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import torch
from safetensors import SafetensorError, safe_open

from zooload.errors import FormatError
from zooload.formats.common import DAMAGED_FILE_ERRORS, NO_TRUST, PickleTrust, StateDict

logger = logging.getLogger(__name__)

ALIGNMENT_BYTES = 64
ALIASES_KEY = "zooload.aliases"
"""Metadata key of ``{alias: stored name}`` for tied tensors, as JSON."""
_LENGTH = struct.Struct("<Q")
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_HINT = "The file is truncated or damaged; download it again."
_READ_ERRORS: tuple[type[Exception], ...] = (SafetensorError, *DAMAGED_FILE_ERRORS)


def read(
    path: Path, *, map_location: str | torch.device, trust: PickleTrust = NO_TRUST
) -> StateDict:
    """Map a safetensors file and return its tensors (no pickle is involved).

    On the CPU the tensors are views of a private, copy-on-write mapping of
    the file. On another device they are moved there one at a time, so the
    mapping is the only copy on the host.

    Examples
    --------
    >>> import tempfile, pathlib, torch
    >>> from safetensors.torch import save_file
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder, "w.safetensors")
    ...     save_file({"w": torch.ones(2)}, path)
    ...     read(path, map_location="cpu")["w"].tolist()
    [1.0, 1.0]
    """
    device = torch.device(map_location)
    if device.type == "meta":
        return _with_aliases(_header_tensors(path), path)
    try:
        tensors = _mapped_tensors(path)
    except _READ_ERRORS as err:
        raise _damaged(path, err) from err
    if device.type != "cpu":
        # One tensor at a time: the device never waits for a whole second
        # copy to be staged on the host.
        for name in list(tensors):
            tensors[name] = tensors[name].to(device)
    return _with_aliases(tensors, path)


def _with_aliases(tensors: StateDict, path: Path) -> StateDict:
    """Add the alias names of tied tensors, each pointing at its stored tensor."""
    try:
        aliases = json.loads(header_metadata(path).get(ALIASES_KEY, "{}"))
        tied = {alias: tensors[stored] for alias, stored in aliases.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        seen = f"a file whose {ALIASES_KEY} metadata is damaged ({err!r})"
        raise FormatError(
            str(path), "a readable safetensors file", seen, _HINT
        ) from err
    return {**tensors, **tied}


def looks_like_header(head: bytes, size: int) -> bool:
    """Whether a file's first bytes start a safetensors header that fits in it.

    Examples
    --------
    >>> looks_like_header((2).to_bytes(8, "little") + b"{}", 10)
    True
    >>> looks_like_header(b"PK" + bytes(8), 10)
    False
    """
    if len(head) < _LENGTH.size + 1:
        return False
    (header_length,) = _LENGTH.unpack(head[: _LENGTH.size])
    if header_length > min(size - _LENGTH.size, _MAX_HEADER_BYTES):
        return False
    return head[_LENGTH.size : _LENGTH.size + 1] == b"{"


def _damaged(path: Path, err: Exception) -> FormatError:
    seen = f"a damaged safetensors file ({err})"
    return FormatError(str(path), "a readable safetensors file", seen, _HINT)


@dataclass(frozen=True, slots=True)
class _Entry:
    """Where one tensor lies in the file, and what it is."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


def _mapped_tensors(path: Path) -> StateDict:
    """Views of a private mapping of ``path``, one per header entry."""
    with safe_open(path, framework="pt"):
        # safetensors' parser checks the header: offsets in bounds, without
        # holes or overlaps, sizes that fit the shapes and dtypes.
        pass
    size = path.stat().st_size
    with path.open("rb") as stream:
        entries, data_start = _layout(stream)
    # shared=False maps the file MAP_PRIVATE: writes to a tensor copy the
    # page they touch and never reach the file.
    storage = cast(
        torch.UntypedStorage,
        torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size),
    )
    whole = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (size,), (1,))
    tensors = {e.name: _view(whole, e, data_start) for e in entries}
    logger.debug("mapped %d tensors of %s", len(tensors), path.name)
    return tensors


def _layout(stream: BinaryIO) -> tuple[list[_Entry], int]:
    """The header's entries and the offset where tensor data starts."""
    (length,) = _LENGTH.unpack(stream.read(_LENGTH.size))
    header = json.loads(stream.read(length))
    header.pop("__metadata__", None)
    entries = [
        _Entry(
            name,
            _DTYPES[spec["dtype"]],
            tuple(spec["shape"]),
            spec["data_offsets"][0],
            spec["data_offsets"][1],
        )
        for name, spec in header.items()
    ]
    return entries, _LENGTH.size + length


def _view(whole: torch.Tensor, entry: _Entry, data_start: int) -> torch.Tensor:
    raw = whole[data_start + entry.start : data_start + entry.end]
    itemsize = torch.empty(0, dtype=entry.dtype).element_size()
    if (data_start + entry.start) % itemsize:
        # A view cannot start between two elements of its own type; such a
        # tensor (a file written without alignment) is copied.
        raw = raw.clone()
    return raw.view(entry.dtype).reshape(entry.shape)


_DTYPE_NAMES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
    "C64": "complex64",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu",
}
# Some dtypes exist only in newer torch releases; the range we support starts
# at 2.5, so each is looked up rather than named directly.
_DTYPES = {
    code: getattr(torch, name)
    for code, name in _DTYPE_NAMES.items()
    if isinstance(getattr(torch, name, None), torch.dtype)
}


def _header_tensors(path: Path) -> StateDict:
    """Meta tensors with the shapes and dtypes the header declares."""
    try:
        with safe_open(path, framework="pt") as handle:
            slices = {name: handle.get_slice(name) for name in handle.keys()}  # noqa: SIM118
            return {
                name: torch.empty(
                    piece.get_shape(), dtype=_DTYPES[piece.get_dtype()], device="meta"
                )
                for name, piece in slices.items()
            }
    except _READ_ERRORS as err:
        raise _damaged(path, err) from err


def tensor_names(path: Path) -> list[str]:
    """The tensor names in a safetensors header, without reading any tensor.

    Raises
    ------
    FormatError
        When the header cannot be read.

    Examples
    --------
    >>> import tempfile, pathlib, torch
    >>> from safetensors.torch import save_file
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder, "w.safetensors")
    ...     save_file({"b": torch.ones(1), "a": torch.ones(1)}, path)
    ...     sorted(tensor_names(path))
    ['a', 'b']
    """
    try:
        with safe_open(path, framework="pt") as handle:
            return list(handle.keys())
    except _READ_ERRORS as err:
        raise _damaged(path, err) from err


def header_metadata(path: Path) -> Mapping[str, str]:
    """The free-text metadata of a safetensors header (``__metadata__``)."""
    try:
        with safe_open(path, framework="pt") as handle:
            return dict(handle.metadata() or {})
    except _READ_ERRORS as err:
        raise _damaged(path, err) from err


def write_aligned(
    tensors: Mapping[str, torch.Tensor],
    path: Path,
    *,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a safetensors file whose tensor data starts on 64-byte boundaries.

    The header is padded with spaces so that the data starts at a multiple
    of 64. The format allows no gaps between tensors, so alignment comes
    from the order: every tensor whose size is a multiple of 64 bytes comes
    first (largest first), which keeps each of them aligned; the others
    follow, and only those after the first of them may be unaligned. Those
    are biases and other small tensors, which a zero-copy load copies.

    Parameters
    ----------
    tensors
        Contiguous CPU tensors, each with storage of its own.
    path
        The file to write.
    metadata
        Free text stored as the header's ``__metadata__``.

    Examples
    --------
    >>> import tempfile, pathlib, torch
    >>> from safetensors.torch import load_file
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder, "w.safetensors")
    ...     write_aligned({"b": torch.ones(3), "w": torch.ones(16)}, path)
    ...     sorted(load_file(path))
    ['b', 'w']
    """
    ordered = sorted(tensors.items(), key=_placement)
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, tensor in ordered:
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _DTYPE_CODES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(_LENGTH.size + len(text)) % ALIGNMENT_BYTES)
    with path.open("xb") as stream:
        stream.write(_LENGTH.pack(len(text)) + text)
        for _, tensor in ordered:
            stream.write(_raw_bytes(tensor))


def _placement(item: tuple[str, torch.Tensor]) -> tuple[bool, int, str]:
    """Sort key: sizes that keep the next offset aligned first, large first."""
    name, tensor = item
    size = tensor.numel() * tensor.element_size()
    return (size % ALIGNMENT_BYTES != 0, -size, name)


def _raw_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return flat.numpy().data


_DTYPE_CODES = {dtype: code for code, dtype in _DTYPES.items()}
