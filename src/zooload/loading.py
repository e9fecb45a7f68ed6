"""Load: put a state dict into a module and report exactly what happened.

:func:`load_into` matches names and shapes first and touches the model only
when the load is allowed to go ahead, so a refused strict load leaves every
tensor of the model as it was. Parameters still on the meta device (see
:func:`zooload.architectures.build_without_parameters`) adopt the loaded
tensors; materialised ones are copied into, so optimisers that hold them stay
valid.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from zooload.errors import IncompatibleStateDictError, StateDictError
from zooload.mapping import RenameRules, apply_renames
from zooload.report import render_report

logger = logging.getLogger(__name__)

ALIGNMENT_BYTES = 64
Shape = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What a load did, tensor by tensor.

    Attributes
    ----------
    loaded
        Model names that received a tensor.
    missing
        Model names the state dict did not provide.
    unexpected
        State-dict names the model does not have.
    mismatched
        ``name -> (checkpoint shape, model shape)`` for names whose shapes differ.
    skipped
        State-dict names left out on purpose (by a filter).
    renamed
        ``old -> new`` for every renamed state-dict key.
    cast
        ``name -> (checkpoint dtype, model dtype)`` for converted tensors.
    """

    loaded: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: Mapping[str, tuple[Shape, Shape]] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()
    renamed: Mapping[str, str] = field(default_factory=dict)
    cast: Mapping[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether every model tensor was loaded and nothing was left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        return render_report(self)


def load_into(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    rename: RenameRules | None = None,
) -> LoadReport:
    """Load ``state_dict`` into ``model`` and return the report.

    Parameters
    ----------
    model
        The module to fill; parameters may be on the meta device.
    state_dict
        Names to tensors.
    strict
        Refuse any missing, unexpected or mis-shaped tensor (the default).
        When false, what fits is loaded and the rest is reported.
    rename
        Ordered ``(pattern, replacement)`` rules applied to the state dict's
        names first (see :func:`zooload.mapping.apply_renames`).

    Returns
    -------
    LoadReport

    Raises
    ------
    IncompatibleStateDictError
        Under ``strict`` when anything does not fit; the model is untouched.
    StateDictError
        When nothing at all matches, or a missing parameter cannot be
        initialised.

    Examples
    --------
    >>> model = torch.nn.Linear(2, 1)
    >>> report = load_into(model, {"weight": torch.ones(1, 2), "bias": torch.zeros(1)})
    >>> report.ok, model.weight.tolist()
    (True, [[1.0, 1.0]])
    """
    renamed = apply_renames(state_dict, rename)
    targets = model.state_dict(keep_vars=True)
    report = _match(targets, renamed.tensors, renamed.renamed)
    if strict and not report.ok:
        raise IncompatibleStateDictError(report)
    if state_dict and not report.loaded:
        message = (
            f"none of the {len(state_dict)} checkpoint tensors matches a model "
            f"tensor:\n{report}\nAdd rename rules that map the checkpoint's names "
            "onto the model's."
        )
        raise StateDictError(message)
    _materialise(model, [name for name in report.missing if targets[name].is_meta])
    _assign(model, targets, {name: renamed.tensors[name] for name in report.loaded})
    if not report.ok:
        logger.warning("partial load:\n%s", report)
    logger.debug("loaded %d tensors into %s", len(report.loaded), type(model).__name__)
    return report


def _match(
    targets: Mapping[str, torch.Tensor],
    tensors: Mapping[str, torch.Tensor],
    renamed: Mapping[str, str],
) -> LoadReport:
    loaded, missing = [], []
    mismatched: dict[str, tuple[Shape, Shape]] = {}
    cast: dict[str, tuple[str, str]] = {}
    for name, target in targets.items():
        tensor = tensors.get(name)
        if tensor is None:
            missing.append(name)
        elif tensor.shape != target.shape:
            mismatched[name] = (tuple(tensor.shape), tuple(target.shape))
        else:
            loaded.append(name)
            if _needs_cast(tensor, target):
                cast[name] = (_dtype_name(tensor.dtype), _dtype_name(target.dtype))
    unexpected = tuple(name for name in tensors if name not in targets)
    return LoadReport(
        loaded=tuple(loaded),
        missing=tuple(missing),
        unexpected=unexpected,
        mismatched=mismatched,
        renamed=dict(renamed),
        cast=cast,
    )


def _needs_cast(tensor: torch.Tensor, target: torch.Tensor) -> bool:
    return tensor.dtype != target.dtype and target.is_floating_point()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _materialise(model: nn.Module, names: list[str]) -> None:
    """Allocate and initialise meta parameters that the checkpoint lacks."""
    owners = {name.rpartition(".")[0] for name in names}
    for owner_name in sorted(owners):
        owner = model.get_submodule(owner_name)
        reset = getattr(owner, "reset_parameters", None)
        if not callable(reset):
            message = (
                f"{owner_name or 'the model'} ({type(owner).__name__}) has "
                "parameters the checkpoint does not hold and no reset_parameters() "
                "to initialise them; load a checkpoint that holds them."
            )
            raise StateDictError(message)
        for key, parameter in owner.named_parameters(recurse=False):
            if parameter.is_meta:
                empty = torch.empty_like(parameter, device="cpu")
                setattr(owner, key, nn.Parameter(empty, parameter.requires_grad))
        reset()
        logger.debug("initialised %s from scratch", owner_name or "the model")


def _assign(
    model: nn.Module,
    targets: Mapping[str, torch.Tensor],
    tensors: Mapping[str, torch.Tensor],
) -> None:
    adopted, copied = {}, {}
    for name, tensor in tensors.items():
        target = targets[name]
        if _needs_cast(tensor, target):
            tensor = tensor.to(target.dtype)
        if target.is_meta:
            adopted[name] = _aligned(tensor)
        else:
            copied[name] = tensor
    with torch.no_grad():
        if adopted:
            model.load_state_dict(adopted, strict=False, assign=True)
        if copied:
            model.load_state_dict(copied, strict=False)


def _aligned(tensor: torch.Tensor) -> torch.Tensor:
    """Return ``tensor``, or a copy of it when its data is not 64-byte aligned.

    CPU kernels take other code paths on unaligned memory, and results can
    differ in the last bits; a copy lands in aligned memory.
    """
    if tensor.device.type == "cpu" and tensor.data_ptr() % ALIGNMENT_BYTES:
        return tensor.clone()
    return tensor
