"""Archives unpacked while they download, and what becomes of failed attempts."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

import zooload
import zooload.retrieval
from support.builders import cache_files, partial_files, sha256_of
from support.httpserver import Fault
from zooload.formats.safetensors_file import write_aligned
from zooload.trees import TreeIndex

WIDTH = 512
ARCH = "streaming-linear"


def _linear() -> torch.nn.Linear:
    return torch.nn.Linear(WIDTH, WIDTH)


@pytest.fixture(autouse=True)
def _registered() -> None:
    zooload.register(ARCH)(_linear)


@pytest.fixture
def extracted_after(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Archives extracted after their download, rather than while it ran."""
    calls: list[Path] = []
    original = zooload.retrieval.extract_to_cache

    def counting(archive: Path, *args: Any, **kwargs: Any) -> Path:
        calls.append(archive)
        return original(archive, *args, **kwargs)

    monkeypatch.setattr(zooload.retrieval, "extract_to_cache", counting)
    return calls


def _model() -> torch.nn.Linear:
    torch.manual_seed(4)
    return _linear()


def _packed_bytes(tmp_path: Path, suffix: str) -> bytes:
    path = zooload.pack(_model(), tmp_path / f"m{suffix}", arch=ARCH)
    return path.read_bytes()


def _pinned(url: str, data: bytes) -> str:
    return f"{url}#sha256={sha256_of(data)}"


@pytest.mark.parametrize("suffix", [".tar.gz", ".tar.zst"])
def test_a_downloaded_compressed_tar_is_unpacked_while_it_arrives(
    tmp_path: Path,
    cache_dir: Path,
    served: Any,
    extracted_after: list[Path],
    suffix: str,
) -> None:
    data = _packed_bytes(tmp_path, suffix)
    url = served.add(f"m{suffix}", data)

    result = zooload.load(url, cache_dir=cache_dir)

    assert extracted_after == []
    assert torch.equal(result.model.weight, _model().weight)
    assert TreeIndex.read(result.path).in_place == {}
    assert served.count(f"m{suffix}") == 1
    assert partial_files(cache_dir) == []


@pytest.mark.parametrize("pinned", [True, False])
def test_a_downloaded_plain_tar_is_read_after_it_arrives_and_mapped_in_place(
    tmp_path: Path,
    cache_dir: Path,
    served: Any,
    extracted_after: list[Path],
    pinned: bool,
) -> None:
    data = _packed_bytes(tmp_path, ".tar")
    url = served.add("m.tar", data)

    result = zooload.load(_pinned(url, data) if pinned else url, cache_dir=cache_dir)

    assert len(extracted_after) == 1
    offset, size = TreeIndex.read(result.path).in_place["weights.safetensors"]
    assert result.model.weight.untyped_storage().nbytes() == offset + size
    # The span is the safetensors file inside the archive: its header first.
    assert data[offset + 8 : offset + 9] == b"{"
    assert torch.equal(result.model.weight, _model().weight)
    assert partial_files(cache_dir) == []


def test_a_resumed_download_is_unpacked_after_it_completes(
    tmp_path: Path,
    cache_dir: Path,
    served: Any,
    extracted_after: list[Path],
    retry: zooload.RetryPolicy,
) -> None:
    data = _packed_bytes(tmp_path, ".tar.gz")
    url = served.add("m.tar.gz", data)
    served.server.fault(
        served.path("m.tar.gz"), Fault(truncate_after=len(data) // 2, times=1)
    )

    model = zooload.load_url(_pinned(url, data), cache_dir=cache_dir, retry=retry)

    assert torch.equal(model.weight, _model().weight)
    assert len(extracted_after) == 1
    assert partial_files(cache_dir) == []


def test_a_download_that_fails_its_pin_leaves_no_staged_tree(
    tmp_path: Path, cache_dir: Path, served: Any
) -> None:
    data = _packed_bytes(tmp_path, ".tar.gz")
    url = served.add("m.tar.gz", data)

    with pytest.raises(zooload.HashMismatchError):
        zooload.load_url(_pinned(url, b"other bytes"), cache_dir=cache_dir)

    assert cache_files(cache_dir) == []


def test_a_broken_download_leaves_only_its_resumable_bytes(
    tmp_path: Path, cache_dir: Path, served: Any
) -> None:
    data = _packed_bytes(tmp_path, ".tar")
    url = served.add("m.tar", data)
    served.server.fault(served.path("m.tar"), Fault(truncate_after=len(data) // 2))

    with pytest.raises(zooload.DownloadError):
        zooload.load_url(
            url, cache_dir=cache_dir, retry=zooload.RetryPolicy(attempts=1)
        )

    kept = partial_files(cache_dir)
    assert len(kept) == 2
    assert all(name.startswith("download-") for name in kept)


def _hostile_tar_gz() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    return buffer.getvalue()


def test_an_unsafe_archive_refused_while_it_downloads_leaves_nothing(
    cache_dir: Path, served: Any, extracted_after: list[Path]
) -> None:
    url = served.add("evil.tar.gz", _hostile_tar_gz())

    with pytest.raises(zooload.UnsafeArchiveError, match=r"'\.\./escape\.txt'"):
        zooload.load_url(url, cache_dir=cache_dir, arch=_linear)

    assert extracted_after == []
    assert cache_files(cache_dir) == []
    assert not (cache_dir.parent / "escape.txt").exists()


def test_a_downloaded_zip_is_unpacked_after_it_arrives(
    tmp_path: Path, cache_dir: Path, served: Any, extracted_after: list[Path]
) -> None:
    data = _packed_bytes(tmp_path, ".zip")
    url = served.add("m.zip", data)

    result = zooload.load(url, cache_dir=cache_dir)

    assert len(extracted_after) == 1
    assert list(TreeIndex.read(result.path).in_place) == ["weights.safetensors"]
    assert torch.equal(result.model.weight, _model().weight)


def test_a_downloaded_bare_file_is_not_unpacked(
    tmp_path: Path, cache_dir: Path, served: Any, extracted_after: list[Path]
) -> None:
    path = tmp_path / "w.safetensors"
    write_aligned(_model().state_dict(), path)
    url = served.add("w.safetensors", path.read_bytes())

    model = zooload.load_url(url, arch=_linear, cache_dir=cache_dir)

    assert torch.equal(model.weight, _model().weight)
    assert extracted_after == []
    assert not any(name.startswith("trees/") for name in cache_files(cache_dir))


def test_a_zip_inside_a_download_is_left_to_the_zip_reader(
    tmp_path: Path, cache_dir: Path, served: Any
) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        zipped.writestr("notes.txt", "hello")
    url = served.add("notes.zip", buffer.getvalue())

    folder = zooload.fetch(url, cache_dir=cache_dir)

    assert (folder / "notes.txt").read_text() == "hello"
