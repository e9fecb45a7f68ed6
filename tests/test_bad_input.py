"""Issue acceptance: every kind of bad input gives one clear error and a clean cache.

Each test feeds :func:`zooload.load_url` one kind of bad input, checks the
error's type, facts and next-step hint, and then checks that the cache holds
nothing half-written and no entry for bytes that can never load. Every error
is also checked to be a :class:`zooload.ZooloadError` that survives pickling.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

import zooload
from support.builders import (
    cache_files,
    make_tar,
    sha256_of,
    tar_member,
    tar_of,
    tensors_equal,
)
from support.httpserver import Fault

WEIGHTS = {"weight": torch.tensor([[1.0, 2.0]]), "bias": torch.tensor([0.5])}
LINEAR: dict[str, Any] = {"arch": nn.Linear, "in_features": 2, "out_features": 1}
HTML_PAGE = b"<!DOCTYPE html>\n<html><body>Please sign in</body></html>\n"
LFS_POINTER = (
    b"version https://git-lfs.github.com/spec/v1\n"
    b"oid sha256:" + b"4" * 64 + b"\nsize 1520\n"
)

unpickled: list[str] = []
"""Filled by :class:`Gadget` if a pickle ever builds one (it must not)."""


class Gadget:
    """A custom class whose unpickling would run code from the file."""

    def __init__(self) -> None:
        self.armed = True

    def __setstate__(self, state: dict[str, Any]) -> None:
        unpickled.append("Gadget.__setstate__ ran")
        self.__dict__.update(state)


class DoubledLinear(nn.Module):
    """Same parameter names and shapes as ``Linear(2, 1)``; twice the output."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, 2))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return 2 * nn.functional.linear(inputs, self.weight, self.bias)


def _assert_portable(err: zooload.ZooloadError) -> None:
    """The error is a ZooloadError and pickles to an equal error."""
    assert isinstance(err, zooload.ZooloadError)
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is type(err)
    assert str(copy) == str(err)


def _partial_files(cache_dir: Path) -> list[str]:
    return [name for name in cache_files(cache_dir) if name.startswith("partial")]


