"""Small builders and probes the tests share: archives, digests, cache walks."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import torch


def sha256_of(data: bytes) -> str:
    """The hex sha256 of some bytes."""
    return hashlib.sha256(data).hexdigest()


def make_tar(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    """A tar archive (gzip by default) holding regular files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def cache_files(cache: Path) -> list[str]:
    """Every file in a cache, except locks and records of local files' digests.

    Both are bookkeeping: neither holds downloaded or extracted bytes.
    """
    if not cache.exists():
        return []
    return sorted(
        str(path.relative_to(cache))
        for path in cache.rglob("*")
        if not {"locks", "verified"} & set(path.parts) and not path.is_dir()
    )


def tensors_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Same names, and every tensor equal bit for bit."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def blobs_intact(cache: Path) -> bool:
    """Whether every published blob hashes to its name (no corrupt entry)."""
    blobs = cache / "blobs"
    paths = list(blobs.iterdir()) if blobs.exists() else []
    return all(sha256_of(path.read_bytes()) == path.name for path in paths)


def partial_files(cache: Path) -> list[str]:
    """The names under the cache's ``partial/`` folder."""
    folder = cache / "partial"
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def tar_member(
    name: str, kind: bytes = tarfile.REGTYPE, link: str = ""
) -> tarfile.TarInfo:
    """A tar header of any kind: file, folder, link, device, FIFO."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


def tar_of(*members: tuple[tarfile.TarInfo, bytes], compress: bool = True) -> bytes:
    """A tar (gzip by default) of the given headers; data only for files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if compress else "w") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buffer.getvalue()
