"""A corpus of hostile archives: each refused by name, nothing left behind.

Every case is served over loopback and loaded with ``load_url``; afterwards
the test walks the whole folder around the cache and finds no file the
archive tried to write, inside the cache or outside it.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import zooload
from support.builders import tar_member, tar_of


def _gzip_bomb(size: int) -> bytes:
    """A tar.gz holding one member of ``size`` zero bytes, built in a stream."""
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9) as compressed:
        info = tarfile.TarInfo("weights.bin")
        info.size = size
        compressed.write(info.tobuf(format=tarfile.GNU_FORMAT))
        chunk = bytes(1 << 20)
        for _ in range(size // len(chunk)):
            compressed.write(chunk)
        compressed.write(bytes(2 * tarfile.BLOCKSIZE))
    return raw.getvalue()


def _lying_zip() -> bytes:
    """A zip whose central directory declares 4 bytes for a 4 MiB member."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("weights.bin", bytes(4 << 20))
    data = bytearray(buffer.getvalue())
    directory = data.rfind(b"PK\x01\x02")
    data[directory + 24 : directory + 28] = (4).to_bytes(4, "little")
    return bytes(data)


CASES: dict[str, tuple[Callable[[], bytes], str, str]] = {
    "dot-dot": (
        lambda: tar_of((tar_member("../evil.txt"), b"x")),
        "../evil.txt",
        r"\(\.\.\)",
    ),
    "absolute": (
        lambda: tar_of((tar_member("/tmp/evil.txt"), b"x")),
        "/tmp/evil.txt",
        "absolute",
    ),
    "symlink-to-etc": (
        lambda: tar_of((tar_member("etc", tarfile.SYMTYPE, "/etc"), b"")),
        "etc",
        "absolute path",
    ),
    "symlink-chain-escapes": (
        lambda: tar_of(
            (tar_member("a/inner", tarfile.SYMTYPE, "../b"), b""),
            (tar_member("b", tarfile.SYMTYPE, "../../outside"), b""),
        ),
        "a/inner",
        "not a regular file earlier",
    ),
    "hardlink-outside": (
        lambda: tar_of((tar_member("passwd", tarfile.LNKTYPE, "/etc/passwd"), b"")),
        "passwd",
        "absolute",
    ),
    "device-node": (
        lambda: tar_of((tar_member("sda", tarfile.BLKTYPE), b"")),
        "sda",
        "device files",
    ),
    "fifo": (
        lambda: tar_of((tar_member("pipe", tarfile.FIFOTYPE), b"")),
        "pipe",
        "FIFOs",
    ),
    "repeated-member": (
        lambda: tar_of(
            (tar_member("w.bin"), b"first"), (tar_member("w.bin"), b"second")
        ),
        "w.bin",
        "repeats an earlier member",
    ),
    "gzip-bomb": (lambda: _gzip_bomb(256 << 20), "weights.bin", "inflate to"),
    "zip-central-directory-lies": (
        _lying_zip,
        "weights.bin",
        "more bytes than it declares|CRC",
    ),
}


def _files_under(root: Path) -> set[str]:
    return {
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and "locks" not in path.parts
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_load_url_refuses_hostile_archives_and_leaves_nothing(
    case: str, tmp_path: Path, served: Any
) -> None:
    build, member, rule = CASES[case]
    data = build()
    url = served.add(f"{case}.archive", data)
    cache_dir = tmp_path / "cache"
    before = _files_under(tmp_path)

    with pytest.raises(zooload.ArchiveError, match=rule) as caught:
        zooload.load_url(url, cache_dir=cache_dir, arch="silero-vad-16k")

    if isinstance(caught.value, zooload.UnsafeArchiveError):
        assert caught.value.member == member
    after = _files_under(tmp_path)
    assert after - before == set(), after - before
    assert not any((cache_dir / "trees").iterdir())
    assert not any((cache_dir / "partial").iterdir())
    assert not Path("/tmp/evil.txt").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_the_gzip_bomb_is_small_and_refused_before_it_is_written(
    tmp_path: Path,
) -> None:
    data = _gzip_bomb(256 << 20)
    assert len(data) < 300 * 1024
    path = tmp_path / "bomb.tar.gz"
    path.write_bytes(data)
    cache = zooload.fetch  # the public entry point: a local archive is extracted too
    with pytest.raises(
        zooload.UnsafeArchiveError, match=r"inflate to \d+ times its size"
    ):
        cache(path, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "trees").iterdir()) == []


def test_extraction_limits_are_configurable(tmp_path: Path) -> None:
    path = tmp_path / "small.tar.gz"
    path.write_bytes(
        tar_of((tar_member("a.bin"), bytes(2048)), (tar_member("b.bin"), b"x"))
    )
    tight = zooload.ExtractionLimits(max_members=1)
    with pytest.raises(zooload.UnsafeArchiveError, match="more than 1 members"):
        zooload.fetch(path, cache_dir=tmp_path / "cache", limits=tight)
    small = zooload.ExtractionLimits(max_total_bytes=1024)
    with pytest.raises(zooload.UnsafeArchiveError, match="more than 1024 bytes"):
        zooload.fetch(path, cache_dir=tmp_path / "cache", limits=small)
    tree = zooload.fetch(path, cache_dir=tmp_path / "cache")
    assert (tree / "a.bin").stat().st_size == 2048
