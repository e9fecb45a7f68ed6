"""Weights mapped from the cache are copy-on-write: training never writes back."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

import zooload


def test_training_in_place_leaves_the_cached_blob_intact(
    tmp_path: Path, served: Any, cache_dir: Path
) -> None:
    torch.manual_seed(0)
    source = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 1))
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    url = served.add("weights.pt", data) + f"#sha256={digest}"
    model = zooload.load_url(
        url,
        arch=lambda: torch.nn.Sequential(
            torch.nn.Linear(64, 64), torch.nn.Linear(64, 1)
        ),
        cache_dir=cache_dir,
    )
    before = model[0].weight.detach().clone()

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    model(torch.ones(8, 64)).pow(2).sum().backward()
    optimizer.step()

    assert not torch.equal(model[0].weight, before)
    blob = cache_dir / "blobs" / digest
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == digest
    reloaded = zooload.load_url(
        url,
        arch=lambda: torch.nn.Sequential(
            torch.nn.Linear(64, 64), torch.nn.Linear(64, 1)
        ),
        cache_dir=cache_dir,
    )
    assert torch.equal(reloaded[0].weight, before)
