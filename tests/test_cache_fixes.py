"""Cache fixes: unwritable caches, trees of local archives, digest checks."""

from __future__ import annotations

import errno
import hashlib
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch

import zooload
from support.builders import make_tar, sha256_of
from zooload.cache import Cache

_WRITABLE_HINT = "point ZOOLOAD_CACHE or cache_dir= at a writable folder"


def _block_lock(cache_dir: Path, key: str) -> None:
    """Make the lock file of ``key`` unusable, even for root.

    Permission bits do not stop root, so a read-only folder (chmod 0o555)
    cannot be simulated when tests run as root; a folder where the lock file
    should be makes opening it fail with an OSError for every user.
    """
    name = hashlib.sha256(key.encode()).hexdigest()
    (Cache.open(cache_dir).root / "locks" / f"{name}.lock").mkdir()


def _unwritable(cache_dir: Path) -> str:
    """The start of the CacheError message for this cache, as a pattern."""
    root = re.escape(str(Cache.open(cache_dir).root))
    return rf"cannot take a lock in the zooload cache {root}: .*{_WRITABLE_HINT}"


def _packed(tmp_path: Path, name: str) -> Path:
    model = torch.nn.Linear(2, 1)
    return zooload.pack(model, tmp_path / f"{name}.tar", arch=f"fixes-{name}")


def _tree_bytes(tree: Path) -> int:
    return sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())


def test_fetch_download_with_unusable_lock_raises_cache_error(
    served: Any, cache_dir: Path
) -> None:
    url = served.add("locked.bin", b"weights")
    _block_lock(cache_dir, url)

    with pytest.raises(zooload.CacheError, match=_unwritable(cache_dir)):
        zooload.fetch(url, cache_dir=cache_dir)


def test_fetch_local_archive_with_unusable_lock_raises_cache_error(
    tmp_path: Path, cache_dir: Path
) -> None:
    archive = tmp_path / "local.tar.gz"
    archive.write_bytes(make_tar({"a.bin": b"x"}))
    _block_lock(cache_dir, sha256_of(archive.read_bytes()))

    with pytest.raises(zooload.CacheError, match=_unwritable(cache_dir)) as caught:
        zooload.fetch(archive, cache_dir=cache_dir)
    assert isinstance(caught.value, OSError)


def test_prune_cache_with_unusable_lock_raises_cache_error(
    served: Any, cache_dir: Path
) -> None:
    data = b"prune me"
    zooload.fetch(served.add("prune.bin", data), cache_dir=cache_dir)
    _block_lock(cache_dir, sha256_of(data))

    with pytest.raises(zooload.CacheError, match=_unwritable(cache_dir)):
        zooload.prune_cache(0, cache_dir=cache_dir)
    assert zooload.cache_size(cache_dir=cache_dir) >= len(data)


def test_cache_open_with_locks_replaced_by_a_file_raises_cache_error(
    cache_dir: Path,
) -> None:
    Cache.open(cache_dir)
    locks = cache_dir / "locks"
    locks.rmdir()
    locks.write_text("not a folder")

    with pytest.raises(zooload.CacheError, match=_WRITABLE_HINT.replace("p", "P", 1)):
        zooload.prune_cache(0, cache_dir=cache_dir)


