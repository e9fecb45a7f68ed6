"""Unit tests for zooload.pack: refusals leave nothing behind."""

from __future__ import annotations

import importlib
import re
import tarfile
from pathlib import Path
from typing import Any

import pytest
import torch

import zooload
from zooload.errors import ConfigError

WEIGHTS = {"weight": torch.tensor([[1.0, 2.0]]), "bias": torch.tensor([0.5])}


def _linear() -> torch.nn.Linear:
    return torch.nn.Linear(2, 1)


def test_pack_refuses_an_existing_destination_and_keeps_it(tmp_path: Path) -> None:
    dest = tmp_path / "model.zip"
    dest.write_bytes(b"an earlier archive")

    with pytest.raises(
        ConfigError,
        match=re.escape(f"{dest} exists already; remove it or choose another name."),
    ):
        zooload.pack(WEIGHTS, dest, arch="test-pack-linear")

    assert dest.read_bytes() == b"an earlier archive"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.zip"]


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"rename": [("(unclosed", "")]}, "rename.0.pattern"),
        ({"arch": ""}, "architecture.name"),
    ],
    ids=["bad-rename-pattern", "empty-arch"],
)
def test_pack_invalid_manifest_arguments_raise_and_leave_nothing(
    tmp_path: Path, arguments: dict[str, object], field: str
) -> None:
    options: dict[str, object] = {"arch": "test-pack-linear", **arguments}

    with pytest.raises(
        ConfigError,
        match=r"(?s)these arguments do not make a valid manifest: .*"
        + re.escape(field),
    ):
        zooload.pack(WEIGHTS, tmp_path / "model.tar.gz", **options)

    # Neither the archive nor the staging folder is left behind.
    assert list(tmp_path.iterdir()) == []


def test_pack_example_inputs_that_do_not_fit_forward_raise_config_error(
    tmp_path: Path,
) -> None:
    with pytest.raises(zooload.ConfigError, match=r"shapes \[\[3, 5\]\].*forward\(\)"):
        zooload.pack(
            torch.nn.Linear(2, 1),
            tmp_path / "bad.tar.gz",
            arch="pack-bad-examples",
            example_inputs=torch.ones(3, 5),
        )
    assert list(tmp_path.iterdir()) == []


def test_pack_refuses_weights_that_do_not_fit_the_named_architecture(
    tmp_path: Path,
) -> None:
    with pytest.raises(zooload.IncompatibleStateDictError, match=r"missing    15"):
        zooload.pack(torch.nn.Linear(3, 3), tmp_path / "m.zip", arch="silero-vad-16k")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".tar.gz", ".tar", ".zip"])
def test_pack_writes_the_same_bytes_for_the_same_weights(
    tmp_path: Path, suffix: str
) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    first = zooload.pack(model, tmp_path / f"a{suffix}", arch="silero-unused-name")
    second = zooload.pack(model, tmp_path / f"b{suffix}", arch="silero-unused-name")
    assert first.read_bytes() == second.read_bytes()
    loaded = zooload.load_url(
        first,
        arch=torch.nn.Linear,
        in_features=2,
        out_features=1,
        cache_dir=tmp_path / "cache",
    )
    assert torch.equal(loaded.weight, model.weight)


def test_load_url_reads_an_archive_wrapped_in_one_top_folder(tmp_path: Path) -> None:
    folder = zooload.pack(
        torch.nn.Linear(2, 1), tmp_path / "model", arch="wrapped-linear"
    )
    archive = tmp_path / "wrapped.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="model")
    tree = zooload.fetch(archive, cache_dir=tmp_path / "cache")
    loaded = zooload.load_url(
        archive,
        arch=torch.nn.Linear,
        in_features=2,
        out_features=1,
        cache_dir=tmp_path / "cache",
    )
    assert (tree / "model" / "zooload.json").is_file()
    assert loaded.weight.shape == (1, 2)


