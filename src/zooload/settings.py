"""Fetch settings: offline mode, mirrors, per-host headers and the retry policy.

Each setting comes from a keyword argument of :func:`zooload.fetch` (and of
``load_url`` and ``load``) or, when the argument is not given, from its
environment variable; an argument replaces its variable, it is not merged
with it. The formats are described in ``docs/CACHE.md``.

Header values are secrets (tokens). They are never logged, never put in an
error message and never shown by ``repr``.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from zooload.archive import ExtractionLimits
from zooload.errors import ConfigError
from zooload.retries import RetryPolicy

OFFLINE_ENV = "ZOOLOAD_OFFLINE"
REQUIRE_HASH_ENV = "ZOOLOAD_REQUIRE_HASH"
MIRRORS_ENV = "ZOOLOAD_MIRRORS"
HEADERS_ENV = "ZOOLOAD_HEADERS"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})

MirrorsArgument = Mapping[str, str] | Sequence[tuple[str, str]]
HeadersArgument = Mapping[str, Mapping[str, str]]


@dataclass(frozen=True, slots=True)
class MirrorRule:
    """Rewrite URLs that start with ``prefix`` to start with ``replacement``."""

    prefix: str
    replacement: str

    def rewrite(self, url: str) -> str | None:
        """The mirrored URL, or ``None`` when the rule does not apply."""
        if not url.startswith(self.prefix):
            return None
        return self.replacement + url[len(self.prefix) :]


@dataclass(frozen=True, slots=True)
class HostHeaders:
    """Extra request headers by host (``host`` or ``host:port``), kept secret.

    Examples
    --------
    >>> secret = HostHeaders.build({"Example.org": {"Authorization": "Bearer x"}})
    >>> secret
    HostHeaders(hosts=('example.org',))
    >>> secret.for_url("https://example.org/model.bin")
    {'Authorization': 'Bearer x'}
    >>> secret.for_url("https://cdn.example.org/model.bin")
    {}
    """

    by_host: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()

    @classmethod
    def build(cls, headers: HeadersArgument) -> HostHeaders:
        """Check and normalise a ``{host: {name: value}}`` mapping."""
        if not isinstance(headers, Mapping):
            message = "headers= must map a host to its headers: {host: {name: value}}."
            raise ConfigError(message)
        return cls(
            tuple((_host_key(h), _header_items(h, v)) for h, v in headers.items())
        )

    def for_url(self, url: str) -> dict[str, str]:
        """The headers configured for the host of ``url``; ``host:port`` first."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        keys = [f"{host}:{parts.port}", host] if parts.port else [host]
        table = dict(self.by_host)
        for key in keys:
            if key in table:
                return dict(table[key])
        return {}

    def __repr__(self) -> str:
        hosts = tuple(host for host, _ in self.by_host)
        return f"HostHeaders(hosts={hosts!r})"

    def with_header(self, url: str, name: str, value: str) -> HostHeaders:
        """These headers plus one more for the host of ``url``.

        Examples
        --------
        >>> HostHeaders().with_header("https://h:8080/m", "A", "b").for_url("https://h:8080/x")
        {'A': 'b'}
        """
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        key = f"{host}:{parts.port}" if parts.port else host
        table = dict(self.by_host)
        table[key] = (*table.get(key, ()), (name, value))
        return HostHeaders(tuple(table.items()))


def _host_key(host: object) -> str:
    if not isinstance(host, str) or not host.strip():
        message = f"headers= keys must be host names, not {type(host).__name__}."
        raise ConfigError(message)
    text = host.strip().lower()
    return urlsplit(text).netloc if "://" in text else text.rstrip("/")


def _header_items(host: str, headers: object) -> tuple[tuple[str, str], ...]:
    # The values are secrets: messages name the host and the header only.
    if not isinstance(headers, Mapping):
        message = f"headers[{host!r}] must map header names to values."
        raise ConfigError(message)
    items = []
    for name, value in headers.items():
        text = value if isinstance(value, str) else None
        if not isinstance(name, str) or text is None or "\n" in text or "\r" in text:
            message = (
                f"the {name!r} header for {host} must be a one-line string; "
                "fix its value (not shown, it may be a secret)."
            )
            raise ConfigError(message)
        items.append((name, text))
    return tuple(items)


class Verification(str, enum.Enum):
    """How bytes that were verified before are checked again.

    ``recorded`` trusts a local file whose size and modification time match
    the record of its last hashing, and a pinned cache entry by its name;
    ``full`` hashes them again.
    """

    RECORDED = "recorded"
    FULL = "full"


