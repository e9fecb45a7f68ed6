"""The exceptions zooload raises on purpose, all under :class:`ZooloadError`.

The tree::

    ZooloadError
    ├── DownloadError (OSError)          .url .status .retryable .retry_after
    │   └── NotCachedError                offline and not in the cache
    ├── IntegrityError (ValueError)
    │   ├── HashMismatchError             .path .expected .actual
    │   └── SizeMismatchError             .path .expected .actual
    ├── CacheError (OSError)
    ├── ArchiveError (ValueError)
    │   ├── UnsafeArchiveError            .member .rule
    │   └── UntrustedCodeError            .source .code
    ├── CheckpointError (ValueError)
    │   ├── FormatError                   .path .expected .seen
    │   └── UnsafeCheckpointError         .path .globals
    ├── ManifestError (ValueError)        .field
    ├── UnknownArchitectureError (LookupError)  .name .closest
    ├── StateDictError (ValueError)
    │   └── IncompatibleStateDictError    .report
    ├── VerificationError (ValueError)    .largest_difference
    └── ConfigError (ValueError)

Every error carries its facts as attributes and renders them, with one next
step, in ``str()``. Errors survive pickling, so they cross process pools.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zooload.loading import LoadReport

__all__ = [
    "ArchiveError",
    "CacheError",
    "CheckpointError",
    "ConfigError",
    "DownloadError",
    "FormatError",
    "HashMismatchError",
    "IncompatibleStateDictError",
    "IntegrityError",
    "ManifestError",
    "NotCachedError",
    "SizeMismatchError",
    "StateDictError",
    "UnknownArchitectureError",
    "UnsafeArchiveError",
    "UnsafeCheckpointError",
    "UntrustedCodeError",
    "VerificationError",
    "ZooloadError",
]


class ZooloadError(Exception):
    """Base class of every error zooload raises on purpose.

    Subclasses keep the values they were built from in ``self._arguments`` so
    that :meth:`__reduce__` can rebuild them after pickling.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self._arguments: tuple[Any, ...] = (message,)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), self._arguments)


