"""Fuzzing every reader: damaged inputs give zooload errors, nothing else.

Inputs are mutations of real files (truncations, bit flips, spliced random
bytes) and crafted headers: safetensors headers declaring huge sizes or
overlapping offsets, zip entries whose sizes lie, shard indexes pointing
outside their folder. A bounded number of examples runs by default; the
``slow`` run uses many more.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
from pathlib import Path

import numpy
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

import zooload
from zooload.formats import read_state_dict

FAST = settings(
    max_examples=int(os.environ.get("ZOOLOAD_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
WEIGHTS = {
    "a.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3),
    "b": torch.ones(3),
}


def _torch_bytes(legacy: bool) -> bytes:
    buffer = io.BytesIO()
    torch.save(
        {"epoch": 1, "model": WEIGHTS},
        buffer,
        _use_new_zipfile_serialization=not legacy,
    )
    return buffer.getvalue()


def _npz_bytes() -> bytes:
    buffer = io.BytesIO()
    numpy.savez(buffer, w=numpy.ones((2, 2), "float32"))
    return buffer.getvalue()


def _torchscript_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 1)), buffer)
    return buffer.getvalue()


SEEDS = {
    "safetensors": save(WEIGHTS),
    "torch-zip": _torch_bytes(legacy=False),
    "torch-legacy": _torch_bytes(legacy=True),
    "npz": _npz_bytes(),
    "torchscript": _torchscript_bytes(),
}


def _expect_zooload_error_or_tensors(path: Path) -> None:
    try:
        tensors = read_state_dict(path)
    except zooload.ZooloadError:
        return
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())


@st.composite
def _mutations(draw: st.DrawFn, seed: bytes) -> bytes:
    kind = draw(st.sampled_from(["truncate", "flip", "splice"]))
    if kind == "truncate":
        return seed[: draw(st.integers(0, len(seed) - 1))]
    if kind == "flip":
        data = bytearray(seed)
        for _ in range(draw(st.integers(1, 8))):
            position = draw(st.integers(0, len(data) - 1))
            data[position] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    start = draw(st.integers(0, len(seed)))
    noise = draw(st.binary(min_size=1, max_size=64))
    return seed[:start] + noise + seed[start + len(noise) :]


@pytest.mark.parametrize("seed_name", sorted(SEEDS))
@pytest.mark.filterwarnings("ignore::UserWarning:torch")
def test_readers_turn_damaged_files_into_zooload_errors(
    seed_name: str, tmp_path: Path
) -> None:
    @FAST
    @given(data=_mutations(SEEDS[seed_name]))
    def check(data: bytes) -> None:
        path = tmp_path / "fuzzed"
        path.write_bytes(data)
        _expect_zooload_error_or_tensors(path)

    check()


@FAST
@given(data=st.binary(max_size=2048))
def test_readers_turn_random_bytes_into_zooload_errors(
    tmp_path: Path, data: bytes
) -> None:
    path = tmp_path / "random"
    path.write_bytes(data)
    _expect_zooload_error_or_tensors(path)


def _safetensors_with_header(header: dict[str, object], payload: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + payload


@FAST
@given(
    shape=st.lists(st.integers(0, 2**40), min_size=1, max_size=3),
    start=st.integers(0, 2**40),
    end=st.integers(0, 2**40),
)
def test_safetensors_headers_that_lie_are_refused_without_allocating(
    tmp_path: Path, shape: list[int], start: int, end: int
) -> None:
    header = {"w": {"dtype": "F32", "shape": shape, "data_offsets": [start, end]}}
    path = tmp_path / "lying.safetensors"
    path.write_bytes(_safetensors_with_header(header, b"\0" * 64))
    _expect_zooload_error_or_tensors(path)


def test_safetensors_overlapping_offsets_are_refused(tmp_path: Path) -> None:
    header = {
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
    }
    path = tmp_path / "overlap.safetensors"
    path.write_bytes(_safetensors_with_header(header, b"\0" * 24))
    with pytest.raises(zooload.FormatError, match="damaged safetensors"):
        read_state_dict(path)


def _lying_zip(seed: bytes, declared: int) -> bytes:
    """The torch zip with every entry's declared uncompressed size replaced."""
    data = bytearray(seed)
    with zipfile.ZipFile(io.BytesIO(seed)) as archive:
        infos = archive.infolist()
    for info in infos:
        local = info.header_offset
        struct.pack_into("<I", data, local + 22, declared & 0xFFFFFFFF)
    directory = data.rfind(b"PK\x05\x06")
    offset = struct.unpack_from("<I", data, directory + 16)[0]
    while data[offset : offset + 4] == b"PK\x01\x02":
        struct.pack_into("<I", data, offset + 24, declared & 0xFFFFFFFF)
        name_length, extra_length, comment_length = struct.unpack_from(
            "<HHH", data, offset + 28
        )
        offset += 46 + name_length + extra_length + comment_length
    return bytes(data)


@pytest.mark.parametrize("declared", [0, 1, 2**31, 2**32 - 1])
def test_torch_zip_whose_entries_lie_about_sizes_is_refused(
    tmp_path: Path, declared: int
) -> None:
    path = tmp_path / "lying.pt"
    path.write_bytes(_lying_zip(SEEDS["torch-zip"], declared))
    _expect_zooload_error_or_tensors(path)


@pytest.mark.parametrize(
    "shard", ["../outside.safetensors", "/etc/passwd", "C:\\\\weights.bin", "a/../../b"]
)
def test_shard_indexes_pointing_outside_are_refused(tmp_path: Path, shard: str) -> None:
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": shard}}))
    with pytest.raises(zooload.FormatError, match="outside its folder"):
        read_state_dict(index)


@pytest.mark.slow
@pytest.mark.parametrize("seed_name", sorted(SEEDS))
@pytest.mark.filterwarnings("ignore::UserWarning:torch")
def test_readers_survive_a_long_fuzzing_run(seed_name: str, tmp_path: Path) -> None:
    @settings(FAST, max_examples=2000)
    @given(data=_mutations(SEEDS[seed_name]))
    def check(data: bytes) -> None:
        path = tmp_path / "fuzzed"
        path.write_bytes(data)
        _expect_zooload_error_or_tensors(path)

    check()
