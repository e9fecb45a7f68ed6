"""Load: put a state dict into a module and report exactly what happened.

:func:`load_into` works in two phases. First it maps the names (rename
rules, prefix change, filters) and matches them against the model, names and
shapes, without touching the model. Only when the load may go ahead does it
write: parameters still on the meta device (see
:func:`zooload.architectures.build_without_parameters`) adopt the loaded
tensors, and materialised ones are copied into, so optimisers that hold them
stay valid. A refused load leaves every tensor of the model as it was.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from zooload.errors import ConfigError, IncompatibleStateDictError, StateDictError
from zooload.mapping import (
    NamePattern,
    PrefixChange,
    RenameRules,
    apply_renames,
    detect_prefix_change,
    name_filter,
)
from zooload.report import render_report, suggest_fixes

logger = logging.getLogger(__name__)

ALIGNMENT_BYTES = 64
AUTO = "auto"
Shape = tuple[int, ...]
Patterns = NamePattern | Sequence[NamePattern] | None


class ShapeMismatchPolicy(str, enum.Enum):
    """What to do with a tensor whose shape differs from the model's."""

    ERROR = "error"
    SKIP = "skip"


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
        State-dict names (after mapping) the model does not have.
    mismatched
        ``name -> (checkpoint shape, model shape)`` for names whose shapes differ.
    skipped
        State-dict names a filter (``include``/``exclude``) left out.
    renamed
        ``old -> new`` for every state-dict key that rename rules or the
        prefix change altered.
    cast
        ``name -> (checkpoint dtype, model dtype)`` for converted tensors.
    prefix
        The prefix change applied (``"stripped 'module.'"``), or ``""``.
    """

    loaded: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: Mapping[str, tuple[Shape, Shape]] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()
    renamed: Mapping[str, str] = field(default_factory=dict)
    cast: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    prefix: str = ""

    @property
    def ok(self) -> bool:
        """Whether every model tensor was loaded and nothing was left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        return render_report(self)


@dataclass(frozen=True, slots=True)
class _Mapped:
    """Checkpoint tensors under their final names, and how they got there."""

    tensors: dict[str, torch.Tensor]
    renamed: dict[str, str]
    skipped: tuple[str, ...]
    prefix: PrefixChange | None


def load_into(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    include: Patterns = None,
    exclude: Patterns = None,
    rename: RenameRules | None = None,
    strip_prefix: str | None = AUTO,
    on_shape_mismatch: ShapeMismatchPolicy | str = ShapeMismatchPolicy.ERROR,
) -> LoadReport:
    """Load ``state_dict`` into ``model`` and return the report.

    Parameters
    ----------
    model
        The module to fill; parameters may be on the meta device.
    state_dict
        Names to tensors.
    strict
        Refuse any missing or unexpected tensor (the default). When false,
        what fits is loaded and the rest is reported.
    include, exclude
        Glob patterns (``"conv*"``) or compiled regexes over names; only
        names that match ``include`` and not ``exclude`` are loaded. Names
        filtered out of the checkpoint are listed as ``skipped``; model
        names filtered out keep their values and are not ``missing``.
    rename
        Ordered ``(pattern, replacement)`` rules applied to the checkpoint's
        names first (see :func:`zooload.mapping.apply_renames`).
    strip_prefix
        ``"auto"`` finds a prefix change (``module.``, ``_orig_mod.``,
        ``model.``, or one prefix all names share) that makes more names
        match, and applies it; a string strips exactly that prefix; ``None``
        changes nothing.
    on_shape_mismatch
        ``"error"`` refuses the load if any shape differs; ``"skip"`` keeps
        the model's tensor (for a new classifier head) and reports both shapes.

    Returns
    -------
    LoadReport

    Raises
    ------
    IncompatibleStateDictError
        When anything does not fit under ``strict``, or a shape differs under
        ``on_shape_mismatch="error"``; the model is untouched, the error holds
        the report and a suggestion.
    StateDictError
        When nothing at all matches, or a missing parameter of a meta-built
        model cannot be initialised.
    ConfigError
        For an unknown ``on_shape_mismatch`` value or a bad rename pattern.

    Examples
    --------
    >>> model = torch.nn.Linear(2, 1)
    >>> weights = {"module.weight": torch.ones(1, 2), "module.bias": torch.zeros(1)}
    >>> report = load_into(model, weights)
    >>> report.ok, report.prefix, model.weight.tolist()
    (True, "stripped 'module.'", [[1.0, 1.0]])
    """
    plan = _plan(
        model,
        state_dict,
        _Choices(strict, include, exclude, rename, strip_prefix, on_shape_mismatch),
    )
    report, targets, mapped = plan.report, plan.targets, plan.mapped
    _materialise(
        model, [n for n in targets if targets[n].is_meta and n not in report.loaded]
    )
    _assign(model, targets, {name: mapped.tensors[name] for name in report.loaded})
    if not report.ok:
        logger.warning("partial load into %s:\n%s", type(model).__name__, report)
    logger.debug("loaded %d tensors into %s", len(report.loaded), type(model).__name__)
    return report


