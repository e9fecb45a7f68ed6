"""Extraction: write an archive's members into a folder, by the safety rules.

A :class:`TreeBuilder` holds one extraction in progress. Every member passes
the rules of :mod:`zooload.member_rules` before anything of it is written;
the member's sha256 is computed while it is copied, so that the manifest
is checked without reading the files again. A tar is read in one forward
pass, from a file or from bytes still arriving; a zip is read through its
central directory.

A large safetensors member stored uncompressed (in a plain tar, or stored
in a zip) is not copied at all when the builder allows it
(``in_place``): it is hashed where it lies and recorded as a span of the
archive, which readers then map in place (see :mod:`zooload.trees`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import shutil
import struct
import tarfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from zooload.errors import ArchiveError, UnsafeArchiveError
from zooload.fanout import Fanout, Push
from zooload.formats.safetensors_file import looks_like_header
from zooload.hashing import span_digest
from zooload.member_rules import (
    TAR_RULES,
    ExtractionLimits,
    check_zip_member,
    count_member,
    is_root_folder,
    safe_name,
)
from zooload.trees import Span

logger = logging.getLogger(__name__)

COPY_CHUNK_BYTES = 1 << 20
EMBED_MIN_BYTES = 1 << 20
"""Smaller safetensors members are copied: mapping them in place saves little."""
PARALLEL_MEMBER_BYTES = 4 << 20
"""Members this large are written and hashed in threads of their own."""
_MANIFEST_NAME = "zooload.json"
_ZIP_LOCAL_HEADER = struct.Struct("<4s5H3L2H")
_ZIP_LOCAL_MAGIC = b"PK\x03\x04"


@dataclass(slots=True)
class TreeBuilder:
    """One extraction in progress: its folder, its limits and what it wrote.

    ``archive_bytes`` is the archive's size when known, for the inflation
    ratio. With ``in_place``, large stored safetensors members stay in the
    archive; ``archive_path`` names the archive when it is a whole file on
    disk, so that such members are hashed where they lie rather than
    through the archive reader; ``covered_by_pin`` says the archive's digest
    matches a pin given by the caller, which then covers every member: none
    is hashed again. ``digests`` maps each regular member (by its
    normalised name) to its sha256, and ``embedded`` the members left in the
    archive to their span of it.
    """

    root: Path
    limits: ExtractionLimits
    archive_bytes: int | None = None
    in_place: bool = False
    archive_path: Path | None = None
    covered_by_pin: bool = False
    regular_files: set[str] = field(default_factory=set)
    names: set[str] = field(default_factory=set)
    folders: set[str] = field(default_factory=set)
    members: int = 0
    total_bytes: int = 0
    digests: dict[str, str] = field(default_factory=dict)
    embedded: dict[str, Span] = field(default_factory=dict)


def extract_tar(stream: IO[bytes], builder: TreeBuilder) -> int:
    """Extract the (already decompressed) tar read from ``stream``, in one pass.

    Member data offsets are offsets in ``stream``, which is what makes
    in-place members of an uncompressed tar point at the right bytes. When
    the builder names the archive file, ``stream`` is that file and members
    that stay in place are skipped by seeking rather than read through.

    Returns
    -------
    int
        The number of members extracted.
    """
    count = 0
    with _open_tar(stream, builder) as tar:
        for member in tar:
            count_member(member.name, member.size if member.isfile() else 0, builder)
            if member.isdir() and is_root_folder(member.name):
                # `tar -C folder -cf model.tar .` starts with the folder itself.
                continue
            for rule in TAR_RULES:
                rule(member, builder)
            _write_tar_member(tar, member, builder)
            count += 1
    return count


def extract_zip(path: Path, builder: TreeBuilder) -> int:
    """Extract a zip file; with ``in_place``, large stored weights stay in it.

    Members that may stay in place are handled last, once the manifest (if
    any) has been extracted (see :func:`_take_zip_candidate` for how each
    is checked).

    Returns
    -------
    int
        The number of members extracted or left in place.
    """
    with zipfile.ZipFile(path) as zipped:
        members = [
            info
            for info in zipped.infolist()
            if not (info.is_dir() and is_root_folder(info.filename))
        ]
        for info in members:
            count_member(info.filename, info.file_size, builder)
            check_zip_member(info, builder)
        candidates = [info for info in members if _may_stay_in_place(info, builder)]
        for info in members:
            if info not in candidates:
                _write_zip_member(zipped, info, builder)
        named = _named_by_manifest(builder)
        for info in candidates:
            _take_zip_candidate(zipped, path, info, builder, named)
    return len(members)


def _open_tar(stream: IO[bytes], builder: TreeBuilder) -> tarfile.TarFile:
    """Random access over a whole file; one forward pass over anything else."""
    if builder.archive_path is not None:
        return tarfile.open(fileobj=stream, mode="r:")
    return tarfile.open(fileobj=stream, mode="r|", bufsize=COPY_CHUNK_BYTES)


def _write_tar_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, builder: TreeBuilder
) -> None:
    name = safe_name(member.name)
    if _made_folder(builder, name, is_folder=member.isdir()):
        return
    if member.issym():
        _link_symbolically(member, name, builder)
    elif member.islnk():
        _copy_hard_link(safe_name(member.linkname), name, builder)
    else:
        source = tar.extractfile(member)
        if source is None:
            message = f"cannot read tar member {member.name!r}"
            raise ArchiveError(message)
        # A sparse member's data is stored without its holes, so its bytes
        # in the archive are not the file: it is always extracted.
        archive = builder.archive_path if builder.in_place else None
        at = (archive, member.offset_data) if archive else None
        if member.issparse():
            at = None
        _take_member(source, name, member.size, builder, at=at)
    if member.isfile() or member.islnk():
        builder.regular_files.add(name)
    builder.names.add(name)


def _made_folder(builder: TreeBuilder, name: str, *, is_folder: bool) -> bool:
    """Make a folder member, or the folder a file member goes in.

    Returns whether the member was a folder, and so is done.
    """
    target = builder.root / name
    logger.debug("extracting %s", name)
    if is_folder:
        target.mkdir(parents=True, exist_ok=True)
        return True
    target.parent.mkdir(parents=True, exist_ok=True)
    return False


def _link_symbolically(
    member: tarfile.TarInfo, name: str, builder: TreeBuilder
) -> None:
    """A symbolic link stays one, unless its target stays in the archive."""
    target = posixpath.normpath(
        posixpath.join(posixpath.dirname(name), member.linkname)
    )
    if target in builder.embedded:
        builder.embedded[name] = builder.embedded[target]
        if target in builder.digests:
            builder.digests[name] = builder.digests[target]
        return
    (builder.root / name).symlink_to(member.linkname)


def _copy_hard_link(target_name: str, name: str, builder: TreeBuilder) -> None:
    """A hard link becomes a copy of its (earlier, regular) target."""
    if target_name in builder.embedded:
        builder.embedded[name] = builder.embedded[target_name]
    else:
        shutil.copyfile(builder.root / target_name, builder.root / name)
    if target_name in builder.digests:
        builder.digests[name] = builder.digests[target_name]


def _take_member(
    source: IO[bytes],
    name: str,
    size: int,
    builder: TreeBuilder,
    *,
    at: tuple[Path, int] | None,
    head: bytes | None = None,
) -> None:
    """Copy a member into the tree, hashing it, or leave it where it lies.

    ``at`` is the archive file and the member's offset in it, when the
    member may stay there; ``head`` holds the member's first bytes when the
    caller read them.
    """
    if head is None:
        head = source.read(min(size, COPY_CHUNK_BYTES))
    if at is not None and _is_large_safetensors(head, size):
        archive, offset = at
        _leave_tar_member(name, archive, (offset, size), builder)
        return
    digest = hashlib.sha256()
    with (builder.root / name).open("xb", buffering=0) as sink:
        consumers: list[Push] = [sink.write]
        if not builder.covered_by_pin:
            consumers.append(digest.update)
        _stream_member(source.read, head, size, name, consumers)
    if not builder.covered_by_pin:
        builder.digests[name] = digest.hexdigest()


def _leave_tar_member(
    name: str, archive: Path, span: Span, builder: TreeBuilder
) -> None:
    """Record a tar member that stays in the archive, checked as it must be.

    Its bytes are the archive's own: when a pin covers the archive, only the
    span is checked against the archive's size; otherwise the member is
    hashed where it lies.
    """
    _check_span(name, span, builder.archive_bytes)
    if not builder.covered_by_pin:
        builder.digests[name] = _span_digest(archive, *span, name)
    builder.embedded[name] = span
    logger.debug("left %s in place at byte %d of the archive", name, span[0])


def _check_span(name: str, span: Span, archive_bytes: int | None) -> None:
    offset, size = span
    if archive_bytes is not None and offset + size > archive_bytes:
        message = (
            f"archive member {name!r} is truncated: it ends at byte "
            f"{offset + size} of a {archive_bytes}-byte archive. Download it "
            "again, or ask the publisher for a good copy."
        )
        raise ArchiveError(message)


def _is_large_safetensors(head: bytes, size: int) -> bool:
    return size >= EMBED_MIN_BYTES and looks_like_header(head, size)


def _stream_member(
    read: Callable[[int], bytes],
    head: bytes,
    size: int,
    member: str,
    consumers: list[Push],
) -> None:
    """Hand a member's bytes to ``consumers``, refusing any other length.

    Large members go through a :class:`~zooload.fanout.Fanout`, so that
    reading (and decoding) the archive, writing and hashing overlap.
    """
    parallel = consumers and size >= PARALLEL_MEMBER_BYTES
    fanout = Fanout(push=consumers, name="zooload-member") if parallel else None
    hand = fanout.put if fanout else _calling(consumers)
    written = 0
    try:
        chunk = head
        while chunk:
            written += len(chunk)
            if written > size:
                raise UnsafeArchiveError(member, "holds more bytes than it declares")
            hand(chunk)
            chunk = read(COPY_CHUNK_BYTES)
    finally:
        if fanout is not None:
            fanout.close()
    if written != size:
        message = (
            f"archive member {member!r} is truncated: {written} of {size} bytes. "
            "Download it again, or ask the publisher for a good copy."
        )
        raise ArchiveError(message)


def _calling(consumers: Iterable[Push]) -> Push:
    """One push that calls every consumer in turn, in this thread."""
    listed = list(consumers)

    def call_all(chunk: bytes) -> None:
        for consume in listed:
            consume(chunk)

    return call_all


def _write_zip_member(
    zipped: zipfile.ZipFile, info: zipfile.ZipInfo, builder: TreeBuilder
) -> None:
    name = safe_name(info.filename)
    if _made_folder(builder, name, is_folder=info.is_dir()):
        return
    with zipped.open(info) as source:
        _take_member(source, name, info.file_size, builder, at=None)
    builder.regular_files.add(name)


def _may_stay_in_place(info: zipfile.ZipInfo, builder: TreeBuilder) -> bool:
    """Whether a zip member is stored, unencrypted and large enough to map."""
    encrypted = bool(info.flag_bits & 0x1)
    return (
        builder.in_place
        and not info.is_dir()
        and not encrypted
        and info.compress_type == zipfile.ZIP_STORED
        and info.file_size >= EMBED_MIN_BYTES
    )


def _take_zip_candidate(
    zipped: zipfile.ZipFile,
    path: Path,
    info: zipfile.ZipInfo,
    builder: TreeBuilder,
    named: set[str],
) -> None:
    """Leave a stored safetensors member in place, or extract it after all.

    Opening the member checks its local header against the central
    directory, as an extraction would. A member left in place is covered
    by the archive's pin, or else by the manifest's sha256 when the
    manifest names it (``named``), or else by the zip's own CRC-32.
    """
    name = safe_name(info.filename)
    size = info.file_size
    (builder.root / name).parent.mkdir(parents=True, exist_ok=True)
    with zipped.open(info) as source:
        head = source.read(COPY_CHUNK_BYTES)
        if not _is_large_safetensors(head, size):
            _take_member(source, name, size, builder, at=None, head=head)
            builder.regular_files.add(name)
            return
        if not builder.covered_by_pin and name not in named:
            # zipfile checks the CRC-32 once the member is read to its end.
            _stream_member(source.read, head, size, name, [])
    span = (_zip_data_offset(path, info), size)
    _check_span(name, span, builder.archive_bytes)
    if not builder.covered_by_pin and name in named:
        builder.digests[name] = _span_digest(path, *span, name)
    builder.embedded[name] = span
    builder.regular_files.add(name)
    logger.debug("left %s in place at byte %d of the archive", name, span[0])


def _zip_data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Where a member's data starts: after its local header, name and extra."""
    with path.open("rb") as stream:
        stream.seek(info.header_offset)
        fields = _ZIP_LOCAL_HEADER.unpack(stream.read(_ZIP_LOCAL_HEADER.size))
    if fields[0] != _ZIP_LOCAL_MAGIC:
        message = f"zip member {info.filename!r} has a damaged local header"
        raise ArchiveError(message)
    name_length, extra_length = fields[-2], fields[-1]
    return int(info.header_offset + _ZIP_LOCAL_HEADER.size + name_length + extra_length)


