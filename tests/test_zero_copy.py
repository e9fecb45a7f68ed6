"""Zero-copy loads: mapped safetensors, 64-byte alignment, bit-identical results."""

from __future__ import annotations

import hashlib
import json
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import zooload
from support.builders import sha256_of
from zooload.formats.safetensors_file import read, write_aligned
from zooload.zoo.silero_vad import CHUNK_SAMPLES, SileroVad16k, speech_probabilities


def _audio() -> torch.Tensor:
    generator = torch.Generator().manual_seed(11)
    return 0.2 * torch.randn(24 * CHUNK_SAMPLES, generator=generator)


def _shifted_copy(source: Path, dest: Path, shift: int) -> Path:
    """The same tensors with every data offset moved ``shift`` bytes off 64."""
    data = source.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = data[8 : 8 + length].rstrip()
    header += b" " * ((shift - 8 - len(header)) % 64)
    dest.write_bytes(struct.pack("<Q", len(header)) + header + data[8 + length :])
    return dest


def _plain_model(path: Path) -> torch.nn.Module:
    model = SileroVad16k()
    model.load_state_dict(load_file(path))
    return model.eval()


@pytest.mark.parametrize("shift", [0, 8, 60])
def test_zero_copy_silero_gives_bit_identical_outputs(
    shift: int, silero_data: Path, tmp_path: Path, cache_dir: Path
) -> None:
    original = silero_data / "silero_vad_16k.safetensors"
    path = _shifted_copy(original, tmp_path / "vad.safetensors", shift)
    mapped = read(path, map_location="cpu")
    offsets = {tensor.data_ptr() % 64 for tensor in mapped.values()}
    assert offsets == {shift}

    model = zooload.load_url(path, arch="silero-vad-16k", cache_dir=cache_dir)

    assert all(p.data_ptr() % 64 == 0 for p in model.parameters())
    audio = _audio()
    assert torch.equal(
        speech_probabilities(model, audio),
        speech_probabilities(_plain_model(original), audio),
    )


def test_safetensors_read_returns_views_of_one_mapping(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    write_aligned({"a": torch.arange(32.0), "b": torch.ones(3, 16)}, path)

    tensors = read(path, map_location="cpu")

    storages = {t.untyped_storage().data_ptr() for t in tensors.values()}
    assert len(storages) == 1
    assert tensors["a"].untyped_storage().nbytes() == path.stat().st_size
    assert torch.equal(tensors["a"], torch.arange(32.0))


def test_safetensors_read_copies_a_tensor_that_splits_its_elements(
    tmp_path: Path,
) -> None:
    path = tmp_path / "w.safetensors"
    tensors = {"odd": torch.arange(5, dtype=torch.uint8), "f": torch.tensor([2.5])}
    write_aligned(tensors, path)

    read_back = read(path, map_location="cpu")

    assert torch.equal(read_back["f"], tensors["f"])
    assert torch.equal(read_back["odd"], tensors["odd"])


def test_zero_copy_load_adopts_aligned_tensors_in_place(
    tmp_path: Path, cache_dir: Path
) -> None:
    path = tmp_path / "w.safetensors"
    write_aligned(torch.nn.Linear(16, 4).state_dict(), path)

    model = zooload.load_url(
        path, arch=torch.nn.Linear, in_features=16, out_features=4, cache_dir=cache_dir
    )

    storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert len(storages) == 1
    assert model.weight.requires_grad
    assert type(model.weight) is torch.nn.Parameter


def test_training_in_place_never_writes_the_cached_file(
    served, tmp_path: Path, cache_dir: Path
) -> None:
    path = tmp_path / "w.safetensors"
    write_aligned(torch.nn.Linear(16, 4).state_dict(), path)
    data = path.read_bytes()
    url = served.add("linear.safetensors", data) + f"#sha256={sha256_of(data)}"
    model = zooload.load_url(
        url, arch=torch.nn.Linear, in_features=16, out_features=4, cache_dir=cache_dir
    )
    before = model.weight.detach().clone()

    model.train()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    model(torch.ones(2, 16)).square().sum().backward()
    optimiser.step()

    assert not torch.equal(model.weight.detach(), before)
    blob = cache_dir / "blobs" / sha256_of(data)
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == sha256_of(data)


@pytest.mark.parametrize(
    "tensor",
    [
        torch.arange(6.0).reshape(2, 3),
        torch.tensor(1.5, dtype=torch.bfloat16),
        torch.zeros(0, 4),
        torch.tensor([True, False, True]),
        torch.arange(7, dtype=torch.int64),
        torch.ones(2, dtype=torch.float16),
    ],
    ids=["f32", "bf16-scalar", "empty", "bool", "i64", "f16"],
)
def test_write_aligned_round_trips_through_safetensors(
    tensor: torch.Tensor, tmp_path: Path
) -> None:
    path = tmp_path / "w.safetensors"
    tensors = {"t": tensor, "big": torch.ones(64)}
    write_aligned(tensors, path, metadata={"who": "test"})

    theirs = load_file(path)
    ours = read(path, map_location="cpu")

    for name, expected in tensors.items():
        assert torch.equal(theirs[name], expected)
        assert torch.equal(ours[name], expected)
        assert ours[name].dtype == expected.dtype


def test_write_aligned_puts_every_64_byte_multiple_on_a_boundary(
    tmp_path: Path,
) -> None:
    path = tmp_path / "w.safetensors"
    tensors = {
        "bias": torch.ones(3),
        "weight": torch.ones(4, 16),
        "other_bias": torch.ones(5),
        "embedding": torch.ones(32),
    }
    write_aligned(tensors, path)

    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    starts = {
        name: 8 + length + spec["data_offsets"][0] for name, spec in header.items()
    }
    assert (8 + length) % 64 == 0
    assert starts["weight"] % 64 == 0
    assert starts["embedding"] % 64 == 0
    assert min(starts["bias"], starts["other_bias"]) % 64 == 0


def test_save_file_layout_is_read_correctly_too(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    tensors = {"a": torch.ones(3), "b": torch.arange(5, dtype=torch.int16)}
    save_file(tensors, path)

    ours = read(path, map_location="cpu")

    assert all(torch.equal(ours[name], tensors[name]) for name in tensors)


def test_pack_zip_stores_weights_and_deflates_small_files(
    silero_data: Path, tmp_path: Path
) -> None:
    weights = load_file(silero_data / "silero_vad_16k.safetensors")
    dest = zooload.pack(weights, tmp_path / "vad.zip", arch="silero-vad-16k")

    with zipfile.ZipFile(dest) as zipped:
        methods = {info.filename: info.compress_type for info in zipped.infolist()}

    assert methods["weights.safetensors"] == zipfile.ZIP_STORED
    assert methods["zooload.json"] == zipfile.ZIP_DEFLATED


def test_pack_tar_is_uncompressed_and_loads(
    silero_data: Path, tmp_path: Path, cache_dir: Path
) -> None:
    weights = load_file(silero_data / "silero_vad_16k.safetensors")
    dest = zooload.pack(weights, tmp_path / "vad.tar", arch="silero-vad-16k")

    with tarfile.open(dest, "r:") as tar:
        assert "weights.safetensors" in tar.getnames()
    model = zooload.load_url(dest, cache_dir=cache_dir)
    assert torch.equal(model.conv1.weight, weights["conv1.weight"])
