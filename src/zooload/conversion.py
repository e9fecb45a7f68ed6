"""Convert: write any readable checkpoint as one safetensors file.

safetensors stores each tensor's bytes once and refuses two names for one
storage, which is what tied weights are (a language model's input embedding
and output projection, for instance). Such a name is written once, and the
other names are recorded as aliases in the file's metadata under
:data:`~zooload.formats.safetensors_file.ALIASES_KEY`; zooload's reader gives
them back as one tensor under every name. Other readers of the file see the
first name only. Tensors that overlap without being the same view are stored
as copies.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from zooload.errors import ConfigError
from zooload.formats.safetensors_file import ALIASES_KEY
from zooload.retrieval import PathOrUrl, load_state_dict

logger = logging.getLogger(__name__)


class Precision(str, enum.Enum):
    """The floating-point dtypes a conversion can cast to."""

    FP16 = "fp16"
    BF16 = "bf16"
    FP32 = "fp32"


_TORCH_DTYPES = {
    Precision.FP16: torch.float16,
    Precision.BF16: torch.bfloat16,
    Precision.FP32: torch.float32,
}


def convert(
    source: PathOrUrl,
    dest: str | os.PathLike[str],
    *,
    dtype: Precision | str | None = None,
    key: str | None = None,
    trust_pickle: bool = False,
    allow_globals: Sequence[str] = (),
    overwrite: bool = False,
    cache_dir: PathOrUrl | None = None,
) -> Path:
    """Write the weights of any readable checkpoint to a safetensors file.

    The source is read as :func:`zooload.load_state_dict` reads it (any
    format, a training checkpoint unwrapped). Tied tensors keep one copy and
    every name (see :mod:`zooload.conversion`). The file is written beside
    ``dest`` under a temporary name and renamed into place, so ``dest`` is
    never half written.

    Parameters
    ----------
    source
        A checkpoint file, folder, archive or URL.
    dest
        The safetensors file to write.
    dtype
        ``"fp16"``, ``"bf16"`` or ``"fp32"``: cast floating-point tensors to
        it; integer and boolean tensors keep their dtype. ``None`` keeps
        every dtype.
    key
        Dotted key path of the weights in a training checkpoint.
    trust_pickle, allow_globals
        As for :func:`zooload.load_state_dict`.
    overwrite
        Replace ``dest`` if it exists.
    cache_dir
        Cache root for remote sources.

    Returns
    -------
    pathlib.Path
        ``dest``.

    Raises
    ------
    ConfigError
        When ``dest`` exists (without ``overwrite``), its folder does not, or
        ``dtype`` is not one of the choices.
    FormatError, CheckpointError, UnsafeCheckpointError, DownloadError
        As for :func:`zooload.load_state_dict`.

    Examples
    --------
    >>> import tempfile, pathlib, torch, zooload
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     shared = torch.ones(2, 2)
    ...     source = pathlib.Path(folder, "tied.pt")
    ...     torch.save({"embed": shared, "head": shared}, source)
    ...     dest = convert(source, pathlib.Path(folder, "tied.safetensors"),
    ...                    dtype="fp16", cache_dir=folder)
    ...     weights = zooload.load_state_dict(dest, cache_dir=folder)
    ...     weights["head"].dtype, weights["head"] is weights["embed"]
    (torch.float16, True)
    """
    target = _checked_destination(Path(dest), overwrite=overwrite)
    precision = _precision(dtype)
    tensors = load_state_dict(
        source,
        key=key,
        trust_pickle=trust_pickle,
        allow_globals=allow_globals,
        cache_dir=cache_dir,
    )
    write_safetensors(tensors, target, dtype=precision, overwrite=overwrite)
    logger.info("converted %s (%d tensors) to %s", source, len(tensors), target)
    return target


def write_safetensors(
    tensors: Mapping[str, torch.Tensor],
    dest: Path,
    *,
    dtype: Precision | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``tensors`` atomically, tied ones once with their aliases.

    Raises
    ------
    ConfigError
        When ``dest`` exists (without ``overwrite``) or its folder does not.

    Examples
    --------
    >>> import tempfile, pathlib, torch
    >>> from safetensors import safe_open
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     shared = torch.ones(2)
    ...     dest = write_safetensors({"a": shared, "b": shared},
    ...                              pathlib.Path(folder, "w.safetensors"))
    ...     with safe_open(dest, framework="pt") as handle:
    ...         list(handle.keys()), handle.metadata()
    (['a'], {'zooload.aliases': '{"b": "a"}'})
    """
    target = _checked_destination(dest, overwrite=overwrite)
    unique, aliases = split_aliases(tensors)
    if dtype is not None:
        unique = {name: _cast(tensor, dtype) for name, tensor in unique.items()}
    metadata = {ALIASES_KEY: json.dumps(aliases)} if aliases else None
    handle, partial = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".partial"
    )
    os.close(handle)
    try:
        save_file(storable(unique), partial, metadata=metadata)
        Path(partial).replace(target)
    finally:
        Path(partial).unlink(missing_ok=True)
    return target


def split_aliases(
    tensors: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Separate tied names: ``(one tensor per view, {alias: first name})``.

    Two names are tied when they are the same view of the same storage: same
    data pointer, offset, shape, strides and dtype.

    Examples
    --------
    >>> shared = torch.ones(2)
    >>> unique, aliases = split_aliases({"a": shared, "b": shared,
    ...                                  "c": torch.ones(2)})
    >>> sorted(unique), aliases
    (['a', 'c'], {'b': 'a'})
    """
    first: dict[tuple[object, ...], str] = {}
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for name, tensor in tensors.items():
        view = _view_of(tensor)
        if view is not None and view in first:
            aliases[name] = first[view]
            continue
        if view is not None:
            first[view] = name
        unique[name] = tensor
    return unique, aliases


def _view_of(tensor: torch.Tensor) -> tuple[object, ...] | None:
    """What makes two tensors one; ``None`` for tensors without storage."""
    pointer = tensor.untyped_storage().data_ptr()
    if pointer == 0 or tensor.is_meta:
        return None
    return (
        pointer,
        tensor.storage_offset(),
        tuple(tensor.shape),
        tensor.stride(),
        tensor.dtype,
        tensor.device,
    )


def storable(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, each with storage of its own (safetensors' rule).

    Examples
    --------
    >>> shared = torch.ones(4)
    >>> stored = storable({"a": shared[:2], "b": shared[2:]})
    >>> stored["a"].data_ptr() == stored["b"].data_ptr()
    False
    """
    stored: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in tensors.items():
        plain = tensor.detach().cpu().contiguous()
        pointer = plain.untyped_storage().data_ptr()
        stored[name] = plain.clone() if pointer in seen else plain
        seen.add(pointer)
    return stored


def _cast(tensor: torch.Tensor, precision: Precision) -> torch.Tensor:
    if not tensor.is_floating_point():
        return tensor
    return tensor.to(_TORCH_DTYPES[precision])


def _precision(value: Precision | str | None) -> Precision | None:
    if value is None:
        return None
    try:
        return Precision(value)
    except ValueError as err:
        choices = ", ".join(p.value for p in Precision)
        message = f"unknown dtype {value!r}; choose one of {choices}."
        raise ConfigError(message) from err


def _checked_destination(dest: Path, *, overwrite: bool) -> Path:
    if dest.exists() and not overwrite:
        message = f"{dest} exists already; remove it, or pass overwrite=True."
        raise ConfigError(message)
    if not dest.parent.is_dir():
        message = f"cannot write {dest}: {dest.parent} is not a folder; create it."
        raise ConfigError(message)
    return dest
