"""Cache management: list, size, remove, prune (LRU, locks) and verify."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

import zooload
from support.builders import make_tar, partial_files, sha256_of
from zooload.cache import RELEASED, Cache


def _cache_three(served, cache_dir: Path) -> list[tuple[str, bytes]]:
    """Three cached downloads, used at times 1000, 2000 and 3000."""
    items = []
    for number in range(3):
        data = os.urandom(10_000 * (number + 1))
        url = served.add(f"m{number}.bin", data)
        path = zooload.fetch(url, cache_dir=cache_dir)
        os.utime(path, (1000.0 * (number + 1), 1000.0 * (number + 1)))
        items.append((url, data))
    return items


def test_cache_entries_list_url_size_hash_and_last_use(served, cache_dir: Path) -> None:
    items = _cache_three(served, cache_dir)

    entries = zooload.cache_entries(cache_dir=cache_dir)

    assert [e.urls for e in entries] == [(url,) for url, _ in reversed(items)]
    assert [e.sha256 for e in entries] == [sha256_of(d) for _, d in reversed(items)]
    assert [e.size for e in entries] == [len(d) for _, d in reversed(items)]
    assert [e.last_used for e in entries] == [3000.0, 2000.0, 1000.0]
    assert entries[0].path.read_bytes() == items[2][1]


def test_cache_entries_count_extracted_trees_and_fetches_renew_last_use(
    served, cache_dir: Path
) -> None:
    archive = make_tar({"a.bin": b"x" * 5000})
    url = served.add("a.tar.gz", archive)
    zooload.fetch(url, cache_dir=cache_dir)
    (entry,) = zooload.cache_entries(cache_dir=cache_dir)
    os.utime(entry.path, (1.0, 1.0))

    zooload.fetch(url, cache_dir=cache_dir)

    (again,) = zooload.cache_entries(cache_dir=cache_dir)
    assert entry.size == len(archive) + 5000
    assert again.last_used > 1.0


def test_cache_size_counts_every_byte(served, cache_dir: Path) -> None:
    items = _cache_three(served, cache_dir)
    total = zooload.cache_size(cache_dir=cache_dir)
    blobs = sum(len(data) for _, data in items)
    records = sum(p.stat().st_size for p in (cache_dir / "refs").iterdir())
    assert total == blobs + records


@pytest.mark.parametrize("by", ["url", "sha256", "prefixed"])
def test_cache_remove_by_url_or_hash(by: str, served, cache_dir: Path) -> None:
    items = _cache_three(served, cache_dir)
    url, data = items[1]
    target = {
        "url": url + f"#sha256={sha256_of(data)}",
        "sha256": sha256_of(data).upper(),
        "prefixed": "sha256:" + sha256_of(data),
    }[by]

    (removed,) = zooload.remove_from_cache(target, cache_dir=cache_dir)

    assert removed.sha256 == sha256_of(data)
    left = [e.sha256 for e in zooload.cache_entries(cache_dir=cache_dir)]
    assert sha256_of(data) not in left
    assert len(left) == 2
    assert Cache.open(cache_dir).read_record(url) is None


def test_cache_remove_what_is_not_cached_does_nothing(cache_dir: Path) -> None:
    assert zooload.remove_from_cache("https://a/m.bin", cache_dir=cache_dir) == ()


def test_cache_remove_refuses_an_entry_in_use(served, cache_dir: Path) -> None:
    url, _ = _cache_three(served, cache_dir)[0]
    with (
        Cache.open(cache_dir).locked(url),
        pytest.raises(zooload.CacheError, match="another process is using it"),
    ):
        zooload.remove_from_cache(url, cache_dir=cache_dir)
    assert len(zooload.cache_entries(cache_dir=cache_dir)) == 3


def test_cache_prune_removes_least_recently_used_first(served, cache_dir: Path) -> None:
    items = _cache_three(served, cache_dir)
    budget = zooload.cache_size(cache_dir=cache_dir) - len(items[0][1])

    result = zooload.prune_cache(budget, cache_dir=cache_dir)

    assert [e.sha256 for e in result.removed] == [sha256_of(items[0][1])]
    assert result.size <= budget
    assert result.freed >= len(items[0][1])
    assert zooload.cache_size(cache_dir=cache_dir) == result.size
    assert len(zooload.cache_entries(cache_dir=cache_dir)) == 2


def test_cache_prune_never_removes_a_locked_entry(served, cache_dir: Path) -> None:
    items = _cache_three(served, cache_dir)
    oldest_url, oldest = items[0]

    with Cache.open(cache_dir).locked(oldest_url):
        result = zooload.prune_cache(0, cache_dir=cache_dir)

    assert [e.sha256 for e in result.skipped] == [sha256_of(oldest)]
    assert [e.sha256 for e in zooload.cache_entries(cache_dir=cache_dir)] == [
        sha256_of(oldest)
    ]


def test_cache_prune_drops_abandoned_partials_but_not_live_ones(
    cache_dir: Path,
) -> None:
    cache = Cache.open(cache_dir)
    live = cache.new_partial_path("download-abc")
    released = cache.released_partial_path("download-abc")
    dead = cache.root / "partial" / f"download-abc-{'0' * 8}-1-ff"
    for path in (live, released, dead):
        path.write_bytes(b"x" * 100)
    os.utime(dead, (1.0, 1.0))  # old enough to be abandoned by any test

    result = zooload.prune_cache(10**9, cache_dir=cache_dir)

    assert partial_files(cache_dir) == [live.name]
    assert result.freed == 200
    assert RELEASED in released.name


def test_cache_verify_reports_and_removes_corrupt_blobs(
    served, cache_dir: Path
) -> None:
    items = _cache_three(served, cache_dir)
    damaged = cache_dir / "blobs" / sha256_of(items[1][1])
    damaged.write_bytes(b"bit rot")

    (report,) = zooload.verify_cache(cache_dir=cache_dir)
    assert report.entry.sha256 == damaged.name
    assert report.actual == sha256_of(b"bit rot")
    assert not report.removed

    (fixed,) = zooload.verify_cache(cache_dir=cache_dir, remove_corrupt=True)
    assert fixed.removed
    assert zooload.verify_cache(cache_dir=cache_dir) == ()
    # The next fetch downloads the file again.
    url, data = items[1]
    assert zooload.fetch(url, cache_dir=cache_dir).read_bytes() == data


def test_verify_cache_finds_a_tree_altered_after_extraction(
    tmp_path: Path, served: Any
) -> None:
    packed = zooload.pack(
        torch.nn.Linear(2, 1), tmp_path / "linear.tar.gz", arch="admin-linear"
    )
    url = served.add("linear.tar.gz", packed.read_bytes())
    cache_dir = tmp_path / "cache"
    tree = zooload.fetch(url, cache_dir=cache_dir)
    assert zooload.verify_cache(cache_dir=cache_dir) == ()

    (tree / "weights.safetensors").write_bytes(b"edited")
    corrupt = zooload.verify_cache(cache_dir=cache_dir)

    assert len(corrupt) == 1
    assert corrupt[0].actual == corrupt[0].entry.sha256
    assert corrupt[0].tree_problem.startswith(
        "weights.safetensors no longer matches the sha256 its zooload.json lists"
    )
    assert corrupt[0].tree_problem.endswith(
        "the extracted copy was changed after extraction; remove_corrupt=True "
        "removes it and the next load extracts it again from the verified blob"
    )
    assert "re-pack" not in corrupt[0].tree_problem
    assert not corrupt[0].removed
    removed = zooload.verify_cache(cache_dir=cache_dir, remove_corrupt=True)
    assert removed[0].removed
    assert not tree.exists()
    assert (
        zooload.fetch(url, cache_dir=cache_dir) / "weights.safetensors"
    ).stat().st_size > 6
    assert zooload.verify_cache(cache_dir=cache_dir) == ()


def test_load_with_full_verification_rebuilds_an_altered_tree(
    tmp_path: Path, served: Any, caplog: pytest.LogCaptureFixture
) -> None:
    packed = zooload.pack(
        torch.nn.Linear(2, 1), tmp_path / "linear.tar.gz", arch="admin-linear-2"
    )
    data = packed.read_bytes()
    url = served.add("linear.tar.gz", data) + f"#sha256={sha256_of(data)}"
    cache_dir = tmp_path / "cache"
    tree = zooload.fetch(url, cache_dir=cache_dir)
    original = (tree / "weights.safetensors").read_bytes()
    (tree / "weights.safetensors").write_bytes(b"edited")

    assert zooload.fetch(url, cache_dir=cache_dir) == tree
    assert (tree / "weights.safetensors").read_bytes() == b"edited"

    rebuilt = zooload.fetch(url, cache_dir=cache_dir, verify="full")

    assert (rebuilt / "weights.safetensors").read_bytes() == original
    assert "was altered; extracting again" in caplog.text
