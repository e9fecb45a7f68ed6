"""Unit tests for zooload.archive: sniffing archives and extracting them once."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import logging
import random
import re
import shutil
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

import zooload
from support.builders import cache_files, make_tar
from zooload.archive import (
    ArchiveKind,
    ExtractionLimits,
    StagedTree,
    extract_to_cache,
    sniff_archive,
)
from zooload.cache import Cache
from zooload.errors import ArchiveError, UnsafeArchiveError

DIGEST = "ab" * 32
MEMBERS = {"zooload.json": b"{}", "weights/w.bin": b"\x00\x01\x02"}


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        for name, data in members.items():
            zipped.writestr(name, data)
    return buffer.getvalue()


def _torch_checkpoint() -> bytes:
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buffer)
    return buffer.getvalue()


def _tar(*members: tarfile.TarInfo, data: dict[str, bytes] | None = None) -> bytes:
    """A plain tar of ``members``; regular ones take their bytes from ``data``."""
    contents = data or {}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info in members:
            body = contents.get(info.name, b"")
            if info.isfile():
                info.size = len(body)
            tar.addfile(info, io.BytesIO(body) if info.isfile() else None)
    return buffer.getvalue()


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# -- sniff_archive ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (make_tar(MEMBERS, mode="w"), ArchiveKind.TAR),
        (make_tar(MEMBERS, mode="w:gz"), ArchiveKind.TAR),
        (make_tar(MEMBERS, mode="w:bz2"), ArchiveKind.TAR),
        (make_tar(MEMBERS, mode="w:xz"), ArchiveKind.TAR),
        (_zip(MEMBERS), ArchiveKind.ZIP),
        (_zip({}), ArchiveKind.ZIP),
        (_torch_checkpoint(), ArchiveKind.FILE),
        (random.Random(7).randbytes(4096), ArchiveKind.FILE),
        (b"", ArchiveKind.FILE),
        (gzip.compress(b"just some text, not a tar"), ArchiveKind.FILE),
    ],
    ids=[
        "tar",
        "tar.gz",
        "tar.bz2",
        "tar.xz",
        "zip",
        "empty-zip",
        "torch-zip-checkpoint",
        "random-bytes",
        "empty",
        "gzip-of-text",
    ],
)
def test_sniff_archive_tells_kind_by_content(
    tmp_path: Path, data: bytes, kind: ArchiveKind
) -> None:
    # A misleading name: only the bytes count.
    path = _write(tmp_path, "download.bin", data)

    assert sniff_archive(path) is kind


def test_sniff_archive_torchscript_program_is_file(silero_data: Path) -> None:
    assert sniff_archive(silero_data / "silero_vad.jit") is ArchiveKind.FILE


def test_sniff_archive_damaged_gzip_raises(tmp_path: Path) -> None:
    whole = make_tar(MEMBERS, mode="w:gz")
    path = _write(tmp_path, "model.tar.gz", whole[:20])

    with pytest.raises(ArchiveError, match=r"is a damaged gz file .*download it again"):
        sniff_archive(path)


# -- extract_to_cache: once, atomically ------------------------------------------


def test_extract_to_cache_extracts_once(tmp_path: Path) -> None:
    cache = Cache.open(tmp_path / "cache")
    archive = _write(tmp_path, "model.tar.gz", make_tar(MEMBERS))
    seen: list[StagedTree] = []

    tree = extract_to_cache(archive, DIGEST, cache, validate=seen.append)
    # Without its archive, a second call can only answer from the tree.
    archive.unlink()
    again = extract_to_cache(archive, DIGEST, cache, validate=seen.append)

    assert again == tree == cache.tree_path(DIGEST)
    assert len(seen) == 1
    assert (tree / "zooload.json").read_bytes() == b"{}"
    assert (tree / "weights" / "w.bin").read_bytes() == b"\x00\x01\x02"
    assert cache_files(cache.root) == [
        f"trees/{DIGEST}/weights/w.bin",
        f"trees/{DIGEST}/zooload.json",
    ]


def test_extract_to_cache_extracts_zip(tmp_path: Path) -> None:
    cache = Cache.open(tmp_path / "cache")
    archive = _write(tmp_path, "model.zip", _zip(MEMBERS))

    tree = extract_to_cache(archive, DIGEST, cache)

    assert (tree / "weights" / "w.bin").read_bytes() == b"\x00\x01\x02"
    assert len(cache_files(cache.root)) == 2


class RefusedError(Exception):
    """What the validate callback of a test raises."""


def test_extract_to_cache_validate_raising_leaves_nothing(tmp_path: Path) -> None:
    cache = Cache.open(tmp_path / "cache")
    archive = _write(tmp_path, "model.tar.gz", make_tar(MEMBERS))
    looked_at: list[list[str]] = []

    def refuse(staged: StagedTree) -> None:
        looked_at.append(sorted(p.name for p in staged.folder.iterdir()))
        message = "not this one"
        raise RefusedError(message)

    with pytest.raises(RefusedError, match="not this one"):
        extract_to_cache(archive, DIGEST, cache, validate=refuse)

    assert looked_at == [["weights", "zooload.json"]]
    assert not cache.tree_path(DIGEST).exists()
    assert cache_files(cache.root) == []
    assert list((cache.root / "partial").iterdir()) == []


def test_extract_to_cache_not_an_archive_raises(tmp_path: Path) -> None:
    cache = Cache.open(tmp_path / "cache")
    archive = _write(tmp_path, "weights.pt", _torch_checkpoint())

    with pytest.raises(ArchiveError, match="is not a tar or zip archive"):
        extract_to_cache(archive, DIGEST, cache)

    assert cache_files(cache.root) == []


def test_extract_to_cache_truncated_member_raises(tmp_path: Path) -> None:
    cache = Cache.open(tmp_path / "cache")
    data = random.Random(3).randbytes(4096)
    whole = make_tar({"w.bin": data}, mode="w")
    archive = _write(tmp_path, "model.tar", whole[:2048])

    with pytest.raises(
        ArchiveError,
        match=r"truncated.*nothing was extracted\. Download it again",
    ):
        extract_to_cache(archive, DIGEST, cache)

    assert cache_files(cache.root) == []


# -- extract_to_cache: links -------------------------------------------------------


@pytest.mark.parametrize(
    ("link", "target"),
    [
        (_info("copy.txt", tarfile.LNKTYPE, "a.txt"), "a.txt"),
        (_info("sub/copy.txt", tarfile.LNKTYPE, "a.txt"), "a.txt"),
        (_info("alias.txt", tarfile.SYMTYPE, "a.txt"), "a.txt"),
        (_info("sub/alias.txt", tarfile.SYMTYPE, "../a.txt"), "a.txt"),
    ],
    ids=["hardlink", "hardlink-in-folder", "symlink", "symlink-up-from-folder"],
)
def test_extract_to_cache_allows_link_to_earlier_member(
    tmp_path: Path, link: tarfile.TarInfo, target: str
) -> None:
    cache = Cache.open(tmp_path / "cache")
    data = _tar(_info("a.txt"), link, data={"a.txt": b"weights"})
    archive = _write(tmp_path, "model.tar", data)

    tree = extract_to_cache(archive, DIGEST, cache)

    extracted = tree / link.name
    assert extracted.read_bytes() == b"weights"
    assert extracted.resolve().is_relative_to(tree)
    if link.issym():
        assert extracted.is_symlink()
        assert extracted.resolve() == (tree / target).resolve()


def test_extract_to_cache_refuses_link_to_later_member(tmp_path: Path) -> None:
    cache = Cache.open(tmp_path / "cache")
    data = _tar(
        _info("alias.txt", tarfile.SYMTYPE, "a.txt"),
        _info("a.txt"),
        data={"a.txt": b"weights"},
    )
    archive = _write(tmp_path, "model.tar", data)

    with pytest.raises(
        UnsafeArchiveError,
        match=r"'alias\.txt': link target is not a regular file earlier",
    ):
        extract_to_cache(archive, DIGEST, cache)

    assert cache_files(cache.root) == []


def test_extract_to_cache_refuses_zip_symlink(tmp_path: Path) -> None:
    cache = Cache.open(tmp_path / "cache")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        info = zipfile.ZipInfo("alias")
        info.external_attr = 0o120777 << 16
        zipped.writestr(info, "/etc/passwd")
    archive = _write(tmp_path, "model.zip", buffer.getvalue())

    with pytest.raises(
        UnsafeArchiveError, match=r"'alias': symbolic links in zip archives"
    ):
        extract_to_cache(archive, DIGEST, cache)

    assert cache_files(cache.root) == []


# -- extract_to_cache: limits ------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [lambda m: make_tar(m, mode="w:gz"), _zip],
    ids=["tar", "zip"],
)
def test_extract_to_cache_enforces_max_members(
    tmp_path: Path, build: Callable[[dict[str, bytes]], bytes]
) -> None:
    cache = Cache.open(tmp_path / "cache")
    members = {"a.txt": b"a", "b.txt": b"b", "c.txt": b"c"}
    archive = _write(tmp_path, "model", build(members))

    with pytest.raises(UnsafeArchiveError, match="more than 2 members") as caught:
        extract_to_cache(archive, DIGEST, cache, limits=ExtractionLimits(max_members=2))

    assert caught.value.member == "c.txt"
    assert caught.value.rule == "more than 2 members"
    assert cache_files(cache.root) == []


def test_extract_to_cache_max_members_is_inclusive(tmp_path: Path) -> None:
    cache = Cache.open(tmp_path / "cache")
    archive = _write(tmp_path, "model.tar.gz", make_tar({"a": b"a", "b": b"b"}))

    tree = extract_to_cache(archive, DIGEST, cache, limits=ExtractionLimits(2))

    assert sorted(p.name for p in tree.iterdir()) == ["a", "b"]


@pytest.mark.parametrize("archive_type", ["tar", "zip"])
def test_extract_to_cache_counts_folders_as_members(
    tmp_path: Path, archive_type: str
) -> None:
    cache = Cache.open(tmp_path / "cache")
    if archive_type == "tar":
        data = _tar(*(_info(name, tarfile.DIRTYPE) for name in ("a", "b", "c")))
    else:
        data = _zip({"a/": b"", "b/": b"", "c/": b""})
    archive = _write(tmp_path, "model", data)

    with pytest.raises(UnsafeArchiveError, match="more than 2 members") as caught:
        extract_to_cache(archive, DIGEST, cache, limits=ExtractionLimits(max_members=2))

    assert caught.value.member.rstrip("/") == "c"
    assert cache_files(cache.root) == []


@pytest.mark.parametrize(
    "build",
    [lambda m: make_tar(m, mode="w:gz"), _zip],
    ids=["tar", "zip"],
)
def test_extract_to_cache_enforces_max_total_bytes(
    tmp_path: Path, build: Callable[[dict[str, bytes]], bytes]
) -> None:
    cache = Cache.open(tmp_path / "cache")
    members = {"a.bin": b"1234", "b.bin": b"5678", "c.bin": b"9abc"}
    archive = _write(tmp_path, "model", build(members))
    limits = ExtractionLimits(max_total_bytes=10)

    with pytest.raises(
        UnsafeArchiveError, match=r"'c\.bin': members add up to more than 10 bytes"
    ) as caught:
        extract_to_cache(archive, DIGEST, cache, limits=limits)

    assert caught.value.rule == "members add up to more than 10 bytes"
    assert cache_files(cache.root) == []


def test_extract_to_cache_refuses_huge_declared_size_before_reading(
    tmp_path: Path,
) -> None:
    cache = Cache.open(tmp_path / "cache")
    # A header that declares a petabyte, followed by a few bytes of body.
    header = tarfile.TarInfo("huge.bin")
    header.size = 10**15
    data = header.tobuf(format=tarfile.PAX_FORMAT) + b"\x00" * 1024
    archive = _write(tmp_path, "model.tar", data)

    with pytest.raises(
        UnsafeArchiveError,
        match=r"'huge\.bin': members add up to more than 1000 bytes",
    ):
        extract_to_cache(
            archive, DIGEST, cache, limits=ExtractionLimits(max_total_bytes=1000)
        )

    assert cache_files(cache.root) == []


# -- extract_to_cache: zip members and races ---------------------------------------


def test_extract_to_cache_creates_zip_folders_even_when_empty(tmp_path: Path) -> None:
    cache = Cache.open(tmp_path / "cache")
    data = _zip({"empty/": b"", "weights/": b"", "weights/w.bin": b"\x00\x01"})
    archive = _write(tmp_path, "model.zip", data)

    tree = extract_to_cache(archive, DIGEST, cache)

    assert (tree / "empty").is_dir()
    assert list((tree / "empty").iterdir()) == []
    assert (tree / "weights" / "w.bin").read_bytes() == b"\x00\x01"


def _zip_declaring(size: int) -> bytes:
    """A zip whose member ``w.bin`` holds 10 bytes but declares ``size``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("zooload.json", b"{}")
        zipped.writestr("w.bin", b"0123456789")
        zipped.filelist[-1].file_size = size
    return buffer.getvalue()


