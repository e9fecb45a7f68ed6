"""Unit tests for zooload.mapping: prefix changes, stacked prefixes and filters."""

from __future__ import annotations

import re

import pytest

from zooload.mapping import (
    PrefixChange,
    detect_prefix_change,
    name_filter,
    shared_prefixes,
)

MODEL_NAMES = ["fc.weight", "fc.bias", "conv.weight"]


def test_prefix_change_replacing_one_prefix_by_another() -> None:
    change = PrefixChange(strip="encoder.", add="backbone.")

    assert str(change) == "replaced 'encoder.' by 'backbone.'"
    assert change.apply("encoder.fc.weight") == "backbone.fc.weight"
    # A name without the prefix is only given the new one.
    assert change.apply("head.bias") == "backbone.head.bias"


@pytest.mark.parametrize(
    ("change", "text"),
    [
        (PrefixChange(strip="module.", add=""), "stripped 'module.'"),
        (PrefixChange(strip="", add="model."), "added 'model.'"),
    ],
    ids=["strip", "add"],
)
def test_prefix_change_describes_one_sided_changes(
    change: PrefixChange, text: str
) -> None:
    assert str(change) == text


def test_shared_prefixes_stop_at_three_components() -> None:
    names = ["a.b.c.d.x.weight", "a.b.c.d.y.weight"]

    assert shared_prefixes(names) == ["a.", "a.b.", "a.b.c."]


def test_detect_prefix_change_strips_three_stacked_wrapper_prefixes() -> None:
    stacked = "module._orig_mod.model."
    checkpoint_names = [stacked + name for name in MODEL_NAMES]
    # One name without the stack, so no prefix is shared by every name.
    checkpoint_names.append("step")

    change = detect_prefix_change(checkpoint_names, MODEL_NAMES)

    assert change == PrefixChange(strip=stacked, add="")
    assert [change.apply(name) for name in checkpoint_names[:3]] == MODEL_NAMES


def test_detect_prefix_change_stacks_no_more_than_three_prefixes() -> None:
    four = "module._orig_mod.model.module."
    checkpoint_names = [four + name for name in MODEL_NAMES] + ["step"]

    change = detect_prefix_change(checkpoint_names, MODEL_NAMES)

    # The fourth known prefix is beyond the stack depth searched.
    assert change is None


def test_name_filter_accepts_a_list_of_globs_and_regexes() -> None:
    keep = name_filter(
        ["conv*", re.compile(r"^fc\.")], exclude=["*.bias", re.compile("running")]
    )

    assert [
        name
        for name in [
            "conv1.weight",
            "conv1.bias",
            "fc.weight",
            "bn.weight",
            "conv1.running_mean",
            "head.fc.weight",
        ]
        if keep(name)
    ] == ["conv1.weight", "fc.weight"]


def test_name_filter_with_nothing_to_include_keeps_all_but_excluded() -> None:
    keep = name_filter(None, exclude=("head.*",))

    assert keep("body.weight")
    assert not keep("head.weight")
