"""Reader for safetensors files.

The file is read into memory rather than mapped (KL-003 in
docs/KNOWN_LIMITATIONS.md). On the meta device only the header is read,
which is how :func:`zooload.inspect` sizes up large files cheaply. Tied
tensors that :func:`zooload.convert` stored once come back under each of
their names, from the aliases recorded in the metadata (:data:`ALIASES_KEY`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from zooload.errors import FormatError
from zooload.formats.common import DAMAGED_FILE_ERRORS, NO_TRUST, PickleTrust, StateDict

_HINT = "The file is truncated or damaged; download it again."
ALIASES_KEY = "zooload.aliases"
"""Metadata key of ``{alias: stored name}`` for tied tensors, as JSON."""
_READ_ERRORS: tuple[type[Exception], ...] = (SafetensorError, *DAMAGED_FILE_ERRORS)


def read(
    path: Path, *, map_location: str | torch.device, trust: PickleTrust = NO_TRUST
) -> StateDict:
    """Read every tensor of a safetensors file (no pickle is involved).

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
    device = str(torch.device(map_location))
    tensors = _header_tensors(path) if device == "meta" else _load(path, device)
    return _with_aliases(tensors, header_metadata(path), path)


def _load(path: Path, device: str) -> StateDict:
    try:
        return dict(load_file(path, device=device))
    except _READ_ERRORS as err:
        seen = f"a damaged safetensors file ({err})"
        raise FormatError(
            str(path), "a readable safetensors file", seen, _HINT
        ) from err


_MAX_HEADER_BYTES = 100 * 1024 * 1024


def looks_like_header(head: bytes, size: int) -> bool:
    """Whether a file's first bytes start a safetensors header that fits in it.

    Examples
    --------
    >>> looks_like_header((2).to_bytes(8, "little") + b"{}", 10)
    True
    >>> looks_like_header(b"PK" + bytes(8), 10)
    False
    """
    if len(head) < 9:
        return False
    header_length = int.from_bytes(head[:8], "little")
    if header_length > min(size - 8, _MAX_HEADER_BYTES):
        return False
    return head[8:9] == b"{"


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
        seen = f"a damaged safetensors file ({err})"
        raise FormatError(
            str(path), "a readable safetensors file", seen, _HINT
        ) from err


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
        seen = f"a damaged safetensors file ({err})"
        raise FormatError(
            str(path), "a readable safetensors file", seen, _HINT
        ) from err


def header_metadata(path: Path) -> Mapping[str, str]:
    """The free-text metadata of a safetensors header (``__metadata__``)."""
    try:
        with safe_open(path, framework="pt") as handle:
            return dict(handle.metadata() or {})
    except _READ_ERRORS as err:
        seen = f"a damaged safetensors file ({err})"
        raise FormatError(
            str(path), "a readable safetensors file", seen, _HINT
        ) from err


def _with_aliases(
    tensors: StateDict, metadata: Mapping[str, str], path: Path
) -> StateDict:
    """Add the alias names of tied tensors, each pointing at its stored tensor."""
    try:
        aliases = json.loads(metadata.get(ALIASES_KEY, "{}"))
        tied = {alias: tensors[stored] for alias, stored in aliases.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        seen = f"a file whose {ALIASES_KEY} metadata is damaged ({err!r})"
        raise FormatError(
            str(path), "a readable safetensors file", seen, _HINT
        ) from err
    return {**tensors, **tied}