def test_extract_to_cache_zip_member_shorter_than_declared_is_truncated(
    tmp_path: Path,
) -> None:
    cache = Cache.open(tmp_path / "cache")
    archive = _write(tmp_path, "model.zip", _zip_declaring(20))

    with pytest.raises(
        ArchiveError,
        match=r"^archive member 'w\.bin' is truncated: 10 of 20 bytes\. Download "
        r".*again, or ask the publisher for a good copy\.$",
    ) as caught:
        extract_to_cache(archive, DIGEST, cache)

    assert not isinstance(caught.value, UnsafeArchiveError)
    assert cache_files(cache.root) == []
    assert list((cache.root / "partial").iterdir()) == []


def test_extract_to_cache_zip_member_longer_than_declared_fails_its_crc(
    tmp_path: Path,
) -> None:
    # zipfile stops at the declared size, so the extra bytes are never written
    # and the member fails its checksum instead.
    cache = Cache.open(tmp_path / "cache")
    archive = _write(tmp_path, "model.zip", _zip_declaring(5))

    with pytest.raises(
        ArchiveError,
        match=r"model\.zip is truncated or corrupt \(Bad CRC-32 for file 'w\.bin'\); "
        r"nothing was extracted\. Download it again",
    ):
        extract_to_cache(archive, DIGEST, cache)

    assert cache_files(cache.root) == []


