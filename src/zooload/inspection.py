"""Inspect: what a checkpoint holds, for people debugging one.

:func:`inspect` reads a checkpoint (or an archive or folder) without loading
it into any model and summarises it: the format, the nested structure of a
training checkpoint and the key that holds the weights, the tensors with
their shapes and dtypes, counts and bytes per dtype, and the metadata and
manifest. A training checkpoint with several sets of weights (``state_dict``
and ``state_dict_ema``) is summarised with its candidate keys, so that the
user can pick one with ``key=``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from zooload.formats import Checkpoint, PickleTrust, read_checkpoint
from zooload.formats.common import shown_path
from zooload.manifest import Manifest, describe
from zooload.report import collapse_names
from zooload.retrieval import PathOrUrl, fetch_source
from zooload.settings import resolve_options
from zooload.unwrap import describe_structure, find_weights, unwrap

logger = logging.getLogger(__name__)

_TABLE_ROWS = 40


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One tensor of a checkpoint: name, shape, dtype and size in bytes."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int


@dataclass(frozen=True, slots=True)
class FileInfo:
    """One checkpoint file: its format, structure, weights key and tensors.

    When the file holds several sets of weights and no ``key=`` picked one,
    ``weights_key`` is empty, ``tensors`` is empty, ``candidates`` lists the
    keys that could be the weights and ``candidate_tensors`` their tensor
    counts.
    """

    path: Path
    format: str
    weights_key: str
    structure: tuple[str, ...]
    tensors: tuple[TensorInfo, ...]
    metadata: Mapping[str, str]
    candidates: tuple[str, ...] = ()
    candidate_tensors: tuple[int, ...] = ()

    @property
    def choice(self) -> str:
        """The sentence listing the candidate keys, or ``""`` without any."""
        if not self.candidates:
            return ""
        listed = ", ".join(
            f"{key!r} ({count} tensors)"
            for key, count in zip(self.candidates, self.candidate_tensors, strict=True)
        )
        return f"several sets of weights: {listed}; pass key= to pick one"


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """What a checkpoint, archive or folder holds.

    ``str()`` renders it for people; the attributes are for programs.
    """

    source: str
    files: tuple[FileInfo, ...]
    manifest: Manifest | None

    @property
    def tensors(self) -> tuple[TensorInfo, ...]:
        """Every tensor of every weight file."""
        return tuple(t for info in self.files for t in info.tensors)

    @property
    def parameters(self) -> int:
        """Total number of elements over all tensors."""
        return sum(_elements(t.shape) for t in self.tensors)

    @property
    def bytes_per_dtype(self) -> dict[str, int]:
        """Bytes of tensor data per dtype, largest first."""
        totals: Counter[str] = Counter()
        for tensor in self.tensors:
            totals[tensor.dtype] += tensor.nbytes
        return dict(totals.most_common())

    def __str__(self) -> str:
        return "\n".join(_render(self))


def inspect(
    source: PathOrUrl,
    *,
    key: str | None = None,
    trust_pickle: bool = False,
    allow_globals: Sequence[str] = (),
    cache_dir: PathOrUrl | None = None,
) -> CheckpointInfo:
    """Summarise a checkpoint without loading it into a model.

    Only what the summary needs is read. Weights that an archive keeps in
    place (see "Trees" in ``docs/CACHE.md``) stay there: inspecting a
    ``.tar`` reads their header from the archive and copies nothing.

    Parameters
    ----------
    source
        A checkpoint file, a folder or archive, or any URL
        :func:`zooload.load_url` accepts.
    key
        Dotted key path of the weights in a training checkpoint.
    trust_pickle
        Allow pickles to build any object (runs code from the file).
    allow_globals
        Names of the extra globals a pickle may build (``"mypkg.Config"``).
    cache_dir
        Cache root for remote sources.

    Returns
    -------
    CheckpointInfo
        Without ``key``, a file with several sets of weights has no tensors
        and lists its candidate keys instead (:attr:`FileInfo.candidates`).

    Raises
    ------
    FormatError, CheckpointError, UnsafeCheckpointError
        As for :func:`zooload.load_state_dict`.

    Examples
    --------
    >>> import tempfile, pathlib, torch
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder, "ckpt.pt")
    ...     torch.save({"epoch": 2, "model": {"w": torch.ones(2, 3)}}, path)
    ...     info = inspect(path, cache_dir=folder)
    ...     info.files[0].weights_key, info.parameters
    ('model', 6)
    """
    trust = PickleTrust(trust_pickle, tuple(allow_globals))
    # Not the public fetch(): it would copy the weights that a .tar or a
    # stored .zip keeps in place out of the archive, only to read a header.
    fetched = fetch_source(source, None, cache_dir, resolve_options())
    description = describe(fetched.root, archive=fetched.archive)
    files = tuple(
        _file_info(read_checkpoint(path, map_location="meta", trust=trust), key)
        for path in description.weights
    )
    return CheckpointInfo(str(source), files, description.manifest)


def _file_info(checkpoint: Checkpoint, key: str | None) -> FileInfo:
    candidates = find_weights(checkpoint.content) if key is None else []
    if len(candidates) > 1:
        return _undecided_file_info(checkpoint, candidates)
    unwrapped = unwrap(checkpoint.content, key=key, source=str(checkpoint.path))
    tensors = tuple(
        TensorInfo(
            name,
            tuple(tensor.shape),
            str(tensor.dtype).removeprefix("torch."),
            tensor.numel() * tensor.element_size(),
        )
        for name, tensor in unwrapped.tensors.items()
    )
    structure = (
        () if not unwrapped.key else tuple(describe_structure(checkpoint.content))
    )
    return FileInfo(
        shown_path(checkpoint.path),
        checkpoint.format.value,
        unwrapped.key,
        structure,
        tensors,
        dict(checkpoint.metadata),
    )


def _undecided_file_info(checkpoint: Checkpoint, candidates: list[str]) -> FileInfo:
    """The summary of a file whose weights only ``key=`` can pick."""
    source = str(checkpoint.path)
    counts = tuple(
        len(unwrap(checkpoint.content, key=key, source=source).tensors)
        for key in candidates
    )
    return FileInfo(
        shown_path(checkpoint.path),
        checkpoint.format.value,
        "",
        tuple(describe_structure(checkpoint.content)),
        (),
        dict(checkpoint.metadata),
        tuple(candidates),
        counts,
    )


def _elements(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _render(info: CheckpointInfo) -> list[str]:
    lines = [
        f"source      {info.source}",
        f"tensors     {len(info.tensors)}",
        f"parameters  {info.parameters:,}",
        "bytes       "
        + ", ".join(
            f"{dtype} {size:,}" for dtype, size in info.bytes_per_dtype.items()
        ),
    ]
    if info.manifest is not None:
        arch = info.manifest.architecture
        arch_name = arch.name if arch else "none"
        lines.append(f"manifest    {info.manifest.name} (architecture: {arch_name})")
    for file in info.files:
        lines.extend(_render_file(file))
    return lines


def _render_file(file: FileInfo) -> list[str]:
    lines = [f"file        {file.path.name} ({file.format})"]
    if file.weights_key:
        lines.append(f"weights     under key {file.weights_key!r} of:")
        lines.extend(f"              {line}" for line in file.structure)
    if file.candidates:
        lines.append(f"weights     {file.choice}")
        lines.extend(
            f"{'structure' if index == 0 else '':<12}{line}"
            for index, line in enumerate(file.structure)
        )
    lines.extend(f"metadata    {k}: {v}" for k, v in sorted(file.metadata.items()))
    groups = _grouped(file.tensors)
    for name, shape, dtype in groups[:_TABLE_ROWS]:
        lines.append(f"  {name:<48} {shape:<20} {dtype}")
    if len(groups) > _TABLE_ROWS:
        lines.append(f"  ... {len(groups) - _TABLE_ROWS} more")
    return lines


def _grouped(tensors: tuple[TensorInfo, ...]) -> list[tuple[str, str, str]]:
    """Rows of the tensor table; names differing only by index share a row."""
    by_signature: dict[tuple[str, ...], list[str]] = {}
    for tensor in tensors:
        signature = (str(list(tensor.shape)), tensor.dtype)
        by_signature.setdefault(signature, []).append(tensor.name)
    rows: list[tuple[str, str, str]] = []
    for (shape, dtype), names in by_signature.items():
        rows.extend((name, shape, dtype) for name in collapse_names(names))
    return rows
