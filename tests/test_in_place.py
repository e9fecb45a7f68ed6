"""Archives read in place: stored safetensors weights mapped from the archive."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import zooload
import zooload.extraction
from support.builders import cache_files, sha256_of
from zooload.errors import ArchiveError, HashMismatchError, ManifestError
from zooload.formats.safetensors_file import write_aligned
from zooload.hashing import file_digest
from zooload.trees import TREE_INDEX_NAME, TreeIndex

WIDTH = 512  # a 1 MiB weight: large enough to stay in place
ARCH = "in-place-linear"


def _linear() -> torch.nn.Linear:
    return torch.nn.Linear(WIDTH, WIDTH)


@pytest.fixture(autouse=True)
def _registered() -> None:
    zooload.register(ARCH)(_linear)


def _model() -> torch.nn.Linear:
    torch.manual_seed(3)
    return _linear()


def _packed(tmp_path: Path, suffix: str) -> Path:
    inputs = torch.randn(2, WIDTH, generator=torch.Generator().manual_seed(5))
    return zooload.pack(
        _model(), tmp_path / f"m{suffix}", arch=ARCH, example_inputs=inputs
    )


def _spans(tree: Path) -> dict[str, tuple[int, int]]:
    return dict(TreeIndex.read(tree).in_place)


@pytest.mark.parametrize("suffix", [".tar", ".zip"])
def test_stored_weights_are_mapped_from_the_archive_without_a_copy(
    tmp_path: Path, cache_dir: Path, suffix: str
) -> None:
    archive = _packed(tmp_path, suffix)

    result = zooload.load(archive, cache_dir=cache_dir)

    spans = _spans(result.path)
    assert list(spans) == ["weights.safetensors"]
    assert not (result.path / "weights.safetensors").exists()
    offset, size = spans["weights.safetensors"]
    weight = result.model.weight
    # A view of a private mapping of the archive, up to the member's end.
    assert weight.untyped_storage().nbytes() == offset + size
    assert weight.data_ptr() % 64 == 0
    assert torch.equal(weight, _model().weight)
    assert result.example is not None
    assert result.example.largest_difference == 0.0
    assert cache_files(cache_dir) == sorted(
        f"trees/{file_digest(archive)}/{name}"
        for name in (TREE_INDEX_NAME, "examples.safetensors", "zooload.json")
    )


@pytest.mark.parametrize("suffix", [".tar", ".zip"])
def test_in_place_load_gives_the_plain_loads_outputs_bit_for_bit(
    tmp_path: Path, cache_dir: Path, suffix: str
) -> None:
    archive = _packed(tmp_path, suffix)
    plain = _linear()
    plain.load_state_dict(_model().state_dict())
    inputs = torch.randn(7, WIDTH, generator=torch.Generator().manual_seed(9))

    model = zooload.load_url(archive, cache_dir=cache_dir)

    with torch.no_grad():
        assert torch.equal(model(inputs), plain.eval()(inputs))


def test_a_written_tensor_changes_neither_the_archive_nor_the_next_load(
    tmp_path: Path, cache_dir: Path
) -> None:
    archive = _packed(tmp_path, ".tar")
    digest = file_digest(archive)

    model = zooload.load_url(archive, cache_dir=cache_dir)
    with torch.no_grad():
        model.weight.fill_(7.0)

    assert file_digest(archive) == digest
    again = zooload.load_url(archive, cache_dir=cache_dir, verify="full")
    assert torch.equal(again.weight, _model().weight)


@pytest.mark.parametrize("suffix", [".tar", ".zip"])
def test_fetch_hands_out_a_folder_with_every_file(
    tmp_path: Path, cache_dir: Path, suffix: str
) -> None:
    archive = _packed(tmp_path, suffix)
    zooload.load_url(archive, cache_dir=cache_dir)

    folder = zooload.fetch(archive, cache_dir=cache_dir)

    assert sorted(p.name for p in folder.iterdir()) == [
        "examples.safetensors",
        "weights.safetensors",
        "zooload.json",
    ]
    manifest = json.loads((folder / "zooload.json").read_text())
    assert (
        file_digest(folder / "weights.safetensors") == manifest["weights"][0]["sha256"]
    )
    assert zooload.load(archive, cache_dir=cache_dir).path == folder


def _archive_with(weights: bytes, manifest_weights: bytes, *, kind: str) -> bytes:
    """A stored archive whose manifest lists ``manifest_weights``' digest."""
    manifest = {
        "format_version": 1,
        "name": ARCH,
        "architecture": {"name": ARCH},
        "weights": [{"path": "w.safetensors", "sha256": sha256_of(manifest_weights)}],
    }
    members = {"zooload.json": json.dumps(manifest).encode(), "w.safetensors": weights}
    buffer = io.BytesIO()
    if kind == "tar":
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        with zipfile.ZipFile(buffer, "w") as zipped:
            for name, data in members.items():
                zipped.writestr(name, data)
    return buffer.getvalue()


