"""Unwrap: find the weights inside a training checkpoint.

Training code saves more than weights: ``{"epoch": 3, "model": {...},
"optimizer": {...}}``, Lightning's ``{"state_dict": {...}, "hyper_parameters":
{...}}``, EMA copies beside the raw weights. :func:`find_weights` searches the
nested structure for mappings of names to tensors, skipping the subtrees that
hold book-keeping (optimiser and scheduler state, hyper-parameters), and
:func:`unwrap` returns the one that holds the weights, or says which ones
compete.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from zooload.errors import CheckpointError, FormatError

logger = logging.getLogger(__name__)

MAX_DEPTH = 4
BOOKKEEPING_KEYS = frozenset(
    {
        "optimizer",
        "optimizers",
        "optimizer_states",
        "optimizer_state",
        "optimizer_state_dict",
        "optim",
        "scheduler",
        "lr_scheduler",
        "lr_schedulers",
        "scaler",
        "grad_scaler",
        "hyper_parameters",
        "hparams",
        "args",
        "config",
        "callbacks",
        "loops",
        "rng_state",
    }
)
"""Keys whose subtrees are never taken for weights, at any depth."""


@dataclass(frozen=True, slots=True)
class Unwrapped:
    """The weights of a checkpoint and the dotted key path they were under.

    ``key`` is ``""`` when the checkpoint is the state dict itself.
    """

    tensors: dict[str, torch.Tensor]
    key: str


def find_weights(content: Any) -> list[str]:
    """Return the dotted key paths of every mapping of names to tensors.

    The search goes at most :data:`MAX_DEPTH` levels deep and skips
    :data:`BOOKKEEPING_KEYS`. A mapping found is not searched further.

    Examples
    --------
    >>> find_weights({"epoch": 3, "model": {"w": torch.ones(1)},
    ...               "optimizer": {"state": {}, "param_groups": []}})
    ['model']
    >>> find_weights({"w": torch.ones(1)})
    ['']
    """
    if _is_state_dict(content):
        return [""]
    if not isinstance(content, Mapping) or not content:
        return []
    return _search(content, prefix="", depth=1)


def _search(content: Mapping[Any, Any], *, prefix: str, depth: int) -> list[str]:
    found: list[str] = []
    for key, value in content.items():
        if not isinstance(key, str) or key in BOOKKEEPING_KEYS:
            continue
        path = f"{prefix}{key}"
        if _is_state_dict(value):
            found.append(path)
        elif isinstance(value, Mapping) and depth < MAX_DEPTH:
            found.extend(_search(value, prefix=f"{path}.", depth=depth + 1))
    return found


def _is_state_dict(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(
            isinstance(key, str) and isinstance(item, torch.Tensor)
            for key, item in value.items()
        )
    )


def unwrap(
    content: Any, *, key: str | None = None, source: str = "checkpoint"
) -> Unwrapped:
    """Return the weights of a checkpoint, unwrapping a training checkpoint.

    Parameters
    ----------
    content
        What the checkpoint file holds.
    key
        A dotted key path that holds the weights (``"model"``,
        ``"ema.module"``); found automatically when omitted.
    source
        What to call the checkpoint in messages and logs.

    Returns
    -------
    Unwrapped

    Raises
    ------
    CheckpointError
        When several mappings could be the weights (the message lists them
        and says to pass ``key=``), or ``key`` does not lead to weights.
    FormatError
        When nothing in the checkpoint is a mapping of names to tensors.

    Examples
    --------
    >>> result = unwrap({"epoch": 3, "state_dict": {"w": torch.ones(1)}})
    >>> result.key, list(result.tensors)
    ('state_dict', ['w'])
    """
    if key is not None:
        return Unwrapped(_follow(content, key, source), key)
    candidates = find_weights(content)
    if len(candidates) == 1:
        chosen = candidates[0]
        if chosen:
            logger.info("%s: weights found under key %r", source, chosen)
        return Unwrapped(dict(_follow(content, chosen, source)), chosen)
    if not candidates:
        seen = _shape_of(content)
        hint = (
            "Check that this is a model checkpoint, or pass key= to pick the weights."
        )
        raise FormatError(source, "a checkpoint holding weights", seen, hint)
    listed = ", ".join(
        f"{c!r} ({len(_follow(content, c, source))} tensors)" for c in candidates
    )
    message = (
        f"{source} holds several sets of weights: {listed}. Pass key= with the "
        f"one to load, for example key={candidates[0]!r}."
    )
    raise CheckpointError(message)


def _follow(content: Any, key: str, source: str) -> dict[str, torch.Tensor]:
    node = content
    for part in key.split(".") if key else []:
        if not isinstance(node, Mapping) or part not in node:
            available = (
                sorted(str(k) for k in node) if isinstance(node, Mapping) else []
            )
            message = (
                f"{source} has no entry {key!r} (stopped at {part!r}; keys there: "
                f"{', '.join(available[:12]) or 'none'}). Pick one of the keys listed."
            )
            raise CheckpointError(message)
        node = node[part]
    if not _is_state_dict(node):
        message = (
            f"{source}[{key!r}] is {_shape_of(node)}, not a mapping of names to "
            "tensors. Pick a key that holds the weights."
        )
        raise CheckpointError(message)
    return dict(node)


def _shape_of(value: Any) -> str:
    if isinstance(value, Mapping):
        keys = ", ".join(str(k) for k in list(value)[:8])
        return f"a mapping with keys [{keys}] but no mapping of names to tensors"
    name = type(value).__name__
    article = "an" if name[:1].lower() in "aeiou" else "a"
    return f"{article} {name}"


def describe_structure(content: Any, *, depth: int = 0, limit: int = 3) -> list[str]:
    """Summarise a checkpoint's nested structure, one line per entry.

    Mappings of tensors are shown as one line with their tensor count.

    Examples
    --------
    >>> describe_structure({"epoch": 3, "model": {"w": torch.ones(2)}})
    ['epoch: int', 'model: 1 tensors']
    """
    if not isinstance(content, Mapping):
        return [type(content).__name__]
    lines = []
    for key, value in content.items():
        indent = "  " * depth
        if _is_state_dict(value):
            lines.append(f"{indent}{key}: {len(value)} tensors")
        elif isinstance(value, Mapping) and depth + 1 < limit:
            lines.append(f"{indent}{key}:")
            lines.extend(describe_structure(value, depth=depth + 1, limit=limit))
        elif isinstance(value, Mapping):
            lines.append(f"{indent}{key}: mapping of {len(value)} entries")
        elif isinstance(value, (list, tuple)):
            lines.append(f"{indent}{key}: {type(value).__name__} of {len(value)}")
        else:
            lines.append(f"{indent}{key}: {type(value).__name__}")
    return lines
