"""Publish: write a model into an archive that :func:`zooload.load_url` loads.

The archive holds ``weights.safetensors``, an optional ``examples.safetensors``
(inputs and the outputs the model gives on them) and ``zooload.json`` naming
both with their sha256. Everything is written to a temporary name beside the
destination and renamed into place, so a failed pack leaves no half archive.

The layout is chosen for loading speed (see "Archives that load fast" in
``docs/CACHE.md``): tensor data is 64-byte aligned in the safetensors files,
and a ``.zip`` stores the weights uncompressed, at a 64-byte aligned offset
(they barely compress, and stored they are read in place from the archive)
while it deflates the small files. A ``.tar`` is not compressed at all and
is read in place too. A ``.tar.zst``, ``.tar.gz``, ``.tar.bz2`` and
``.tar.xz`` are compressed, because their names say so; zstd decodes about
three times as fast as gzip, and bzip2 and xz are slower still. A name that
promises an archive of another kind (``.rar``, ``.7z``, a bare ``.gz``) is
refused before anything is written, rather than taken for a folder.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import struct
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, Final

import torch
from torch import nn

from zooload.architectures import (
    Factory,
    build_without_parameters,
    resolve_architecture,
)
from zooload.archive import zstd_module
from zooload.conversion import storable
from zooload.errors import ConfigError, UnknownArchitectureError
from zooload.formats.safetensors_file import ALIGNMENT_BYTES, write_aligned
from zooload.hashing import file_digest
from zooload.loading import load_into
from zooload.manifest import FORMAT_VERSION, MANIFEST_NAME, Manifest
from zooload.mapping import RenameRules

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "weights.safetensors"
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
EXAMPLES_NAME = "examples.safetensors"
# Each compressor's own default level, as its command-line tool uses it.
ZSTD_LEVEL = 3
GZIP_LEVEL = 6
BZIP2_LEVEL = 9
# Final, so that the type checker sees the literal preset tarfile asks for.
XZ_PRESET: Final = 6
# Last suffixes of names that promise an archive pack does not write (also
# any suffix after ``.tar``). Taken for a folder, ``model.rar`` would be a
# directory that a publisher could upload without noticing.
ARCHIVE_LOOKING_SUFFIXES = frozenset(
    {
        ".7z",
        ".br",
        ".bz",
        ".bz2",
        ".gz",
        ".lz",
        ".lz4",
        ".lzma",
        ".lzo",
        ".rar",
        ".tb2",
        ".tbz",
        ".tlz",
        ".tz",
        ".xz",
        ".z",
        ".zst",
        ".zstd",
    }
)
# Names of single weights files: pack writes a folder or an archive, never
# one file, so ``model.safetensors`` would be a folder of that name.
WEIGHTS_FILE_SUFFIXES = frozenset(
    {".bin", ".ckpt", ".h5", ".onnx", ".pt", ".pth", ".safetensors", ".whl"}
)
Inputs = torch.Tensor | Sequence[torch.Tensor]
Writer = Callable[[Path, Path], None]


def pack(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    dest: str | os.PathLike[str],
    *,
    arch: str,
    arch_kwargs: Mapping[str, Any] | None = None,
    example_inputs: Inputs | None = None,
    rename: RenameRules | None = None,
    metadata: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> Path:
    """Write a model archive that :func:`zooload.load_url` can load and verify.

    Parameters
    ----------
    model_or_state_dict
        A module, or a state dict (keys as the checkpoint has them; ``rename``
        maps them onto the architecture at load time).
    dest
        ``*.zip`` (weights stored, other files deflated), ``*.tar``,
        ``*.tar.zst``/``*.tzst``, ``*.tar.gz``/``*.tgz``,
        ``*.tar.bz2``/``*.tbz2`` or ``*.tar.xz``/``*.txz`` for an archive; a
        name without an archive suffix (``model``, ``model.v2``) for a
        folder. A ``.zip`` or ``.tar`` loads fastest: the weights are mapped
        from the archive without a copy. Compression saves under 10 % on
        weights, and decoding costs time on every first load (zstd about
        1 GB/s, gzip about 0.35 GB/s here; bzip2 and xz a fraction of gzip's
        speed).
    arch
        The registered architecture name to record in the manifest.
    arch_kwargs
        Keyword arguments for the architecture.
    example_inputs
        A tensor or a sequence of tensors; the outputs the model computes on
        them are stored beside them and checked on every load.
    rename
        Ordered ``(pattern, replacement)`` rules from the state dict's names
        to the architecture's.
    metadata
        Free information: ``license``, ``description``, ``source``, ...
    name
        The model's name; defaults to ``arch``.

    Returns
    -------
    pathlib.Path
        ``dest``.

    Raises
    ------
    ConfigError
        When the destination exists, its name ends in an archive suffix that
        pack does not write (``.rar``, ``.7z``, ``.tar.lz4``, a bare
        ``.gz``...), the arguments do not form a valid manifest, or a
        ``.tar.zst`` is asked for and no zstd module is installed.
    IncompatibleStateDictError
        When example outputs are asked for and the state dict does not fit
        the architecture.

    Examples
    --------
    >>> import tempfile, pathlib, torch, zooload
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     model = zooload.zoo.silero_vad.SileroVad16k()
    ...     dest = pathlib.Path(folder, "vad.tar.gz")
    ...     pack(model, dest, arch="silero-vad-16k").name
    'vad.tar.gz'
    """
    target = Path(dest)
    writer = _writer_for(target)
    if target.exists():
        message = f"{target} exists already; remove it or choose another name."
        raise ConfigError(message)
    if not target.parent.is_dir():
        message = f"the folder {target.parent} does not exist; create it first."
        raise ConfigError(message)
    kwargs = dict(arch_kwargs or {})
    rules = [(str(getattr(p, "pattern", p)), r) for p, r in rename or ()]
    state_dict = _state_dict_of(model_or_state_dict)
    _check_fit(state_dict, arch, kwargs, rules)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".pack-") as staging:
        folder = Path(staging, "content")
        folder.mkdir()
        write_aligned(storable(state_dict), folder / WEIGHTS_NAME)
        document = _manifest(name or arch, arch, kwargs, rules, metadata, folder)
        if example_inputs is not None:
            model = _model_for_examples(model_or_state_dict, arch, kwargs, rules)
            document["examples"] = _write_examples(model, example_inputs, folder)
        _validated(document)
        (folder / MANIFEST_NAME).write_text(json.dumps(document, indent=2) + "\n")
        _write_destination(folder, target, staging=staging, writer=writer)
    logger.info("packed %s (%d tensors) into %s", arch, len(state_dict), target)
    return target


def _state_dict_of(
    source: nn.Module | Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    if isinstance(source, nn.Module):
        return dict(source.state_dict())
    return dict(source)


def _manifest(
    name: str,
    arch: str,
    kwargs: dict[str, Any],
    rules: list[tuple[str, str]],
    metadata: Mapping[str, Any] | None,
    folder: Path,
) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "architecture": {"name": arch, "kwargs": kwargs},
        "weights": [
            {"path": WEIGHTS_NAME, "sha256": file_digest(folder / WEIGHTS_NAME)}
        ],
        "rename": [{"pattern": p, "replacement": r} for p, r in rules],
        "metadata": dict(metadata or {}),
    }


def _check_fit(
    state_dict: Mapping[str, torch.Tensor],
    arch: str,
    kwargs: dict[str, Any],
    rules: list[tuple[str, str]],
) -> None:
    """Refuse to pack weights that the named architecture would not load.

    An architecture that is not registered here cannot be checked (it may
    live in a package the loading side installs); that is logged.
    """
    try:
        factory: Factory = resolve_architecture(arch)
    except UnknownArchitectureError:
        logger.warning(
            "architecture %r is not registered here, so pack cannot check that "
            "the weights fit it; register it before packing to check",
            arch,
        )
        return
    probe = build_without_parameters(factory, kwargs)
    load_into(probe, state_dict, rename=rules)


def _model_for_examples(
    source: nn.Module | Mapping[str, torch.Tensor],
    arch: str,
    kwargs: dict[str, Any],
    rules: list[tuple[str, str]],
) -> nn.Module:
    if isinstance(source, nn.Module) and not rules:
        return source
    factory: Factory = resolve_architecture(arch)
    model = build_without_parameters(factory, kwargs)
    load_into(model, _state_dict_of(source), rename=rules)
    return model


def _write_examples(model: nn.Module, inputs: Inputs, folder: Path) -> dict[str, Any]:
    given = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            result = model(*given)
    except (TypeError, ValueError, RuntimeError, IndexError) as err:
        shapes = [list(t.shape) for t in given]
        message = (
            f"the model cannot run on the example inputs (shapes {shapes}): "
            f"{err}. Give example_inputs that its forward() accepts."
        )
        raise ConfigError(message) from err
    finally:
        model.train(was_training)
    outputs = (result,) if isinstance(result, torch.Tensor) else tuple(result)
    tensors = {f"input.{i}": t for i, t in enumerate(given)}
    tensors |= {f"output.{i}": t for i, t in enumerate(outputs)}
    write_aligned(storable(tensors), folder / EXAMPLES_NAME)
    return {
        "path": EXAMPLES_NAME,
        "sha256": file_digest(folder / EXAMPLES_NAME),
        "inputs": [f"input.{i}" for i in range(len(given))],
        "outputs": [f"output.{i}" for i in range(len(outputs))],
    }


def _validated(document: dict[str, Any]) -> None:
    try:
        Manifest.model_validate(document)
    except ValueError as err:
        message = f"these arguments do not make a valid manifest: {err}"
        raise ConfigError(message) from err


def _write_destination(
    folder: Path, target: Path, *, staging: str, writer: Writer | None
) -> None:
    if writer is None:
        shutil.copytree(folder, Path(staging, "folder"))
        Path(staging, "folder").rename(target)
        return
    partial = Path(staging, "archive")
    writer(folder, partial)
    partial.replace(target)


def _writer_for(target: Path) -> Writer | None:
    """The writer of the archive ``target`` names; None for a folder.

    Raises
    ------
    ConfigError
        When the name ends in an archive suffix that pack does not write,
        or in a single weights file's suffix (``.safetensors``, ``.pt``...).
    """
    name = target.name.lower()
    for suffix, writer in _WRITERS.items():
        if name.endswith(suffix):
            return writer
    suffixes = PurePath(target.name).suffixes
    if suffixes[-1:] and suffixes[-1].lower() in WEIGHTS_FILE_SUFFIXES:
        message = (
            f"pack writes a folder or an archive, not a single {suffixes[-1]} "
            f"file ({target}); end the name with one of {', '.join(_WRITERS)}, "
            "or with no suffix for a folder. zooload.convert writes a single "
            "safetensors file."
        )
        raise ConfigError(message)
    if suffixes[-2:-1] and suffixes[-2].lower() == ".tar":
        asked = "".join(suffixes[-2:])
    elif suffixes[-1:] and suffixes[-1].lower() in ARCHIVE_LOOKING_SUFFIXES:
        asked = suffixes[-1]
    else:
        return None
    message = (
        f"pack cannot write a {asked} archive ({target}); end the name with "
        f"one of {', '.join(_WRITERS)}, or with no archive suffix for a folder."
    )
    raise ConfigError(message)


def _write_tar_gz(folder: Path, archive: Path) -> None:
    # A fixed gzip timestamp, like the fixed member metadata below, makes the
    # same weights pack to the same bytes, so that publishers can pin them.
    with (
        archive.open("wb") as raw,
        gzip.GzipFile(
            fileobj=raw, mode="wb", mtime=0, compresslevel=GZIP_LEVEL
        ) as compressed,
        tarfile.open(fileobj=compressed, mode="w") as tar,
    ):
        _add_to_tar(tar, folder)


def _write_tar(folder: Path, archive: Path) -> None:
    with tarfile.open(archive, "w") as tar:
        _add_to_tar(tar, folder)


def _write_tar_bz2(folder: Path, archive: Path) -> None:
    # A bzip2 stream records no name and no time: with the fixed member
    # metadata, the same weights pack to the same bytes.
    with tarfile.open(archive, "w:bz2", compresslevel=BZIP2_LEVEL) as tar:
        _add_to_tar(tar, folder)


def _write_tar_xz(folder: Path, archive: Path) -> None:
    # Python's lzma encoder runs on one thread, and an xz stream records no
    # time, so the output depends on the input and the preset alone.
    with tarfile.open(archive, "w:xz", preset=XZ_PRESET) as tar:
        _add_to_tar(tar, folder)


def _add_to_tar(tar: tarfile.TarFile, folder: Path) -> None:
    for path in sorted(folder.iterdir()):
        tar.add(path, arcname=path.name, filter=_reproducible)


def _reproducible(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Member metadata that does not depend on who packed, or when."""
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o644 if info.isfile() else 0o755
    return info


