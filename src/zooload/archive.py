"""Unpack: recognise archives by content and extract them safely, once.

An archive is extracted into a fresh folder under the cache's ``partial/``,
member by member, each checked against the rules in :data:`MEMBER_RULES`
before anything is written; only a complete, validated folder is renamed
into ``trees/<sha256>``. A refused or broken archive leaves nothing behind.
A zip file that is a torch checkpoint or TorchScript program is not an
archive to unpack: it is returned as the bare file it is.
"""

from __future__ import annotations

import bz2
import contextlib
import enum
import gzip
import io
import logging
import lzma
import posixpath
import shutil
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, cast

from zooload.cache import Cache
from zooload.errors import ArchiveError, UnsafeArchiveError, ZooloadError

logger = logging.getLogger(__name__)

COPY_CHUNK_BYTES = 1 << 20
_TAR_MAGIC_OFFSET = 257
_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP_MAGIC = b"PK\x05\x06"
_COMPRESSION_MAGIC = {
    b"\x1f\x8b": "gz",
    b"BZh": "bz2",
    b"\xfd7zXZ\x00": "xz",
}
_DECOMPRESSORS: dict[str, Callable[[Path], io.BufferedIOBase]] = {
    "gz": gzip.GzipFile,
    "bz2": bz2.BZ2File,
    "xz": lzma.LZMAFile,
}
# What the standard library raises on a truncated or corrupt archive. Our own
# errors are ValueErrors too, so every handler lets ZooloadError through first.
_READ_ERRORS: tuple[type[Exception], ...] = (
    tarfile.TarError,
    zipfile.BadZipFile,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    OSError,
    ValueError,
)


def _isal_opener() -> Callable[[Path], io.BufferedIOBase] | None:
    """isal's gzip reader, when the optional extra ``zooload[fast]`` is installed."""
    try:
        from isal import igzip
    except ImportError:
        return None
    opener: Callable[[Path], io.BufferedIOBase] = igzip.IGzipFile
    return opener


def _isal_errors() -> tuple[type[Exception], ...]:
    """What isal raises on a corrupt stream (not a zlib.error subclass)."""
    try:
        from isal import isal_zlib
    except ImportError:
        return ()
    # isal's stubs declare ``error`` as an instance; it is the exception class.
    return (cast(type[Exception], isal_zlib.error),)


_ISAL_GZIP = _isal_opener()
_READ_ERRORS += _isal_errors()


class ArchiveKind(str, enum.Enum):
    """What a downloaded file is, judged by its bytes."""

    TAR = "tar"
    ZIP = "zip"
    FILE = "file"


@dataclass(frozen=True, slots=True)
class ExtractionLimits:
    """Bounds on what one archive may extract; see ``SECURITY.md``.

    Attributes
    ----------
    max_members
        Members (files, folders, links) in one archive.
    max_total_bytes
        Bytes all members add up to, as their headers declare them.
    max_ratio
        Extracted bytes per byte of archive, once more than
        ``ratio_floor_bytes`` are extracted: model weights compress little
        (gzip saves about 10 %), a decompression bomb a thousandfold.

    Examples
    --------
    >>> ExtractionLimits(max_total_bytes=10 * 1024**3).max_ratio
    100.0
    """

    max_members: int = 100_000
    max_total_bytes: int = 256 * 1024**3
    max_ratio: float = 100.0
    ratio_floor_bytes: int = 64 * 1024**2


@dataclass(slots=True)
class _Extraction:
    """Book-keeping of one extraction: names seen and bytes written."""

    root: Path
    limits: ExtractionLimits
    regular_files: set[str] = field(default_factory=set)
    names: set[str] = field(default_factory=set)
    members: int = 0
    total_bytes: int = 0
    archive_bytes: int = 0


