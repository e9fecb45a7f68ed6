"""Options and state that the commands of the command line share.

:class:`Session` carries the main command's settings (``--debug``,
``--cache-dir``, the log handler) to every subcommand through click's
context object; the option decorators and callbacks here parse what several
commands accept.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


@dataclass(slots=True)
class Session:
    """Settings of one invocation, shared by every command through click."""

    debug: bool = False
    cache_dir: Path | None = None
    handler: logging.Handler | None = None
    level: int = logging.NOTSET

    def start_logging(self, level: int) -> None:
        """Send zooload's logs at ``level`` and above to stderr."""
        package = logging.getLogger("zooload")
        self.handler = logging.StreamHandler(sys.stderr)
        self.handler.setFormatter(logging.Formatter(_LOG_FORMAT))
        self.level = package.level
        package.addHandler(self.handler)
        package.setLevel(level)

    def close(self) -> None:
        """Undo :meth:`start_logging`, so that in-process callers are unaffected."""
        if self.handler is not None:
            package = logging.getLogger("zooload")
            package.removeHandler(self.handler)
            package.setLevel(self.level)


def _parsed_object(text: str, ctx: click.Context, param: click.Parameter) -> Any:
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as err:
        message = f"{text!r} is not JSON: {err}"
        raise click.BadParameter(message, ctx, param) from err
    if not isinstance(parsed, dict):
        message = f"{text!r} is not a JSON object ({{...}})"
        raise click.BadParameter(message, ctx, param)
    return parsed


def json_object(
    ctx: click.Context, param: click.Parameter, values: str | tuple[str, ...]
) -> Any:
    if isinstance(values, str):
        return _parsed_object(values, ctx, param)
    return tuple(_parsed_object(value, ctx, param) for value in values)


def key_value(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    pairs = [value.partition("=") for value in values]
    bad = [value for value, (_, sep, _) in zip(values, pairs, strict=True) if not sep]
    if bad:
        message = f"{bad[0]!r} is not KEY=VALUE"
        raise click.BadParameter(message, ctx, param)
    return {key: value for key, _, value in pairs}


json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON for scripts instead of text."
)
key_option = click.option(
    "--key",
    metavar="PATH",
    help="Key of the weights in a training checkpoint: ema.module",
)
trust_option = click.option(
    "--trust-pickle",
    is_flag=True,
    help="Let pickles build any object (runs code from the file).",
)
globals_option = click.option(
    "--allow-global",
    "allow_globals",
    multiple=True,
    metavar="NAME",
    help="A global a pickle may build, as the error names it: mypkg.Config",
)
sha_option = click.option(
    "--sha256", metavar="HEX", help="The expected sha256 of the downloaded bytes."
)
kwargs_option = click.option(
    "--arch-kwargs",
    default="{}",
    callback=json_object,
    help="""Keyword arguments of the architecture: '{"width": 64}'""",
)
