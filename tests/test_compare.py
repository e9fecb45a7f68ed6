"""diff_state_dicts: names, shapes and dtypes of two state dicts, before loading."""

from __future__ import annotations

import torch

from zooload import StateDictDiff, diff_state_dicts


def _meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def test_diff_state_dicts_identical_names_are_compatible() -> None:
    weights = {"fc.weight": _meta(2, 3), "fc.bias": _meta(2)}
    result = diff_state_dicts(weights, weights)
    assert result == StateDictDiff(matched=("fc.weight", "fc.bias"))
    assert result.compatible


def test_diff_state_dicts_applies_the_wrapper_prefix_change() -> None:
    a = {"module._orig_mod.fc.weight": _meta(2, 3)}
    result = diff_state_dicts(a, {"fc.weight": _meta(2, 3)})
    assert result.compatible
    assert result.prefix == "stripped 'module._orig_mod.'"
    assert result.matched == ("fc.weight",)


def test_diff_state_dicts_lists_shapes_dtypes_and_leftovers() -> None:
    a = {
        "fc.weight": _meta(1000, 8),
        "fc.bias": _meta(10, dtype=torch.float16),
        "extra": _meta(1),
    }
    b = {"fc.weight": _meta(10, 8), "fc.bias": _meta(10), "missing": _meta(3, 3)}
    result = diff_state_dicts(a, b)
    assert not result.compatible
    assert result.shapes == {"fc.weight": ((1000, 8), (10, 8))}
    assert result.dtypes == {"fc.bias": ("float16", "float32")}
    assert (result.only_a, result.only_b) == (("extra",), ("missing",))
    assert result.renames == {}


def test_diff_state_dicts_dtypes_alone_stay_compatible() -> None:
    result = diff_state_dicts({"w": _meta(2, dtype=torch.float16)}, {"w": _meta(2)})
    assert result.compatible
    assert result.dtypes == {"w": ("float16", "float32")}


def test_diff_state_dicts_renames_follow_the_module_of_a_paired_sibling() -> None:
    a = {"enc.0.conv.weight": _meta(8, 4), "enc.0.conv.bias": _meta(8)}
    b = {
        "conv9.bias": _meta(8),
        "conv1.weight": _meta(8, 4),
        "conv1.bias": _meta(8),
    }
    result = diff_state_dicts(a, b)
    assert result.renames == {
        "enc.0.conv.weight": "conv1.weight",
        "enc.0.conv.bias": "conv1.bias",
    }
    assert result.only_b == ("conv9.bias", "conv1.weight", "conv1.bias")


def test_diff_state_dicts_proposes_no_rename_across_shapes_or_unlike_names() -> None:
    a = {"head.weight": _meta(4), "zzzz": _meta(2)}
    b = {"fc.weight": _meta(5), "qqqqqqqqqq.y": _meta(2)}
    assert diff_state_dicts(a, b).renames == {}
