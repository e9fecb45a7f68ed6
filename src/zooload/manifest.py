"""Describe: the manifest ``zooload.json`` and what an unpacked source holds.

The manifest sits at the root of an archive or folder and says which
architecture to build, which files hold the weights (with their sha256),
how to rename the keys, and which example inputs and outputs prove the
load. Its schema is :class:`Manifest`; ``docs/MANIFEST.md`` documents it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from zooload.errors import FormatError, HashMismatchError, ManifestError
from zooload.formats import CheckpointFormat, sniff_format
from zooload.formats.common import WeightsSource, shown_path
from zooload.hashing import file_digest
from zooload.trees import TreeFiles

logger = logging.getLogger(__name__)

MANIFEST_NAME = "zooload.json"
FORMAT_VERSION = 1
_SHA256_PATTERN = r"^[0-9a-f]{64}$"
_INCONSISTENT = (
    "The archive does not match its own manifest, so nothing was extracted; "
    "ask the publisher to re-pack it (zooload.pack writes consistent hashes)."
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileSpec(_Strict):
    """A file of the archive, relative to its root, with its sha256."""

    path: str = Field(min_length=1)
    sha256: str = Field(pattern=_SHA256_PATTERN)

    @field_validator("path")
    @classmethod
    def _stays_inside(cls, value: str) -> str:
        posix = PurePosixPath(value)
        if posix.is_absolute() or ".." in posix.parts or "\\" in value:
            message = "must be a relative path inside the archive, without '..'"
            raise ValueError(message)
        return value


class ArchitectureSpec(_Strict):
    """The architecture to build: a registered name and its keyword arguments.

    With ``code``, ``name`` is instead a class or function defined in that
    Python file of the archive, which runs only when the caller passes
    ``trust_code=True``.
    """

    name: str = Field(min_length=1)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    code: FileSpec | None = None


class ExamplesSpec(FileSpec):
    """A safetensors file of example inputs and the outputs they must give."""

    inputs: list[str] = Field(min_length=1)
    outputs: list[str] = Field(min_length=1)
    rtol: float = Field(default=1e-5, ge=0)
    atol: float = Field(default=1e-6, ge=0)


class RenameRule(_Strict):
    """Replace ``pattern`` (a regular expression) by ``replacement`` in names."""

    pattern: str
    replacement: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as err:
            message = f"is not a valid regular expression: {err}"
            raise ValueError(message) from err
        return value


class Metadata(BaseModel):
    """Free information about the model; the named fields are the usual ones."""

    model_config = ConfigDict(extra="allow", frozen=True)

    license: str | None = None
    description: str | None = None
    source: str | None = None


class Manifest(_Strict):
    """The content of ``zooload.json``.

    Examples
    --------
    >>> manifest = Manifest.model_validate({
    ...     "format_version": 1, "name": "demo",
    ...     "architecture": {"name": "silero-vad-16k"},
    ...     "weights": [{"path": "weights.safetensors", "sha256": "0" * 64}],
    ... })
    >>> manifest.weights[0].path
    'weights.safetensors'
    """

    format_version: Literal[1]
    name: str = Field(min_length=1)
    architecture: ArchitectureSpec | None = None
    weights: list[FileSpec] = Field(min_length=1)
    rename: list[RenameRule] = Field(default_factory=list)
    dtype: Literal["float32", "float16", "bfloat16", "float64"] | None = None
    examples: ExamplesSpec | None = None
    metadata: Metadata = Field(default_factory=Metadata)

    def files(self) -> list[FileSpec]:
        """Every file the manifest names: weights, examples, then code."""
        code = self.architecture.code if self.architecture else None
        optional = [spec for spec in (self.examples, code) if spec is not None]
        return [*self.weights, *optional]


@dataclass(frozen=True, slots=True)
class Description:
    """What a fetched source holds: its root, weight files and manifest.

    A weight file may lie inside the archive the tree came from (a
    :class:`~zooload.formats.common.FileRegion`); :meth:`file` finds any
    other file the manifest names the same way.
    """

    root: Path
    weights: tuple[WeightsSource, ...]
    manifest: Manifest | None
    files: TreeFiles | None = None

    def file(self, relative: str) -> WeightsSource:
        """The file at ``relative`` (a manifest path) under :attr:`root`."""
        path = self.root / relative
        located = self.files.locate(path) if self.files else None
        return located or path


def read_manifest(path: Path, *, source: str | None = None) -> Manifest:
    """Parse and validate a manifest file.

    Parameters
    ----------
    path
        A ``zooload.json`` file.
    source
        What to call it in messages (the archive's URL, say); the path by
        default.

    Returns
    -------
    Manifest

    Raises
    ------
    ManifestError
        When the file is not JSON or breaks the schema; ``field`` names the
        first offending field (for example ``weights.0.sha256``).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder, "zooload.json")
    ...     _ = path.write_text('{"format_version": 1}')
    ...     try:
    ...         read_manifest(path)
    ...     except ManifestError as err:
    ...         print(err.field)
    name
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        message = (
            f"{source or path} is not valid JSON ({err}); fix the file or re-pack "
            "the model."
        )
        raise ManifestError(message) from err
    try:
        return Manifest.model_validate(document)
    except ValidationError as err:
        raise _manifest_error(source or str(path), err) from err


def _manifest_error(source: str, err: ValidationError) -> ManifestError:
    problems = err.errors()
    first = problems[0]
    field = ".".join(str(part) for part in first["loc"])
    lines = [
        f"  {'.'.join(str(p) for p in problem['loc']) or '(root)'}: {problem['msg']}"
        for problem in problems
    ]
    details = "\n".join(lines)
    message = (
        f"{source} is not a valid zooload manifest:\n{details}\n"
        "Fix these fields (see docs/MANIFEST.md) or re-pack with zooload.pack."
    )
    return ManifestError(message, field=field)


