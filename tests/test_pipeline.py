"""load_url, load and fetch end to end on small models and every archive kind."""

from __future__ import annotations

import io
import json
import logging
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

import zooload
from support.builders import cache_files, sha256_of
from zooload.manifest import MANIFEST_NAME


class TwoLayers(torch.nn.Module):
    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.first = torch.nn.Linear(2, width)
        self.second = torch.nn.Linear(width, 1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(inputs)))


def _weights(width: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return dict(TwoLayers(width).state_dict())


def _tar(members: dict[str, bytes], mode: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        for name, data in members.items():
            zipped.writestr(name, data)
    return buffer.getvalue()


def _packed_members(
    tmp_path: Path, weights: dict[str, torch.Tensor]
) -> dict[str, bytes]:
    folder = zooload.pack(weights, tmp_path / "packed", arch="pipeline-two-layers")
    return {path.name: path.read_bytes() for path in folder.iterdir()}


@pytest.fixture(autouse=True)
def _registered() -> None:
    zooload.register("pipeline-two-layers")(TwoLayers)


ARCHIVERS = {
    "tar": lambda members: _tar(members, "w"),
    "tar.gz": lambda members: _tar(members, "w:gz"),
    "tar.bz2": lambda members: _tar(members, "w:bz2"),
    "tar.xz": lambda members: _tar(members, "w:xz"),
    "zip": _zip,
}


@pytest.mark.parametrize("kind", sorted(ARCHIVERS))
def test_load_url_unpacks_every_archive_kind_by_content(
    kind: str, tmp_path: Path, served, cache_dir: Path
) -> None:
    weights = _weights()
    data = ARCHIVERS[kind](_packed_members(tmp_path, weights))
    # The name says nothing: the kind is sniffed from the bytes.
    url = served.add("model.bin", data)

    model = zooload.load_url(url, cache_dir=cache_dir)

    assert isinstance(model, TwoLayers)
    assert not model.training
    assert all(torch.equal(model.state_dict()[k], weights[k]) for k in weights)


def test_load_url_reads_bare_files_of_each_format(
    tmp_path: Path, cache_dir: Path
) -> None:
    weights = _weights()
    save_file(weights, tmp_path / "w.safetensors")
    torch.save(weights, tmp_path / "w.pt")
    torch.save(weights, tmp_path / "w-legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("w.safetensors", "w.pt", "w-legacy.pt"):
        model = zooload.load_url(
            tmp_path / name, arch="pipeline-two-layers", cache_dir=cache_dir
        )
        assert torch.equal(model.first.weight, weights["first.weight"]), name


def test_load_url_accepts_file_urls_and_architecture_classes(
    tmp_path: Path, cache_dir: Path
) -> None:
    weights = _weights(width=5)
    torch.save(weights, tmp_path / "w.pt")
    model = zooload.load_url(
        (tmp_path / "w.pt").as_uri(), arch=TwoLayers, width=5, cache_dir=cache_dir
    )
    assert model.first.out_features == 5


def test_load_url_arch_kwargs_override_the_manifest(
    tmp_path: Path, cache_dir: Path
) -> None:
    weights = _weights(width=4)
    dest = zooload.pack(
        weights, tmp_path / "m", arch="pipeline-two-layers", arch_kwargs={"width": 4}
    )
    manifest = json.loads((dest / MANIFEST_NAME).read_text())
    manifest["architecture"]["kwargs"] = {"width": 3}
    (dest / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(zooload.IncompatibleStateDictError, match=r"first\.weight"):
        zooload.load_url(dest, cache_dir=cache_dir)
    model = zooload.load_url(dest, cache_dir=cache_dir, width=4)
    assert model.second.in_features == 4


def test_load_url_example_check_runs_and_can_be_skipped(
    tmp_path: Path, cache_dir: Path
) -> None:
    weights = _weights()
    dest = zooload.pack(
        weights,
        tmp_path / "m.tar.gz",
        arch="pipeline-two-layers",
        example_inputs=torch.ones(4, 2),
    )
    result = zooload.load(dest, cache_dir=cache_dir)
    assert result.example is not None
    assert result.example.outputs == 1
    assert result.example.largest_difference == 0.0
    assert zooload.load(dest, cache_dir=cache_dir, check=False).example is None
    assert set(result.seconds) == {"fetch", "build", "load", "check"}


def test_load_url_manifest_dtype_casts_and_reports(
    tmp_path: Path, cache_dir: Path
) -> None:
    weights = {k: v.half() for k, v in _weights().items()}
    folder = zooload.pack(weights, tmp_path / "folder", arch="pipeline-two-layers")
    result = zooload.load(folder, cache_dir=cache_dir)
    assert result.model.first.weight.dtype == torch.float32
    assert result.report is not None
    assert result.report.cast["first.weight"] == ("float16", "float32")


def test_load_url_returns_parameters_that_train(
    tmp_path: Path, cache_dir: Path
) -> None:
    torch.save(_weights(), tmp_path / "w.pt")
    model = zooload.load_url(
        tmp_path / "w.pt", arch="pipeline-two-layers", cache_dir=cache_dir
    )
    assert all(p.requires_grad and not p.is_meta for p in model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    assert model.first.weight.grad is not None


def test_fetch_returns_tree_for_archives_and_file_without_extract(
    tmp_path: Path, served, cache_dir: Path
) -> None:
    data = ARCHIVERS["tar.gz"](_packed_members(tmp_path, _weights()))
    url = served.add("m.tar.gz", data)
    tree = zooload.fetch(url, cache_dir=cache_dir)
    assert tree == cache_dir.resolve() / "trees" / sha256_of(data)
    assert (tree / MANIFEST_NAME).is_file()
    blob = zooload.fetch(url, cache_dir=cache_dir, extract=False)
    assert blob.read_bytes() == data
    assert not [name for name in cache_files(cache_dir) if name.startswith("partial")]


def test_fetch_uses_zooload_cache_environment_by_default(
    tmp_path: Path, served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZOOLOAD_CACHE", str(tmp_path / "env-cache"))
    url = served.add("w.bin", b"weights")
    path = zooload.fetch(url)
    assert path == (tmp_path / "env-cache").resolve() / "blobs" / sha256_of(b"weights")


def test_load_url_logs_download_and_load(
    tmp_path: Path, served, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    torch.save(_weights(), tmp_path / "w.pt")
    data = (tmp_path / "w.pt").read_bytes()
    url = served.add("w.pt", data) + f"#sha256={sha256_of(data)}"
    with caplog.at_level(logging.INFO, logger="zooload"):
        zooload.load_url(url, arch="pipeline-two-layers", cache_dir=cache_dir)
    messages = [record.getMessage() for record in caplog.records]
    assert any(
        m.startswith("downloaded ") and f"{len(data)} bytes" in m for m in messages
    )
    assert any(m.startswith("loaded TwoLayers in ") for m in messages)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


class CustomInit(torch.nn.Module):
    """A body and a head whose __init__ sets its own values."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(2, 4)
        self.head = torch.nn.Linear(4, 2)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.constant_(self.head.bias, 3.0)


def test_load_url_partial_load_keeps_the_architectures_own_initialisation(
    tmp_path: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(0)
    body = torch.nn.Linear(2, 4)
    torch.save(
        {f"body.{k}": v for k, v in body.state_dict().items()}, tmp_path / "b.pt"
    )

    result = zooload.load(
        tmp_path / "b.pt", arch=CustomInit, strict=False, cache_dir=cache_dir
    )

    assert result.report is not None
    assert result.report.missing == ("head.weight", "head.bias")
    assert torch.equal(result.model.body.weight, body.weight)
    assert torch.equal(result.model.head.weight, torch.zeros(2, 4))
    assert torch.equal(result.model.head.bias, torch.full((2,), 3.0))
    assert caplog.text.count("partial load into CustomInit") == 1


def test_load_url_manifest_dtype_converts_the_example_inputs(
    tmp_path: Path, cache_dir: Path
) -> None:
    weights = _weights()
    folder = zooload.pack(
        weights,
        tmp_path / "half",
        arch="pipeline-two-layers",
        example_inputs=torch.ones(3, 2),
    )
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["dtype"] = "float64"
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))

    result = zooload.load(folder, cache_dir=cache_dir)

    assert result.model.first.weight.dtype == torch.float64
    assert result.example is not None
    assert result.example.largest_difference < 1e-6


def test_load_url_typo_for_a_torchscript_program_is_refused(
    silero_data: Path, cache_dir: Path
) -> None:
    with pytest.raises(
        zooload.ConfigError, match=r"'sha265' \(did you mean 'sha256'\?\)"
    ):
        zooload.load_url(
            silero_data / "silero_vad.jit", sha265="0" * 64, cache_dir=cache_dir
        )


def test_load_url_arch_must_be_a_name_class_or_factory(
    tmp_path: Path, cache_dir: Path
) -> None:
    torch.save(_weights(), tmp_path / "w.pt")
    with pytest.raises(zooload.ConfigError, match="not int 42"):
        zooload.load_url(tmp_path / "w.pt", arch=42, cache_dir=cache_dir)
    with pytest.raises(zooload.ConfigError, match="pass its class"):
        zooload.load_url(tmp_path / "w.pt", arch=TwoLayers(), cache_dir=cache_dir)


def test_load_url_names_the_url_of_a_page_that_is_no_checkpoint(
    served: Any, cache_dir: Path
) -> None:
    url = served.add("model.pth", b"<!DOCTYPE html><html><body>Sign in</body></html>")
    with pytest.raises(zooload.FormatError, match="an HTML page") as caught:
        zooload.load_url(url, arch="pipeline-two-layers", cache_dir=cache_dir)
    assert caught.value.path == url
    assert str(caught.value).startswith(f"{url} is not ")
    assert "blobs" not in str(caught.value)
    assert not [p for p in (cache_dir / "blobs").iterdir()]


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (
            lambda p, c: zooload.load_url(
                p, arch="pipeline-two-layers", map_location="gpu0", cache_dir=c
            ),
            "is not a device",
        ),
        (
            lambda p, c: zooload.load_url(
                p, arch="pipeline-two-layers", map_location="cuda", cache_dir=c
            ),
            "asks for CUDA",
        ),
        (
            lambda p, c: zooload.load_url(
                "http://127.0.0.1:99999/w.pt", arch="x", cache_dir=c
            ),
            "invalid port",
        ),
        (
            lambda p, c: zooload.load_url("http://[::1/w.pt", arch="x", cache_dir=c),
            r"is not a valid URL \(Invalid IPv6 URL\)",
        ),
        (
            lambda p, c: zooload.pack(
                _weights(), p.parent / "nowhere" / "m.zip", arch="pipeline-two-layers"
            ),
            "does not exist; create it",
        ),
        (
            lambda p, c: zooload.load_into(TwoLayers(), {"first.bias": "nope"}),
            r"'first\.bias' \(str\)",
        ),
    ],
    ids=[
        "bad-device",
        "no-cuda",
        "bad-port",
        "bad-ipv6",
        "pack-no-folder",
        "not-tensors",
    ],
)
def test_load_url_bad_arguments_get_zooload_errors(
    call: Any, pattern: str, tmp_path: Path, cache_dir: Path
) -> None:
    torch.save(_weights(), tmp_path / "w.pt")
    with pytest.raises(zooload.ZooloadError, match=pattern):
        call(tmp_path / "w.pt", cache_dir)