@pytest.mark.parametrize(
    ("first", "second"),
    [("a/b.txt", "a/b.txt"), ("a/b.txt", "./a/b.txt")],
    ids=["same-name", "same-name-once-normalised"],
)
def test_extract_to_cache_refuses_repeated_zip_member(
    tmp_path: Path, first: str, second: str
) -> None:
    cache = Cache.open(tmp_path / "cache")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        zipped.writestr(first, b"harmless")
        if first == second:
            with pytest.warns(UserWarning, match="Duplicate name"):
                zipped.writestr(second, b"replacement")
        else:
            zipped.writestr(second, b"replacement")
    archive = _write(tmp_path, "model.zip", buffer.getvalue())

    with pytest.raises(
        UnsafeArchiveError,
        match=re.escape(f"member {second!r}: repeats an earlier member. Nothing was"),
    ) as caught:
        extract_to_cache(archive, DIGEST, cache)

    assert caught.value.rule == "repeats an earlier member"
    assert cache_files(cache.root) == []


@dataclasses.dataclass(frozen=True)
class RivalCache(Cache):
    """A cache where another process finishes the same extraction during the wait
    for the lock."""

    rival: Callable[[], Path] = dataclasses.field(default=lambda: Path())

    @contextlib.contextmanager
    def locked(self, key: str) -> Iterator[None]:
        self.rival()
        with super().locked(key):
            yield