@dataclass(frozen=True, slots=True)
class FetchOptions:
    """Everything that shapes one fetch besides the URL and the cache.

    Build it with :func:`resolve_options`, which reads the environment.
    """

    offline: bool = False
    mirrors: tuple[MirrorRule, ...] = ()
    headers: HostHeaders = field(default_factory=HostHeaders)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    progress: bool | None = None
    require_hash: bool = False
    limits: ExtractionLimits = field(default_factory=ExtractionLimits)
    verify: Verification = Verification.RECORDED

    def candidates(self, url: str) -> tuple[str, ...]:
        """Where to fetch ``url`` from: its mirrors in order, then itself."""
        mirrored = (rule.rewrite(url) for rule in self.mirrors)
        ordered = dict.fromkeys([*(m for m in mirrored if m), url])
        return tuple(ordered)


def resolve_options(
    *,
    offline: bool | None = None,
    mirrors: MirrorsArgument | None = None,
    headers: HeadersArgument | None = None,
    retry: RetryPolicy | None = None,
    progress: bool | None = None,
    limits: ExtractionLimits | None = None,
    verify: Verification | str = Verification.RECORDED,
) -> FetchOptions:
    """Merge the keyword arguments with the environment into :class:`FetchOptions`.

    Parameters
    ----------
    offline
        Never open a connection; ``None`` reads ``ZOOLOAD_OFFLINE``.
    mirrors
        ``{prefix: replacement}`` or ``[(prefix, replacement), ...]``, tried
        in order before the original URL; ``None`` reads ``ZOOLOAD_MIRRORS``.
    headers
        ``{host: {name: value}}``; ``None`` reads ``ZOOLOAD_HEADERS`` (JSON).
    retry
        The retry policy; ``None`` uses the documented defaults.
    progress
        Progress bar on stderr; ``None`` shows it when stderr is a terminal.
    limits
        Bounds on archive extraction; ``None`` uses the defaults.
    verify
        ``"recorded"`` or ``"full"``; see :class:`Verification`.

    Returns
    -------
    FetchOptions

    Raises
    ------
    ConfigError
        For a malformed argument or environment variable.

    Examples
    --------
    >>> options = resolve_options(offline=True, mirrors={"https://a/": "https://b/"})
    >>> options.offline, options.candidates("https://a/m.bin")
    (True, ('https://b/m.bin', 'https://a/m.bin'))
    """
    return FetchOptions(
        offline=_offline(offline),
        mirrors=_mirror_rules(mirrors),
        headers=_host_headers(headers),
        retry=retry if retry is not None else RetryPolicy(),
        progress=progress,
        require_hash=_env_flag(REQUIRE_HASH_ENV),
        limits=limits if limits is not None else ExtractionLimits(),
        verify=_verification(verify),
    )


def _verification(value: Verification | str) -> Verification:
    try:
        return Verification(value)
    except ValueError as err:
        choices = ", ".join(repr(v.value) for v in Verification)
        message = f"verify must be one of {choices}, not {value!r}."
        raise ConfigError(message) from err


def _offline(offline: bool | None) -> bool:
    return offline if offline is not None else _env_flag(OFFLINE_ENV)


def _env_flag(name: str) -> bool:
    text = os.environ.get(name, "").strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    message = f"{name}={text!r} is not a yes/no value; set it to 1 or 0."
    raise ConfigError(message)


def _mirror_rules(mirrors: MirrorsArgument | None) -> tuple[MirrorRule, ...]:
    if mirrors is None:
        words = os.environ.get(MIRRORS_ENV, "").split()
        return tuple(_mirror_rule(_env_mirror(word)) for word in words)
    pairs = mirrors.items() if isinstance(mirrors, Mapping) else mirrors
    return tuple(_mirror_rule(tuple(pair)) for pair in pairs)


def _env_mirror(word: str) -> tuple[str, str]:
    prefix, equals, replacement = word.partition("=")
    if not equals:
        message = (
            f"{MIRRORS_ENV} holds {word!r}; write each rule as "
            "ORIGINAL_PREFIX=MIRROR_PREFIX, rules separated by spaces."
        )
        raise ConfigError(message)
    return prefix, replacement


def _mirror_rule(pair: tuple[object, ...]) -> MirrorRule:
    texts = [part for part in pair if isinstance(part, str) and urlsplit(part).scheme]
    if len(pair) != 2 or len(texts) != 2:
        message = (
            f"mirror rule {pair!r} must pair two URL prefixes, such as "
            "('https://example.org/models/', 'https://mirror.local/models/')."
        )
        raise ConfigError(message)
    return MirrorRule(texts[0], texts[1])


def _host_headers(headers: HeadersArgument | None) -> HostHeaders:
    if headers is not None:
        return HostHeaders.build(headers)
    text = os.environ.get(HEADERS_ENV, "").strip()
    if not text:
        return HostHeaders()
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as err:
        # The text holds tokens: say where it broke, never what it says. The
        # decoder's error keeps the whole text in ``.doc``, so it is not
        # chained either.
        message = (
            f"{HEADERS_ENV} is not valid JSON ({err.msg}, line {err.lineno} "
            f'column {err.colno}); write {{"host": {{"Name": "value"}}}}.'
        )
        raise ConfigError(message) from None
    return HostHeaders.build(parsed)
