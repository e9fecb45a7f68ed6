"""Unit tests for zooload.unwrap: finding the weights inside training checkpoints."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
import torch

from zooload.errors import CheckpointError, FormatError
from zooload.unwrap import MAX_DEPTH, describe_structure, find_weights, unwrap

WEIGHTS = {"fc.weight": torch.tensor([[1.0, 2.0]]), "fc.bias": torch.tensor([0.5])}


def _nested(depth: int, leaf: Any) -> dict[str, Any]:
    """``leaf`` under ``depth`` levels of keys ``level1.level2...``."""
    content: Any = leaf
    for level in range(depth, 0, -1):
        content = {f"level{level}": content}
    return content


def _path(depth: int) -> str:
    return ".".join(f"level{level}" for level in range(1, depth + 1))


# -- find_weights ----------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [{}, [WEIGHTS], torch.ones(2), None, {"w": torch.ones(1), "epoch": 3}],
    ids=["empty-mapping", "list", "tensor", "none", "tensors-mixed-with-numbers"],
)
def test_find_weights_finds_nothing_in_content_without_a_tensor_mapping(
    content: Any,
) -> None:
    assert find_weights(content) == []


def test_find_weights_skips_bookkeeping_and_non_text_keys() -> None:
    content = {
        "epoch": 2,
        "model": WEIGHTS,
        "optimizer": {"state": {0: {"momentum": torch.ones(1)}}},
        "hparams": {"layer": WEIGHTS},
        "extras": {7: WEIGHTS, "ema": {"module": WEIGHTS}},
    }

    assert find_weights(content) == ["model", "extras.ema.module"]


def test_find_weights_searches_down_to_max_depth_only() -> None:
    assert find_weights(_nested(MAX_DEPTH, WEIGHTS)) == [_path(MAX_DEPTH)]
    assert find_weights(_nested(MAX_DEPTH + 1, WEIGHTS)) == []


# -- unwrap ----------------------------------------------------------------------


def test_unwrap_bare_state_dict_logs_no_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="zooload")

    result = unwrap(WEIGHTS, source="w.pt")

    assert result.key == ""
    assert result.tensors == WEIGHTS
    assert result.tensors is not WEIGHTS
    assert caplog.records == []


def test_unwrap_training_checkpoint_logs_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="zooload")

    result = unwrap({"epoch": 3, "ema": {"module": WEIGHTS}}, source="ckpt.pt")

    assert result.key == "ema.module"
    assert list(result.tensors) == ["fc.weight", "fc.bias"]
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("zooload.unwrap", "INFO", "ckpt.pt: weights found under key 'ema.module'")
    ]


def test_unwrap_without_weights_lists_the_keys_and_suggests_key() -> None:
    content = {"epoch": 3, "optimizer": {"state": {}}, "step": 10}

    with pytest.raises(
        FormatError,
        match=re.escape(
            "ckpt.pt is not a checkpoint holding weights: it looks like a mapping "
            "with keys [epoch, optimizer, step] but no mapping of names to tensors. "
            "Check that this is a model checkpoint, or pass key= to pick the weights."
        ),
    ) as caught:
        unwrap(content, source="ckpt.pt")

    assert caught.value.path == "ckpt.pt"
    assert caught.value.expected == "a checkpoint holding weights"


def test_unwrap_of_a_non_mapping_names_its_type() -> None:
    with pytest.raises(
        FormatError, match=r"it looks like a list\. Check that this is a model"
    ) as caught:
        unwrap([torch.ones(1)], source="list.pt")

    assert caught.value.seen == "a list"


def test_unwrap_weights_beyond_max_depth_need_key_and_key_finds_them() -> None:
    deep = _nested(MAX_DEPTH + 1, WEIGHTS)
    with pytest.raises(FormatError, match=r"keys \[level1\].*pass key= to pick"):
        unwrap(deep, source="deep.pt")

    result = unwrap(deep, key=_path(MAX_DEPTH + 1), source="deep.pt")

    assert result.key == "level1.level2.level3.level4.level5"
    assert result.tensors == WEIGHTS


@pytest.mark.parametrize(
    ("key", "seen"),
    [
        ("epoch", "an int"),
        ("model.fc.weight", "a Tensor"),
        ("meta", "a mapping with keys [author, tensors] but no mapping"),
    ],
    ids=["number", "tensor", "mapping-of-non-tensors"],
)
def test_unwrap_key_leading_to_non_weights_raises(key: str, seen: str) -> None:
    content = {
        "epoch": 3,
        "model": {"fc": {"weight": torch.ones(1)}},
        "meta": {"author": "lab", "tensors": 2},
    }

    with pytest.raises(
        CheckpointError,
        match=re.escape(f"ckpt.pt[{key!r}] is {seen}")
        + r".*not a mapping of names to tensors\. Pick a key that holds the weights\.",
    ) as caught:
        unwrap(content, key=key, source="ckpt.pt")

    assert not isinstance(caught.value, FormatError)


def test_unwrap_key_through_a_non_mapping_says_no_keys_there() -> None:
    with pytest.raises(
        CheckpointError,
        match=re.escape(
            "ckpt.pt has no entry 'epoch.model' (stopped at 'model'; keys there: "
            "none). Pick one of the keys listed."
        ),
    ):
        unwrap({"epoch": 3, "model": WEIGHTS}, key="epoch.model", source="ckpt.pt")


# -- describe_structure ----------------------------------------------------------


def test_describe_structure_of_a_non_mapping_is_its_type() -> None:
    assert describe_structure([1, 2]) == ["list"]
    assert describe_structure(torch.ones(1)) == ["Tensor"]


def test_describe_structure_summarises_every_kind_of_entry() -> None:
    content = {
        "epoch": 3,
        "model": WEIGHTS,
        "optimizer": {"param_groups": [{"lr": 0.1}], "state": {0: {"step": 1}}},
        "schedulers": (1, 2),
        "deep": {"a": {"b": {"c": 1}, "d": {}}},
    }

    assert describe_structure(content) == [
        "epoch: int",
        "model: 2 tensors",
        "optimizer:",
        "  param_groups: list of 1",
        "  state:",
        "    0: mapping of 1 entries",
        "schedulers: tuple of 2",
        "deep:",
        "  a:",
        "    b: mapping of 1 entries",
        "    d: mapping of 0 entries",
    ]


def test_describe_structure_limit_folds_nested_mappings() -> None:
    content = {"deep": {"a": {"b": 1}}, "model": WEIGHTS}

    assert describe_structure(content, limit=1) == [
        "deep: mapping of 1 entries",
        "model: 2 tensors",
    ]