def sniff_archive(path: Path) -> ArchiveKind:
    """Tell a tar (plain or gz/bz2/xz), a zip, or a bare file by content.

    Parameters
    ----------
    path
        The file to look at.

    Returns
    -------
    ArchiveKind
        ``FILE`` for anything that is not an archive to unpack, torch zip
        checkpoints and TorchScript programs included.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder, "x.bin")
    ...     _ = path.write_bytes(b"not an archive")
    ...     sniff_archive(path).value
    'file'
    """
    with path.open("rb") as stream:
        head = stream.read(_TAR_MAGIC_OFFSET + 8)
    if head.startswith((_ZIP_MAGIC, _EMPTY_ZIP_MAGIC)):
        return ArchiveKind.FILE if _is_torch_zip(path) else ArchiveKind.ZIP
    compression = _compression_of(head)
    if compression:
        head = _decompressed_head(path, compression)
    if head[_TAR_MAGIC_OFFSET : _TAR_MAGIC_OFFSET + 5] == b"ustar":
        return ArchiveKind.TAR
    return ArchiveKind.FILE


def _compression_of(head: bytes) -> str | None:
    for magic, name in _COMPRESSION_MAGIC.items():
        if head.startswith(magic):
            return name
    return None


def _decompressed_head(path: Path, compression: str) -> bytes:
    try:
        with _DECOMPRESSORS[compression](path) as stream:
            return stream.read(_TAR_MAGIC_OFFSET + 8)
    except _READ_ERRORS as err:
        message = f"{path} is a damaged {compression} file ({err}); download it again."
        raise ArchiveError(message) from err


