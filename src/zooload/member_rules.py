"""Member rules: what an archive member must be before any of it is written.

Every tar member passes :data:`TAR_RULES` in order, and every zip member
:func:`check_zip_member`, before a byte of it reaches the disk; names are
normalised by :func:`safe_name`, and :func:`count_member` holds the whole
archive to its :class:`ExtractionLimits`. ``SECURITY.md`` lists the rules
for people; ``tests/test_hostile_archives.py`` holds an archive for each.
"""

from __future__ import annotations

import posixpath
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from zooload.errors import ArchiveError, UnsafeArchiveError
from zooload.trees import TREE_INDEX_NAME

if TYPE_CHECKING:
    from zooload.extraction import TreeBuilder


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


def count_member(name: str, size: int, builder: TreeBuilder) -> None:
    builder.total_bytes += size
    builder.members += 1
    limits = builder.limits
    if builder.members > limits.max_members:
        rule = f"more than {limits.max_members} members"
        raise UnsafeArchiveError(name, rule)
    if builder.total_bytes > limits.max_total_bytes:
        rule = f"members add up to more than {limits.max_total_bytes} bytes"
        raise UnsafeArchiveError(name, rule)
    if builder.archive_bytes is None:
        return
    ratio = builder.total_bytes / max(builder.archive_bytes, 1)
    inflated = builder.total_bytes > limits.ratio_floor_bytes
    if inflated and ratio > limits.max_ratio:
        rule = (
            f"the archive would inflate to {ratio:.0f} times its size (limit "
            f"{limits.max_ratio:.0f}x), as a decompression bomb does"
        )
        raise UnsafeArchiveError(name, rule)


def is_root_folder(name: str) -> bool:
    """Whether a folder member names the extraction folder itself (``./``)."""
    return (
        not name.startswith(("/", "\\"))
        and set(name.replace("\\", "/")) <= {".", "/"}
        and ".." not in name
    )


def safe_name(name: str) -> str:
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
    if parts[0] == TREE_INDEX_NAME:
        raise UnsafeArchiveError(name, "the name is reserved for zooload's own index")
    return "/".join(parts)


def _check_layout(raw: str, name: str, is_folder: bool, builder: TreeBuilder) -> None:
    """Refuse a member that clashes with earlier ones, file against folder.

    A file and a folder of one name, or a member inside an earlier file,
    cannot both exist on disk; for members read in place (never written)
    nothing else would notice. Every folder a member implies is recorded.
    """
    parents = [posixpath.dirname(name)]
    while parents[-1]:
        parents.append(posixpath.dirname(parents[-1]))
    if any(parent in builder.names for parent in parents[:-1]):
        raise UnsafeArchiveError(raw, "lies inside an earlier member that is a file")
    if is_folder and name in builder.names:
        raise UnsafeArchiveError(raw, "a folder repeats an earlier file's name")
    if not is_folder and name in builder.folders:
        raise UnsafeArchiveError(raw, "a file repeats an earlier folder's name")
    builder.folders.update(parents[:-1])
    if is_folder:
        builder.folders.add(name)


def _check_tar_name(member: tarfile.TarInfo, builder: TreeBuilder) -> None:
    name = safe_name(member.name)
    if name in builder.names and not member.isdir():
        raise UnsafeArchiveError(member.name, "repeats an earlier member")
    _check_layout(member.name, name, member.isdir(), builder)


def _check_tar_type(member: tarfile.TarInfo, builder: TreeBuilder) -> None:
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        rule = "device files, FIFOs and other special members are not allowed"
        raise UnsafeArchiveError(member.name, rule)


def _check_tar_link(member: tarfile.TarInfo, builder: TreeBuilder) -> None:
    if member.islnk():
        try:
            target = safe_name(member.linkname)
        except UnsafeArchiveError as err:
            rule = f"hard link to {member.linkname!r}: {err.rule}"
            raise UnsafeArchiveError(member.name, rule) from err
    elif member.issym():
        if member.linkname.startswith("/"):
            raise UnsafeArchiveError(member.name, "symbolic link to an absolute path")
        parent = PurePosixPath(safe_name(member.name)).parent
        target = posixpath.normpath(str(parent / member.linkname))
        if target == ".." or target.startswith("../"):
            raise UnsafeArchiveError(member.name, "symbolic link points outside")
    else:
        return
    if target not in builder.regular_files:
        rule = "link target is not a regular file earlier in the archive"
        raise UnsafeArchiveError(member.name, rule)


def check_zip_member(info: zipfile.ZipInfo, builder: TreeBuilder) -> None:
    """Check a zip member's name, kind, encryption and compression method.

    Raises
    ------
    UnsafeArchiveError
        For an unsafe name or a symbolic link.
    ArchiveError
        For a member zooload cannot read (encrypted, or compressed with a
        method Python's zipfile does not know).
    """
    name = safe_name(info.filename)
    if name in builder.names or (name in builder.folders and not info.is_dir()):
        raise UnsafeArchiveError(info.filename, "repeats an earlier member")
    is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
    if is_link:
        raise UnsafeArchiveError(info.filename, "symbolic links in zip archives")
    _check_readable(info)
    _check_layout(info.filename, name, info.is_dir(), builder)
    if not info.is_dir():
        builder.names.add(name)


_ZIP_METHODS = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}


# Flag bits of a zip member: encrypted (0x1), compressed patched data (0x20),
# strong encryption (0x40). Python's zipfile reads none of them.
_UNREADABLE_FLAGS = 0x1 | 0x20 | 0x40


def _check_readable(info: zipfile.ZipInfo) -> None:
    if info.flag_bits & 0x20:
        message = (
            f"zip member {info.filename!r} holds compressed patched data, which "
            "zooload cannot read; re-pack the archive with plain members."
        )
        raise ArchiveError(message)
    if info.flag_bits & _UNREADABLE_FLAGS:
        message = (
            f"zip member {info.filename!r} is encrypted; zooload reads only "
            "unencrypted archives. Ask the publisher for an unencrypted one."
        )
        raise ArchiveError(message)
    if info.compress_type not in _ZIP_METHODS and not info.is_dir():
        known = ", ".join(_ZIP_METHODS.values())
        message = (
            f"zip member {info.filename!r} is compressed with method "
            f"{info.compress_type}, which zooload cannot decode (it reads "
            f"{known}); re-pack the archive with one of those."
        )
        raise ArchiveError(message)


TAR_RULES: tuple[Callable[[tarfile.TarInfo, TreeBuilder], None], ...] = (
    _check_tar_name,
    _check_tar_type,
    _check_tar_link,
)
"""Checks every tar member passes before it is written, in order."""