def test_verify_cache_without_removal_writes_nothing(
    served: Any, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"read only"
    zooload.fetch(served.add("ro.bin", data), cache_dir=cache_dir)

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    # Root ignores permission bits, so the read-only mount is simulated at
    # the one call that writes.
    monkeypatch.setattr(os, "utime", refuse)

    assert zooload.verify_cache(cache_dir=cache_dir) == ()


def test_remove_from_cache_refuses_a_malformed_digest(cache_dir: Path) -> None:
    with pytest.raises(zooload.ConfigError, match=r"64 hex characters.*Copy it"):
        zooload.remove_from_cache("sha256:zz", cache_dir=cache_dir)


def test_cache_entries_list_trees_of_local_archives(
    tmp_path: Path, served: Any, cache_dir: Path
) -> None:
    archive = _packed(tmp_path, "listed")
    tree = zooload.fetch(archive, cache_dir=cache_dir)
    zooload.fetch(served.add("other.bin", b"downloaded"), cache_dir=cache_dir)

    entries = {e.sha256: e for e in zooload.cache_entries(cache_dir=cache_dir)}

    local = entries[sha256_of(archive.read_bytes())]
    assert local.urls == (str(archive.resolve()),)
    assert local.path == tree
    assert local.size == _tree_bytes(tree) > 0
    assert entries[sha256_of(b"downloaded")].size == len(b"downloaded")
    assert zooload.cache_size(cache_dir=cache_dir) >= local.size + len(b"downloaded")


@pytest.mark.parametrize("by", ["digest", "path"])
def test_remove_from_cache_removes_the_tree_of_a_local_archive(
    tmp_path: Path, cache_dir: Path, by: str
) -> None:
    archive = _packed(tmp_path, "removed")
    tree = zooload.fetch(archive, cache_dir=cache_dir)
    digest = sha256_of(archive.read_bytes())
    target = f"sha256:{digest}" if by == "digest" else str(archive)

    (removed,) = zooload.remove_from_cache(target, cache_dir=cache_dir)

    assert removed.sha256 == digest
    assert not tree.exists()
    assert zooload.cache_entries(cache_dir=cache_dir) == ()
    assert archive.is_file()


def test_prune_cache_removes_the_least_recently_used_local_tree(
    tmp_path: Path, served: Any, cache_dir: Path
) -> None:
    archive = _packed(tmp_path, "pruned")
    tree = zooload.fetch(archive, cache_dir=cache_dir)
    for path in [tree, *tree.rglob("*")]:
        os.utime(path, (1000.0, 1000.0))
    kept = zooload.fetch(served.add("kept.bin", b"recent"), cache_dir=cache_dir)

    budget = zooload.cache_size(cache_dir=cache_dir) - 1
    result = zooload.prune_cache(budget, cache_dir=cache_dir)

    assert [e.sha256 for e in result.removed] == [sha256_of(archive.read_bytes())]
    assert result.removed[0].last_used == 1000.0
    assert not tree.exists()
    assert kept.read_bytes() == b"recent"


def test_verify_cache_checks_the_tree_of_a_local_archive(
    tmp_path: Path, cache_dir: Path
) -> None:
    archive = _packed(tmp_path, "verified")
    tree = zooload.fetch(archive, cache_dir=cache_dir)
    for path in [tree, *tree.rglob("*")]:
        os.utime(path, (1000.0, 1000.0))
    assert zooload.verify_cache(cache_dir=cache_dir) == ()
    (entry,) = zooload.cache_entries(cache_dir=cache_dir)
    assert entry.last_used == 1000.0

    (tree / "weights.safetensors").write_bytes(b"edited")
    (report,) = zooload.verify_cache(cache_dir=cache_dir)

    expected = (
        r"^weights\.safetensors no longer matches the sha256 its zooload\.json "
        r"lists \(expected [0-9a-f]{64}, now "
        + sha256_of(b"edited")
        + r"\): the extracted copy was changed after extraction; "
        r"remove_corrupt=True removes it and the next load extracts it again "
        r"from the local archive$"
    )
    assert re.match(expected, report.tree_problem)
    assert report.actual == report.entry.sha256
    assert not report.removed
    (fixed,) = zooload.verify_cache(cache_dir=cache_dir, remove_corrupt=True)
    assert fixed.removed
    assert not tree.exists()
    assert zooload.fetch(archive, cache_dir=cache_dir) == tree
    assert zooload.verify_cache(cache_dir=cache_dir) == ()


def test_verify_cache_names_a_file_deleted_from_a_tree(
    tmp_path: Path, cache_dir: Path
) -> None:
    archive = _packed(tmp_path, "deleted")
    tree = zooload.fetch(archive, cache_dir=cache_dir)
    (tree / "weights.safetensors").unlink()

    (report,) = zooload.verify_cache(cache_dir=cache_dir)

    assert report.tree_problem.startswith(
        "weights.safetensors, which its zooload.json lists, is gone: the "
        "extracted copy was changed after extraction"
    )


def test_verify_cache_reports_a_manifest_changed_in_a_tree(
    tmp_path: Path, cache_dir: Path
) -> None:
    archive = _packed(tmp_path, "manifest")
    tree = zooload.fetch(archive, cache_dir=cache_dir)
    (tree / "zooload.json").write_text("{not json")

    (report,) = zooload.verify_cache(cache_dir=cache_dir)

    assert report.tree_problem.startswith("its zooload.json is no longer valid (")
    assert report.tree_problem.endswith("extracts it again from the local archive")


def test_remove_from_cache_with_unusable_lock_raises_cache_error(
    served: Any, cache_dir: Path
) -> None:
    data = b"held"
    url = served.add("held.bin", data)
    zooload.fetch(url, cache_dir=cache_dir)
    _block_lock(cache_dir, sha256_of(data))

    with pytest.raises(zooload.CacheError, match=_unwritable(cache_dir)):
        zooload.remove_from_cache(url, cache_dir=cache_dir)
    assert [e.urls for e in zooload.cache_entries(cache_dir=cache_dir)] == [(url,)]


def test_cache_changing_turns_os_errors_into_cache_errors(cache_dir: Path) -> None:
    cache = Cache.open(cache_dir)
    pattern = rf"cannot remove entries in the zooload cache .*{_WRITABLE_HINT}"

    refused = OSError(errno.EROFS, "Read-only file system")
    with (
        pytest.raises(zooload.CacheError, match=pattern) as caught,
        cache.changing("remove entries"),
    ):
        raise refused
    assert "Read-only file system" in str(caught.value)
    original = zooload.CacheError("already a cache error")
    with (
        pytest.raises(zooload.CacheError, match=r"^already a cache error$"),
        cache.changing("remove entries"),
    ):
        raise original


def test_cache_entries_ignore_unreadable_local_records(
    tmp_path: Path, cache_dir: Path
) -> None:
    archive = _packed(tmp_path, "records")
    zooload.fetch(archive, cache_dir=cache_dir)
    verified = cache_dir / "verified"
    (verified / "list.json").write_text("[]")
    (verified / "numbers.json").write_text('{"file": [1, 2, 3], "sha256": 4}')
    (verified / "broken.json").write_text("{")

    (entry,) = zooload.cache_entries(cache_dir=cache_dir)

    assert entry.urls == (str(archive.resolve()),)
