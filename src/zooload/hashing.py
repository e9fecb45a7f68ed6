"""sha256 digests: computing them over files and streams, checking pins.

A pin is a lower-case hex sha256 string. It comes from ``sha256=`` or from a
``#sha256=<hex>`` URL fragment; see ``docs/CACHE.md`` for how pins and the
content-addressed cache fit together.
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

from zooload.errors import ConfigError, HashMismatchError

CHUNK_BYTES = 1 << 20
_HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def normalize_digest(digest: str) -> str:
    """Return ``digest`` as 64 lower-case hex characters, or raise.

    Parameters
    ----------
    digest
        A sha256 hex digest, optionally prefixed with ``sha256:``.

    Returns
    -------
    str
        The lower-case digest.

    Raises
    ------
    ConfigError
        When the text is not a sha256 hex digest.

    Examples
    --------
    >>> normalize_digest("SHA256:" + "AB" * 32) == "ab" * 32
    True
    """
    text = digest.strip().lower().removeprefix("sha256:")
    if not _HEX_DIGEST.match(text):
        message = (
            f"{digest!r} is not a sha256 digest; give 64 hex characters, "
            "for example the output of `sha256sum FILE`."
        )
        raise ConfigError(message)
    return text


def file_digest(path: Path) -> str:
    """Return the sha256 hex digest of a file, read in 1 MiB chunks.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder, "x")
    ...     _ = path.write_bytes(b"abc")
    ...     file_digest(path)[:16]
    'ba7816bf8f01cfea'
    """
    with path.open("rb", buffering=0) as stream:
        return _digest_of(stream, None)


def span_digest(path: Path, offset: int, size: int) -> str:
    """Return the sha256 hex digest of ``size`` bytes of a file from ``offset``.

    Raises
    ------
    EOFError
        When the file ends before the span does.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder, "x")
    ...     _ = path.write_bytes(b"--abc--")
    ...     span_digest(path, 2, 3) == hashlib.sha256(b"abc").hexdigest()
    True
    """
    with path.open("rb", buffering=0) as stream:
        stream.seek(offset)
        return _digest_of(stream, size)


def _digest_of(stream: io.RawIOBase, size: int | None) -> str:
    """Hash what ``stream`` holds (``size`` bytes of it, or all), in place.

    One buffer is read into again and again: a fresh 1 MiB buffer per read
    would cost a page fault per 4 KiB, slower than the hashing itself.
    """
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(CHUNK_BYTES))
    left = size
    while left is None or left > 0:
        wanted = CHUNK_BYTES if left is None else min(CHUNK_BYTES, left)
        count = stream.readinto(buffer[:wanted])
        if not count:
            break
        digest.update(buffer[:count])
        if left is not None:
            left -= count
    if left:
        message = f"the file ended {left} bytes before the end of the span"
        raise EOFError(message)
    return digest.hexdigest()


def verify_file(
    path: Path, expected: str, *, source: str | None = None, hint: str = ""
) -> None:
    """Raise :class:`HashMismatchError` unless ``path`` hashes to ``expected``.

    Parameters
    ----------
    path
        The file to hash.
    expected
        The pinned sha256.
    source
        What to call the file in the error (a URL, an archive member);
        defaults to the path.
    hint
        The next step the error suggests, when the default (check the pin)
        does not fit.

    Raises
    ------
    HashMismatchError
        With the expected and the actual digest.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder, "x")
    ...     _ = path.write_bytes(b"abc")
    ...     verify_file(path, file_digest(path))
    """
    actual = file_digest(path)
    if actual != expected:
        raise HashMismatchError(source or str(path), expected, actual, hint)
