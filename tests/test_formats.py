"""Unit tests for zooload.formats: recognising checkpoints and reading damaged ones.

Every checkpoint is made by its real writer (``torch.save`` zip and legacy,
``safetensors.torch.save_file``, ``numpy.savez``, ``torch.jit.save``); damaged
and hostile inputs are built from those bytes by each test.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import logging
import lzma
import re
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy
import pytest
import torch
from safetensors.torch import save_file

from support.builders import tensors_equal
from zooload.errors import ConfigError, FormatError, UnsafeCheckpointError
from zooload.formats import (
    CheckpointFormat,
    PickleTrust,
    read_checkpoint,
    read_state_dict,
    safetensors_file,
    sharded,
    sniff_format,
    torch_pickle,
    torchscript,
)

WEIGHTS = {"fc.weight": torch.tensor([[1.0, 2.0]]), "fc.bias": torch.tensor([0.5])}
NOT_A_CHECKPOINT = (
    "is not a checkpoint (safetensors, torch zip, legacy torch, TorchScript, npz, "
    "or a shard index): it looks like "
)
DOWNLOAD_AGAIN = "The file is truncated or damaged; download it again."
CHECK_THE_URL = "Check that the URL or path points at the weights file."


def _torch_zip(path: Path) -> None:
    torch.save(WEIGHTS, path)


def _torch_legacy(path: Path) -> None:
    torch.save(WEIGHTS, path, _use_new_zipfile_serialization=False)


def _safetensors(path: Path) -> None:
    save_file(WEIGHTS, path)


def _npz(path: Path) -> None:
    with path.open("wb") as stream:
        numpy.savez(stream, **{k: v.numpy() for k, v in WEIGHTS.items()})


class TinyLinear(torch.nn.Module):
    """A module whose state dict is ``WEIGHTS``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(2, 1)
        self.fc.load_state_dict(
            {"weight": WEIGHTS["fc.weight"], "bias": WEIGHTS["fc.bias"]}
        )


def _torchscript(path: Path) -> None:
    torch.jit.save(torch.jit.script(TinyLinear()), path)


def _sharded(path: Path) -> None:
    save_file({"fc.weight": WEIGHTS["fc.weight"]}, path.parent / "a.safetensors")
    torch.save({"fc.bias": WEIGHTS["fc.bias"]}, path.parent / "b.bin")
    index = {"weight_map": {"fc.weight": "a.safetensors", "fc.bias": "b.bin"}}
    path.write_text(json.dumps(index))


WRITERS: dict[CheckpointFormat, Callable[[Path], None]] = {
    CheckpointFormat.TORCH_ZIP: _torch_zip,
    CheckpointFormat.TORCH_LEGACY: _torch_legacy,
    CheckpointFormat.SAFETENSORS: _safetensors,
    CheckpointFormat.NUMPY_NPZ: _npz,
    CheckpointFormat.TORCHSCRIPT: _torchscript,
    CheckpointFormat.SHARDED_INDEX: _sharded,
}


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        for name, data in members.items():
            zipped.writestr(name, data)
    return buffer.getvalue()