def _weights_bytes(tmp_path: Path, value: float) -> bytes:
    path = tmp_path / f"w{value}.safetensors"
    state = {"weight": torch.full((WIDTH, WIDTH), value), "bias": torch.zeros(WIDTH)}
    write_aligned(state, path)
    return path.read_bytes()


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_unpinned_archive_whose_in_place_member_differs_from_its_manifest_fails(
    tmp_path: Path, cache_dir: Path, kind: str
) -> None:
    real, listed = _weights_bytes(tmp_path, 1.0), _weights_bytes(tmp_path, 2.0)
    archive = tmp_path / f"lying.{kind}"
    archive.write_bytes(_archive_with(real, listed, kind=kind))

    with pytest.raises(
        HashMismatchError, match="does not match its own manifest"
    ) as caught:
        zooload.load_url(archive, cache_dir=cache_dir)

    assert caught.value.actual == sha256_of(real)
    assert not any(name.startswith("trees/") for name in cache_files(cache_dir))


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_pinned_archive_members_in_place_are_covered_by_the_pin(
    tmp_path: Path,
    cache_dir: Path,
    kind: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    weights = _weights_bytes(tmp_path, 1.0)
    archive = tmp_path / f"model.{kind}"
    archive.write_bytes(_archive_with(weights, weights, kind=kind))
    spans_hashed: list[int] = []
    original = zooload.extraction.span_digest

    def counting(path: Path, offset: int, size: int) -> str:
        spans_hashed.append(size)
        return original(path, offset, size)

    monkeypatch.setattr(zooload.extraction, "span_digest", counting)

    zooload.load_url(archive, sha256=file_digest(archive), cache_dir=cache_dir)
    assert spans_hashed == []

    zooload.load_url(archive, cache_dir=tmp_path / "other-cache")
    assert spans_hashed == [len(weights)]


def test_zip_member_in_place_without_a_manifest_is_checked_by_its_crc(
    tmp_path: Path, cache_dir: Path
) -> None:
    weights = bytearray(_weights_bytes(tmp_path, 1.0))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        zipped.writestr("w.safetensors", bytes(weights))
    data = bytearray(buffer.getvalue())
    # Flip a byte of the tensor data, well past the header.
    data[len(data) // 2] ^= 0xFF
    archive = tmp_path / "flipped.zip"
    archive.write_bytes(bytes(data))

    with pytest.raises(ArchiveError, match=r"flipped\.zip is truncated or corrupt"):
        zooload.load_url(archive, arch=_linear, cache_dir=cache_dir)


def test_tar_member_reaching_past_the_archive_end_is_truncated(
    tmp_path: Path, cache_dir: Path
) -> None:
    weights = _weights_bytes(tmp_path, 1.0)
    whole = _archive_with(weights, weights, kind="tar")
    start = whole.index(weights)
    archive = tmp_path / "cut.tar"
    # The member's first MiB is there, its last bytes are not.
    archive.write_bytes(whole[: start + len(weights) - 10])

    with pytest.raises(ArchiveError, match=r"'w\.safetensors' is truncated"):
        zooload.load_url(archive, cache_dir=cache_dir)

    assert cache_files(cache_dir) == []


def test_member_named_like_the_tree_index_is_refused(
    tmp_path: Path, cache_dir: Path
) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        zipped.writestr(TREE_INDEX_NAME, "{}")
        zipped.writestr("w.pt", b"x")
    archive = tmp_path / "reserved.zip"
    archive.write_bytes(buffer.getvalue())

    with pytest.raises(zooload.UnsafeArchiveError, match="reserved for zooload"):
        zooload.fetch(archive, cache_dir=cache_dir)


def test_a_tree_opened_as_a_folder_says_to_load_the_archive(
    tmp_path: Path, cache_dir: Path
) -> None:
    archive = _packed(tmp_path, ".tar")
    tree = zooload.load(archive, cache_dir=cache_dir).path

    for action in (zooload.load_url, zooload.fetch):
        with pytest.raises(
            ManifestError, match=r"whose weights stay in the archive it came from"
        ):
            action(tree, cache_dir=tmp_path / "other")


def test_a_damaged_tree_index_says_how_to_recover(
    tmp_path: Path, cache_dir: Path
) -> None:
    archive = _packed(tmp_path, ".zip")
    tree = zooload.load(archive, cache_dir=cache_dir).path
    (tree / TREE_INDEX_NAME).write_text("{not json")

    with pytest.raises(ManifestError, match=r"zooload cache rm\) and load again"):
        zooload.load_url(archive, cache_dir=cache_dir)


def test_in_place_weights_without_a_manifest_are_found(
    tmp_path: Path, cache_dir: Path
) -> None:
    weights = _weights_bytes(tmp_path, 1.0)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in (
            ("model/README", b"notes"),
            ("model/w.safetensors", weights),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = tmp_path / "bare.tar"
    archive.write_bytes(buffer.getvalue())

    model = zooload.load_url(archive, arch=_linear, cache_dir=cache_dir)

    assert torch.equal(model.weight, torch.full((WIDTH, WIDTH), 1.0))
    tree = cache_dir / "trees" / file_digest(archive)
    assert _spans(tree) == {"model/w.safetensors": (1536, len(weights))}


def test_zip_written_by_pack_aligns_the_stored_weights(tmp_path: Path) -> None:
    archive = _packed(tmp_path, ".zip")

    with zipfile.ZipFile(archive) as zipped:
        info = zipped.getinfo("weights.safetensors")
    with archive.open("rb") as stream:
        stream.seek(info.header_offset)
        header = stream.read(30)
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    data_offset = info.header_offset + 30 + name_length + extra_length

    assert info.compress_type == zipfile.ZIP_STORED
    assert data_offset % 64 == 0


def test_small_safetensors_members_are_extracted(
    tmp_path: Path, cache_dir: Path
) -> None:
    path = tmp_path / "small.safetensors"
    save_file({"weight": torch.ones(1, 2), "bias": torch.zeros(1)}, path)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(path, arcname="w.safetensors")
    archive = tmp_path / "small.tar"
    archive.write_bytes(buffer.getvalue())

    zooload.load_url(
        archive,
        arch=torch.nn.Linear,
        in_features=2,
        out_features=1,
        cache_dir=cache_dir,
    )

    tree = cache_dir / "trees" / file_digest(archive)
    assert (tree / "w.safetensors").read_bytes() == path.read_bytes()
    assert _spans(tree) == {}
