"""convert and the safetensors writer: tied tensors, dtypes, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import zooload
from support.builders import tensors_equal
from zooload.conversion import Precision, split_aliases, write_safetensors
from zooload.errors import ConfigError, FormatError
from zooload.formats.safetensors_file import ALIASES_KEY


def _tied() -> dict[str, torch.Tensor]:
    shared = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    return {"embed": shared, "head": shared, "steps": torch.tensor(3)}


def test_convert_keeps_tied_tensors_once_with_every_name(tmp_path: Path) -> None:
    source = tmp_path / "tied.pt"
    torch.save(_tied(), source)
    dest = zooload.convert(source, tmp_path / "tied.safetensors")
    with safe_open(dest, framework="pt") as handle:
        assert sorted(handle.keys()) == ["embed", "steps"]
        assert json.loads(handle.metadata()[ALIASES_KEY]) == {"head": "embed"}
    weights = zooload.load_state_dict(dest)
    assert tensors_equal(weights, _tied())
    assert weights["head"] is weights["embed"]
    info = zooload.inspect(dest)
    assert sorted(t.name for t in info.tensors) == ["embed", "head", "steps"]


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [
        ("fp16", torch.float16),
        ("bf16", torch.bfloat16),
        (Precision.FP32, torch.float32),
    ],
)
def test_convert_casts_floating_point_tensors_only(
    tmp_path: Path, precision: str, dtype: torch.dtype
) -> None:
    source = tmp_path / "w.safetensors"
    save_file({"w": torch.ones(2, dtype=torch.float64), "n": torch.tensor([1])}, source)
    dest = zooload.convert(source, tmp_path / "out.safetensors", dtype=precision)
    weights = zooload.load_state_dict(dest)
    assert weights["w"].dtype == dtype
    assert weights["n"].dtype == torch.int64


def test_convert_unwraps_a_training_checkpoint_by_key(tmp_path: Path) -> None:
    source = tmp_path / "last.ckpt"
    torch.save({"model": {"a": torch.ones(1)}, "ema": {"a": torch.zeros(1)}}, source)
    dest = zooload.convert(source, tmp_path / "ema.safetensors", key="ema")
    assert zooload.load_state_dict(dest)["a"].tolist() == [0.0]


def test_write_safetensors_stores_overlapping_views_as_copies(tmp_path: Path) -> None:
    base = torch.arange(4.0)
    dest = write_safetensors(
        {"low": base[:2], "high": base[2:], "all": base}, tmp_path / "w.safetensors"
    )
    weights = zooload.load_state_dict(dest)
    assert weights["high"].tolist() == [2.0, 3.0]
    assert weights["all"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_split_aliases_needs_the_same_view() -> None:
    base = torch.ones(2, 2)
    unique, aliases = split_aliases({"a": base, "t": base.t(), "b": base})
    assert list(unique) == ["a", "t"]
    assert aliases == {"b": "a"}


@pytest.mark.parametrize(
    ("dest", "kwargs", "message"),
    [
        ("exists.safetensors", {}, "exists already; remove it, or pass overwrite"),
        ("nowhere/w.safetensors", {}, "is not a folder; create it"),
        ("w.safetensors", {"dtype": "fp8"}, "unknown dtype 'fp8'; choose one of"),
    ],
)
def test_convert_refuses_bad_destinations_and_dtypes(
    tmp_path: Path, dest: str, kwargs: dict[str, str], message: str
) -> None:
    source = tmp_path / "w.pt"
    torch.save({"w": torch.ones(1)}, source)
    (tmp_path / "exists.safetensors").write_text("keep")
    with pytest.raises(ConfigError, match=message):
        zooload.convert(source, tmp_path / dest, **kwargs)  # type: ignore[arg-type]
    assert (tmp_path / "exists.safetensors").read_text() == "keep"


def test_convert_leaves_no_partial_file_when_writing_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("zooload.conversion.save_file", broken)
    with pytest.raises(OSError, match="No space left"):
        write_safetensors({"w": torch.ones(1)}, tmp_path / "w.safetensors")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("aliases", ["not json", '{"b": "missing"}', "[1]"])
def test_safetensors_reader_refuses_damaged_alias_metadata(
    tmp_path: Path, aliases: str
) -> None:
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(1)}, path, metadata={ALIASES_KEY: aliases})
    with pytest.raises(FormatError, match="metadata is damaged.*download it again"):
        zooload.load_state_dict(path)


def test_split_aliases_never_ties_tensors_without_storage() -> None:
    unique, aliases = split_aliases({"a": torch.empty(0), "b": torch.empty(0)})
    assert (list(unique), aliases) == (["a", "b"], {})
