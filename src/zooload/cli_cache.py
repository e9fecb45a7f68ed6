"""``zooload cache``: list, measure, remove, prune and verify cache entries.

The commands call the cache management API (:mod:`zooload.cache_admin`)
with the ``--cache-dir`` of the main command.
"""

from __future__ import annotations

from typing import Any

import click

from zooload.cache_admin import (
    cache_entries,
    cache_root,
    cache_size,
    prune_cache,
    remove_from_cache,
)
from zooload.cache_verification import CorruptBlob, verify_cache
from zooload.cli_format import (
    human_size,
    parse_size,
    print_fields,
    print_json,
    print_table,
)
from zooload.cli_options import Session, json_option
from zooload.cli_views import entry_json, entry_row, prune_json
from zooload.errors import ConfigError

_ENTRY_COLUMNS = ["sha256", "size", "last used", "urls"]


def _size(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        return parse_size(value)
    except ConfigError as err:
        raise click.BadParameter(str(err), ctx, param) from err


@click.group("cache")
def cache() -> None:
    """Manage the download cache.

    \b
    Examples:
      zooload cache ls
      zooload cache prune --max-size 10GB
    """


@cache.command("ls")
@json_option
@click.pass_obj
def list_command(session: Session, as_json: bool) -> None:
    """List the cached entries, most recently used first.

    \b
    Example:
      zooload cache ls --json
    """
    entries = cache_entries(cache_dir=session.cache_dir)
    if as_json:
        print_json([entry_json(entry) for entry in entries])
        return
    print_table(_ENTRY_COLUMNS, [entry_row(entry) for entry in entries], right={1})


@cache.command("size")
@json_option
@click.pass_obj
def size_command(session: Session, as_json: bool) -> None:
    """Print the bytes the cache holds.

    \b
    Example:
      zooload cache size
    """
    size = cache_size(cache_dir=session.cache_dir)
    if as_json:
        print_json({"bytes": size})
    else:
        click.echo(human_size(size))


@cache.command("rm")
@click.argument("target", metavar="URL|HASH")
@json_option
@click.pass_obj
def remove_command(session: Session, target: str, as_json: bool) -> None:
    """Remove the entry a URL points at, or the entry with a sha256.

    \b
    Examples:
      zooload cache rm https://example.org/vad.tar.gz
      zooload cache rm sha256:9f2c...
    """
    removed = remove_from_cache(target, cache_dir=session.cache_dir)
    if as_json:
        print_json([entry_json(entry) for entry in removed])
        return
    for entry in removed:
        click.echo(f"removed {entry.sha256} ({human_size(entry.size)})")
    if not removed:
        click.echo(f"nothing cached for {target}")


@cache.command("prune")
@click.option(
    "--max-size",
    required=True,
    callback=_size,
    help="The budget: 10GB, 500MB, 2GiB.",
)
@json_option
@click.pass_obj
def prune_command(session: Session, max_size: int, as_json: bool) -> None:
    """Shrink the cache to a budget, least recently used entries first.

    \b
    Example:
      zooload cache prune --max-size 10GB
    """
    result = prune_cache(max_size, cache_dir=session.cache_dir)
    if as_json:
        print_json(prune_json(result))
        return
    for entry in result.removed:
        click.echo(f"removed {entry.sha256} ({human_size(entry.size)})")
    for entry in result.skipped:
        click.echo(f"in use, kept {entry.sha256} ({human_size(entry.size)})")
    print_fields(
        [("freed", human_size(result.freed)), ("size", human_size(result.size))]
    )


@cache.command("verify")
@click.option("--remove", is_flag=True, help="Also remove the corrupt entries.")
@json_option
@click.pass_obj
def verify_command(session: Session, remove: bool, as_json: bool) -> int:
    """Hash every blob; exit status 1 when some are corrupt.

    \b
    Example:
      zooload cache verify --remove
    """
    corrupt = verify_cache(cache_dir=session.cache_dir, remove_corrupt=remove)
    if as_json:
        print_json([_corrupt_json(blob) for blob in corrupt])
    else:
        _print_corrupt(corrupt)
    return 1 if corrupt else 0


def _corrupt_json(blob: CorruptBlob) -> dict[str, Any]:
    return {
        **entry_json(blob.entry),
        "actual": blob.actual,
        "removed": blob.removed,
        "tree_problem": blob.tree_problem,
    }


def _print_corrupt(corrupt: tuple[CorruptBlob, ...]) -> None:
    for blob in corrupt:
        action = "removed" if blob.removed else "kept"
        what = (
            f"its tree: {blob.tree_problem}"
            if blob.tree_problem
            else f"hashes to {blob.actual}"
        )
        click.echo(f"corrupt {blob.entry.sha256}: {what} ({action})")
    if not corrupt:
        click.echo("every blob is intact")


@cache.command("dir")
@click.pass_obj
def dir_command(session: Session) -> None:
    """Print the cache folder.

    \b
    Example:
      cd "$(zooload cache dir)"
    """
    click.echo(str(cache_root(cache_dir=session.cache_dir)))