def test_extract_to_cache_reuses_a_tree_published_while_waiting(
    tmp_path: Path,
) -> None:
    root = Cache.open(tmp_path / "cache").root
    theirs = _write(tmp_path, "theirs.tar", make_tar({"who": b"rival"}, mode="w"))
    ours = _write(tmp_path, "ours.tar", make_tar({"who": b"us"}, mode="w"))
    cache = RivalCache(
        root, rival=lambda: extract_to_cache(theirs, DIGEST, Cache.open(root))
    )
    validated: list[StagedTree] = []

    tree = extract_to_cache(ours, DIGEST, cache, validate=validated.append)

    assert tree == cache.tree_path(DIGEST)
    assert (tree / "who").read_bytes() == b"rival"
    assert validated == []
    assert list((root / "partial").iterdir()) == []


def test_extract_to_cache_accepts_a_tar_of_a_folder_made_from_inside(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "zooload.json").write_bytes(b"{}")
    # What `tar -C model -czf model.tar.gz .` and shutil.make_archive write.
    archive = Path(shutil.make_archive(str(tmp_path / "model"), "gztar", folder))
    with tarfile.open(archive) as tar:
        assert tar.getnames() == [".", "./zooload.json"]
    cache = Cache.open(tmp_path / "cache")

    tree = extract_to_cache(archive, DIGEST, cache)

    assert (tree / "zooload.json").read_bytes() == b"{}"


