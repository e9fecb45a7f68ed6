"""Compare: which names, shapes and dtypes two state dicts share.

:func:`diff_state_dicts` answers "why does this checkpoint not fit that
model?" before anything is loaded. It applies the prefix change that
:func:`zooload.load_into` would apply (see :mod:`zooload.mapping`), then lists
what is left over on each side, and proposes a rename for each leftover name
that has a same-shaped partner on the other side. Tensors on the meta device
are enough: only names, shapes and dtypes are compared.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from zooload.mapping import detect_prefix_change

Shape = tuple[int, ...]
_RENAME_CUTOFF = 0.3


@dataclass(frozen=True, slots=True)
class StateDictDiff:
    """How state dict ``a`` differs from state dict ``b``.

    Attributes
    ----------
    matched
        Names both sides have once ``prefix`` is applied to ``a``'s names
        (as ``b`` spells them).
    only_a
        Names of ``a`` (as ``a`` spells them) that ``b`` lacks.
    only_b
        Names of ``b`` that ``a`` lacks.
    shapes
        ``name -> (shape in a, shape in b)`` for matched names whose shapes
        differ.
    dtypes
        ``name -> (dtype in a, dtype in b)`` for matched names whose dtypes
        differ; loading casts these, so they do not break compatibility.
    prefix
        The prefix change applied to ``a``'s names (``"stripped 'module.'"``),
        or ``""``.
    renames
        Suggested ``name in a -> name in b`` for leftover names with a
        same-shaped, similarly named partner.
    """

    matched: tuple[str, ...] = ()
    only_a: tuple[str, ...] = ()
    only_b: tuple[str, ...] = ()
    shapes: Mapping[str, tuple[Shape, Shape]] = field(default_factory=dict)
    dtypes: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    prefix: str = ""
    renames: Mapping[str, str] = field(default_factory=dict)

    @property
    def compatible(self) -> bool:
        """Whether ``a`` loads strictly into ``b``: same names and shapes."""
        return not (self.only_a or self.only_b or self.shapes)


def diff_state_dicts(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]
) -> StateDictDiff:
    """Compare the names, shapes and dtypes of two state dicts.

    ``a`` plays the checkpoint and ``b`` the model: the prefix change that
    makes most of ``a``'s names match ``b``'s (a ``module.`` that
    DataParallel added, for instance) is applied to ``a`` first, as
    :func:`zooload.load_into` would.

    Parameters
    ----------
    a
        The state dict to be loaded (a checkpoint's tensors).
    b
        The state dict to load into (a model's ``state_dict()``); tensors on
        the meta device do.

    Returns
    -------
    StateDictDiff
        ``compatible`` is true when ``a`` would load strictly into ``b``.

    Examples
    --------
    >>> a = {"module.fc.weight": torch.ones(2, 3), "module.fc.bias": torch.ones(2)}
    >>> b = {"fc.weight": torch.ones(2, 3), "fc.bias": torch.ones(2)}
    >>> result = diff_state_dicts(a, b)
    >>> result.compatible, result.prefix
    (True, "stripped 'module.'")
    >>> result = diff_state_dicts({"head.w": torch.ones(4)}, {"fc.w": torch.ones(4)})
    >>> result.compatible, result.renames
    (False, {'head.w': 'fc.w'})
    """
    change = detect_prefix_change(list(a), list(b))
    mapped = {change.apply(name) if change else name: name for name in a}
    matched = tuple(name for name in b if name in mapped)
    only_a = tuple(old for new, old in mapped.items() if new not in b)
    only_b = tuple(name for name in b if name not in mapped)
    shapes = {
        name: (_shape(a[mapped[name]]), _shape(b[name]))
        for name in matched
        if a[mapped[name]].shape != b[name].shape
    }
    dtypes = {
        name: (_dtype(a[mapped[name]]), _dtype(b[name]))
        for name in matched
        if a[mapped[name]].dtype != b[name].dtype
    }
    renames = _suggest_renames(only_a, only_b, a, b)
    prefix = str(change) if change else ""
    return StateDictDiff(matched, only_a, only_b, shapes, dtypes, prefix, renames)


def _suggest_renames(
    only_a: tuple[str, ...],
    only_b: tuple[str, ...],
    a: Mapping[str, torch.Tensor],
    b: Mapping[str, torch.Tensor],
) -> dict[str, str]:
    """Pair leftover names of ``a`` with same-shaped ones of ``b``.

    Once a name's module is paired (``enc.0.conv.weight -> conv1.weight``),
    its siblings follow it (``enc.0.conv.bias -> conv1.bias``); otherwise
    the closest spelling wins.
    """
    free = list(only_b)
    modules: dict[str, str] = {}
    renames: dict[str, str] = {}
    for name in only_a:
        same_shape = [other for other in free if b[other].shape == a[name].shape]
        partner = _sibling(name, modules, same_shape) or _closest(name, same_shape)
        if partner is not None:
            renames[name] = partner
            free.remove(partner)
            modules.setdefault(_module(name), _module(partner))
    return renames


def _sibling(
    name: str, modules: Mapping[str, str], candidates: list[str]
) -> str | None:
    module = modules.get(_module(name))
    leaf = name.rpartition(".")[2]
    sibling = f"{module}.{leaf}" if module else leaf
    return sibling if module is not None and sibling in candidates else None


def _closest(name: str, candidates: list[str]) -> str | None:
    found = difflib.get_close_matches(name, candidates, n=1, cutoff=_RENAME_CUTOFF)
    return found[0] if found else None


def _module(name: str) -> str:
    return name.rpartition(".")[0]


def _shape(tensor: torch.Tensor) -> Shape:
    return tuple(tensor.shape)


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")
