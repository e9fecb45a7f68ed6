"""Map: rename, re-prefix and filter the keys of a state dict.

Rename rules are ordered ``(pattern, replacement)`` pairs of regular
expressions; for each key, the first rule whose pattern matches rewrites it
and the rest are skipped, so rule order reads as priority. Prefix changes
undo what wrappers add (``module.`` from DataParallel, ``_orig_mod.`` from
torch.compile, ``model.`` from Lightning); filters pick the names to load.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
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


KNOWN_PREFIXES = ("module.", "_orig_mod.", "model.")
"""Prefixes wrappers add: DataParallel/DDP, torch.compile, Lightning modules."""
_MAX_STACK = 3
NamePattern = str | re.Pattern[str]


@dataclass(frozen=True, slots=True)
class PrefixChange:
    """Remove ``strip`` from the start of checkpoint names, then prepend ``add``.

    Examples
    --------
    >>> change = PrefixChange(strip="module.", add="")
    >>> change.apply("module.fc.weight"), str(change)
    ('fc.weight', "stripped 'module.'")
    """

    strip: str
    add: str

    def apply(self, name: str) -> str:
        """Rename one checkpoint name; names without ``strip`` only get ``add``."""
        return self.add + name.removeprefix(self.strip)

    def __str__(self) -> str:
        if self.strip and self.add:
            return f"replaced {self.strip!r} by {self.add!r}"
        return f"stripped {self.strip!r}" if self.strip else f"added {self.add!r}"


def shared_prefixes(names: Iterable[str]) -> list[str]:
    """Prefixes of whole dotted components that every name shares, shortest first.

    Examples
    --------
    >>> shared_prefixes(["module._orig_mod.a.w", "module._orig_mod.b.w"])
    ['module.', 'module._orig_mod.']
    >>> shared_prefixes(["a.w", "b.w"])
    []
    """
    split = [name.split(".") for name in names]
    prefixes: list[str] = []
    for depth in range(_MAX_STACK):
        heads = {tuple(parts[: depth + 1]) for parts in split if len(parts) > depth + 1}
        if len(heads) != 1 or any(len(parts) <= depth + 1 for parts in split):
            break
        prefixes.append(".".join(heads.pop()) + ".")
    return prefixes


def _known_stacks(names: Iterable[str]) -> set[str]:
    """Stacks of known wrapper prefixes that start at least one name."""
    found: set[str] = set()
    for name in names:
        stack = ""
        for _ in range(_MAX_STACK):
            known = next(
                (p for p in KNOWN_PREFIXES if name.startswith(stack + p)), None
            )
            if known is None:
                break
            stack += known
            found.add(stack)
    return found


def detect_prefix_change(
    checkpoint_names: Collection[str], model_names: Collection[str]
) -> PrefixChange | None:
    """Find the prefix change that makes the most checkpoint names match.

    Candidates are the prefixes all names of one side share, and stacks of
    :data:`KNOWN_PREFIXES`: stripped from the checkpoint's names when they
    carry one, added to them when the model's names do. A change is returned
    only when it matches more names than no change at all; only the start of
    a name is ever touched.

    Examples
    --------
    >>> detect_prefix_change(["module.fc.weight"], ["fc.weight"])
    PrefixChange(strip='module.', add='')
    >>> detect_prefix_change(["fc.weight"], ["fc.weight"]) is None
    True
    """
    targets = set(model_names)
    strips = {"", *shared_prefixes(checkpoint_names), *_known_stacks(checkpoint_names)}
    adds = {"", *shared_prefixes(model_names), *_known_stacks(model_names)}
    best: tuple[int, int, PrefixChange | None] = (
        _score(checkpoint_names, targets),
        0,
        None,
    )
    changes = [PrefixChange(s, "") for s in sorted(strips) if s]
    changes += [PrefixChange("", a) for a in sorted(adds) if a]
    for change in changes:
        score = sum(change.apply(name) in targets for name in checkpoint_names)
        candidate = (score, -len(change.strip) - len(change.add), change)
        if candidate[:2] > best[:2]:
            best = candidate
    return best[2]


def _score(names: Iterable[str], targets: set[str]) -> int:
    return sum(name in targets for name in names)


def name_filter(
    include: NamePattern | Sequence[NamePattern] | None,
    exclude: NamePattern | Sequence[NamePattern] | None,
) -> Callable[[str], bool]:
    """Return a predicate: does a name pass ``include`` and escape ``exclude``?

    Strings are glob patterns matched against the whole name
    (``"conv*"``, ``"*.bias"``); compiled regexes are searched anywhere in it.

    Examples
    --------
    >>> keep = name_filter("conv*", exclude=re.compile(r"\\.bias$"))
    >>> keep("conv1.weight"), keep("conv1.bias"), keep("fc.weight")
    (True, False, False)
    """
    included = _patterns(include)
    excluded = _patterns(exclude)

    def passes(name: str) -> bool:
        if included and not any(_matches(p, name) for p in included):
            return False
        return not any(_matches(p, name) for p in excluded)

    return passes


def _patterns(
    patterns: NamePattern | Sequence[NamePattern] | None,
) -> list[NamePattern]:
    if patterns is None:
        return []
    if isinstance(patterns, (str, re.Pattern)):
        return [patterns]
    return list(patterns)


def _matches(pattern: NamePattern, name: str) -> bool:
    if isinstance(pattern, re.Pattern):
        return pattern.search(name) is not None
    return fnmatch.fnmatchcase(name, pattern)