def test_extract_to_cache_tar_member_never_writes_more_than_declared(
    tmp_path: Path,
) -> None:
    # The header declares 5 bytes and 10 follow: only the declared 5 are written.
    header = tarfile.TarInfo("w.bin")
    header.size = 5
    data = header.tobuf() + b"0123456789".ljust(512, b"\x00") + b"\x00" * 1024
    archive = _write(tmp_path, "model.tar", data)
    cache = Cache.open(tmp_path / "cache")

    tree = extract_to_cache(archive, DIGEST, cache)

    assert (tree / "w.bin").read_bytes() == b"01234"
    assert cache_files(cache.root) == [f"trees/{DIGEST}/w.bin"]


@pytest.mark.parametrize("archive_type", ["tar", "zip"])
def test_extract_to_cache_refuses_a_file_named_as_the_folder_itself(
    tmp_path: Path, archive_type: str
) -> None:
    # Only a folder may be called "."; a file of that name is refused.
    cache = Cache.open(tmp_path / "cache")
    members = {"zooload.json": b"{}", ".": b"not a folder"}
    data = make_tar(members, mode="w") if archive_type == "tar" else _zip(members)
    archive = _write(tmp_path, "model", data)

    with pytest.raises(
        UnsafeArchiveError, match=r"member '\.': empty name\. Nothing was extracted"
    ) as caught:
        extract_to_cache(archive, DIGEST, cache)

    assert caught.value.rule == "empty name"
    assert cache_files(cache.root) == []


@pytest.mark.parametrize("decoder", ["isal", "zlib"])
def test_extract_to_cache_decodes_tar_gz_with_isal_or_zlib(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    decoder: str,
) -> None:
    import zooload.archive as archive_module

    if decoder == "zlib":
        monkeypatch.setattr(archive_module, "_ISAL_GZIP", None)
    assert (archive_module._ISAL_GZIP is not None) == (decoder == "isal")
    payload = bytes(range(256)) * 4096
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("w.bin")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    path = tmp_path / "m.tar.gz"
    path.write_bytes(buffer.getvalue())
    caplog.set_level(logging.DEBUG, logger="zooload.archive")

    tree = extract_to_cache(path, "cd" * 32, Cache.open(tmp_path / "cache"))

    assert (tree / "w.bin").read_bytes() == payload
    assert ("decoding m.tar.gz with isal" in caplog.text) == (decoder == "isal")


def _tar_zst(members: dict[str, bytes]) -> bytes:
    from backports import zstd

    return zstd.compress(make_tar(members, mode="w"), level=3)


def test_extract_to_cache_decodes_tar_zst_of_several_frames(tmp_path: Path) -> None:
    from backports import zstd

    plain = make_tar(MEMBERS, mode="w")
    middle = len(plain) // 2
    # Two frames back to back, as a parallel compressor may write them.
    frames = zstd.compress(plain[:middle]) + zstd.compress(plain[middle:])
    archive = _write(tmp_path, "model.tar.zst", frames)

    tree = extract_to_cache(archive, DIGEST, Cache.open(tmp_path / "cache"))

    assert (tree / "weights" / "w.bin").read_bytes() == b"\x00\x01\x02"
    assert sniff_archive(archive) is ArchiveKind.TAR


def test_extract_to_cache_cut_tar_zst_is_truncated(tmp_path: Path) -> None:
    data = _tar_zst({"w.bin": random.Random(1).randbytes(200_000)})
    archive = _write(tmp_path, "cut.tar.zst", data[: len(data) // 2])
    cache = Cache.open(tmp_path / "cache")

    with pytest.raises(ArchiveError, match=r"cut\.tar\.zst is truncated or corrupt"):
        extract_to_cache(archive, DIGEST, cache)

    assert cache_files(cache.root) == []


def test_extract_to_cache_without_zstd_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import zooload.archive as archive_module

    monkeypatch.setattr(archive_module, "zstd_module", lambda: None)
    archive = _write(tmp_path, "m.tar.zst", _tar_zst(MEMBERS))
    cache = Cache.open(tmp_path / "cache")

    with pytest.raises(zooload.ConfigError, match=r"install zooload\[fast\]"):
        extract_to_cache(archive, DIGEST, cache)

    assert cache_files(cache.root) == []
