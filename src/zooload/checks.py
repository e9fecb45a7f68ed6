"""Check: a loaded model is whole and reproduces its example outputs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from zooload.errors import ManifestError, StateDictError, VerificationError
from zooload.formats import safetensors_file
from zooload.formats.common import WeightsSource
from zooload.manifest import ExamplesSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ExampleResult:
    """The outcome of an example check: outputs compared, largest difference."""

    outputs: int
    largest_difference: float


def check_materialised(model: nn.Module) -> None:
    """Raise unless every parameter and buffer of ``model`` has storage.

    Raises
    ------
    StateDictError
        Naming the tensors still on the meta device.

    Examples
    --------
    >>> check_materialised(torch.nn.Linear(2, 1))
    """
    empty = [
        name
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]
        if tensor.is_meta
    ]
    if empty:
        message = (
            f"{len(empty)} tensors were never loaded: {', '.join(empty[:10])}. "
            "Load a checkpoint that holds them, or load with strict=False."
        )
        raise StateDictError(message)


def check_examples(
    model: nn.Module, examples_path: WeightsSource, spec: ExamplesSpec
) -> ExampleResult:
    """Run ``model`` on the example inputs and compare with the expected outputs.

    Parameters
    ----------
    model
        The loaded model, in eval mode.
    examples_path
        The safetensors file with the inputs and outputs (a file, or a
        region of the archive that stores it).
    spec
        The manifest's examples entry: tensor names and tolerances.

    Returns
    -------
    ExampleResult

    Raises
    ------
    VerificationError
        When an output differs beyond ``atol + rtol * |expected|``; gives the
        largest difference.
    ManifestError
        When the file lacks a tensor the manifest names, or the model returns
        a different number of outputs.

    Examples
    --------
    >>> check_examples  # doctest: +ELLIPSIS
    <function check_examples at ...>
    """
    tensors = safetensors_file.read(examples_path, map_location="cpu")
    inputs = _pick(tensors, spec.inputs, "examples.inputs")
    expected = _pick(tensors, spec.outputs, "examples.outputs")
    reference = next(iter(model.parameters()), torch.empty(0))
    # Floating inputs follow the model's dtype, so that a manifest "dtype"
    # (fp16, bf16) converts the examples along with the weights.
    moved = [
        t.to(reference.device, reference.dtype)
        if t.is_floating_point() and reference.is_floating_point()
        else t.to(reference.device)
        for t in inputs
    ]
    try:
        with torch.no_grad():
            output = model(*moved)
    except (RuntimeError, TypeError, ValueError, IndexError) as err:
        message = (
            f"the model cannot run on the example inputs of the manifest: {err}. "
            "The examples do not fit this architecture; check arch= and its "
            "arguments, or load with check=False."
        )
        raise ManifestError(message, field="examples.inputs") from err
    produced = _as_tuple(output)
    if len(produced) != len(expected):
        message = (
            f"the model returned {len(produced)} outputs, the manifest expects "
            f"{len(expected)}; fix examples.outputs or the architecture."
        )
        raise ManifestError(message, field="examples.outputs")
    largest = 0.0
    for name, actual, wanted in zip(spec.outputs, produced, expected, strict=True):
        largest = max(largest, _compare(name, actual.cpu(), wanted, spec))
    logger.info("example check passed: largest difference %.3g", largest)
    return ExampleResult(outputs=len(expected), largest_difference=largest)


def _pick(
    tensors: dict[str, torch.Tensor], names: Sequence[str], field: str
) -> list[torch.Tensor]:
    absent = [name for name in names if name not in tensors]
    if absent:
        message = (
            f"the examples file lacks {', '.join(absent)} named in {field}; "
            "re-pack the model with its example inputs."
        )
        raise ManifestError(message, field=field)
    return [tensors[name] for name in names]


def _as_tuple(output: object) -> tuple[torch.Tensor, ...]:
    if isinstance(output, torch.Tensor):
        return (output,)
    if isinstance(output, (tuple, list)) and all(
        isinstance(item, torch.Tensor) for item in output
    ):
        return tuple(output)
    message = (
        f"the model returned a {type(output).__name__}; example checks need a "
        "tensor or a tuple of tensors. Load with check=False."
    )
    raise ManifestError(message, field="examples")


def _compare(
    name: str, actual: torch.Tensor, wanted: torch.Tensor, spec: ExamplesSpec
) -> float:
    if actual.shape != wanted.shape:
        message = (
            f"example output {name!r} has shape {list(actual.shape)}, expected "
            f"{list(wanted.shape)}; the weights do not belong to this architecture."
        )
        raise VerificationError(message, largest_difference=float("inf"))
    difference = (actual.double() - wanted.double()).abs()
    largest = float(difference.max()) if difference.numel() else 0.0
    allowed = spec.atol + spec.rtol * wanted.double().abs()
    if not bool((difference <= allowed).all()):
        message = (
            f"example output {name!r} differs from the expected one by up to "
            f"{largest:.3g} (allowed: atol={spec.atol}, rtol={spec.rtol}). The "
            "weights or the architecture do not match what was packed; check "
            "arch= and its arguments, or load with check=False to inspect."
        )
        raise VerificationError(message, largest_difference=largest)
    return largest
