"""Map: rename the keys of a state dict before they meet the model.

Rules are ordered ``(pattern, replacement)`` pairs of regular expressions;
for each key, the first rule whose pattern matches rewrites it and the rest
are skipped, so rule order reads as priority.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from zooload.errors import ConfigError, StateDictError

RenameRules = Iterable[tuple[str | re.Pattern[str], str]]


@dataclass(frozen=True, slots=True)
class Renamed:
    """A state dict after renaming, and which old name became which new one."""

    tensors: dict[str, torch.Tensor]
    renamed: dict[str, str]


def compile_rules(rules: RenameRules | None) -> list[tuple[re.Pattern[str], str]]:
    """Compile rename rules, raising :class:`ConfigError` for a bad pattern.

    Examples
    --------
    >>> [pattern.pattern for pattern, _ in compile_rules([("^a\\\\.", "b.")])]
    ['^a\\\\.']
    """
    compiled = []
    for pattern, replacement in rules or ():
        try:
            compiled.append((re.compile(pattern), replacement))
        except re.error as err:
            message = f"rename pattern {pattern!r} is not a valid regex: {err}."
            raise ConfigError(message) from err
    return compiled


def apply_renames(
    tensors: Mapping[str, torch.Tensor], rules: RenameRules | None
) -> Renamed:
    """Rename the keys of ``tensors`` with the first matching rule each.

    Parameters
    ----------
    tensors
        A state dict.
    rules
        Ordered ``(pattern, replacement)`` pairs; ``re.sub`` semantics, so
        the replacement may use groups (``\\1``).

    Returns
    -------
    Renamed
        The new mapping and ``{old: new}`` for every key that changed.

    Raises
    ------
    StateDictError
        When two keys would get the same name.

    Examples
    --------
    >>> result = apply_renames({"module.fc.weight": torch.ones(1)},
    ...                        [(r"^module\\.", "")])
    >>> list(result.tensors), result.renamed
    (['fc.weight'], {'module.fc.weight': 'fc.weight'})
    """
    compiled = compile_rules(rules)
    result: dict[str, torch.Tensor] = {}
    renamed: dict[str, str] = {}
    for name, tensor in tensors.items():
        new_name = _rename_one(name, compiled)
        if new_name in result:
            message = (
                f"rename rules map two keys to {new_name!r} (one is {name!r}); "
                "make the patterns more specific."
            )
            raise StateDictError(message)
        result[new_name] = tensor
        if new_name != name:
            renamed[name] = new_name
    return Renamed(result, renamed)


def _rename_one(name: str, compiled: list[tuple[re.Pattern[str], str]]) -> str:
    for pattern, replacement in compiled:
        if pattern.search(name):
            return pattern.sub(replacement, name)
    return name