@dataclass(frozen=True, slots=True)
class _Choices:
    """The options of :func:`load_into`, travelling together."""

    strict: bool
    include: Patterns
    exclude: Patterns
    rename: RenameRules | None
    strip_prefix: str | None
    on_shape_mismatch: ShapeMismatchPolicy | str


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a load would do: the report, the model's tensors, the mapped names."""

    report: LoadReport
    targets: Mapping[str, torch.Tensor]
    mapped: _Mapped


def _plan(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], choices: _Choices
) -> _Plan:
    """Match names and shapes, raising when the load may not go ahead."""
    policy = _policy(choices.on_shape_mismatch)
    _check_tensors(state_dict)
    targets = model.state_dict(keep_vars=True)
    keep = name_filter(choices.include, choices.exclude)
    mapped = _map_names(state_dict, choices.rename, choices.strip_prefix, targets, keep)
    report = _match({n: t for n, t in targets.items() if keep(n)}, mapped)
    _refuse_if_unfit(
        report, strict=choices.strict, policy=policy, targets=targets, mapped=mapped
    )
    return _Plan(report, targets, mapped)


def plan_load(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    rename: RenameRules | None = None,
    on_shape_mismatch: ShapeMismatchPolicy | str = ShapeMismatchPolicy.ERROR,
) -> LoadReport:
    """The report :func:`load_into` would give, without touching ``model``.

    Raises what :func:`load_into` raises when the load may not go ahead.

    Examples
    --------
    >>> model = torch.nn.Linear(2, 1)
    >>> plan_load(model, {"weight": torch.ones(1, 2)}, strict=False).missing
    ('bias',)
    >>> model.weight.sum().item() != 2.0
    True
    """
    choices = _Choices(strict, None, None, rename, AUTO, on_shape_mismatch)
    return _plan(model, state_dict, choices).report


def _check_tensors(state_dict: Mapping[str, torch.Tensor]) -> None:
    not_tensors = [
        f"{name!r} ({type(value).__name__})"
        for name, value in state_dict.items()
        if not isinstance(value, torch.Tensor)
    ]
    if not_tensors:
        message = (
            f"a state dict maps names to tensors, but these are not tensors: "
            f"{', '.join(not_tensors[:10])}. Pass only the weights (for a "
            "training checkpoint, zooload.load_state_dict unwraps them)."
        )
        raise StateDictError(message)


def _policy(value: ShapeMismatchPolicy | str) -> ShapeMismatchPolicy:
    try:
        return ShapeMismatchPolicy(value)
    except ValueError as err:
        choices = ", ".join(repr(p.value) for p in ShapeMismatchPolicy)
        message = f"on_shape_mismatch must be one of {choices}, not {value!r}."
        raise ConfigError(message) from err