def _span_digest(path: Path, offset: int, size: int, member: str) -> str:
    """The sha256 of a member that stays in the archive, hashed where it lies."""
    try:
        return span_digest(path, offset, size)
    except EOFError as err:
        message = (
            f"archive member {member!r} is truncated: {err}. Download it again, "
            "or ask the publisher for a good copy."
        )
        raise ArchiveError(message) from err


def _named_by_manifest(builder: TreeBuilder) -> set[str]:
    """Members the extracted manifest lists with a sha256, by normalised name.

    A manifest that cannot be read pins nothing here; checking it, with a
    precise error, comes when the tree is published.
    """
    prefix = content_prefix(builder.names)
    try:
        document = json.loads((builder.root / prefix / _MANIFEST_NAME).read_text())
        specs = [*document.get("weights", []), document.get("examples")]
        paths = [spec["path"] for spec in specs if isinstance(spec, dict)]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return set()
    return {posixpath.normpath(posixpath.join(prefix, str(p))) for p in paths}


def content_prefix(names: Iterable[str]) -> str:
    """The one top folder all members sit in, or ``""`` (as content_root).

    Examples
    --------
    >>> content_prefix(["model/zooload.json", "model/w.safetensors", "model"])
    'model'
    >>> content_prefix(["zooload.json", "w.safetensors"])
    ''
    """
    listed = list(names)
    tops = {name.split("/", 1)[0] for name in listed}
    if len(tops) != 1:
        return ""
    top = tops.pop()
    is_folder = any(name.startswith(top + "/") for name in listed)
    return top if is_folder else ""