def _is_torch_zip(path: Path) -> bool:
    """Whether a zip is a checkpoint: torch (``data.pkl``), TorchScript, npz.

    A zip whose directory cannot be read counts as a checkpoint too, so
    that the format reader, not the extractor, says it is damaged.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return True
    if names and all(name.endswith(".npy") for name in names):
        return True
    tails = {PurePosixPath(name).parts[1:2] for name in names}
    return ("data.pkl",) in tails or ("constants.pkl",) in tails


def extract_to_cache(
    archive: Path,
    sha256: str,
    cache: Cache,
    *,
    validate: Callable[[Path], None] | None = None,
    limits: ExtractionLimits | None = None,
    source: str | None = None,
) -> Path:
    """Extract ``archive`` into ``trees/<sha256>`` once, and return that folder.

    Parameters
    ----------
    archive
        A tar (plain, gz, bz2, xz) or zip file.
    sha256
        Its digest, which names the tree.
    cache
        The cache that holds the tree.
    validate
        Called on the complete folder before it is published; whatever it
        raises aborts the extraction and leaves nothing behind.
    limits
        Bounds on member count and bytes; defaults to :class:`ExtractionLimits`.
    source
        What to call the archive in messages (its URL); its path by default.

    Returns
    -------
    Path
        The published tree.

    Raises
    ------
    UnsafeArchiveError
        When a member breaks a rule; names the member and the rule.
    ArchiveError
        When the archive is truncated or corrupt.

    Examples
    --------
    >>> import io, tarfile, tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder, "a.tar")
    ...     with tarfile.open(path, "w") as tar:
    ...         info = tarfile.TarInfo("hello.txt"); info.size = 2
    ...         tar.addfile(info, io.BytesIO(b"hi"))
    ...     tree = extract_to_cache(path, "ab" * 32, Cache.open(folder))
    ...     (tree / "hello.txt").read_text()
    'hi'
    """
    tree = cache.tree_path(sha256)
    if tree.is_dir():
        logger.debug("tree of %s already extracted", sha256)
        return tree
    with cache.locked(sha256):
        if tree.is_dir():
            return tree
        partial = cache.new_partial_path("tree")
        try:
            state = _Extraction(partial, limits or ExtractionLimits())
            count = _extract(archive, state, source or archive.name)
            if validate is not None:
                validate(partial)
            published = cache.publish_tree(partial, sha256)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    logger.info(
        "extracted %d members of %s into %s", count, source or archive, published
    )
    return published


def _extract(archive: Path, state: _Extraction, source: str) -> int:
    state.root.mkdir()
    state.archive_bytes = archive.stat().st_size
    kind = sniff_archive(archive)
    extractor = _EXTRACTORS.get(kind)
    if extractor is None:
        message = f"{source} is not a tar or zip archive; nothing to extract."
        raise ArchiveError(message)
    try:
        return extractor(archive, state)
    except ZooloadError:
        raise
    except _READ_ERRORS as err:
        message = (
            f"{source} is truncated or corrupt ({err}); nothing was "
            "extracted. Download it again, or ask the publisher for a good copy."
        )
        raise ArchiveError(message) from err


def _extract_tar(archive: Path, state: _Extraction) -> int:
    count = 0
    with contextlib.ExitStack() as stack:
        tar = stack.enter_context(_open_tar(archive, stack))
        for member in _tar_members(tar, state):
            _write_tar_member(tar, member, state)
            count += 1
    return count


def _open_tar(archive: Path, stack: contextlib.ExitStack) -> tarfile.TarFile:
    """Open a tar for one pass, decoding gzip with isal when it is installed.

    Model weights barely compress, so decoding speed bounds a ``.tar.gz``
    load: isal's inflate runs about 1.5 times as fast as zlib's on fp32 data
    (measured in docs/CACHE.md). Members are read in order, once, so a
    stream suffices.
    """
    with archive.open("rb") as probe:
        compression = _compression_of(probe.read(8))
    if compression == "gz" and _ISAL_GZIP is not None:
        logger.debug("decoding %s with isal", archive.name)
        stream = stack.enter_context(_ISAL_GZIP(archive))
        return tarfile.open(fileobj=stream, mode="r|")
    return tarfile.open(archive, mode="r:*")


def _tar_members(tar: tarfile.TarFile, state: _Extraction) -> Iterator[tarfile.TarInfo]:
    for member in tar:
        _count_member(member.name, member.size if member.isfile() else 0, state)
        if member.isdir() and _is_root_folder(member.name):
            # `tar -C folder -cf model.tar .` starts with the folder itself.
            continue
        for rule in TAR_RULES:
            rule(member, state)
        yield member


def _write_tar_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, state: _Extraction
) -> None:
    name = _safe_name(member.name)
    target = state.root / name
    logger.debug("extracting %s", name)
    if member.isdir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if member.issym():
        target.symlink_to(member.linkname)
    elif member.islnk():
        shutil.copyfile(state.root / _safe_name(member.linkname), target)
    else:
        source = tar.extractfile(member)
        if source is None:
            message = f"cannot read tar member {member.name!r}"
            raise ArchiveError(message)
        _copy_exactly(source, target, member.size, member.name)
    if member.isfile() or member.islnk():
        state.regular_files.add(name)
    state.names.add(name)


def _extract_zip(archive: Path, state: _Extraction) -> int:
    with zipfile.ZipFile(archive) as zipped:
        members = [
            info
            for info in zipped.infolist()
            if not (info.is_dir() and _is_root_folder(info.filename))
        ]
        for info in members:
            _count_member(info.filename, info.file_size, state)
            _check_zip_member(info, state)
        for info in members:
            _write_zip_member(zipped, info, state)
    return len(members)


def _write_zip_member(
    zipped: zipfile.ZipFile, info: zipfile.ZipInfo, state: _Extraction
) -> None:
    name = _safe_name(info.filename)
    target = state.root / name
    logger.debug("extracting %s", name)
    if info.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipped.open(info) as source:
        _copy_exactly(source, target, info.file_size, info.filename)


def _copy_exactly(source: IO[bytes], target: Path, size: int, member: str) -> None:
    """Copy a member, refusing one that holds more bytes than it declared."""
    written = 0
    with target.open("xb") as sink:
        while chunk := source.read(COPY_CHUNK_BYTES):
            written += len(chunk)
            if written > size:
                raise UnsafeArchiveError(member, "holds more bytes than it declares")
            sink.write(chunk)
    if written != size:
        message = (
            f"archive member {member!r} is truncated: {written} of {size} bytes. "
            "Download it again, or ask the publisher for a good copy."
        )
        raise ArchiveError(message)


def _count_member(name: str, size: int, state: _Extraction) -> None:
    state.total_bytes += size
    state.members += 1
    if state.members > state.limits.max_members:
        rule = f"more than {state.limits.max_members} members"
        raise UnsafeArchiveError(name, rule)
    if state.total_bytes > state.limits.max_total_bytes:
        rule = f"members add up to more than {state.limits.max_total_bytes} bytes"
        raise UnsafeArchiveError(name, rule)
    ratio = state.total_bytes / max(state.archive_bytes, 1)
    inflated = state.total_bytes > state.limits.ratio_floor_bytes
    if inflated and ratio > state.limits.max_ratio:
        rule = (
            f"the archive would inflate to {ratio:.0f} times its size (limit "
            f"{state.limits.max_ratio:.0f}x), as a decompression bomb does"
        )
        raise UnsafeArchiveError(name, rule)


def _is_root_folder(name: str) -> bool:
    """Whether a folder member names the extraction folder itself (``./``)."""
    return (
        not name.startswith(("/", "\\"))
        and set(name.replace("\\", "/")) <= {".", "/"}
        and ".." not in name
    )


def _safe_name(name: str) -> str:
    """Return the member's normalised relative path, or raise if it escapes."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(name, "absolute path")
    parts = [
        part for part in name.replace("\\", "/").split("/") if part not in {"", "."}
    ]
    if ".." in parts:
        raise UnsafeArchiveError(name, "path leads out of the extraction folder (..)")
    if not parts:
        raise UnsafeArchiveError(name, "empty name")
    return "/".join(parts)


