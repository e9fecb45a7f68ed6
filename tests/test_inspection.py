"""inspect: the summary of a checkpoint, for programs and for people."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import zooload
from support.builders import cache_files
from zooload.cli import main
from zooload.extraction import EMBED_MIN_BYTES
from zooload.hashing import file_digest
from zooload.trees import TREE_INDEX_NAME, TreeIndex


def test_inspect_summarises_a_training_checkpoint(tmp_path: Path) -> None:
    layers = torch.nn.Sequential(*(torch.nn.Linear(4, 4) for _ in range(3)))
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 7, "model": layers.state_dict(), "optimizer": {}}, path)

    info = zooload.inspect(path)

    assert info.files[0].format == "torch-zip"
    assert info.files[0].weights_key == "model"
    assert info.parameters == 3 * (16 + 4)
    assert info.bytes_per_dtype == {"float32": 3 * 20 * 4}
    assert info.tensors[0].name == "0.weight"
    assert info.tensors[0].shape == (4, 4)
    assert info.tensors[0].nbytes == 64
    text = str(info)
    assert "parameters  60" in text
    assert "weights     under key 'model' of:" in text
    assert "epoch: int" in text
    assert "{0..2}.weight" in text


def test_inspect_shows_safetensors_metadata_and_manifest(tmp_path: Path) -> None:
    weights = {"weight": torch.ones(1, 2, dtype=torch.float16), "bias": torch.zeros(1)}
    save_file(weights, tmp_path / "w.safetensors", metadata={"author": "lab"})
    info = zooload.inspect(tmp_path / "w.safetensors")
    assert info.files[0].metadata == {"author": "lab"}
    assert info.bytes_per_dtype == {"float16": 4, "float32": 4}
    assert "metadata    author: lab" in str(info)

    packed = zooload.pack(
        torch.nn.Linear(2, 1), tmp_path / "linear.zip", arch="inspect-linear"
    )
    info = zooload.inspect(packed)
    assert info.manifest is not None
    assert info.manifest.name == "inspect-linear"
    assert "manifest    inspect-linear (architecture: inspect-linear)" in str(info)


def test_inspect_long_tables_are_cut(tmp_path: Path) -> None:
    weights = {f"block{i}.weight": torch.ones(i + 1) for i in range(50)}
    save_file(weights, tmp_path / "w.safetensors")
    text = str(zooload.inspect(tmp_path / "w.safetensors"))
    assert "  ... 10 more" in text


def test_inspect_reads_a_tars_weights_in_place_without_copying_them(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = {"proj.weight": torch.ones(512, 512), "proj.bias": torch.zeros(512)}
    archive = zooload.pack(weights, tmp_path / "big.tar", arch="inspect-unregistered")
    tree = cache_dir / "trees" / file_digest(archive)

    info = zooload.inspect(archive, cache_dir=cache_dir)
    assert main(["--cache-dir", str(cache_dir), "inspect", str(archive), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)

    # Large enough to stay in the archive: only the tree's index names them.
    assert weights["proj.weight"].nbytes >= EMBED_MIN_BYTES
    assert cache_files(cache_dir) == [
        f"trees/{file_digest(archive)}/{name}"
        for name in (TREE_INDEX_NAME, "zooload.json")
    ]
    assert list(TreeIndex.read(tree).in_place) == ["weights.safetensors"]
    (file,) = info.files
    assert file.path == tree / "weights.safetensors"
    assert file.format == "safetensors"
    assert {t.name: t.shape for t in info.tensors} == {
        "proj.weight": (512, 512),
        "proj.bias": (512,),
    }
    assert info.bytes_per_dtype == {"float32": (512 * 512 + 512) * 4}
    assert shown["files"][0]["path"] == str(tree / "weights.safetensors")
    assert shown["parameters"] == 512 * 512 + 512

    # Reading the copy that fetch() hands out tells the same, to the letter.
    zooload.fetch(archive, cache_dir=cache_dir)
    assert (tree / "weights.safetensors").is_file()
    assert str(zooload.inspect(archive, cache_dir=cache_dir)) == str(info)
