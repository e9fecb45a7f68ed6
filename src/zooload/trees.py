"""Trees: what an extracted archive holds, including members left in place.

An extracted tree is a folder of files, with one exception: a large
safetensors member that the archive stores uncompressed is not copied out
of it. Its bytes stay in the archive, and the tree's index
(:data:`TREE_INDEX_NAME`, at the tree's root) records where: the member's
name and its span (offset, size) of the archive. Readers map such a member
straight from the archive (:class:`~zooload.formats.common.FileRegion`), so
a 1 GiB model stored in a ``.tar`` or ``.zip`` costs no copy and no second
GiB of disk. The index is written before the tree is published, so it is
as complete as the tree.

:class:`TreeFiles` sees a tree as one set of files, the extracted and the
in-place alike; ``docs/CACHE.md`` ("Trees") describes the
layout for people looking into the cache.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from zooload.errors import ManifestError
from zooload.formats.common import FileRegion, WeightsSource

logger = logging.getLogger(__name__)

TREE_INDEX_NAME = ".zooload-tree.json"
INDEX_VERSION = 1
Span = tuple[int, int]


@dataclass(frozen=True, slots=True)
class TreeIndex:
    """The members of a tree that stay in its archive, by tree-relative name.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     TreeIndex({"weights.safetensors": (512, 4096)}).write(pathlib.Path(folder))
    ...     TreeIndex.read(pathlib.Path(folder)).in_place
    {'weights.safetensors': (512, 4096)}
    """

    in_place: Mapping[str, Span] = field(default_factory=dict)

    @classmethod
    def read(cls, tree: Path) -> TreeIndex:
        """The index of ``tree``; an empty one when it has none.

        Raises
        ------
        ManifestError
            When the index exists but cannot be read (a damaged cache entry).
        """
        path = tree / TREE_INDEX_NAME
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as err:
            raise _damaged_index(tree, err) from err
        try:
            spans = {
                str(name): (int(offset), int(size))
                for name, (offset, size) in document["in_place"].items()
            }
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise _damaged_index(tree, err) from err
        return cls(spans)

    def write(self, tree: Path) -> None:
        """Write the index into ``tree`` (before it is published); nothing if empty."""
        if self.in_place:
            (tree / TREE_INDEX_NAME).write_text(self.text())

    def text(self) -> str:
        """The index as the JSON document the file holds."""
        spans = {name: list(span) for name, span in sorted(self.in_place.items())}
        document = {"version": INDEX_VERSION, "in_place": spans}
        return json.dumps(document, indent=1) + "\n"


def archive_needed(tree: Path) -> ManifestError:
    """The error for a tree used as a folder while its weights stay in place.

    Examples
    --------
    >>> archive_needed(Path("t")).field
    '(tree index)'
    """
    message = (
        f"{tree} is a tree zooload extracted whose weights stay in the "
        "archive it came from; load or fetch that archive (its URL or file) "
        "instead of the folder."
    )
    return ManifestError(message, field="(tree index)")


def _damaged_index(tree: Path, err: Exception) -> ManifestError:
    message = (
        f"the index of the extracted tree {tree} is damaged ({err}); remove the "
        "tree (zooload cache rm) and load again to extract it afresh."
    )
    return ManifestError(message, field="(tree index)")


@dataclass(frozen=True, slots=True)
class TreeFiles:
    """The files of a tree, the extracted and the in-place alike.

    ``tree`` is the folder an archive was extracted into; in-place members
    are given as regions of ``archive`` when it is known, and otherwise
    refused with a message that says to load the archive itself.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     root = pathlib.Path(folder)
    ...     _ = (root / "zooload.json").write_text("{}")
    ...     files = TreeFiles.open(root)
    ...     [p.name for p in files.below(root)], files.locate(root / "x") is None
    (['zooload.json'], True)
    """

    tree: Path
    index: TreeIndex
    archive: Path | None = None

    @classmethod
    def open(cls, tree: Path, archive: Path | None = None) -> TreeFiles:
        """Read the index of ``tree``; see :meth:`TreeIndex.read` for errors."""
        return cls(tree, TreeIndex.read(tree), archive)

    def locate(self, path: Path) -> WeightsSource | None:
        """The file at ``path``: itself, its region of the archive, or None.

        Raises
        ------
        ManifestError
            When the file stays in the archive and no archive is known.
        """
        if path.is_file():
            return path
        span = self._span_of(path)
        return None if span is None else self._region(path, span)

    def below(self, folder: Path) -> list[WeightsSource]:
        """Every regular file under ``folder``, in-place members last."""
        found: list[WeightsSource] = [
            path
            for path in sorted(folder.rglob("*"))
            if path.is_file() and path != self.tree / TREE_INDEX_NAME
        ]
        for name, span in sorted(self.index.in_place.items()):
            path = self.tree / name
            if path.is_relative_to(folder):
                found.append(self._region(path, span))
        return found

    def top_level(self, folder: Path) -> list[str]:
        """Names directly in ``folder``, in-place members included."""
        names = {e.name for e in folder.iterdir() if e.name != TREE_INDEX_NAME}
        for name in self.index.in_place:
            path = self.tree / name
            if path.is_relative_to(folder) and path != folder:
                names.add(path.relative_to(folder).parts[0])
        return sorted(names)

    def _span_of(self, path: Path) -> Span | None:
        if not path.is_relative_to(self.tree):
            return None
        return self.index.in_place.get(path.relative_to(self.tree).as_posix())

    def _region(self, path: Path, span: Span) -> FileRegion:
        if self.archive is None:
            raise archive_needed(self.tree)
        offset, size = span
        return FileRegion(self.archive, offset, size, shown_as=path)