class DownloadError(ZooloadError, OSError):
    """A transfer failed: the URL, the HTTP status if any, and whether to retry.

    ``retry_after`` is the delay in seconds a server asked for (HTTP
    Retry-After), when it asked for one.
    """

    def __init__(
        self,
        message: str,
        url: str,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self._arguments = (message, url, status, retryable, retry_after)

    def __str__(self) -> str:
        return str(self.args[0])


class NotCachedError(DownloadError):
    """Offline mode was asked for and the URL is not in the cache."""


class IntegrityError(ZooloadError, ValueError):
    """Bytes are not the bytes that were pinned."""


class HashMismatchError(IntegrityError):
    """The sha256 of a file differs from the pinned one."""

    def __init__(self, source: str, expected: str, actual: str, hint: str = "") -> None:
        next_step = hint or (
            "The file was not cached. Check that the pinned hash belongs to this "
            "URL; if the publisher changed the file on purpose, pin the new hash."
        )
        message = f"sha256 mismatch for {source}: expected {expected}, got {actual}. "
        super().__init__(message + next_step)
        self.path = source
        self.expected = expected
        self.actual = actual
        self._arguments = (source, expected, actual, hint)


class SizeMismatchError(IntegrityError):
    """A transfer ended with fewer or more bytes than announced."""

    def __init__(self, source: str, expected: int, actual: int) -> None:
        message = (
            f"size mismatch for {source}: expected {expected} bytes, got {actual}. "
            "The transfer was cut short or the server lied about the length; "
            "nothing was cached. Try again."
        )
        super().__init__(message)
        self.path = source
        self.expected = expected
        self.actual = actual
        self._arguments = (source, expected, actual)


class CacheError(ZooloadError, OSError):
    """The cache folder cannot be used (permissions, disk full, bad layout)."""


class ArchiveError(ZooloadError, ValueError):
    """An archive cannot be read (truncated, corrupt, or of an unknown kind)."""


class UnsafeArchiveError(ArchiveError):
    """An archive member breaks an extraction rule; nothing was extracted."""

    def __init__(self, member: str, rule: str) -> None:
        message = (
            f"refused to extract archive member {member!r}: {rule}. Nothing was "
            "extracted. Ask the publisher for an archive without such members."
        )
        super().__init__(message)
        self.member = member
        self.rule = rule
        self._arguments = (member, rule)


class UntrustedCodeError(ArchiveError):
    """An archive's architecture is Python code, and code was not trusted."""

    def __init__(self, source: str, code: str) -> None:
        message = (
            f"{source} defines its architecture in {code!r}, Python code that "
            "would run on this machine; it was not imported. Read the file, and "
            "only if you trust its publisher, pass trust_code=True (or pass "
            "arch= an architecture of your own)."
        )
        super().__init__(message)
        self.source = source
        self.code = code
        self._arguments = (source, code)


class CheckpointError(ZooloadError, ValueError):
    """A checkpoint file cannot be read."""


class FormatError(CheckpointError):
    """A file is not in a format zooload reads; says what it looks like."""

    def __init__(self, path: str, expected: str, seen: str, hint: str) -> None:
        message = f"{path} is not {expected}: it looks like {seen.rstrip('.')}. {hint}"
        super().__init__(message)
        self.path = path
        self.expected = expected
        self.seen = seen
        self._arguments = (path, expected, seen, hint)


class UnsafeCheckpointError(CheckpointError):
    """A pickle needs globals outside the weights-only allowlist."""

    def __init__(self, path: str, globals_needed: Sequence[str]) -> None:
        names = ", ".join(globals_needed) or "(unknown)"
        message = (
            f"{path} needs globals that weights-only unpickling refuses: {names}. "
            "Loading it could run code from the file. If you trust its "
            "publisher, allow exactly these with allow_globals=[...] (or, for "
            "everything, trust_pickle=True)."
        )
        super().__init__(message)
        self.path = path
        self.globals = tuple(globals_needed)
        self._arguments = (path, tuple(globals_needed))


class ManifestError(ZooloadError, ValueError):
    """The manifest (zooload.json) is missing, malformed or inconsistent."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field
        self._arguments = (message, field)


class UnknownArchitectureError(ZooloadError, LookupError):
    """No architecture is registered under a name; lists the closest names."""

    def __init__(self, name: str, closest: Sequence[str]) -> None:
        suggestion = (
            f"Did you mean {', '.join(repr(c) for c in closest)}? " if closest else ""
        )
        message = (
            f"no architecture is registered as {name!r}. {suggestion}Register "
            "one with @zooload.register(name), or pass arch= a class or factory."
        )
        super().__init__(message)
        self.name = name
        self.closest = tuple(closest)
        self._arguments = (name, tuple(closest))

    def __str__(self) -> str:
        return str(self.args[0])


class StateDictError(ZooloadError, ValueError):
    """A state dict cannot be put into a model."""


class IncompatibleStateDictError(StateDictError):
    """A strict load found missing, unexpected or mis-shaped tensors."""

    def __init__(self, report: LoadReport, hint: str = "") -> None:
        next_step = hint or (
            "Fix the names with rename rules, or load partially with strict=False."
        )
        message = f"the state dict does not fit the model:\n{report}\n{next_step}"
        super().__init__(message)
        self.report = report
        self._arguments = (report, hint)


class VerificationError(ZooloadError, ValueError):
    """A loaded model did not reproduce its example outputs."""

    def __init__(self, message: str, largest_difference: float) -> None:
        super().__init__(message)
        self.largest_difference = largest_difference
        self._arguments = (message, largest_difference)


class ConfigError(ZooloadError, ValueError):
    """An argument or environment setting is invalid."""
