"""Reader and writer for safetensors files.

The reader maps the file privately (copy-on-write) and returns tensors that
are views of the mapping: no byte is copied until someone writes to a
tensor, and then only the pages written to are, so the file itself never
changes. A file stored uncompressed inside an archive is mapped where it
lies, as a region of the archive. The header is checked against the
format's rules (:func:`read_header`) before any view is made. On the meta
device only the header is read, which is how :func:`zooload.inspect` sizes
up large files cheaply. Tied tensors that
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
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch

from zooload.errors import FormatError
from zooload.formats.common import (
    DAMAGED_FILE_ERRORS,
    NO_TRUST,
    FileRegion,
    PickleTrust,
    StateDict,
    WeightsSource,
)

logger = logging.getLogger(__name__)

ALIGNMENT_BYTES = 64
ALIASES_KEY = "zooload.aliases"
"""Metadata key of ``{alias: stored name}`` for tied tensors, as JSON."""
_LENGTH = struct.Struct("<Q")
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_HINT = "The file is truncated or damaged; download it again."


def read(
    path: WeightsSource,
    *,
    map_location: str | torch.device,
    trust: PickleTrust = NO_TRUST,
) -> StateDict:
    """Map a safetensors file and return its tensors (no pickle is involved).

    ``path`` is a file, or a :class:`~zooload.formats.common.FileRegion`
    of an archive that stores the file uncompressed. On the CPU the tensors
    are views of a private, copy-on-write mapping. On another device they
    are moved there one at a time, so the mapping is the only copy on the
    host. On the meta device only the header is read.

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
    header = read_header(path)
    if device.type == "meta":
        tensors = {
            e.name: torch.empty(e.shape, dtype=e.dtype, device="meta")
            for e in header.entries
        }
        return _with_aliases(tensors, header, path)
    try:
        tensors = _mapped_tensors(path, header)
    except DAMAGED_FILE_ERRORS as err:
        raise _damaged(path, err) from err
    if device.type != "cpu":
        # One tensor at a time: the device never waits for a whole second
        # copy to be staged on the host.
        for name in list(tensors):
            tensors[name] = tensors[name].to(device)
    return _with_aliases(tensors, header, path)