def _check_tar_name(member: tarfile.TarInfo, state: _Extraction) -> None:
    name = _safe_name(member.name)
    if name in state.names and not member.isdir():
        raise UnsafeArchiveError(member.name, "repeats an earlier member")


def _check_tar_type(member: tarfile.TarInfo, state: _Extraction) -> None:
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        rule = "device files, FIFOs and other special members are not allowed"
        raise UnsafeArchiveError(member.name, rule)


def _check_tar_link(member: tarfile.TarInfo, state: _Extraction) -> None:
    if member.islnk():
        try:
            target = _safe_name(member.linkname)
        except UnsafeArchiveError as err:
            rule = f"hard link to {member.linkname!r}: {err.rule}"
            raise UnsafeArchiveError(member.name, rule) from err
    elif member.issym():
        if member.linkname.startswith("/"):
            raise UnsafeArchiveError(member.name, "symbolic link to an absolute path")
        parent = PurePosixPath(_safe_name(member.name)).parent
        target = posixpath.normpath(str(parent / member.linkname))
        if target == ".." or target.startswith("../"):
            raise UnsafeArchiveError(member.name, "symbolic link points outside")
    else:
        return
    if target not in state.regular_files:
        rule = "link target is not a regular file earlier in the archive"
        raise UnsafeArchiveError(member.name, rule)


def _check_zip_member(info: zipfile.ZipInfo, state: _Extraction) -> None:
    name = _safe_name(info.filename)
    if name in state.names:
        raise UnsafeArchiveError(info.filename, "repeats an earlier member")
    is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
    if is_link:
        raise UnsafeArchiveError(info.filename, "symbolic links in zip archives")
    state.names.add(name)


TAR_RULES: tuple[Callable[[tarfile.TarInfo, _Extraction], None], ...] = (
    _check_tar_name,
    _check_tar_type,
    _check_tar_link,
)
"""Checks every tar member passes before it is written, in order."""

_EXTRACTORS: dict[ArchiveKind, Callable[[Path, _Extraction], int]] = {
    ArchiveKind.TAR: _extract_tar,
    ArchiveKind.ZIP: _extract_zip,
}
