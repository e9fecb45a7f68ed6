"""What the command line shows of each result, as text fields and as JSON.

Each result of the public API (:class:`~zooload.LoadResult`,
:class:`~zooload.CheckpointInfo`, :class:`~zooload.compare.StateDictDiff`,
:class:`~zooload.CacheEntry`) has a function that turns it into labelled
text fields for people and one that turns it into plain JSON data for
scripts.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Mapping
from typing import Any

import torch

from zooload.cache_admin import CacheEntry, PruneResult
from zooload.cli_format import human_count, human_seconds, human_size, listing
from zooload.compare import StateDictDiff
from zooload.inspection import CheckpointInfo, FileInfo, TensorInfo
from zooload.loading import LoadReport
from zooload.manifest import Manifest
from zooload.pipeline import LoadResult
from zooload.report import collapse_names, collapse_renames

Fields = list[tuple[str, str]]
_SHORT_DIGEST = 12
_LABEL = 17  # where the entries of a listing start


def load_fields(result: LoadResult, source: str, arch: str | None) -> Fields:
    """Text fields for ``zooload load``."""
    model = result.model
    fields = [
        ("source", source),
        ("architecture", f"{_arch_name(result, arch)} -> {type(model).__name__}"),
        ("parameters", _count(_parameter_count(model))),
        ("dtype", ", ".join(_model_dtypes(model))),
        ("device", ", ".join(_model_devices(model))),
        ("example check", _example_text(result)),
        ("cached at", str(result.path)),
        ("time", _times_text(result.seconds)),
    ]
    report = str(result.report) if result.report else "TorchScript program"
    return [*fields, ("load report", report)]


def load_json(result: LoadResult, source: str, arch: str | None) -> dict[str, Any]:
    """JSON data for ``zooload load --json``."""
    example = result.example
    return {
        "source": source,
        "architecture": _arch_name(result, arch),
        "class": type(result.model).__name__,
        "parameters": _parameter_count(result.model),
        "dtypes": _model_dtypes(result.model),
        "devices": _model_devices(result.model),
        "report": report_json(result.report) if result.report else None,
        "example": (
            {
                "outputs": example.outputs,
                "largest_difference": example.largest_difference,
            }
            if example
            else None
        ),
        "path": str(result.path),
        "seconds": dict(result.seconds),
    }


def report_json(report: LoadReport) -> dict[str, Any]:
    """A load report as JSON data; shapes become lists."""
    return {
        "ok": report.ok,
        "loaded": list(report.loaded),
        "missing": list(report.missing),
        "unexpected": list(report.unexpected),
        "mismatched": _pairs_json(report.mismatched),
        "skipped": list(report.skipped),
        "renamed": dict(report.renamed),
        "cast": _pairs_json(report.cast),
        "prefix": report.prefix,
    }


def _arch_name(result: LoadResult, arch: str | None) -> str:
    spec = result.manifest.architecture if result.manifest else None
    if arch:
        return arch
    if spec is not None:
        return spec.name
    return "TorchScript" if result.report is None else "(given)"


def _parameter_count(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def _model_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


def _model_dtypes(model: torch.nn.Module) -> list[str]:
    return sorted({_dtype(t.dtype) for t in _model_tensors(model)})


def _model_devices(model: torch.nn.Module) -> list[str]:
    return sorted({str(t.device) for t in _model_tensors(model)})


def _example_text(result: LoadResult) -> str:
    if result.example is None:
        return "not run"
    difference = f"{result.example.largest_difference:.3g}"
    return f"passed, {result.example.outputs} outputs, largest difference {difference}"


def _times_text(seconds: Mapping[str, float]) -> str:
    stages = ", ".join(f"{stage} {human_seconds(s)}" for stage, s in seconds.items())
    return f"{stages} (total {human_seconds(sum(seconds.values()))})"


def inspect_fields(info: CheckpointInfo) -> Fields:
    """Text fields for ``zooload inspect``: the summary, then each file."""
    sizes = ", ".join(
        f"{dtype} {human_size(size)}" for dtype, size in info.bytes_per_dtype.items()
    )
    fields = [
        ("source", info.source),
        ("tensors", str(len(info.tensors))),
        ("parameters", _count(info.parameters)),
        ("bytes", sizes or "none"),
    ]
    if info.manifest is not None:
        fields.extend(_manifest_fields(info.manifest))
    for file in info.files:
        fields.extend(_file_fields(file))
    return fields


def _manifest_fields(manifest: Manifest) -> Fields:
    spec = manifest.architecture
    arch = "none" if spec is None else spec.name
    if spec is not None and spec.kwargs:
        arch += f" {json.dumps(spec.kwargs)}"
    fields = [("manifest", manifest.name), ("architecture", arch)]
    if manifest.examples is not None:
        fields.append(("examples", manifest.examples.path))
    if manifest.rename:
        rules = [f"{r.pattern!r} -> {r.replacement!r}" for r in manifest.rename]
        fields.append(("rename", "\n".join(rules)))
    metadata = manifest.metadata.model_dump(exclude_none=True)
    fields.extend((f"  {key}", str(value)) for key, value in metadata.items())
    return fields


def _file_fields(file: FileInfo) -> Fields:
    fields = [("file", f"{file.path.name} ({file.format})")]
    if file.weights_key:
        structure = "\n".join(f"  {line}" for line in file.structure)
        fields.append(("weights", f"under key {file.weights_key!r} of:\n{structure}"))
    if file.candidates:
        fields.append(("weights", file.choice))
        fields.append(("structure", "\n".join(file.structure)))
    fields.extend((f"  {k}", v) for k, v in sorted(file.metadata.items()))
    return fields


def inspect_json(info: CheckpointInfo) -> dict[str, Any]:
    """JSON data for ``zooload inspect --json``."""
    manifest = info.manifest
    return {
        "source": info.source,
        "tensors": len(info.tensors),
        "parameters": info.parameters,
        "bytes_per_dtype": info.bytes_per_dtype,
        "manifest": manifest.model_dump(mode="json") if manifest else None,
        "files": [
            {
                "path": str(file.path),
                "format": file.format,
                "weights_key": file.weights_key,
                "candidates": [
                    {"key": key, "tensors": count}
                    for key, count in zip(
                        file.candidates, file.candidate_tensors, strict=True
                    )
                ],
                "structure": list(file.structure),
                "metadata": dict(file.metadata),
                "tensors": [_tensor_json(tensor) for tensor in file.tensors],
            }
            for file in info.files
        ],
    }


def _tensor_json(tensor: TensorInfo) -> dict[str, Any]:
    return {**dataclasses.asdict(tensor), "shape": list(tensor.shape)}


def tensor_rows(info: CheckpointInfo) -> list[list[str]]:
    """Rows of the ``inspect --tensors`` table: name, shape, dtype, bytes."""
    return [
        [t.name, str(list(t.shape)), t.dtype, human_size(t.nbytes)]
        for t in info.tensors
    ]


def diff_text(diff: StateDictDiff, a: str, b: str) -> str:
    """The sections of ``zooload diff`` for people."""
    sections = [
        f"{'a':<{_LABEL}}{a}",
        f"{'b':<{_LABEL}}{b}",
        listing("prefix", [diff.prefix]) if diff.prefix else "",
        f"{'matched':<10} {len(diff.matched):>4}",
        listing("only in a", collapse_names(diff.only_a), count=len(diff.only_a)),
        listing("only in b", collapse_names(diff.only_b), count=len(diff.only_b)),
        listing("shapes", _pair_lines(diff.shapes, "a", "b")),
        listing(
            "dtypes", [f"{n}: a {x} vs b {y}" for n, (x, y) in diff.dtypes.items()]
        ),
        listing("renames", collapse_renames(diff.renames), count=len(diff.renames)),
        f"{'result':<{_LABEL}}"
        + ("compatible" if diff.compatible else "not compatible"),
    ]
    return "\n".join(section for section in sections if section)


def diff_json(diff: StateDictDiff, a: str, b: str) -> dict[str, Any]:
    """JSON data for ``zooload diff --json``."""
    return {
        "a": a,
        "b": b,
        "compatible": diff.compatible,
        "prefix": diff.prefix,
        "matched": len(diff.matched),
        "only_in_a": list(diff.only_a),
        "only_in_b": list(diff.only_b),
        "shapes": _pairs_json(diff.shapes),
        "dtypes": _pairs_json(diff.dtypes),
        "renames": dict(diff.renames),
    }


def _pair_lines(
    pairs: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]], left: str, right: str
) -> list[str]:
    return [
        f"{n}: {left} {list(x)} vs {right} {list(y)}" for n, (x, y) in pairs.items()
    ]


def _pairs_json(pairs: Mapping[str, tuple[Any, Any]]) -> dict[str, list[Any]]:
    return {
        name: [list(x) if isinstance(x, tuple) else x for x in pair]
        for name, pair in pairs.items()
    }


def entry_row(entry: CacheEntry) -> list[str]:
    """One row of ``zooload cache ls``: digest, size, last use, URLs."""
    return [
        entry.sha256[:_SHORT_DIGEST],
        human_size(entry.size),
        _when(entry.last_used),
        ", ".join(entry.urls) or "(pinned only)",
    ]


def entry_json(entry: CacheEntry) -> dict[str, Any]:
    """A cache entry as JSON data: its attributes, the path as a string."""
    return {
        **dataclasses.asdict(entry),
        "urls": list(entry.urls),
        "path": str(entry.path),
    }


def prune_json(result: PruneResult) -> dict[str, Any]:
    """JSON data for ``zooload cache prune --json``."""
    return {
        "removed": [entry_json(e) for e in result.removed],
        "skipped": [entry_json(e) for e in result.skipped],
        "freed": result.freed,
        "size": result.size,
    }


def _when(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M")


def _count(count: int) -> str:
    return f"{human_count(count)} ({count:,})" if count >= 1000 else str(count)


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