def verify_manifest_files(
    root: Path,
    *,
    source: str | None = None,
    digests: Mapping[str, str] | None = None,
    covered_by_pin: bool = False,
    hash_file: Callable[[Path], str] = file_digest,
) -> None:
    """Check that every file a folder's manifest names exists and hashes right.

    Does nothing for a folder without a manifest. ``source`` names the
    archive in messages (its URL), since ``root`` may be a temporary folder.
    ``digests`` are the sha256 of files computed while they were extracted,
    by tree-relative name; those files are not read again. A file that
    stays in its archive (:mod:`zooload.trees`) is covered by the archive's
    own digest once it has been checked here at extraction. With
    ``covered_by_pin`` (the archive matched the caller's pin), only the
    files' presence is checked: the pin covers their bytes. ``hash_file``
    gives the digest of a file that is read (a local folder's files come
    from the digests recorded for them while they are unchanged).

    Raises
    ------
    ManifestError
        When the manifest is invalid or names a file that is absent.
    HashMismatchError
        When a file's sha256 differs from the manifest's.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     verify_manifest_files(pathlib.Path(folder))
    """
    files = TreeFiles.open(root)
    content = content_root(root)
    manifest_path = content / MANIFEST_NAME
    if not manifest_path.is_file():
        return
    label = f"{MANIFEST_NAME} of {source}" if source else str(manifest_path)
    manifest = read_manifest(manifest_path, source=label)
    for index, spec in enumerate(manifest.files()):
        path = content / spec.path
        name = path.relative_to(root).as_posix()
        shown = f"{spec.path} (named by {label})"
        known = (digests or {}).get(name)
        present = path.is_file() or name in files.index.in_place
        if not present:
            raise _absent(manifest, spec, index, label)
        if known is None and path.is_file() and not covered_by_pin:
            known = hash_file(path)
        if known is not None and known != spec.sha256:
            raise HashMismatchError(shown, spec.sha256, known, _INCONSISTENT)
    logger.debug("verified %d files named by %s", len(manifest.files()), manifest_path)


def _absent(
    manifest: Manifest, spec: FileSpec, index: int, label: str
) -> ManifestError:
    field = "examples.path" if spec is manifest.examples else f"weights.{index}.path"
    message = (
        f"{label} names {spec.path!r} ({field}), but the archive has no "
        "such file. Re-pack the model so that the file is included."
    )
    return ManifestError(message, field=field)


def describe(root: Path, *, archive: Path | None = None) -> Description:
    """Find the manifest and the weight files of a fetched source.

    Parameters
    ----------
    root
        A bare checkpoint file, or a folder (an extracted archive).
    archive
        The archive ``root`` was extracted from, where files that stay in
        it are read (see :mod:`zooload.trees`).

    Returns
    -------
    Description

    Raises
    ------
    ManifestError
        When a folder has an invalid manifest, or has no manifest and not
        exactly one checkpoint file (or shard index) to treat as the weights.

    Examples
    --------
    >>> import tempfile, pathlib, torch
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     torch.save({"w": torch.ones(1)}, pathlib.Path(folder, "weights.pt"))
    ...     _ = pathlib.Path(folder, "README.md").write_text("notes")
    ...     describe(pathlib.Path(folder)).weights[0].name
    'weights.pt'
    """
    if root.is_file():
        return Description(root=root.parent, weights=(root,), manifest=None)
    files = TreeFiles.open(root, archive)
    content = content_root(root)
    manifest_path = content / MANIFEST_NAME
    if manifest_path.is_file():
        manifest = read_manifest(manifest_path)
        weights = tuple(
            files.locate(content / spec.path) or content / spec.path
            for spec in manifest.weights
        )
        return Description(content, weights, manifest, files)
    weights = (_weights_without_manifest(content, files),)
    return Description(content, weights, None, files)


def content_root(root: Path) -> Path:
    """The folder that holds an archive's content.

    Archives made with ``tar czf model.tar.gz model/`` wrap everything in
    one top folder; when a folder holds nothing but one folder, that inner
    folder is the content.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     inner = pathlib.Path(folder, "model")
    ...     inner.mkdir()
    ...     content_root(pathlib.Path(folder)) == inner
    True
    """
    names = TreeFiles.open(root).top_level(root)
    only = root / names[0] if len(names) == 1 else None
    if only is not None and only.is_dir() and not only.is_symlink():
        return only
    return root


def _weights_without_manifest(root: Path, files: TreeFiles) -> WeightsSource:
    """The one checkpoint (or shard index) in a folder that has no manifest."""
    found = files.below(root)
    formats = {source: _format_or_none(source) for source in found}
    indexes = [p for p, f in formats.items() if f is CheckpointFormat.SHARDED_INDEX]
    candidates = indexes or [p for p, f in formats.items() if f is not None]
    if len(candidates) == 1:
        return candidates[0]
    shown = candidates or found
    names = (
        ", ".join(str(shown_path(p).relative_to(root)) for p in shown[:10]) or "none"
    )
    kind = "checkpoint files" if candidates else "files, none of them a checkpoint"
    message = (
        f"{root} has no {MANIFEST_NAME} and {len(shown)} {kind} ({names}); "
        f"zooload cannot tell which holds the weights. Add a {MANIFEST_NAME} "
        "(zooload.pack writes one) or point at the weights file itself."
    )
    raise ManifestError(message, field="(manifest)")


def _format_or_none(source: WeightsSource) -> CheckpointFormat | None:
    try:
        return sniff_format(source)
    except FormatError:
        return None