def _map_names(
    state_dict: Mapping[str, torch.Tensor],
    rename: RenameRules | None,
    strip_prefix: str | None,
    targets: Mapping[str, torch.Tensor],
    keep: Callable[[str], bool],
) -> _Mapped:
    renamed = apply_renames(state_dict, rename)
    change = _prefix_change(list(renamed.tensors), targets, strip_prefix)
    tensors, history = renamed.tensors, dict(renamed.renamed)
    if change is not None:
        # The optional group always matches at the start, so every name gets
        # the new prefix and only names that carry the old one lose it.
        rule = (
            "^(?:" + re.escape(change.strip) + ")?",
            change.add.replace("\\", r"\\"),
        )
        moved = apply_renames(tensors, [rule])
        original = {new: old for old, new in history.items()}
        for middle, final in moved.renamed.items():
            history[original.get(middle, middle)] = final
        tensors = moved.tensors
    kept = {name: tensor for name, tensor in tensors.items() if keep(name)}
    skipped = tuple(name for name in tensors if name not in kept)
    return _Mapped(kept, history, skipped, change)


def _prefix_change(
    names: list[str], targets: Mapping[str, torch.Tensor], strip_prefix: str | None
) -> PrefixChange | None:
    if strip_prefix is None or not names:
        return None
    if strip_prefix == AUTO:
        return detect_prefix_change(names, list(targets))
    if not any(name.startswith(strip_prefix) for name in names):
        logger.debug(
            "no checkpoint name starts with %r; nothing stripped", strip_prefix
        )
        return None
    return PrefixChange(strip=strip_prefix, add="")


def _match(targets: Mapping[str, torch.Tensor], mapped: _Mapped) -> LoadReport:
    loaded, missing = [], []
    mismatched: dict[str, tuple[Shape, Shape]] = {}
    cast: dict[str, tuple[str, str]] = {}
    for name, target in targets.items():
        tensor = mapped.tensors.get(name)
        if tensor is None:
            missing.append(name)
        elif tensor.shape != target.shape:
            mismatched[name] = (tuple(tensor.shape), tuple(target.shape))
        else:
            loaded.append(name)
            if _needs_cast(tensor, target):
                cast[name] = (_dtype_name(tensor.dtype), _dtype_name(target.dtype))
    return LoadReport(
        loaded=tuple(loaded),
        missing=tuple(missing),
        unexpected=tuple(name for name in mapped.tensors if name not in targets),
        mismatched=mismatched,
        skipped=mapped.skipped,
        renamed=mapped.renamed,
        cast=cast,
        prefix=str(mapped.prefix) if mapped.prefix else "",
    )


def _refuse_if_unfit(
    report: LoadReport,
    *,
    strict: bool,
    policy: ShapeMismatchPolicy,
    targets: Mapping[str, torch.Tensor],
    mapped: _Mapped,
) -> None:
    unfit = strict and bool(report.missing or report.unexpected)
    if unfit or (report.mismatched and policy is ShapeMismatchPolicy.ERROR):
        hint = suggest_fixes(report, mapped.tensors, targets)
        raise IncompatibleStateDictError(report, hint)
    if mapped.tensors and not report.loaded and not report.mismatched:
        hint = suggest_fixes(report, mapped.tensors, targets)
        message = (
            f"none of the {len(mapped.tensors)} checkpoint tensors matches a "
            f"model tensor, so nothing was loaded:\n{report}\n{hint}"
        )
        raise StateDictError(message)


def _needs_cast(tensor: torch.Tensor, target: torch.Tensor) -> bool:
    return tensor.dtype != target.dtype and target.is_floating_point()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _materialise(model: nn.Module, names: list[str]) -> None:
    """Allocate and initialise meta parameters that will not be loaded."""
    owners = {name.rpartition(".")[0] for name in names}
    for owner_name in sorted(owners):
        owner = model.get_submodule(owner_name)
        reset = getattr(owner, "reset_parameters", None)
        if not callable(reset):
            message = (
                f"{owner_name or 'the model'} ({type(owner).__name__}) has "
                "parameters the checkpoint does not provide and no "
                "reset_parameters() to initialise them; load a checkpoint that "
                "holds them, or build the model yourself and use load_into."
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
