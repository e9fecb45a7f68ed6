"""Unit tests for zooload.errors: every error renders its facts and survives pickling.

Errors cross process pools, so each class in ``zooload.errors.__all__`` must
come back from pickle with the same type, message, arguments and attributes.
"""

from __future__ import annotations

import pickle
import re
from typing import Any

import pytest

from zooload import errors
from zooload.loading import LoadReport

REPORT = LoadReport(
    loaded=("bias",),
    missing=("weight",),
    mismatched={"head.weight": ((2, 3), (4, 3))},
)

# One instance of every public error, with the attributes it must carry and
# the builtin exception type callers may catch it as.
SAMPLES: dict[str, tuple[Any, dict[str, Any], type[Exception]]] = {
    "ZooloadError": (
        errors.ZooloadError("something failed. Do this next."),
        {},
        Exception,
    ),
    "DownloadError": (
        errors.DownloadError(
            "download of http://127.0.0.1/w.pt failed with HTTP 503: try again",
            "http://127.0.0.1/w.pt",
            status=503,
            retryable=True,
        ),
        {"url": "http://127.0.0.1/w.pt", "status": 503, "retryable": True},
        OSError,
    ),
    "NotCachedError": (
        errors.NotCachedError(
            "http://127.0.0.1/w.pt is not in the cache; go online once.",
            "http://127.0.0.1/w.pt",
        ),
        {"url": "http://127.0.0.1/w.pt", "status": None, "retryable": False},
        OSError,
    ),
    "IntegrityError": (
        errors.IntegrityError("bytes differ. Download again."),
        {},
        ValueError,
    ),
    "HashMismatchError": (
        errors.HashMismatchError("w.pt", "a" * 64, "b" * 64, hint="Pin the hash."),
        {"path": "w.pt", "expected": "a" * 64, "actual": "b" * 64},
        ValueError,
    ),
    "SizeMismatchError": (
        errors.SizeMismatchError("http://127.0.0.1/w.pt", 100, 42),
        {"path": "http://127.0.0.1/w.pt", "expected": 100, "actual": 42},
        ValueError,
    ),
    "CacheError": (
        errors.CacheError("cannot use /nowhere as the cache. Point it elsewhere."),
        {},
        OSError,
    ),
    "ArchiveError": (
        errors.ArchiveError("model.tar is truncated. Download it again."),
        {},
        ValueError,
    ),
    "UnsafeArchiveError": (
        errors.UnsafeArchiveError("../x", "path leads out of the extraction folder"),
        {"member": "../x", "rule": "path leads out of the extraction folder"},
        ValueError,
    ),
    "UntrustedCodeError": (
        errors.UntrustedCodeError("http://127.0.0.1/model.tar.gz", "model.py"),
        {"source": "http://127.0.0.1/model.tar.gz", "code": "model.py"},
        ValueError,
    ),
    "CheckpointError": (
        errors.CheckpointError("ckpt.pt holds several sets of weights. Pass key=."),
        {},
        ValueError,
    ),
    "FormatError": (
        errors.FormatError("w.pt", "a checkpoint", "an HTML page", "Check the URL."),
        {"path": "w.pt", "expected": "a checkpoint", "seen": "an HTML page"},
        ValueError,
    ),
    "UnsafeCheckpointError": (
        errors.UnsafeCheckpointError("w.pt", ["os.system", "mypkg.Config"]),
        {"path": "w.pt", "globals": ("os.system", "mypkg.Config")},
        ValueError,
    ),
    "ManifestError": (
        errors.ManifestError("zooload.json lacks a name. Re-pack.", field="name"),
        {"field": "name"},
        ValueError,
    ),
    "UnknownArchitectureError": (
        errors.UnknownArchitectureError("silero-vad-16", ["silero-vad-16k"]),
        {"name": "silero-vad-16", "closest": ("silero-vad-16k",)},
        LookupError,
    ),
    "StateDictError": (
        errors.StateDictError("2 tensors were never loaded. Load them."),
        {},
        ValueError,
    ),
    "IncompatibleStateDictError": (
        errors.IncompatibleStateDictError(REPORT),
        {"report": REPORT},
        ValueError,
    ),
    "VerificationError": (
        errors.VerificationError("output differs by 0.5. Check arch=.", 0.5),
        {"largest_difference": 0.5},
        ValueError,
    ),
    "ConfigError": (
        errors.ConfigError("cache_dir must be a folder. Pass another."),
        {},
        ValueError,
    ),
}


def test_errors_samples_cover_every_public_error() -> None:
    # A new error class must be added to SAMPLES, so that it is checked below.
    assert sorted(SAMPLES) == sorted(errors.__all__)
    assert all(type(err).__name__ == name for name, (err, _, _) in SAMPLES.items())


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_errors_pickle_round_trip_keeps_message_and_attributes(name: str) -> None:
    err, attributes, builtin = SAMPLES[name]

    copy = pickle.loads(pickle.dumps(err))

    assert type(copy) is type(err)
    assert str(copy) == str(err)
    assert copy.args == err.args
    for attribute, value in attributes.items():
        assert getattr(err, attribute) == value
        assert getattr(copy, attribute) == value
    assert isinstance(copy, errors.ZooloadError)
    assert isinstance(copy, builtin)


def test_size_mismatch_error_says_nothing_was_cached_and_to_retry() -> None:
    err = errors.SizeMismatchError("http://127.0.0.1/w.pt", 100, 42)

    with pytest.raises(
        errors.SizeMismatchError,
        match=re.escape(
            "size mismatch for http://127.0.0.1/w.pt: expected 100 bytes, got 42. "
            "The transfer was cut short or the server lied about the length; "
            "nothing was cached. Try again."
        ),
    ) as caught:
        raise err

    assert isinstance(caught.value, errors.IntegrityError)


def test_hash_mismatch_error_custom_hint_replaces_the_default() -> None:
    err = errors.HashMismatchError("w.pt", "a" * 64, "b" * 64, hint="Re-pack it.")

    assert str(err) == (
        f"sha256 mismatch for w.pt: expected {'a' * 64}, got {'b' * 64}. Re-pack it."
    )
    assert "pin the new hash" not in str(err)


def test_unsafe_checkpoint_error_without_known_globals_says_unknown() -> None:
    err = errors.UnsafeCheckpointError("w.pt", [])

    assert "refuses: (unknown). Loading it could run code from the file." in str(err)
    assert err.globals == ()


def test_unknown_architecture_error_without_close_names_only_says_register() -> None:
    err = errors.UnknownArchitectureError("resnet", [])

    assert str(err) == (
        "no architecture is registered as 'resnet'. Register one with "
        "@zooload.register(name), or pass arch= a class or factory."
    )


def test_incompatible_state_dict_error_renders_the_report_and_hint() -> None:
    err = errors.IncompatibleStateDictError(REPORT, hint="Use strict=False.")

    assert str(err) == (
        f"the state dict does not fit the model:\n{REPORT}\nUse strict=False."
    )
    assert "missing     1  weight" in str(err)