def _write_tar_zst(folder: Path, archive: Path) -> None:
    zstd = zstd_module()
    if zstd is None:
        message = (
            f"cannot write {archive.name}: this Python has no zstd module; "
            "install zooload[fast] (it brings backports.zstd), or pack to .zip."
        )
        raise ConfigError(message)
    # One thread and a fixed level: the same weights pack to the same bytes.
    with (
        archive.open("wb") as raw,
        zstd.ZstdFile(raw, mode="wb", level=ZSTD_LEVEL) as compressed,
        tarfile.open(fileobj=compressed, mode="w") as tar,
    ):
        _add_to_tar(tar, folder)


def _write_zip(folder: Path, archive: Path) -> None:
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        for path in sorted(folder.iterdir()):
            # Weights are stored: fp32 data deflates by a few percent only,
            # and inflating it would be the slowest step of every load.
            # Stored, they are read in place from the zip, at an aligned
            # offset.
            stored = path.name == WEIGHTS_NAME
            info = zipfile.ZipInfo(path.name, date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
            info.file_size = path.stat().st_size
            if stored:
                info.extra = _alignment_extra(
                    zipped.fp.tell() if zipped.fp else 0, info
                )
            with path.open("rb") as source, zipped.open(info, "w") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)


def _alignment_extra(header_offset: int, info: zipfile.ZipInfo) -> bytes:
    """An extra field that pads the member's data to a 64-byte boundary.

    The data starts after the 30-byte local header, the name and the extra
    fields (zipfile adds a 20-byte zip64 field for members near 4 GiB). The
    padding field's ID, 0xD935, is the one Android's zipalign uses; readers
    skip extra fields they do not know.
    """
    zip64 = 20 if info.file_size * 1.05 > zipfile.ZIP64_LIMIT else 0
    before = header_offset + 30 + len(info.filename.encode()) + zip64 + 6
    padding = -before % ALIGNMENT_BYTES
    return struct.pack("<HHH", 0xD935, 2 + padding, ALIGNMENT_BYTES) + bytes(padding)


_WRITERS: dict[str, Writer] = {
    ".tar.gz": _write_tar_gz,
    ".tgz": _write_tar_gz,
    ".tar.zst": _write_tar_zst,
    ".tzst": _write_tar_zst,
    ".tar.bz2": _write_tar_bz2,
    ".tbz2": _write_tar_bz2,
    ".tar.xz": _write_tar_xz,
    ".txz": _write_tar_xz,
    ".tar": _write_tar,
    ".zip": _write_zip,
}
