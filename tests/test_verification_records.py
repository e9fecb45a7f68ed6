"""Cheap cache hits: recorded verifications of local files, verify="full"."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import zooload
import zooload.local_files
import zooload.unpacking
from support.builders import sha256_of
from zooload.errors import ConfigError, HashMismatchError


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every path that fetching hashes from now on."""
    calls: list[Path] = []
    original = zooload.local_files.file_digest

    def counting(path: Path) -> str:
        calls.append(path)
        return original(path)

    # Local archives are hashed by the unpacker, beside their extraction.
    monkeypatch.setattr(zooload.local_files, "file_digest", counting)
    monkeypatch.setattr(zooload.unpacking, "file_digest", counting)
    return calls


def test_local_file_is_hashed_once_while_unchanged(
    tmp_path: Path, cache_dir: Path, hashed: list[Path]
) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"abc")
    pin = sha256_of(b"abc")

    zooload.fetch(path, sha256=pin, cache_dir=cache_dir)
    zooload.fetch(path, sha256=pin, cache_dir=cache_dir)

    assert hashed == [path]


def test_local_file_rewritten_is_hashed_again(
    tmp_path: Path, cache_dir: Path, hashed: list[Path]
) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"abc")
    zooload.fetch(path, cache_dir=cache_dir)
    path.write_bytes(b"abd")
    status = path.stat()
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000))

    with pytest.raises(HashMismatchError, match="expected"):
        zooload.fetch(path, sha256=sha256_of(b"abc"), cache_dir=cache_dir)

    assert len(hashed) == 2


def test_verify_full_hashes_local_files_every_time(
    tmp_path: Path, cache_dir: Path, hashed: list[Path]
) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"abc")

    zooload.fetch(path, cache_dir=cache_dir)
    zooload.fetch(path, cache_dir=cache_dir, verify="full")

    assert hashed == [path, path]


def test_verify_full_finds_and_removes_a_damaged_cached_blob(
    served, cache_dir: Path
) -> None:
    data = b"weights" * 100
    url = served.add("w.bin", data) + f"#sha256={sha256_of(data)}"
    blob = zooload.fetch(url, cache_dir=cache_dir)
    blob.write_bytes(b"damaged")

    assert zooload.fetch(url, cache_dir=cache_dir) == blob
    with pytest.raises(HashMismatchError, match="removed; load again"):
        zooload.fetch(url, cache_dir=cache_dir, verify="full")

    assert not blob.exists()
    assert zooload.fetch(url, cache_dir=cache_dir).read_bytes() == data


def test_verify_rejects_an_unknown_mode(tmp_path: Path, cache_dir: Path) -> None:
    with pytest.raises(ConfigError, match="verify must be one of"):
        zooload.fetch(tmp_path, cache_dir=cache_dir, verify="sometimes")


def _linear() -> torch.nn.Module:
    return torch.nn.Linear(3, 2)


def _packed_folder(tmp_path: Path) -> Path:
    """A model packed into a plain folder: a manifest and its weights."""
    zooload.register("records-linear")(_linear)
    torch.manual_seed(0)
    return zooload.pack(
        torch.nn.Linear(3, 2), tmp_path / "model", arch="records-linear"
    )


def test_local_folder_files_are_hashed_once_while_unchanged(
    tmp_path: Path, cache_dir: Path, hashed: list[Path]
) -> None:
    folder = _packed_folder(tmp_path)

    first = zooload.load_url(folder, cache_dir=cache_dir)
    second = zooload.load_url(folder, cache_dir=cache_dir)

    assert hashed == [folder / "weights.safetensors"]
    assert torch.equal(first.weight, second.weight)


def test_local_folder_file_changed_is_hashed_again_and_refused(
    tmp_path: Path, cache_dir: Path, hashed: list[Path]
) -> None:
    folder = _packed_folder(tmp_path)
    zooload.load_url(folder, cache_dir=cache_dir)
    weights = folder / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    status = weights.stat()
    os.utime(weights, ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000))

    with pytest.raises(HashMismatchError, match=r"weights\.safetensors"):
        zooload.load_url(folder, cache_dir=cache_dir)

    assert hashed == [weights, weights]


def test_verify_full_hashes_local_folder_files_every_time(
    tmp_path: Path, cache_dir: Path, hashed: list[Path]
) -> None:
    folder = _packed_folder(tmp_path)

    zooload.load_url(folder, cache_dir=cache_dir)
    zooload.load_url(folder, cache_dir=cache_dir, verify="full")

    weights = folder / "weights.safetensors"
    assert hashed == [weights, weights]