def test_pack_tar_zst_loads_and_is_reproducible(tmp_path: Path) -> None:
    zooload.register("test-pack-linear-zst")(
        lambda: torch.nn.Linear(2, 1)  # noqa: PLW0108 -- a factory of its own
    )
    first = zooload.pack(WEIGHTS, tmp_path / "a.tar.zst", arch="test-pack-linear-zst")
    second = zooload.pack(WEIGHTS, tmp_path / "b.tzst", arch="test-pack-linear-zst")

    model = zooload.load_url(first, cache_dir=tmp_path / "cache")

    assert first.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    assert first.read_bytes() == second.read_bytes()
    assert torch.equal(model.weight, WEIGHTS["weight"])


def test_pack_tar_zst_without_zstd_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # zooload.pack is also the name of the function the package exports.
    pack_module = importlib.import_module("zooload.pack")
    monkeypatch.setattr(pack_module, "zstd_module", lambda: None)

    with pytest.raises(ConfigError, match=r"install zooload\[fast\].*or pack to \.zip"):
        zooload.pack(WEIGHTS, tmp_path / "m.tar.zst", arch="test-pack-linear")

    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("first_name", "second_name", "magic"),
    [("a.tar.bz2", "b.tbz2", b"BZh9"), ("a.tar.xz", "b.txz", b"\xfd7zXZ\x00")],
    ids=["bz2", "xz"],
)
def test_pack_tar_bz2_and_xz_load_and_are_reproducible(
    tmp_path: Path, served: Any, first_name: str, second_name: str, magic: bytes
) -> None:
    zooload.register("test-pack-linear-compressed")(_linear)
    first = zooload.pack(
        WEIGHTS, tmp_path / first_name, arch="test-pack-linear-compressed"
    )
    second = zooload.pack(
        WEIGHTS, tmp_path / second_name, arch="test-pack-linear-compressed"
    )
    url = served.add(first_name, first.read_bytes())

    model = zooload.load_url(url, cache_dir=tmp_path / "cache")

    assert first.read_bytes().startswith(magic)
    assert first.read_bytes() == second.read_bytes()
    assert model.state_dict().keys() == WEIGHTS.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in WEIGHTS.items())


@pytest.mark.parametrize(
    ("name", "asked"),
    [
        ("m.rar", ".rar"),
        ("m.7z", ".7z"),
        ("m.tar.lz4", ".tar.lz4"),
        ("m.tar.lz", ".tar.lz"),
        ("m.tar.Z", ".tar.Z"),
        ("m.tar.br", ".tar.br"),
        ("m.gz", ".gz"),
        ("m.bz2", ".bz2"),
        ("m.xz", ".xz"),
        ("m.zst", ".zst"),
        ("M.RAR", ".RAR"),
    ],
)
def test_pack_refuses_archive_suffixes_it_cannot_write_and_writes_nothing(
    tmp_path: Path, name: str, asked: str
) -> None:
    dest = tmp_path / name
    writable = (
        ".tar.gz, .tgz, .tar.zst, .tzst, .tar.bz2, .tbz2, .tar.xz, .txz, .tar, .zip"
    )

    with pytest.raises(
        ConfigError,
        match=re.escape(
            f"pack cannot write a {asked} archive ({dest}); end the name with one "
            f"of {writable}, or with no archive suffix for a folder."
        ),
    ):
        zooload.pack(WEIGHTS, dest, arch="test-pack-linear")

    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["model", "model.v2", "vad.model"])
def test_pack_names_without_an_archive_suffix_make_a_folder(
    tmp_path: Path, name: str
) -> None:
    dest = zooload.pack(WEIGHTS, tmp_path / name, arch="test-pack-linear")

    assert dest.is_dir()
    assert sorted(p.name for p in dest.iterdir()) == [
        "weights.safetensors",
        "zooload.json",
    ]
    loaded = zooload.load_state_dict(dest, cache_dir=tmp_path / "cache")
    assert loaded.keys() == WEIGHTS.keys()
    assert all(torch.equal(loaded[k], v) for k, v in WEIGHTS.items())


@pytest.mark.parametrize("name", ["m.safetensors", "m.pt", "m.PTH", "m.onnx"])
def test_pack_refuses_a_single_weights_file_name_and_writes_nothing(
    tmp_path: Path, name: str
) -> None:
    dest = tmp_path / name

    with pytest.raises(ConfigError, match=r"not a single \.\w+ file .*convert"):
        zooload.pack(WEIGHTS, dest, arch="test-pack-linear")

    assert list(tmp_path.iterdir()) == []
