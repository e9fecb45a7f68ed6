"""Unit tests for zooload.manifest: reading, validating and describing sources."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save as safetensors_bytes

from support.builders import sha256_of
from zooload.errors import HashMismatchError, ManifestError
from zooload.manifest import (
    MANIFEST_NAME,
    Manifest,
    describe,
    read_manifest,
    verify_manifest_files,
)

WEIGHTS = safetensors_bytes({"w": torch.tensor([1.0, 2.0])})
EXAMPLES = b"examples of a tiny model"


def _document(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "format_version": 1,
        "name": "tiny",
        "architecture": {"name": "tiny-linear", "kwargs": {"features": 2}},
        "weights": [{"path": "weights.safetensors", "sha256": sha256_of(WEIGHTS)}],
    }
    document.update(changes)
    return document


def _write_manifest(folder: Path, document: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MANIFEST_NAME
    path.write_text(json.dumps(document))
    return path


def _model_folder(folder: Path, document: dict[str, Any]) -> Path:
    _write_manifest(folder, document)
    (folder / "weights.safetensors").write_bytes(WEIGHTS)
    return folder


# -- read_manifest ---------------------------------------------------------------


def test_read_manifest_reads_every_field(tmp_path: Path) -> None:
    document = _document(
        rename=[{"pattern": r"^module\.", "replacement": ""}],
        dtype="float16",
        examples={
            "path": "examples.safetensors",
            "sha256": sha256_of(EXAMPLES),
            "inputs": ["input.0"],
            "outputs": ["output.0", "output.1"],
            "atol": 0.001,
        },
        metadata={"license": "MIT", "paper": "arXiv:0000.00000"},
    )
    path = _write_manifest(tmp_path, document)

    manifest = read_manifest(path)

    assert isinstance(manifest, Manifest)
    assert manifest.name == "tiny"
    assert manifest.architecture is not None
    assert manifest.architecture.name == "tiny-linear"
    assert manifest.architecture.kwargs == {"features": 2}
    assert [(w.path, w.sha256) for w in manifest.weights] == [
        ("weights.safetensors", sha256_of(WEIGHTS))
    ]
    assert [(r.pattern, r.replacement) for r in manifest.rename] == [(r"^module\.", "")]
    assert manifest.dtype == "float16"
    assert manifest.examples is not None
    assert manifest.examples.outputs == ["output.0", "output.1"]
    assert (manifest.examples.rtol, manifest.examples.atol) == (1e-5, 0.001)
    assert manifest.metadata.license == "MIT"
    assert manifest.metadata.model_extra == {"paper": "arXiv:0000.00000"}
    assert [f.path for f in manifest.files()] == [
        "weights.safetensors",
        "examples.safetensors",
    ]


def test_read_manifest_defaults(tmp_path: Path) -> None:
    document = _document()
    del document["architecture"]
    manifest = read_manifest(_write_manifest(tmp_path, document))

    assert manifest.architecture is None
    assert manifest.rename == []
    assert manifest.dtype is None
    assert manifest.examples is None
    assert manifest.metadata.license is None


def _weight(**changes: Any) -> list[dict[str, Any]]:
    return [{"path": "weights.safetensors", "sha256": sha256_of(WEIGHTS)} | changes]


@pytest.mark.parametrize(
    ("changes", "field", "problem"),
    [
        ({"weights": _weight(sha256="A" * 64)}, "weights.0.sha256", "pattern"),
        ({"weights": _weight(sha256="abc")}, "weights.0.sha256", "pattern"),
        ({"weights": _weight(path="/etc/passwd")}, "weights.0.path", "relative"),
        ({"weights": _weight(path="../w.bin")}, "weights.0.path", "'..'"),
        ({"weights": _weight(path="a\\b.bin")}, "weights.0.path", "relative"),
        ({"weights": []}, "weights", "at least 1"),
        (
            {"rename": [{"pattern": "(unclosed", "replacement": ""}]},
            "rename.0.pattern",
            "not a valid regular expression",
        ),
        ({"licence": "MIT"}, "licence", "Extra inputs are not permitted"),
        (
            {"architecture": {"name": "x", "kwarg": {}}},
            "architecture.kwarg",
            "Extra inputs",
        ),
        ({"format_version": 2}, "format_version", "Input should be 1"),
        ({"dtype": "int8"}, "dtype", "float32"),
    ],
    ids=[
        "upper-case-sha256",
        "short-sha256",
        "absolute-path",
        "dot-dot-path",
        "backslash-path",
        "no-weights",
        "bad-regex",
        "unknown-field",
        "unknown-nested-field",
        "format-version-2",
        "bad-dtype",
    ],
)
def test_read_manifest_names_offending_field(
    tmp_path: Path, changes: dict[str, Any], field: str, problem: str
) -> None:
    path = _write_manifest(tmp_path, _document(**changes))

    with pytest.raises(
        ManifestError,
        match=rf"(?s)is not a valid zooload manifest:\n  {field}: [^\n]*{problem}"
        r".*Fix these fields \(see docs/MANIFEST\.md\) or re-pack with zooload\.pack",
    ) as caught:
        read_manifest(path)

    assert caught.value.field == field
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"", b"\xff\xfe\x00binary"],
    ids=["broken-json", "empty", "not-utf8"],
)
def test_read_manifest_not_json(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / MANIFEST_NAME
    path.write_bytes(content)

    with pytest.raises(
        ManifestError, match=r"is not valid JSON .*fix the file or re-pack the model"
    ) as caught:
        read_manifest(path)

    assert caught.value.field == ""


@pytest.mark.parametrize(
    "document", [[1, 2], "text", None], ids=["list", "str", "null"]
)
def test_read_manifest_not_an_object(tmp_path: Path, document: object) -> None:
    path = tmp_path / MANIFEST_NAME
    path.write_text(json.dumps(document))

    with pytest.raises(ManifestError, match="is not a valid zooload manifest"):
        read_manifest(path)


# -- describe ---------------------------------------------------------------------


def test_describe_bare_file(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(WEIGHTS)

    description = describe(path)

    assert description.root == tmp_path
    assert description.weights == (path,)
    assert description.manifest is None


def test_describe_folder_with_manifest(tmp_path: Path) -> None:
    second = {"path": "more/part-2.safetensors", "sha256": "0" * 64}
    document = _document(weights=[*_weight(), second])
    folder = _model_folder(tmp_path / "model", document)

    description = describe(folder)

    assert description.root == folder
    assert description.weights == (
        folder / "weights.safetensors",
        folder / "more" / "part-2.safetensors",
    )
    assert description.manifest is not None
    assert description.manifest.name == "tiny"


def test_describe_folder_with_one_file(tmp_path: Path) -> None:
    (tmp_path / "nested").mkdir()
    path = tmp_path / "nested" / "model.safetensors"
    path.write_bytes(WEIGHTS)

    description = describe(tmp_path)

    assert description.root == tmp_path / "nested"
    assert description.weights == (path,)
    assert description.manifest is None


def test_describe_folder_with_two_files_lists_them(tmp_path: Path) -> None:
    (tmp_path / "a.pt").write_bytes(WEIGHTS)
    (tmp_path / "b.safetensors").write_bytes(WEIGHTS)

    with pytest.raises(
        ManifestError,
        match=r"has no zooload\.json and 2 [a-z ,]*files? \(a\.pt, b\.safetensors\); "
        r"zooload cannot tell which holds the weights\. Add a zooload\.json",
    ) as caught:
        describe(tmp_path)

    assert caught.value.field == "(manifest)"


def test_describe_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(
        ManifestError, match=r"and 0 [a-z ,]* \(none\); zooload cannot tell"
    ):
        describe(tmp_path)


def test_describe_folder_with_invalid_manifest(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path / "model", _document(name=""))

    with pytest.raises(ManifestError, match="name: String should have at least 1"):
        describe(folder)


# -- verify_manifest_files ---------------------------------------------------------


def _with_examples(**changes: Any) -> dict[str, Any]:
    examples = {
        "path": "examples.safetensors",
        "sha256": sha256_of(EXAMPLES),
        "inputs": ["input.0"],
        "outputs": ["output.0"],
    }
    return _document(examples=examples | changes)


def test_verify_manifest_files_accepts_matching_files(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path, _with_examples())
    (folder / "examples.safetensors").write_bytes(EXAMPLES)

    assert verify_manifest_files(folder) is None


def test_verify_manifest_files_without_manifest_does_nothing(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(WEIGHTS)

    assert verify_manifest_files(tmp_path) is None


def test_verify_manifest_files_absent_weights(tmp_path: Path) -> None:
    second = {"path": "part-2.safetensors", "sha256": sha256_of(WEIGHTS)}
    folder = _model_folder(tmp_path, _document(weights=[*_weight(), second]))

    with pytest.raises(
        ManifestError,
        match=r"names 'part-2\.safetensors' \(weights\.1\.path\), but the archive has "
        r"no such file\. Re-pack the model so that the file is included\.",
    ) as caught:
        verify_manifest_files(folder)

    assert caught.value.field == "weights.1.path"


def test_verify_manifest_files_absent_examples(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path, _with_examples())

    with pytest.raises(ManifestError, match=r"\(examples\.path\)") as caught:
        verify_manifest_files(folder)

    assert caught.value.field == "examples.path"


@pytest.mark.parametrize("spoiled", ["weights.safetensors", "examples.safetensors"])
def test_verify_manifest_files_wrong_hash(tmp_path: Path, spoiled: str) -> None:
    folder = _model_folder(tmp_path, _with_examples())
    (folder / "examples.safetensors").write_bytes(EXAMPLES)
    (folder / spoiled).write_bytes(b"other bytes")
    expected = sha256_of(WEIGHTS if spoiled.startswith("weights") else EXAMPLES)

    with pytest.raises(
        HashMismatchError,
        match=rf"sha256 mismatch for {spoiled} \(named by \S*zooload\.json\S*\): "
        rf"expected {expected}, got {sha256_of(b'other bytes')}\.",
    ) as caught:
        verify_manifest_files(folder)

    assert caught.value.path == f"{spoiled} (named by {folder / 'zooload.json'})"
    assert "ask the publisher to re-pack it" in str(caught.value)


def test_verify_manifest_files_invalid_manifest(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path, _document(format_version=2))

    with pytest.raises(ManifestError) as caught:
        verify_manifest_files(folder)

    assert caught.value.field == "format_version"
