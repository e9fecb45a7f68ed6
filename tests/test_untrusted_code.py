"""Nothing in an archive is imported or executed unless trust_code=True."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
import torch

import zooload

MODEL_SOURCE = """
import pathlib
import torch

pathlib.Path({sentinel!r}).touch()


class ShippedNet(torch.nn.Module):
    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, width)

    def forward(self, inputs):
        return self.linear(inputs)
"""


def _archive_with_code(tmp_path: Path, sentinel: Path, *, referenced: bool) -> bytes:
    folder = zooload.pack(
        torch.nn.Linear(2, 3).state_dict(),
        tmp_path / "packed",
        arch="code-placeholder",
        rename=[(r"^", "linear.")],
    )
    source = MODEL_SOURCE.format(sentinel=str(sentinel)).encode()
    (folder / "model.py").write_bytes(source)
    (folder / "sitecustomize.py").write_bytes(source)
    manifest = json.loads((folder / "zooload.json").read_text())
    architecture = {"name": "ShippedNet", "kwargs": {"width": 3}}
    if referenced:
        digest = hashlib.sha256(source).hexdigest()
        architecture["code"] = {"path": "model.py", "sha256": digest}
    manifest["architecture"] = architecture
    (folder / "zooload.json").write_text(json.dumps(manifest))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)
    return buffer.getvalue()


def test_load_url_refuses_archive_code_without_trust(
    tmp_path: Path, served: Any, cache_dir: Path
) -> None:
    sentinel = tmp_path / "code-ran"
    url = served.add(
        "coded.tar.gz", _archive_with_code(tmp_path, sentinel, referenced=True)
    )

    with pytest.raises(zooload.UntrustedCodeError, match="'model.py'") as caught:
        zooload.load_url(url, cache_dir=cache_dir)

    assert "trust_code=True" in str(caught.value)
    assert not sentinel.exists()


def test_load_url_imports_archive_code_when_trusted(
    tmp_path: Path, served: Any, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sentinel = tmp_path / "code-ran"
    url = served.add(
        "coded.tar.gz", _archive_with_code(tmp_path, sentinel, referenced=True)
    )

    model = zooload.load_url(url, cache_dir=cache_dir, trust_code=True)

    assert type(model).__name__ == "ShippedNet"
    assert model.linear.out_features == 3
    assert sentinel.exists()
    assert "imported architecture ShippedNet" in caplog.text


def test_load_url_never_runs_python_files_it_does_not_need(
    tmp_path: Path, served: Any, cache_dir: Path
) -> None:
    sentinel = tmp_path / "code-ran"
    data = _archive_with_code(tmp_path, sentinel, referenced=False)
    url = served.add("stray.tar.gz", data)

    with pytest.raises(zooload.UnknownArchitectureError, match="'ShippedNet'"):
        zooload.load_url(url, cache_dir=cache_dir, trust_code=True)
    tree = zooload.fetch(url, cache_dir=cache_dir)
    assert (tree / "sitecustomize.py").is_file()
    assert not sentinel.exists()
