"""Unit tests for zooload.loading, zooload.report and the architecture registry."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import zooload
from support.builders import tensors_equal
from zooload.architectures import build_without_parameters
from zooload.errors import ConfigError, IncompatibleStateDictError, StateDictError
from zooload.loading import LoadReport, load_into


class TwoLayers(nn.Module):
    """Two small linear layers and a buffer computed when built."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(2, 3)
        self.second = nn.Linear(3, 1)
        self.register_buffer("window", torch.arange(4, dtype=torch.float32) * 0.5)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(inputs)) * self.window.sum()


class Scale(nn.Module):
    """One parameter whose reset_parameters sets a known value."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.empty(3))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.gain, 0.25)


class NoReset(nn.Module):
    """A parameter that nothing can initialise once it is on meta."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(3))


class Stack(nn.Module):
    """Four identical layers in a ModuleList, as transformer blocks are."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(2, 2) for _ in range(4))


def _checkpoint() -> dict[str, torch.Tensor]:
    return {
        "first.weight": torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]),
        "first.bias": torch.tensor([0.1, 0.2, 0.3]),
        "second.weight": torch.tensor([[1.0, -1.0, 0.5]]),
        "second.bias": torch.tensor([0.0]),
        "window": torch.tensor([1.0, 1.0, 1.0, 1.0]),
    }


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


# -- load_into ----------------------------------------------------------------------


def test_load_into_strict_success(caplog: pytest.LogCaptureFixture) -> None:
    model = TwoLayers()
    caplog.set_level(logging.WARNING, logger="zooload")

    report = load_into(model, _checkpoint())

    assert report.ok
    # In the model's own order: its buffer first, then its children.
    assert report.loaded == (
        "window",
        "first.weight",
        "first.bias",
        "second.weight",
        "second.bias",
    )
    assert (report.missing, report.unexpected, dict(report.mismatched)) == (
        (),
        (),
        {},
    )
    assert tensors_equal(_snapshot(model), _checkpoint())
    assert caplog.records == []


def test_load_into_copies_into_existing_parameters() -> None:
    model = TwoLayers()
    weight = model.first.weight

    load_into(model, _checkpoint())

    # An optimiser holding the old parameter objects stays valid.
    assert model.first.weight is weight
    assert weight.tolist() == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]


def test_load_into_reports_renames() -> None:
    model = TwoLayers()
    checkpoint = {f"module.{name}": t for name, t in _checkpoint().items()}

    report = load_into(model, checkpoint, rename=[(r"^module\.", "")])

    assert report.ok
    assert dict(report.renamed) == {f"module.{name}": name for name in _checkpoint()}
    assert tensors_equal(_snapshot(model), _checkpoint())


def test_load_into_casts_half_to_float_and_reports_it() -> None:
    model = nn.Linear(2, 1)
    checkpoint = {
        "weight": torch.tensor([[0.5, -1.5]], dtype=torch.float16),
        "bias": torch.tensor([2.0]),
    }

    report = load_into(model, checkpoint)

    assert dict(report.cast) == {"weight": ("float16", "float32")}
    assert model.weight.dtype == torch.float32
    assert model.weight.tolist() == [[0.5, -1.5]]
    assert "cast        1  weight: float16 -> float32" in str(report)


def test_load_into_strict_failure_leaves_model_untouched() -> None:
    model = TwoLayers()
    before = _snapshot(model)
    parameters = dict(model.named_parameters())
    checkpoint = _checkpoint()
    checkpoint["second.weight"] = torch.ones(1, 4)
    checkpoint["third.weight"] = torch.ones(1)
    del checkpoint["second.bias"]

    with pytest.raises(
        IncompatibleStateDictError,
        match=r"second\.weight: checkpoint \[1, 4\] vs model \[1, 3\]",
    ) as caught:
        load_into(model, checkpoint)

    assert tensors_equal(_snapshot(model), before)
    assert dict(model.named_parameters()) == parameters
    report = caught.value.report
    assert report.missing == ("second.bias",)
    assert report.unexpected == ("third.weight",)
    assert dict(report.mismatched) == {"second.weight": ((1, 4), (1, 3))}
    assert not report.ok


def test_load_into_non_strict_partial_load_keeps_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = TwoLayers()
    before = _snapshot(model)
    checkpoint = {"first.weight": torch.zeros(3, 2), "extra.bias": torch.ones(2)}
    caplog.set_level(logging.WARNING, logger="zooload")

    report = load_into(model, checkpoint, strict=False)

    assert report.loaded == ("first.weight",)
    assert report.unexpected == ("extra.bias",)
    assert set(report.missing) == set(before) - {"first.weight"}
    assert torch.equal(model.first.weight, torch.zeros(3, 2))
    after = _snapshot(model)
    assert all(torch.equal(after[n], before[n]) for n in before if n != "first.weight")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].name == "zooload.loading"
    assert (
        warnings[0]
        .getMessage()
        .startswith("partial load into TwoLayers:\nloaded      1  first.weight\n")
    )
    assert "unexpected  1  extra.bias" in warnings[0].getMessage()


def test_load_into_non_strict_nothing_matching_raises() -> None:
    model = nn.Linear(2, 1)
    before = _snapshot(model)
    checkpoint = {"kernel": torch.ones(1, 2), "offset": torch.ones(1)}

    with pytest.raises(
        StateDictError,
        match=r"(?s)none of the 2 checkpoint tensors matches a model tensor.*"
        r"unexpected  2  kernel\n +offset\n.*rename rule",
    ):
        load_into(model, checkpoint, strict=False)

    assert tensors_equal(_snapshot(model), before)


def test_load_into_rename_collision_raises() -> None:
    model = nn.Linear(2, 1)
    checkpoint = {"a.weight": torch.ones(1, 2), "b.weight": torch.zeros(1, 2)}

    with pytest.raises(
        StateDictError,
        match=r"rename rules map two keys to 'weight' \(one is 'b\.weight'\); make "
        r"the patterns more specific\.",
    ):
        load_into(model, checkpoint, rename=[(r"^[ab]\.", "")])


def test_load_into_bad_rename_pattern_raises() -> None:
    with pytest.raises(ConfigError, match=r"rename pattern '\(' is not a valid regex"):
        load_into(nn.Linear(2, 1), {}, rename=[("(", "")])


# -- building without parameters ---------------------------------------------------


def test_build_without_parameters_keeps_buffers_real() -> None:
    model = build_without_parameters(TwoLayers, {})

    assert all(p.is_meta for p in model.parameters())
    assert [name for name, _ in model.named_parameters()] == [
        "first.weight",
        "first.bias",
        "second.weight",
        "second.bias",
    ]
    assert model.first.weight.shape == (3, 2)
    assert not model.window.is_meta
    assert model.window.tolist() == [0.0, 0.5, 1.0, 1.5]


def test_build_without_parameters_bad_arguments_raise() -> None:
    with pytest.raises(
        ConfigError,
        match=r"cannot build torch\.nn\.modules\.linear\.Linear with \{'size': 2\}: "
        r".*Check the architecture's keyword arguments;",
    ):
        build_without_parameters(nn.Linear, {"size": 2})


def test_build_without_parameters_factory_returning_no_module_raises() -> None:
    with pytest.raises(ConfigError, match=r"returned dict, not a torch\.nn\.Module"):
        build_without_parameters(dict, {})


def test_load_into_meta_model_strict_adopts_every_tensor() -> None:
    model = build_without_parameters(TwoLayers, {})

    report = load_into(model, _checkpoint())

    assert report.ok
    assert not any(t.is_meta for t in model.state_dict().values())
    assert tensors_equal(_snapshot(model), _checkpoint())


def test_load_into_meta_model_non_strict_resets_missing_parameters() -> None:
    model = build_without_parameters(
        lambda: nn.Sequential(Scale(), nn.Linear(3, 1)), {}
    )
    checkpoint = {"1.weight": torch.tensor([[1.0, 2.0, 3.0]]), "1.bias": torch.ones(1)}

    report = load_into(model, checkpoint, strict=False)

    assert report.missing == ("0.gain",)
    assert not any(t.is_meta for t in model.state_dict().values())
    assert model[0].gain.tolist() == [0.25, 0.25, 0.25]
    assert model[0].gain.requires_grad
    assert model[1].weight.tolist() == [[1.0, 2.0, 3.0]]


def test_load_into_meta_model_non_strict_partly_missing_owner() -> None:
    model = build_without_parameters(nn.Linear, {"in_features": 2, "out_features": 1})

    report = load_into(model, {"weight": torch.tensor([[3.0, 4.0]])}, strict=False)

    assert report.missing == ("bias",)
    assert not model.bias.is_meta
    assert model.weight.tolist() == [[3.0, 4.0]]


def test_load_into_meta_model_non_strict_initialises_mismatched_parameters() -> None:
    model = build_without_parameters(
        lambda: nn.Sequential(Scale(), nn.Linear(3, 1)), {}
    )
    checkpoint = {"0.gain": torch.ones(5), "1.weight": torch.ones(1, 3)}

    report = load_into(model, checkpoint, strict=False, on_shape_mismatch="skip")

    assert dict(report.mismatched) == {"0.gain": ((5,), (3,))}
    # What does not fit is reported, and the model is still whole.
    assert [n for n, t in model.state_dict().items() if t.is_meta] == []
    assert model[0].gain.tolist() == [0.25, 0.25, 0.25]


def test_load_into_meta_model_without_reset_parameters_raises() -> None:
    model = build_without_parameters(
        lambda: nn.Sequential(NoReset(), nn.Linear(3, 1)), {}
    )
    checkpoint = {"1.weight": torch.ones(1, 3), "1.bias": torch.ones(1)}

    with pytest.raises(
        StateDictError,
        match=r"0 \(NoReset\) has parameters the checkpoint does not \w+ and no "
        r"reset_parameters\(\) to initialise them; load a checkpoint that holds "
        r"them",
    ):
        load_into(model, checkpoint, strict=False)


# -- the report -----------------------------------------------------------------------


def test_load_report_collapses_layer_indices() -> None:
    model = Stack()
    checkpoint = {name: torch.zeros_like(t) for name, t in model.state_dict().items()}
    checkpoint["head.weight"] = torch.ones(1)
    del checkpoint["layers.3.bias"]

    report = load_into(model, checkpoint, strict=False)

    assert str(report) == (
        "loaded      7  layers.{0..3}.weight\n"
        "               layers.{0..2}.bias\n"
        "missing     1  layers.3.bias\n"
        "unexpected  1  head.weight"
    )


def test_load_report_renders_every_section() -> None:
    report = LoadReport(
        loaded=("a.0.w", "a.1.w", "a.3.w"),
        missing=("b",),
        unexpected=("c",),
        mismatched={"d": ((2,), (3, 1))},
        skipped=("e",),
        renamed={"old.w": "a.0.w"},
        cast={"a.0.w": ("float16", "float32")},
    )

    assert str(report).splitlines() == [
        "loaded      3  a.{0,1,3}.w",
        "missing     1  b",
        "unexpected  1  c",
        "mismatched  1  d: checkpoint [2] vs model [3, 1]",
        "skipped     1  e",
        "renamed     1  old.w -> a.0.w",
        "cast        1  a.0.w: float16 -> float32",
    ]
    assert not report.ok


def test_load_report_empty() -> None:
    assert str(LoadReport()) == "nothing to load"
    assert LoadReport().ok


# -- the registry ---------------------------------------------------------------------


def test_register_twice_with_different_factories_raises() -> None:
    def first() -> nn.Module:
        return nn.Linear(2, 1)

    def second() -> nn.Module:
        return nn.Linear(2, 1)

    assert zooload.register("test-loading-twice")(first) is first
    # The same factory again is harmless.
    assert zooload.register("test-loading-twice")(first) is first

    with pytest.raises(
        ConfigError,
        match=r"architecture 'test-loading-twice' is already registered to "
        r".*first; choose another name\.",
    ):
        zooload.register("test-loading-twice")(second)

    assert "test-loading-twice" in zooload.registered_names()


def test_register_empty_name_raises() -> None:
    with pytest.raises(ConfigError, match="an architecture name must not be empty"):
        zooload.register("")