def _torch_bytes(content: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(content, buffer)
    return buffer.getvalue()


def _manifest(weights: bytes) -> dict[str, Any]:
    return {
        "format_version": 1,
        "name": "tiny-linear",
        "weights": [{"path": "weights.safetensors", "sha256": sha256_of(weights)}],
    }


def _model_archive(document: dict[str, Any], weights: bytes | None) -> bytes:
    members = {"zooload.json": json.dumps(document).encode()}
    if weights is not None:
        members["weights.safetensors"] = weights
    return make_tar(members)


# -- integrity -----------------------------------------------------------------


def test_load_url_wrong_pinned_hash_caches_nothing(
    served: Any, cache_dir: Path
) -> None:
    data = _torch_bytes(WEIGHTS)
    url = served.add("linear.pt", data)
    wrong = "0" * 64

    with pytest.raises(
        zooload.HashMismatchError,
        match=re.escape(
            f"sha256 mismatch for {url}: expected {wrong}, got {sha256_of(data)}. "
            "The file was not cached."
        )
        + r".*if the publisher changed the file on purpose, pin the new hash\.",
    ) as caught:
        zooload.load_url(f"{url}#sha256={wrong}", cache_dir=cache_dir, **LINEAR)

    err = caught.value
    assert (err.path, err.expected, err.actual) == (url, wrong, sha256_of(data))
    assert cache_files(cache_dir) == []
    _assert_portable(err)


def test_load_url_truncated_download_caches_nothing_then_recovers(
    served: Any, cache_dir: Path
) -> None:
    data = _torch_bytes(WEIGHTS)
    url = served.add("linear.pt", data)
    served.server.fault(served.path("linear.pt"), Fault(truncate_after=len(data) // 2))
    # One attempt, so that the truncation is not resumed within the call.
    once = zooload.RetryPolicy(attempts=1)

    with pytest.raises(
        (zooload.DownloadError, zooload.SizeMismatchError),
        match=r"(?is)" + re.escape(url) + r".*try again",
    ) as caught:
        zooload.load_url(url, cache_dir=cache_dir, retry=once, **LINEAR)

    # Only the resumable bytes are kept, under partial/: nothing is cached.
    assert [f for f in cache_files(cache_dir) if not f.startswith("partial/")] == []
    if isinstance(caught.value, zooload.DownloadError):
        assert caught.value.retryable
    _assert_portable(caught.value)

    served.server.fault(served.path("linear.pt"), Fault(times=0))
    model = zooload.load_url(url, cache_dir=cache_dir, **LINEAR)
    assert tensors_equal(dict(model.state_dict()), WEIGHTS)
    assert f"blobs/{sha256_of(data)}" in cache_files(cache_dir)
    assert served.count("linear.pt") == 2
    assert served.server.requests[-1].headers["range"] == f"bytes={len(data) // 2}-"


@pytest.mark.parametrize(
    "keep",
    [0.5, 0.1],
    ids=["cut-in-half", "cut-before-the-first-header"],
)
def test_load_url_truncated_archive_evicts_its_blob(
    served: Any, cache_dir: Path, keep: float
) -> None:
    weights = safetensors_bytes(WEIGHTS)
    whole = _model_archive(_manifest(weights), weights)
    cut = whole[: int(len(whole) * keep)]
    url = served.add("model.tar.gz", cut)

    with pytest.raises(
        zooload.ArchiveError,
        match=r"(?i)(truncated|damaged).*download it again",
    ) as caught:
        zooload.load_url(url, cache_dir=cache_dir, **LINEAR)

    assert not isinstance(caught.value, zooload.UnsafeArchiveError)
    assert cache_files(cache_dir) == []
    _assert_portable(caught.value)


# -- unsafe archives -----------------------------------------------------------


UNSAFE_TAR_MEMBERS = {
    "dot-dot": (
        [(tar_member("../x"), b"escaped")],
        "../x",
        "path leads out of the extraction folder",
    ),
    "absolute": (
        [(tar_member("/tmp/zooload-escape"), b"escaped")],
        "/tmp/zooload-escape",
        "absolute path",
    ),
    "symlink-outside": (
        [(tar_member("link", tarfile.SYMTYPE, "../../etc/passwd"), b"")],
        "link",
        "",
    ),
    "symlink-absolute": (
        [(tar_member("link", tarfile.SYMTYPE, "/etc/passwd"), b"")],
        "link",
        "symbolic link to an absolute path",
    ),
    "hardlink-to-non-member": (
        [(tar_member("link", tarfile.LNKTYPE, "etc/passwd"), b"")],
        "link",
        "link target is not a regular file earlier in the archive",
    ),
    "device": (
        [(tar_member("null", tarfile.CHRTYPE), b"")],
        "null",
        "device files, FIFOs and other special members are not allowed",
    ),
    "fifo": (
        [(tar_member("pipe", tarfile.FIFOTYPE), b"")],
        "pipe",
        "device files, FIFOs and other special members are not allowed",
    ),
    "repeated": (
        [(tar_member("a.txt"), b"first"), (tar_member("a.txt"), b"second")],
        "a.txt",
        "repeats an earlier member",
    ),
}


@pytest.mark.parametrize(
    ("members", "member", "rule"),
    list(UNSAFE_TAR_MEMBERS.values()),
    ids=list(UNSAFE_TAR_MEMBERS),
)
def test_load_url_unsafe_tar_member_is_refused(
    served: Any,
    cache_dir: Path,
    members: list[tuple[tarfile.TarInfo, bytes]],
    member: str,
    rule: str,
) -> None:
    url = served.add("model.tar.gz", tar_of(*members))

    with pytest.raises(
        zooload.UnsafeArchiveError,
        match=re.escape(f"refused to extract archive member {member!r}: {rule}")
        + r".*Nothing was extracted\. Ask the publisher",
    ) as caught:
        zooload.load_url(url, cache_dir=cache_dir, **LINEAR)

    assert caught.value.member == member
    assert cache_files(cache_dir) == []
    _assert_portable(caught.value)


def test_load_url_zip_with_dot_dot_member_is_refused(
    served: Any, cache_dir: Path
) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        zipped.writestr("zooload.json", b"{}")
        zipped.writestr("../x", b"escaped")
    url = served.add("model.zip", buffer.getvalue())

    with pytest.raises(
        zooload.UnsafeArchiveError,
        match=r"member '\.\./x': path leads out of the extraction folder",
    ) as caught:
        zooload.load_url(url, cache_dir=cache_dir, **LINEAR)

    assert caught.value.member == "../x"
    assert cache_files(cache_dir) == []
    _assert_portable(caught.value)


# -- manifests -----------------------------------------------------------------


def _without_name(document: dict[str, Any]) -> None:
    del document["name"]


def _sha256_not_text(document: dict[str, Any]) -> None:
    document["weights"][0]["sha256"] = 1234


def _name_not_text(document: dict[str, Any]) -> None:
    document["name"] = ["tiny"]


@pytest.mark.parametrize(
    ("spoil", "field"),
    [
        (_without_name, "name"),
        (_sha256_not_text, "weights.0.sha256"),
        (_name_not_text, "name"),
    ],
    ids=["missing-name", "sha256-not-text", "name-not-text"],
)
def test_load_url_invalid_manifest_names_the_field(
    served: Any, cache_dir: Path, spoil: Any, field: str
) -> None:
    weights = safetensors_bytes(WEIGHTS)
    document = _manifest(weights)
    spoil(document)
    url = served.add("model.tar.gz", _model_archive(document, weights))

    with pytest.raises(
        zooload.ManifestError,
        match=r"(?s)zooload\.json of \S+ is not a valid zooload manifest:\n  "
        + re.escape(field)
        + r": .*re-pack with zooload\.pack\.",
    ) as caught:
        zooload.load_url(url, cache_dir=cache_dir, **LINEAR)

    assert caught.value.field == field
    assert cache_files(cache_dir) == []
    _assert_portable(caught.value)


def test_load_url_manifest_naming_absent_file_fails(
    served: Any, cache_dir: Path
) -> None:
    weights = safetensors_bytes(WEIGHTS)
    url = served.add("model.tar.gz", _model_archive(_manifest(weights), None))

    with pytest.raises(
        zooload.ManifestError,
        match=r"names 'weights\.safetensors' \(weights\.0\.path\), but the archive "
        r"has no such file\. Re-pack the model",
    ) as caught:
        zooload.load_url(url, cache_dir=cache_dir, **LINEAR)

    assert caught.value.field == "weights.0.path"
    assert cache_files(cache_dir) == []
    _assert_portable(caught.value)


def test_load_url_manifest_file_hash_wrong_fails(served: Any, cache_dir: Path) -> None:
    weights = safetensors_bytes(WEIGHTS)
    other = safetensors_bytes({"weight": torch.zeros(1, 2), "bias": torch.zeros(1)})
    url = served.add("model.tar.gz", _model_archive(_manifest(weights), other))

    with pytest.raises(
        zooload.HashMismatchError,
        match=re.escape(
            "sha256 mismatch for weights.safetensors "
            f"(named by zooload.json of {url}): "
            f"expected {sha256_of(weights)}, got {sha256_of(other)}. The archive "
            "does not match its own manifest"
        ),
    ) as caught:
        zooload.load_url(url, cache_dir=cache_dir, **LINEAR)

    assert caught.value.expected == sha256_of(weights)
    assert caught.value.actual == sha256_of(other)
    assert cache_files(cache_dir) == []
    _assert_portable(caught.value)


# -- architectures and state dicts ---------------------------------------------


def test_load_url_unknown_architecture_suggests_closest(
    tmp_path: Path, cache_dir: Path
) -> None:
    path = tmp_path / "linear.pt"
    path.write_bytes(_torch_bytes(WEIGHTS))

    with pytest.raises(
        zooload.UnknownArchitectureError,
        match=r"no architecture is registered as 'silero-vad-16'\. Did you mean "
        r"'silero-vad-16k'\? Register one with @zooload\.register\(name\), or "
        r"pass arch=",
    ) as caught:
        zooload.load_url(path, arch="silero-vad-16", cache_dir=cache_dir)

    assert caught.value.name == "silero-vad-16"
    assert caught.value.closest[0] == "silero-vad-16k"
    assert isinstance(caught.value, LookupError)
    assert _partial_files(cache_dir) == []
    _assert_portable(caught.value)


def test_load_url_unknown_architecture_in_manifest_suggests_closest(
    served: Any, cache_dir: Path
) -> None:
    weights = safetensors_bytes(WEIGHTS)
    document = _manifest(weights) | {"architecture": {"name": "silero-vad-16"}}
    url = served.add("model.tar.gz", _model_archive(document, weights))

    with pytest.raises(
        zooload.UnknownArchitectureError, match=r"Did you mean 'silero-vad-16k'\?"
    ) as caught:
        zooload.load_url(url, cache_dir=cache_dir)

    assert caught.value.closest[0] == "silero-vad-16k"
    assert _partial_files(cache_dir) == []
    _assert_portable(caught.value)


def test_load_url_strict_mismatch_reports_every_name(
    tmp_path: Path, cache_dir: Path
) -> None:
    path = tmp_path / "linear.pt"
    checkpoint = {"weight": torch.ones(1, 2), "extra": torch.zeros(3)}
    path.write_bytes(_torch_bytes(checkpoint))

    with pytest.raises(
        zooload.IncompatibleStateDictError,
        match=r"the state dict does not fit the model:\n"
        r"missing     1  bias\n"
        r"unexpected  1  extra\n"
        r"mismatched  1  weight: checkpoint \[1, 2\] vs model \[1, 3\]\n"
        r".*pass on_shape_mismatch='skip'",
    ) as caught:
        zooload.load_url(
            path, arch=nn.Linear, in_features=3, out_features=1, cache_dir=cache_dir
        )

    report = caught.value.report
    assert report.missing == ("bias",)
    assert report.unexpected == ("extra",)
    assert dict(report.mismatched) == {"weight": ((1, 2), (1, 3))}
    assert report.loaded == ()
    assert _partial_files(cache_dir) == []
    _assert_portable(caught.value)


def test_load_url_shape_mismatch_hint_can_be_followed(
    tmp_path: Path, cache_dir: Path
) -> None:
    path = tmp_path / "linear.pt"
    path.write_bytes(_torch_bytes(WEIGHTS))
    new_head = {"arch": nn.Linear, "in_features": 3, "out_features": 1}
    with pytest.raises(
        zooload.IncompatibleStateDictError, match="pass on_shape_mismatch='skip'"
    ):
        zooload.load_url(path, cache_dir=cache_dir, **new_head)

    # The hint says to keep the model's own tensor where shapes differ.
    model = zooload.load_url(
        path, cache_dir=cache_dir, on_shape_mismatch="skip", **new_head
    )

    assert isinstance(model, nn.Linear)
    assert model.bias.tolist() == [0.5]
    assert model.weight.shape == (1, 3)
    assert not model.weight.is_meta


# -- downloads -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "hint"),
    [
        (404, "the URL was not found; check it for typos"),
        (401, "credentials are missing or were not accepted; pass headers="),
        (403, "access was refused: the credentials are missing or were refused"),
    ],
)
def test_load_url_http_error_status_explains(
    served: Any, cache_dir: Path, status: int, hint: str
) -> None:
    url = served.add("linear.pt", _torch_bytes(WEIGHTS))
    served.server.fault(served.path("linear.pt"), Fault(status=status))

    with pytest.raises(
        zooload.DownloadError,
        match=re.escape(f"download of {url} failed with HTTP {status}: {hint}"),
    ) as caught:
        zooload.load_url(url, cache_dir=cache_dir, **LINEAR)

    assert caught.value.status == status
    assert caught.value.url == url
    assert not caught.value.retryable
    assert cache_files(cache_dir) == []
    _assert_portable(caught.value)


def test_load_url_missing_file_on_server_says_not_found(
    served: Any, cache_dir: Path
) -> None:
    url = served.server.url(served.path("never-published.pt"))

    with pytest.raises(zooload.DownloadError, match="HTTP 404: .*not found") as caught:
        zooload.load_url(url, cache_dir=cache_dir, **LINEAR)

    assert caught.value.status == 404
    assert cache_files(cache_dir) == []
    _assert_portable(caught.value)


# -- files that are no checkpoint ----------------------------------------------


@pytest.mark.parametrize(
    ("content", "seen", "hint"),
    [
        (
            HTML_PAGE,
            "an HTML page",
            "The server sent a web page: check the URL and any login it needs.",
        ),
        (
            LFS_POINTER,
            "a Git LFS pointer, not the file it points to",
            "Run `git lfs pull` in the repository, or download the real file.",
        ),
        (b"", "an empty file", "The download is empty; download it again."),
    ],
    ids=["html", "git-lfs-pointer", "empty"],
)
def test_load_url_not_a_checkpoint_says_what_it_looks_like(
    tmp_path: Path, cache_dir: Path, content: bytes, seen: str, hint: str
) -> None:
    path = tmp_path / "model.pth"
    path.write_bytes(content)

    with pytest.raises(
        zooload.FormatError, match=re.escape(f"it looks like {seen}. {hint}")
    ) as caught:
        zooload.load_url(path, cache_dir=cache_dir, **LINEAR)

    assert caught.value.seen == seen
    assert caught.value.path == str(path)
    assert isinstance(caught.value, zooload.CheckpointError)
    assert cache_files(cache_dir) == []
    _assert_portable(caught.value)


def test_load_url_bare_state_dict_needs_arch(tmp_path: Path, cache_dir: Path) -> None:
    path = tmp_path / "linear.pt"
    path.write_bytes(_torch_bytes(WEIGHTS))

    with pytest.raises(
        zooload.ConfigError,
        match=r"linear\.pt holds weights but does not say which architecture they "
        r"belong to; pass arch=",
    ) as caught:
        zooload.load_url(path, cache_dir=cache_dir)

    assert cache_files(cache_dir) == []
    _assert_portable(caught.value)


# -- example checks ------------------------------------------------------------


@pytest.mark.parametrize("dest_name", ["model.tar.gz", "model.zip", "model-folder"])
def test_load_url_example_outputs_that_differ_fail(
    tmp_path: Path, cache_dir: Path, dest_name: str
) -> None:
    model = nn.Linear(2, 1)
    model.load_state_dict(WEIGHTS)
    dest = zooload.pack(
        model,
        tmp_path / dest_name,
        arch="test-bad-input-linear",
        example_inputs=torch.tensor([[1.0, 2.0]]),
    )

    with pytest.raises(
        zooload.VerificationError,
        match=r"example output 'output\.0' differs from the expected one by up to "
        r"5\.5 .*check arch= and its arguments, or load with check=False",
    ) as caught:
        zooload.load_url(dest, arch=DoubledLinear, cache_dir=cache_dir)

    # The expected output is 1*1 + 2*2 + 0.5 = 5.5; the impostor gives 11.
    assert caught.value.largest_difference == pytest.approx(5.5)
    assert _partial_files(cache_dir) == []
    _assert_portable(caught.value)


# -- pickles -------------------------------------------------------------------


def test_load_url_checkpoint_needing_unsafe_global_runs_no_code(
    tmp_path: Path, cache_dir: Path
) -> None:
    unpickled.clear()
    path = tmp_path / "linear.pt"
    path.write_bytes(_torch_bytes({**WEIGHTS, "gadget": Gadget()}))
    name = f"{Gadget.__module__}.Gadget"

    with pytest.raises(
        zooload.UnsafeCheckpointError,
        match=re.escape(f"needs globals that weights-only unpickling refuses: {name}.")
        + r" Loading it could run code from the file\.",
    ) as caught:
        zooload.load_url(path, cache_dir=cache_dir, **LINEAR)

    assert caught.value.globals == (name,)
    assert caught.value.path == str(path)
    assert unpickled == []
    assert cache_files(cache_dir) == []
    _assert_portable(caught.value)


class TensorMapping(dict[str, torch.Tensor]):
    """A state dict of a custom mapping type: its pickle names this class."""


def test_load_url_unsafe_global_hint_can_be_followed(
    tmp_path: Path, cache_dir: Path
) -> None:
    path = tmp_path / "linear.pt"
    path.write_bytes(_torch_bytes(TensorMapping(WEIGHTS)))
    with pytest.raises(zooload.UnsafeCheckpointError, match="trust_pickle=True"):
        zooload.load_url(path, cache_dir=cache_dir, **LINEAR)

    # The hint says to pass trust_pickle=True for a publisher one trusts.
    model = zooload.load_url(path, cache_dir=cache_dir, trust_pickle=True, **LINEAR)

    assert tensors_equal(dict(model.state_dict()), WEIGHTS)
