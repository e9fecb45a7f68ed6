"""Unit tests for zooload.checks: whole models and example outputs."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from zooload.architectures import build_without_parameters
from zooload.checks import check_examples, check_materialised
from zooload.errors import ManifestError, StateDictError, VerificationError
from zooload.manifest import ExamplesSpec

INPUT = torch.tensor([[1.0, 2.0]])


class Fixed(nn.Module):
    """``y = x @ [1, 1]^T + 0.5`` and, on request, its double as a second output."""

    def __init__(self, outputs: str = "tensor") -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)
        self.outputs = outputs
        with torch.no_grad():
            self.linear.weight.fill_(1.0)
            self.linear.bias.fill_(0.5)

    def forward(self, inputs: torch.Tensor) -> object:
        result = self.linear(inputs)
        if self.outputs == "pair":
            return result, 2 * result
        if self.outputs == "dict":
            return {"y": result}
        if self.outputs == "flat":
            return result.flatten()
        return result


def _examples(tmp_path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "examples.safetensors"
    save_file(tensors, path)
    return path


def _spec(inputs: list[str], outputs: list[str], **tolerances: float) -> ExamplesSpec:
    return ExamplesSpec(
        path="examples.safetensors",
        sha256="0" * 64,
        inputs=inputs,
        outputs=outputs,
        **tolerances,
    )


# -- check_materialised ------------------------------------------------------------


def test_check_materialised_names_the_first_ten_meta_tensors() -> None:
    model = build_without_parameters(
        lambda: nn.Sequential(*(nn.Linear(1, 1) for _ in range(6))), {}
    )

    with pytest.raises(
        StateDictError,
        match=re.escape(
            "12 tensors were never loaded: 0.weight, 0.bias, 1.weight, 1.bias, "
            "2.weight, 2.bias, 3.weight, 3.bias, 4.weight, 4.bias. Load a "
            "checkpoint that holds them, or load with strict=False."
        ),
    ) as caught:
        check_materialised(model)

    assert "5.weight" not in str(caught.value)


# -- check_examples ----------------------------------------------------------------


def test_check_examples_passes_and_logs_the_largest_difference(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _examples(
        tmp_path,
        {"x": INPUT, "y": torch.tensor([[3.5]]), "y2": torch.tensor([[7.0]])},
    )
    caplog.set_level(logging.INFO, logger="zooload")

    result = check_examples(Fixed("pair"), path, _spec(["x"], ["y", "y2"]))

    assert result.outputs == 2
    assert result.largest_difference == 0.0
    assert [r.getMessage() for r in caplog.records] == [
        "example check passed: largest difference 0"
    ]


def test_check_examples_tolerates_differences_within_atol(tmp_path: Path) -> None:
    path = _examples(tmp_path, {"x": INPUT, "y": torch.tensor([[3.75]])})

    result = check_examples(Fixed(), path, _spec(["x"], ["y"], atol=0.25))

    assert result.largest_difference == pytest.approx(0.25)


def test_check_examples_output_count_mismatch_names_the_field(tmp_path: Path) -> None:
    path = _examples(tmp_path, {"x": INPUT, "y": torch.tensor([[3.5]])})

    with pytest.raises(
        ManifestError,
        match=re.escape(
            "the model returned 2 outputs, the manifest expects 1; fix "
            "examples.outputs or the architecture."
        ),
    ) as caught:
        check_examples(Fixed("pair"), path, _spec(["x"], ["y"]))

    assert caught.value.field == "examples.outputs"


@pytest.mark.parametrize(
    ("inputs", "outputs", "field", "absent"),
    [
        (["x", "mask"], ["y"], "examples.inputs", "mask"),
        (["x"], ["y", "logits", "probs"], "examples.outputs", "logits, probs"),
    ],
    ids=["input", "outputs"],
)
def test_check_examples_tensor_absent_from_the_file_names_it(
    tmp_path: Path, inputs: list[str], outputs: list[str], field: str, absent: str
) -> None:
    path = _examples(tmp_path, {"x": INPUT, "y": torch.tensor([[3.5]])})

    with pytest.raises(
        ManifestError,
        match=re.escape(
            f"the examples file lacks {absent} named in {field}; re-pack the model "
            "with its example inputs."
        ),
    ) as caught:
        check_examples(Fixed(), path, _spec(inputs, outputs))

    assert caught.value.field == field


def test_check_examples_model_returning_a_dict_says_check_false(
    tmp_path: Path,
) -> None:
    path = _examples(tmp_path, {"x": INPUT, "y": torch.tensor([[3.5]])})

    with pytest.raises(
        ManifestError,
        match=re.escape(
            "the model returned a dict; example checks need a tensor or a tuple "
            "of tensors. Load with check=False."
        ),
    ) as caught:
        check_examples(Fixed("dict"), path, _spec(["x"], ["y"]))

    assert caught.value.field == "examples"


def test_check_examples_shape_mismatch_is_an_infinite_difference(
    tmp_path: Path,
) -> None:
    path = _examples(tmp_path, {"x": INPUT, "y": torch.tensor([[3.5]])})

    with pytest.raises(
        VerificationError,
        match=re.escape(
            "example output 'y' has shape [1], expected [1, 1]; the weights do not "
            "belong to this architecture."
        ),
    ) as caught:
        check_examples(Fixed("flat"), path, _spec(["x"], ["y"]))

    assert math.isinf(caught.value.largest_difference)