def _with_aliases(
    tensors: StateDict, header: _Header, source: WeightsSource
) -> StateDict:
    """Add the alias names of tied tensors, each pointing at its stored tensor."""
    try:
        aliases = json.loads(header.metadata.get(ALIASES_KEY, "{}"))
        tied = {alias: tensors[stored] for alias, stored in aliases.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        seen = f"a file whose {ALIASES_KEY} metadata is damaged ({err!r})"
        raise FormatError(
            str(source), "a readable safetensors file", seen, _HINT
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


def _damaged(source: WeightsSource, err: Exception | str) -> FormatError:
    seen = f"a damaged safetensors file ({err})"
    return FormatError(str(source), "a readable safetensors file", seen, _HINT)


@dataclass(frozen=True, slots=True)
class _Entry:
    """Where one tensor lies, relative to the start of the data, and what it is."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Header:
    """A checked header: its tensors, its metadata, where its data starts."""

    entries: tuple[_Entry, ...]
    metadata: Mapping[str, str]
    data_start: int


def read_header(source: WeightsSource) -> _Header:
    """Read and check the header of a safetensors file or region.

    The checks are the format's own rules: a JSON object after the length,
    known dtypes, offsets that cover the data exactly, without holes or
    overlaps, and sizes that fit the shapes; nothing is mapped before they
    pass.

    Raises
    ------
    FormatError
        When the header breaks a rule, naming the rule.
    """
    path, offset, size = _extent(source)
    try:
        with path.open("rb") as stream:
            stream.seek(offset)
            raw_length = stream.read(_LENGTH.size)
            if len(raw_length) < _LENGTH.size:
                raise _damaged(source, "the header is cut short")
            (length,) = _LENGTH.unpack(raw_length)
            if length > min(size - _LENGTH.size, _MAX_HEADER_BYTES):
                raise _damaged(source, f"the header claims {length} bytes")
            document = json.loads(stream.read(length))
    except (OSError, ValueError) as err:
        raise _damaged(source, f"unreadable header: {err}") from err
    return _checked_header(source, document, _LENGTH.size + length, size)


def _extent(source: WeightsSource) -> tuple[Path, int, int]:
    """The file holding ``source``, and where in it ``source`` starts and ends."""
    if isinstance(source, FileRegion):
        return source.path, source.offset, source.size
    try:
        return source, 0, source.stat().st_size
    except OSError as err:
        raise _damaged(source, err) from err


def _checked_header(
    source: WeightsSource, document: object, data_start: int, size: int
) -> _Header:
    if not isinstance(document, dict):
        raise _damaged(source, "the header is not a JSON object")
    metadata = document.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _damaged(source, "the header's __metadata__ is not text to text")
    entries = tuple(_entry(source, name, spec) for name, spec in document.items())
    _check_coverage(source, entries, size - data_start)
    return _Header(entries, metadata, data_start)


def _entry(source: WeightsSource, name: str, spec: object) -> _Entry:
    malformed = f"the header entry {name!r} is malformed or has an unknown dtype"
    if not isinstance(spec, dict):
        raise _damaged(source, malformed)
    try:
        dtype = _DTYPES[spec["dtype"]]
        dims, offsets = list(spec["shape"]), list(spec["data_offsets"])
    except (KeyError, TypeError) as err:
        raise _damaged(source, malformed) from err
    if not (_are_counts(dims) and _are_counts(offsets) and len(offsets) == 2):
        raise _damaged(source, malformed)
    start, end = offsets
    itemsize = torch.empty(0, dtype=dtype).element_size()
    if start > end or math.prod(dims) * itemsize != end - start:
        reason = f"the header entry {name!r} spans {end - start} bytes, not its shape's"
        raise _damaged(source, reason)
    return _Entry(name, dtype, tuple(dims), start, end)


def _are_counts(values: list[object]) -> bool:
    """Whether every value is a non-negative int (JSON booleans are not)."""
    return all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values
    )


def _check_coverage(
    source: WeightsSource, entries: tuple[_Entry, ...], data_bytes: int
) -> None:
    """Tensors must tile the data exactly, as the format requires."""
    position = 0
    for entry in sorted(entries, key=lambda e: (e.start, e.end)):
        if entry.start != position:
            reason = f"the header's offsets overlap or leave a hole at {entry.name!r}"
            raise _damaged(source, reason)
        position = entry.end
    if position != data_bytes:
        reason = f"the header covers {position} of the {data_bytes} bytes of data"
        raise _damaged(source, reason)


def _mapped_tensors(source: WeightsSource, header: _Header) -> StateDict:
    """Views of a private mapping of the file, one per header entry."""
    path, offset, size = _extent(source)
    end = offset + size
    # shared=False maps the file MAP_PRIVATE: writes to a tensor copy the
    # page they touch and never reach the file. The mapping starts at the
    # file's first byte, so a view is as aligned as its offset in the file.
    storage = cast(
        torch.UntypedStorage,
        torch.UntypedStorage.from_file(str(path), shared=False, nbytes=end),
    )
    whole = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (end,), (1,))
    base = offset + header.data_start
    tensors = {e.name: _view(whole, e, base) for e in header.entries}
    logger.debug("mapped %d tensors of %s", len(tensors), source)
    return tensors


def _view(whole: torch.Tensor, entry: _Entry, base: int) -> torch.Tensor:
    raw = whole[base + entry.start : base + entry.end]
    itemsize = torch.empty(0, dtype=entry.dtype).element_size()
    if (base + entry.start) % itemsize:
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


def tensor_names(source: WeightsSource) -> list[str]:
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
    return [entry.name for entry in read_header(source).entries]


def header_metadata(source: WeightsSource) -> Mapping[str, str]:
    """The free-text metadata of a safetensors header (``__metadata__``)."""
    return dict(read_header(source).metadata)


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