def _rewrite_zip(
    source: Path, target: Path, change: Callable[[str, bytes], bytes | None]
) -> None:
    """Copy a zip member by member, replacing or dropping members by name."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            data = change(info.filename, old.read(info))
            if data is not None:
                new.writestr(info, data)


# -- recognising formats -----------------------------------------------------------


@pytest.mark.parametrize("checkpoint_format", list(WRITERS), ids=lambda f: f.value)
def test_read_state_dict_recognises_every_writer_by_content(
    tmp_path: Path, checkpoint_format: CheckpointFormat
) -> None:
    # The same misleading name for every format: only the bytes count.
    path = tmp_path / "download.bin"
    WRITERS[checkpoint_format](path)

    assert sniff_format(path) is checkpoint_format
    assert tensors_equal(read_state_dict(path), WEIGHTS)


def _tar_bytes() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("w.pt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "seen", "hint"),
    [
        (_tar_bytes(), "a tar archive", CHECK_THE_URL),
        (
            _zip_bytes({"readme.txt": b"hi", "weights/w.bin": b"\x00"}),
            "a zip archive of other files",
            "Extract it and point zooload at the checkpoint inside.",
        ),
        (_zip_bytes({}), "an empty zip archive", CHECK_THE_URL),
        (gzip.compress(b"weights"), "a gzip file", CHECK_THE_URL),
        (bz2.compress(b"weights"), "a bzip2 file", CHECK_THE_URL),
        (lzma.compress(b"weights"), "an xz file", CHECK_THE_URL),
        (b'{"model": "tiny"}', "a JSON document", CHECK_THE_URL),
        (b"[1, 2, 3, 4, 5, 6, 7, 8]", "a JSON document", CHECK_THE_URL),
        (
            bytes(range(20)),
            "none of the known formats (first bytes: "
            "00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f)",
            CHECK_THE_URL,
        ),
    ],
    ids=[
        "tar",
        "zip-of-other-files",
        "empty-zip",
        "gzip",
        "bzip2",
        "xz",
        "json-object",
        "json-array",
        "unknown-bytes",
    ],
)
def test_sniff_format_says_what_a_non_checkpoint_looks_like(
    tmp_path: Path, content: bytes, seen: str, hint: str
) -> None:
    path = tmp_path / "model.pth"
    path.write_bytes(content)

    with pytest.raises(
        FormatError, match=re.escape(f"{path} {NOT_A_CHECKPOINT}{seen}. {hint}")
    ) as caught:
        read_state_dict(path)

    assert caught.value.seen == seen
    assert caught.value.path == str(path)


def _cut_safetensors_header(tmp_path: Path) -> Path:
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.ones(4)}, path)
    path.write_bytes(path.read_bytes()[:40])
    return path


def test_sniff_format_recognises_a_safetensors_file_cut_in_its_header(
    tmp_path: Path,
) -> None:
    path = _cut_safetensors_header(tmp_path)

    with pytest.raises(FormatError, match=re.escape(NOT_A_CHECKPOINT)) as caught:
        sniff_format(path)

    assert caught.value.seen == "a truncated safetensors file (its header is cut short)"
    assert str(caught.value).endswith(". The file is cut short; download it again.")


# -- npz ---------------------------------------------------------------------------


def test_read_state_dict_refuses_npz_object_arrays(tmp_path: Path) -> None:
    path = tmp_path / "w.npz"
    numpy.savez(path, w=numpy.ones(2, "float32"), names=numpy.array(["a", None]))

    with pytest.raises(
        FormatError,
        match=r"is not an npz file of numeric arrays: it looks like an npz file with "
        r"object arrays or bad data \(Object arrays cannot be loaded when "
        r"allow_pickle=False\)\. Object arrays need pickle; save plain numeric "
        r"arrays instead\.",
    ) as caught:
        read_state_dict(path)

    assert caught.value.expected == "an npz file of numeric arrays"


def test_read_state_dict_npz_with_a_damaged_array(tmp_path: Path) -> None:
    path = tmp_path / "w.npz"
    numpy.savez(path, w=numpy.arange(64, dtype="float32"))
    data = bytearray(path.read_bytes())
    data[200] ^= 0xFF  # inside the stored array: its CRC no longer matches
    path.write_bytes(bytes(data))

    with pytest.raises(
        FormatError,
        match=re.escape(
            f"{path} is not a readable npz file: it looks like Bad CRC-32 for file "
            f"'w.npy'. {DOWNLOAD_AGAIN}"
        ),
    ):
        read_state_dict(path)


# -- safetensors -------------------------------------------------------------------


def test_read_checkpoint_on_meta_reads_only_the_header(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file(
        {
            "w": torch.ones(2, 3, dtype=torch.float16),
            "n": torch.zeros(4, dtype=torch.int8),
        },
        path,
        metadata={"author": "lab"},
    )

    checkpoint = read_checkpoint(path, map_location="meta")

    assert checkpoint.metadata == {"author": "lab"}
    assert {
        k: (v.shape, v.dtype, v.is_meta) for k, v in checkpoint.content.items()
    } == {
        "w": ((2, 3), torch.float16, True),
        "n": ((4,), torch.int8, True),
    }


def test_read_checkpoint_on_meta_of_a_cut_safetensors_file_raises(
    tmp_path: Path,
) -> None:
    path = _cut_safetensors_header(tmp_path)

    with pytest.raises(
        FormatError,
        match=re.escape(f"{path} is not a readable safetensors file: it looks like a ")
        + r"damaged safetensors file \(.*header.*\)\. "
        + re.escape(DOWNLOAD_AGAIN),
    ):
        safetensors_file.read(path, map_location="meta")


def test_header_metadata_of_a_cut_safetensors_file_raises(tmp_path: Path) -> None:
    path = _cut_safetensors_header(tmp_path)

    with pytest.raises(
        FormatError, match=r"is not a readable safetensors file: .*download it again"
    ) as caught:
        safetensors_file.header_metadata(path)

    assert caught.value.expected == "a readable safetensors file"


@pytest.mark.parametrize(
    "dtype",
    [torch.uint16, torch.uint32, torch.uint64, torch.complex64],
    ids=["uint16", "uint32", "uint64", "complex64"],
)
def test_read_checkpoint_on_meta_reads_every_safetensors_dtype(
    tmp_path: Path, dtype: torch.dtype
) -> None:
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(3, dtype=dtype)}, path)
    assert read_checkpoint(path).content["w"].dtype == dtype

    meta = read_checkpoint(path, map_location="meta").content["w"]

    assert (meta.dtype, meta.shape, meta.is_meta) == (dtype, (3,), True)


# -- torch.save files --------------------------------------------------------------


@pytest.mark.parametrize("keep", [20, 0.5, -5], ids=["head", "half", "all-but-5"])
def test_read_state_dict_cut_legacy_torch_file_says_download_again(
    tmp_path: Path, keep: float
) -> None:
    path = tmp_path / "w.pt"
    _torch_legacy(path)
    data = path.read_bytes()
    cut = int(keep * len(data)) if isinstance(keep, float) else keep
    path.write_bytes(data[:cut])

    with pytest.raises(
        FormatError,
        match=re.escape(f"{path} is not a readable torch checkpoint: it looks like ")
        + r".+\. "
        + re.escape(DOWNLOAD_AGAIN),
    ) as caught:
        read_state_dict(path)

    assert caught.value.expected == "a readable torch checkpoint"


def test_read_state_dict_torch_zip_missing_a_storage_names_the_first_line(
    tmp_path: Path,
) -> None:
    whole = tmp_path / "whole.pt"
    _torch_zip(whole)
    path = tmp_path / "w.pt"
    _rewrite_zip(
        whole, path, lambda name, data: None if name.endswith("/data/0") else data
    )

    with pytest.raises(FormatError, match=re.escape(DOWNLOAD_AGAIN)) as caught:
        read_state_dict(path)

    assert caught.value.seen.startswith(
        "PytorchStreamReader failed locating file data/0"
    )
    assert "\n" not in caught.value.seen


def test_read_state_dict_names_a_refused_global_torch_cannot_list(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A data.pkl that asks for os.system, then stops making sense: torch's own
    # scan of the globals fails, so the name comes from the refusal itself.
    whole = tmp_path / "whole.pt"
    _torch_zip(whole)
    path = tmp_path / "w.pt"
    payload = b"\x80\x02cos\nsystem\nq\x00\xff\xff"
    _rewrite_zip(
        whole, path, lambda name, data: payload if name.endswith("data.pkl") else data
    )
    caplog.set_level(logging.DEBUG, logger="zooload.formats.torch_pickle")

    with pytest.raises(
        UnsafeCheckpointError, match=r"refuses: (os|posix)\.system\. Loading it"
    ) as caught:
        read_state_dict(path)

    assert caught.value.globals in {("os.system",), ("posix.system",)}
    assert f"could not list the globals of {path}" in caplog.messages


def _corrupt_pickle(tmp_path: Path) -> Path:
    """A torch zip whose data.pkl is cut in half and followed by junk."""
    whole = tmp_path / "whole.pt"
    _torch_zip(whole)
    path = tmp_path / "w.pt"
    _rewrite_zip(
        whole,
        path,
        lambda name, data: (
            data[: len(data) // 2] + b"garbage" if name.endswith("data.pkl") else data
        ),
    )
    return path


def test_read_state_dict_corrupt_pickle_is_damaged_not_unsafe(tmp_path: Path) -> None:
    path = _corrupt_pickle(tmp_path)

    with pytest.raises(FormatError, match=re.escape(DOWNLOAD_AGAIN)):
        read_state_dict(path)


def test_read_state_dict_trusted_corrupt_pickle_is_damaged(tmp_path: Path) -> None:
    # With every restriction lifted, a corrupt pickle is what it is: damaged.
    path = _corrupt_pickle(tmp_path)

    with pytest.raises(
        FormatError,
        match=re.escape(
            f"{path} is not a readable torch checkpoint: it looks like pickle data "
            f"was truncated. {DOWNLOAD_AGAIN}"
        ),
    ):
        read_state_dict(path, trust=PickleTrust(everything=True))


@pytest.mark.parametrize(
    "name",
    ["collections.NoSuchThing", "collections.OrderedDict.no_such_attribute"],
    ids=["missing-class", "missing-attribute"],
)
def test_resolve_globals_names_a_global_that_does_not_exist(name: str) -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape(
            f"allow_globals names {name!r}, which cannot be imported; give the full "
            "module path and name, for example 'mypkg.models.Config'."
        ),
    ):
        torch_pickle.resolve_globals([name])


# -- TorchScript ---------------------------------------------------------------------


def test_load_program_of_a_cut_torchscript_file_says_download_again(
    tmp_path: Path,
) -> None:
    whole = tmp_path / "whole.jit"
    _torchscript(whole)
    path = tmp_path / "m.jit"
    path.write_bytes(whole.read_bytes()[:-200])

    with pytest.raises(
        FormatError,
        match=re.escape(f"{path} is not a TorchScript program: it looks like ")
        + r"PytorchStreamReader failed reading zip archive.*"
        + re.escape(DOWNLOAD_AGAIN),
    ) as caught:
        torchscript.load_program(path, map_location="cpu")

    assert "\n" not in caught.value.seen


def test_read_state_dict_torchscript_without_its_code_raises(tmp_path: Path) -> None:
    whole = tmp_path / "whole.jit"
    _torchscript(whole)
    path = tmp_path / "m.jit"
    _rewrite_zip(
        whole,
        path,
        lambda name, data: None if "/code/" in name and name.endswith(".py") else data,
    )
    assert sniff_format(path) is CheckpointFormat.TORCHSCRIPT

    with pytest.raises(
        FormatError, match=r"is not a TorchScript program: .*download it again"
    ) as caught:
        read_state_dict(path)

    assert caught.value.expected == "a TorchScript program"


# -- sharded checkpoints -------------------------------------------------------------


@pytest.mark.parametrize(
    ("index", "seen"),
    [
        ('{"weight_map": {"w": "a.safetensors",', "invalid JSON ("),
        ('{"weight_map": {"w": 3}}', "JSON without a weight_map"),
        ('{"weight_map": ["a.safetensors"]}', "JSON without a weight_map"),
    ],
    ids=["cut-json", "shard-not-text", "map-not-an-object"],
)
def test_read_state_dict_malformed_index_says_re_download(
    tmp_path: Path, index: str, seen: str
) -> None:
    path = tmp_path / "model.safetensors.index.json"
    path.write_text(index)
    assert sniff_format(path) is CheckpointFormat.SHARDED_INDEX

    with pytest.raises(
        FormatError,
        match=re.escape(
            f"{path} is not a sharded checkpoint index: it looks like {seen}"
        )
        + r".*Re-download the index file, or point at a single checkpoint file\.",
    ):
        read_state_dict(path)


def test_read_state_dict_stale_torch_shard_is_named(tmp_path: Path) -> None:
    # Torch shards cannot be checked before reading; the check comes after.
    torch.save(
        {"fc.weight": torch.ones(1, 2), "old.bias": torch.ones(1)}, tmp_path / "a.bin"
    )
    index = tmp_path / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"weight_map": {"fc.weight": "a.bin"}}))

    with pytest.raises(
        FormatError,
        match=re.escape(
            f"{tmp_path / 'a.bin'} is not a consistent shard: it looks like a stale "
            "shard (its tensors differ from the index's 1). Download the index and "
            "its shards again from the same revision."
        ),
    ):
        read_state_dict(index)


def test_read_state_dict_damaged_safetensors_shard_is_named(tmp_path: Path) -> None:
    # The header is whole, the tensor data is cut short.
    shard = tmp_path / "w.safetensors"
    save_file({"w": torch.ones(4)}, shard)
    shard.write_bytes(shard.read_bytes()[:-2])
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": shard.name}}))

    with pytest.raises(
        FormatError, match=re.escape(f"{shard} is not a readable safetensors file")
    ) as caught:
        read_state_dict(index)

    assert DOWNLOAD_AGAIN in str(caught.value)


def test_read_state_dict_index_naming_another_index_says_so(tmp_path: Path) -> None:
    save_file({"w": torch.ones(1)}, tmp_path / "a.safetensors")
    (tmp_path / "inner.index.json").write_text(
        json.dumps({"weight_map": {"w": "a.safetensors"}})
    )
    outer = tmp_path / "outer.index.json"
    outer.write_text(json.dumps({"weight_map": {"w": "inner.index.json"}}))

    with pytest.raises(
        FormatError,
        match=re.escape(
            f"{outer} is not a sharded checkpoint index: it looks like "
            "inner.index.json is another index. An index must point at checkpoint "
            "files, not at another index."
        ),
    ):
        read_state_dict(outer)


def _stale_shard_index(tmp_path: Path, shard: dict[str, torch.Tensor]) -> Path:
    """An index that expects one more tensor in ``a.safetensors`` than it holds."""
    save_file(shard, tmp_path / "a.safetensors")
    weight_map = dict.fromkeys([*shard, "fc.scale"], "a.safetensors")
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    return index


def test_plan_shards_names_a_stale_safetensors_shard_before_reading(
    tmp_path: Path,
) -> None:
    index = _stale_shard_index(tmp_path, {"w": torch.ones(1)})

    with pytest.raises(
        FormatError,
        match=re.escape(
            f"{index} is not a consistent sharded checkpoint: it looks like a stale "
            "shard a.safetensors: the index expects ['fc.scale'] there but it lacks "
            "them, and it holds [] the index does not list."
        ),
    ):
        sharded.plan_shards(index)


def test_plan_shards_checks_a_safetensors_shard_with_a_128_byte_header(
    tmp_path: Path,
) -> None:
    index = _stale_shard_index(tmp_path, WEIGHTS)
    assert (tmp_path / "a.safetensors").read_bytes()[:1] == b"\x80"

    with pytest.raises(FormatError, match=r"stale shard a\.safetensors"):
        sharded.plan_shards(index)
