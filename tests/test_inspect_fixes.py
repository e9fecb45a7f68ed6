"""Tests of inspect on checkpoints with several weight sets, and cast rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import zooload
from zooload.cli import main
from zooload.loading import LoadReport
from zooload.report import render_report

_CHOICE = (
    "several sets of weights: 'state_dict' (2 tensors), 'state_dict_ema' "
    "(2 tensors); pass key= to pick one"
)


@pytest.fixture
def two_sets(tmp_path: Path) -> Path:
    """A training checkpoint with plain and EMA weights."""
    path = tmp_path / "last.ckpt"
    weights = {"fc.weight": torch.ones(1, 2), "fc.bias": torch.zeros(1)}
    ema = {name: tensor * 2 for name, tensor in weights.items()}
    torch.save({"epoch": 7, "state_dict": weights, "state_dict_ema": ema}, path)
    return path


def test_inspect_lists_candidates_without_key(two_sets: Path, tmp_path: Path) -> None:
    info = zooload.inspect(two_sets, cache_dir=tmp_path / "cache")

    (file,) = info.files
    assert file.weights_key == ""
    assert file.tensors == ()
    assert file.candidates == ("state_dict", "state_dict_ema")
    assert file.candidate_tensors == (2, 2)
    assert file.structure == (
        "epoch: int",
        "state_dict: 2 tensors",
        "state_dict_ema: 2 tensors",
    )
    assert f"weights     {_CHOICE}" in str(info).splitlines()
    assert "structure   epoch: int" in str(info).splitlines()


def test_inspect_with_key_reads_that_set(two_sets: Path, tmp_path: Path) -> None:
    info = zooload.inspect(two_sets, key="state_dict_ema", cache_dir=tmp_path / "c")

    (file,) = info.files
    assert file.weights_key == "state_dict_ema"
    assert file.candidates == ()
    assert [t.name for t in file.tensors] == ["fc.weight", "fc.bias"]
    assert info.parameters == 3


def test_inspect_of_one_set_has_no_candidates(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save({"epoch": 1, "model": {"w": torch.ones(2)}}, path)

    (file,) = zooload.inspect(path, cache_dir=tmp_path / "cache").files

    assert (file.weights_key, file.candidates, file.choice) == ("model", (), "")


def test_cli_inspect_prints_the_candidates(
    two_sets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = str(tmp_path / "cache")

    assert main(["--cache-dir", cache, "inspect", str(two_sets)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"weights     {_CHOICE}" in lines
    assert "structure   epoch: int" in lines

    assert main(["--cache-dir", cache, "inspect", str(two_sets), "--json"]) == 0
    (file,) = json.loads(capsys.readouterr().out)["files"]
    assert file["weights_key"] == ""
    assert file["tensors"] == []
    assert file["candidates"] == [
        {"key": "state_dict", "tensors": 2},
        {"key": "state_dict_ema", "tensors": 2},
    ]


def test_render_report_collapses_cast_layer_indices() -> None:
    cast = {f"layers.{i}.weight": ("float16", "float32") for i in range(12)}
    cast["head.bias"] = ("float64", "float32")
    report = LoadReport(loaded=tuple(cast), cast=cast)

    lines = render_report(report).splitlines()

    assert lines[-2:] == [
        "cast       13  layers.{0..11}.weight: float16 -> float32",
        "               head.bias: float64 -> float32",
    ]
