"""Archives read in place, against what could make them read the wrong bytes."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

import zooload
from support.builders import cache_files, partial_files, sha256_of
from zooload.archive import stage_file
from zooload.cache import Cache
from zooload.errors import ArchiveError, HashMismatchError, UnsafeArchiveError
from zooload.trees import TreeIndex

WIDTH = 512  # a 1 MiB weight: large enough to stay in place
ARCH = "hazard-linear"


def _linear() -> torch.nn.Linear:
    return torch.nn.Linear(WIDTH, WIDTH)


@pytest.fixture(autouse=True)
def _registered() -> None:
    zooload.register(ARCH)(_linear)


def _model(seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return _linear()


def _packed_folder(tmp_path: Path, seed: int) -> Path:
    return zooload.pack(_model(seed), tmp_path / f"content-{seed}", arch=ARCH)


def _tar_of(folder: Path, target: Path, extra: list[tarfile.TarInfo]) -> Path:
    """A plain tar of a packed folder's files, then ``extra`` (empty) members."""
    with tarfile.open(target, "w") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)
        for info in extra:
            tar.addfile(info)
    return target


def _folder_member(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


def _file_member(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


@pytest.mark.parametrize(
    ("extra", "rule"),
    [
        ([_folder_member("weights.safetensors")], "repeats an earlier file's name"),
        ([_file_member("weights.safetensors/readme.txt")], "inside an earlier member"),
        ([_file_member(".zooload-tree.json/x")], "reserved for zooload"),
    ],
)
def test_tar_members_that_clash_with_an_in_place_member_are_refused(
    tmp_path: Path, cache_dir: Path, extra: list[tarfile.TarInfo], rule: str
) -> None:
    archive = _tar_of(_packed_folder(tmp_path, 1), tmp_path / "m.tar", extra)

    for action in (zooload.load_url, zooload.fetch):
        with pytest.raises(UnsafeArchiveError, match=rule):
            action(archive, cache_dir=cache_dir)

    assert partial_files(cache_dir) == []
    assert not any(name.startswith("trees/") for name in cache_files(cache_dir))


def test_a_file_after_a_folder_of_its_name_is_refused(
    tmp_path: Path, cache_dir: Path
) -> None:
    folder = _packed_folder(tmp_path, 1)
    archive = tmp_path / "m.tar"
    with tarfile.open(archive, "w") as tar:
        tar.addfile(_folder_member("weights.safetensors"))
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)

    with pytest.raises(UnsafeArchiveError, match="repeats an earlier folder's name"):
        zooload.load_url(archive, cache_dir=cache_dir)


def test_zip_folder_and_file_of_one_name_are_refused(
    tmp_path: Path, cache_dir: Path
) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        zipped.writestr("weights/", b"")
        zipped.writestr("weights/w.bin", b"x")
        zipped.writestr("weights/w.bin/inner.txt", b"y")
    archive = tmp_path / "clash.zip"
    archive.write_bytes(buffer.getvalue())

    with pytest.raises(UnsafeArchiveError, match="inside an earlier member"):
        zooload.fetch(archive, cache_dir=cache_dir)


def _patched_zip(data: bytes, *, flags: int = 0, method: int | None = None) -> bytes:
    """A one-member zip with its flag bits or method changed in both headers."""
    patched = bytearray(data)
    for magic, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        start = patched.index(magic)
        flag = int.from_bytes(patched[start + flag_at : start + flag_at + 2], "little")
        patched[start + flag_at : start + flag_at + 2] = (flag | flags).to_bytes(
            2, "little"
        )
        if method is not None:
            patched[start + method_at : start + method_at + 2] = method.to_bytes(
                2, "little"
            )
    return bytes(patched)


@pytest.mark.parametrize(
    ("flags", "method", "message"),
    [
        (0x1, None, r"'w\.bin' is encrypted"),
        (0, 99, r"'w\.bin' is compressed with method 99"),
        (0x40, None, r"'w\.bin' is encrypted"),
        (0x20, None, r"'w\.bin' holds compressed patched data"),
    ],
)
def test_zip_members_zipfile_cannot_read_are_clear_errors(
    tmp_path: Path, cache_dir: Path, flags: int, method: int | None, message: str
) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        zipped.writestr("w.bin", b"weights")
    archive = tmp_path / "odd.zip"
    archive.write_bytes(_patched_zip(buffer.getvalue(), flags=flags, method=method))

    with pytest.raises(ArchiveError, match=message):
        zooload.fetch(archive, cache_dir=cache_dir)

    assert partial_files(cache_dir) == []
    assert not any(name.startswith("trees/") for name in cache_files(cache_dir))


def _octal(value: int, width: int) -> bytes:
    return f"{value:0{width - 1}o}".encode() + b"\0"


def _sparse_tar_member(name: str, data: bytes, hole: tuple[int, int]) -> bytes:
    """An old-GNU sparse member: ``data`` stored without the zeros in ``hole``."""
    start, end = hole
    stored = data[:start] + data[end:]
    info = tarfile.TarInfo(name)
    info.size = len(stored)
    info.type = tarfile.GNUTYPE_SPARSE
    header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    segments = [(0, start), (end, len(data) - end)]
    for index, (offset, size) in enumerate(segments):
        at = 386 + 24 * index
        header[at : at + 24] = _octal(offset, 12) + _octal(size, 12)
    header[483:495] = _octal(len(data), 12)
    header[148:156] = b" " * 8
    header[148:156] = f"{sum(header):06o}".encode() + b"\0 "
    padding = b"\0" * (-len(stored) % tarfile.BLOCKSIZE)
    return bytes(header) + stored + padding


def test_a_sparse_tar_member_is_extracted_with_its_holes_not_mapped(
    tmp_path: Path, cache_dir: Path
) -> None:
    model = _model(2)
    with torch.no_grad():
        model.weight[: WIDTH // 2].zero_()
    folder = zooload.pack(model, tmp_path / "sparse-content", arch=ARCH)
    weights = (folder / "weights.safetensors").read_bytes()
    zeros = weights.index(b"\0" * 65536)
    hole = (zeros // 512 * 512 + 512, zeros // 512 * 512 + 512 + 65536)
    assert weights[hole[0] : hole[1]] == b"\0" * 65536
    stream = io.BytesIO()
    stream.write(_sparse_tar_member("weights.safetensors", weights, hole))
    with tarfile.open(fileobj=stream, mode="w") as tar:
        for name in ("zooload.json",):
            tar.add(folder / name, arcname=name)
    archive = tmp_path / "sparse.tar"
    archive.write_bytes(stream.getvalue())
    with tarfile.open(archive) as tar:
        assert tar.getmember("weights.safetensors").issparse()

    result = zooload.load(archive, cache_dir=cache_dir)

    assert torch.equal(result.model.weight, model.weight)
    assert TreeIndex.read(result.path).in_place == {}
    assert (result.path / "weights.safetensors").read_bytes() == weights


def test_a_staged_tree_of_a_pinned_archive_says_so(tmp_path: Path) -> None:
    folder = _packed_folder(tmp_path, 1)
    archive = tmp_path / "m.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)

    staged = stage_file(archive, Cache.open(tmp_path / "cache"), covered_by_pin=True)

    assert staged.covered_by_pin
    assert staged.digests == {}
    staged.discard()


def _same_size_and_mtime(source: Path, target: Path) -> None:
    """Rewrite ``target`` with ``source``'s bytes, keeping one fixed mtime."""
    shutil.copyfile(source, target)
    os.utime(target, ns=(0, 10**9))


def test_fetch_of_a_local_archive_rewritten_unnoticed_refuses_to_copy(
    tmp_path: Path, cache_dir: Path
) -> None:
    first = _tar_of(_packed_folder(tmp_path, 1), tmp_path / "a.tar", [])
    second = _tar_of(_packed_folder(tmp_path, 2), tmp_path / "b.tar", [])
    assert first.stat().st_size == second.stat().st_size
    archive = tmp_path / "m.tar"
    _same_size_and_mtime(first, archive)
    zooload.load_url(archive, cache_dir=cache_dir)
    _same_size_and_mtime(second, archive)

    with pytest.raises(HashMismatchError, match="rewritten without changing"):
        zooload.fetch(archive, cache_dir=cache_dir)

    assert torch.equal(
        zooload.load_url(archive, cache_dir=cache_dir).weight, _model(2).weight
    )
    assert torch.equal(
        zooload.load_url(first, cache_dir=cache_dir).weight, _model(1).weight
    )
    assert partial_files(cache_dir) == []


def test_fetch_from_a_damaged_cached_archive_removes_it_and_says_so(
    tmp_path: Path, cache_dir: Path, served: Any
) -> None:
    data = _tar_of(_packed_folder(tmp_path, 1), tmp_path / "m.tar", []).read_bytes()
    url = f"{served.add('m.tar', data)}#sha256={sha256_of(data)}"
    zooload.load_url(url, cache_dir=cache_dir)
    blob = Cache.open(cache_dir).blob_path(sha256_of(data))
    blob.write_bytes(data[: len(data) // 2])

    with pytest.raises(ArchiveError, match="the archive is damaged"):
        zooload.fetch(url, cache_dir=cache_dir)

    assert partial_files(cache_dir) == []
    assert not blob.exists()
    folder = zooload.fetch(url, cache_dir=cache_dir)
    assert (folder / "weights.safetensors").stat().st_size > WIDTH * WIDTH * 4


@pytest.mark.parametrize("damage", ["rewrite", "delete"])
def test_verify_cache_finds_a_local_archive_its_tree_can_no_longer_read(
    tmp_path: Path, cache_dir: Path, damage: str
) -> None:
    first = _tar_of(_packed_folder(tmp_path, 1), tmp_path / "a.tar", [])
    second = _tar_of(_packed_folder(tmp_path, 2), tmp_path / "b.tar", [])
    archive = tmp_path / "m.tar"
    _same_size_and_mtime(first, archive)
    tree = zooload.load(archive, cache_dir=cache_dir).path
    assert zooload.verify_cache(cache_dir=cache_dir) == ()
    if damage == "rewrite":
        _same_size_and_mtime(second, archive)
    else:
        archive.unlink()

    (found,) = zooload.verify_cache(cache_dir=cache_dir, remove_corrupt=True)

    assert "stay in the local archive" in found.tree_problem
    assert str(archive.resolve()) in found.tree_problem
    assert found.removed
    assert not tree.exists()
