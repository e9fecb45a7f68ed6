"""Pickles that would run code are refused, naming what they need; nothing runs.

Each payload, if unpickled, would create a sentinel file. The tests build them
with real writers (``torch.save``, zip and legacy) inside the shapes people
meet: a bare state dict, a Lightning-style checkpoint, a shard of a sharded
checkpoint, an archive loaded by ``load_url``.
"""

from __future__ import annotations

import builtins
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

import zooload


class SystemPayload:
    """Unpickles as ``os.system(command)``."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.sentinel}",))


class ExecPayload:
    """Unpickles as ``builtins.exec(source)``."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[Any, ...]:
        source = f"open({str(self.sentinel)!r}, 'w').close()"
        return (builtins.exec, (source,))


class PopenPayload:
    """Unpickles as ``subprocess.Popen([...])``."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[Any, ...]:
        return (subprocess.Popen, (["touch", str(self.sentinel)],))


PAYLOADS = {
    "os.system": (SystemPayload, "posix.system"),
    "builtins.exec": (ExecPayload, "builtins.exec"),
    "subprocess.Popen": (PopenPayload, "subprocess.Popen"),
}
WRITERS = {
    "zip": lambda content, path: torch.save(content, path),
    "legacy": lambda content, path: torch.save(
        content, path, _use_new_zipfile_serialization=False
    ),
}


def _weights() -> dict[str, torch.Tensor]:
    return {"weight": torch.ones(1, 2), "bias": torch.zeros(1)}


def _shapes(payload: object) -> dict[str, object]:
    return {
        "state-dict": {**_weights(), "extra": payload},
        "lightning": {
            "epoch": 1,
            "state_dict": {f"model.{k}": v for k, v in _weights().items()},
            "hyper_parameters": {"callback": payload},
        },
    }


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("payload_name", sorted(PAYLOADS))
@pytest.mark.parametrize("shape", ["state-dict", "lightning"])
def test_load_state_dict_refuses_code_payloads(
    tmp_path: Path, writer: str, payload_name: str, shape: str
) -> None:
    sentinel = tmp_path / "pwned"
    payload_class, global_name = PAYLOADS[payload_name]
    path = tmp_path / "ckpt.pt"
    WRITERS[writer](_shapes(payload_class(sentinel))[shape], path)

    with pytest.raises(zooload.UnsafeCheckpointError) as caught:
        zooload.load_state_dict(path)

    assert global_name in caught.value.globals
    assert global_name in str(caught.value)
    assert "allow_globals=[...]" in str(caught.value)
    assert not sentinel.exists()


def test_load_state_dict_refuses_a_payload_inside_a_shard(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    torch.save({"weight": torch.ones(1, 2)}, tmp_path / "a.bin")
    torch.save(
        {"bias": torch.zeros(1), "x": SystemPayload(sentinel)}, tmp_path / "b.bin"
    )
    index = {"weight_map": {"weight": "a.bin", "bias": "b.bin"}}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(zooload.UnsafeCheckpointError, match="posix.system"):
        zooload.load_state_dict(tmp_path)
    assert not sentinel.exists()


def test_load_url_refuses_a_payload_inside_an_archive(
    tmp_path: Path, served: Any, cache_dir: Path
) -> None:
    sentinel = tmp_path / "pwned"
    folder = tmp_path / "weights"
    folder.mkdir()
    torch.save({**_weights(), "x": ExecPayload(sentinel)}, folder / "model.pt")
    url = served.add("model.pt", (folder / "model.pt").read_bytes())
    with pytest.raises(zooload.UnsafeCheckpointError, match="builtins.exec"):
        zooload.load_url(
            url,
            arch=torch.nn.Linear,
            in_features=2,
            out_features=1,
            cache_dir=cache_dir,
        )
    assert not sentinel.exists()
    # A refused checkpoint is not evicted: it may be loaded once trusted.
    assert len(list((cache_dir / "blobs").iterdir())) == 1


class Config:
    """A harmless custom class that training scripts pickle."""

    def __init__(self) -> None:
        self.learning_rate = 0.1


def test_allow_globals_admits_exactly_the_named_classes(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"model": _weights(), "config": Config()}, path)
    name = f"{__name__}.Config"

    weights = zooload.load_state_dict(path, allow_globals=[name])
    assert set(weights) == {"weight", "bias"}

    sentinel = tmp_path / "pwned"
    torch.save(
        {"model": _weights(), "config": Config(), "x": SystemPayload(sentinel)}, path
    )
    with pytest.raises(zooload.UnsafeCheckpointError) as caught:
        zooload.load_state_dict(path, allow_globals=[name])
    assert caught.value.globals == ("posix.system",)
    assert not sentinel.exists()


def test_allow_globals_rejects_names_that_do_not_import(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save(_weights(), path)
    with pytest.raises(
        zooload.ConfigError, match="'nowhere.Thing', which cannot be imported"
    ):
        zooload.load_state_dict(path, allow_globals=["nowhere.Thing"])
