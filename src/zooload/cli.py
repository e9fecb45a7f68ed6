"""The ``zooload`` command line: a thin layer over the public API.

Each command parses its arguments, calls one or two public functions and
formats the result (:mod:`zooload.cli_views`, :mod:`zooload.cli_format`).
Results go to stdout, logs, progress bars and errors to stderr. Exit codes:
0 ok, 1 a zooload error (or ``diff`` found the sides incompatible, or
``cache verify`` found corrupt blobs), 2 a usage error, 130 interrupted.
"""

from __future__ import annotations

import importlib
import logging
import traceback
from pathlib import Path
from typing import Any

import click

from zooload import __version__
from zooload.architectures import build_without_parameters, resolve_architecture
from zooload.cli_cache import cache
from zooload.cli_format import print_fields, print_json, print_table
from zooload.cli_options import (
    Session,
    globals_option,
    json_object,
    json_option,
    key_option,
    key_value,
    kwargs_option,
    sha_option,
    trust_option,
)
from zooload.cli_views import (
    diff_json,
    diff_text,
    inspect_fields,
    inspect_json,
    load_fields,
    load_json,
    tensor_rows,
)
from zooload.compare import diff_state_dicts
from zooload.conversion import Precision, convert
from zooload.errors import ZooloadError
from zooload.formats import StateDict
from zooload.inspection import inspect
from zooload.pack import pack
from zooload.pipeline import load
from zooload.retrieval import fetch, load_state_dict

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 88}


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit code: 0 ok, 1 a zooload error or a negative answer
        (``diff``, ``cache verify``), 2 a usage error, 130 interrupted.

    Examples
    --------
    >>> main(["--version"])
    zooload, version 0.1.0
    0
    """
    session = Session()
    try:
        result = cli.main(
            args=argv, prog_name="zooload", standalone_mode=False, obj=session
        )
    except ZooloadError as err:
        if session.debug:
            traceback.print_exception(type(err), err, err.__traceback__)
        click.echo(f"error: {err}", err=True)
        return EXIT_ERROR
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except (click.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    finally:
        session.close()
    return result if isinstance(result, int) else EXIT_OK


@click.group(context_settings=_CONTEXT)
@click.version_option(__version__, "--version", prog_name="zooload")
@click.option("-v", "--verbose", count=True, help="More logs: -v info, -vv debug.")
@click.option("-q", "--quiet", count=True, help="Fewer logs: -q errors only.")
@click.option("--debug", is_flag=True, help="Show the traceback of an error.")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Cache root (default: $ZOOLOAD_CACHE or the user cache folder).",
)
@click.option(
    "--import",
    "imports",
    multiple=True,
    metavar="MODULE",
    help="Import a module first, to register its architectures: mypkg.models",
)
@click.pass_obj
def cli(
    session: Session,
    verbose: int,
    quiet: int,
    debug: bool,
    cache_dir: Path | None,
    imports: tuple[str, ...],
) -> None:
    """Load pre-trained PyTorch models from URLs; debug checkpoints.

    \b
    Examples:
      zooload inspect checkpoint.pt --tensors
      zooload diff checkpoint.pt --arch my-net
      zooload -v load https://example.org/vad.tar.gz
    """
    session.debug = debug
    session.cache_dir = cache_dir
    level = logging.WARNING + 10 * (quiet - verbose)
    session.start_logging(min(max(level, logging.DEBUG), logging.CRITICAL))
    for name in imports:
        try:
            importlib.import_module(name)
        except ImportError as err:
            message = f"cannot import {name}: {err}"
            raise click.BadParameter(message, param_hint="--import") from err


cli.add_command(cache)


@cli.command("load")
@click.argument("url")
@click.option("--arch", metavar="NAME", help="Registered architecture name.")
@kwargs_option
@sha_option
@click.option("--no-check", is_flag=True, help="Skip the manifest's example check.")
@click.option(
    "--map-location", default="cpu", metavar="DEV", help="Device: cpu, cuda:0, ..."
)
@key_option
@trust_option
@globals_option
@json_option
@click.pass_obj
def load_command(
    session: Session,
    url: str,
    arch: str | None,
    arch_kwargs: dict[str, Any],
    sha256: str | None,
    no_check: bool,
    map_location: str,
    key: str | None,
    trust_pickle: bool,
    allow_globals: tuple[str, ...],
    as_json: bool,
) -> None:
    """Fetch, build, load and check a model; print what was loaded.

    \b
    Examples:
      zooload load https://example.org/vad.tar.gz --sha256 9f2c...
      zooload load weights.pt --arch my-net --arch-kwargs '{"width": 64}'
    """
    result = load(
        url,
        arch=arch,
        sha256=sha256,
        map_location=map_location,
        check=not no_check,
        cache_dir=session.cache_dir,
        key=key,
        trust_pickle=trust_pickle,
        allow_globals=allow_globals,
        **arch_kwargs,
    )
    if as_json:
        print_json(load_json(result, url, arch))
    else:
        print_fields(load_fields(result, url, arch))


@cli.command("fetch")
@click.argument("url")
@sha_option
@click.option("--no-extract", is_flag=True, help="Keep an archive as it is.")
@json_option
@click.pass_obj
def fetch_command(
    session: Session, url: str, sha256: str | None, no_extract: bool, as_json: bool
) -> None:
    """Download, verify and extract; print only the local path.

    \b
    Examples:
      zooload fetch https://example.org/vad.tar.gz
      ls "$(zooload fetch https://example.org/vad.tar.gz)"
    """
    path = fetch(
        url, sha256=sha256, extract=not no_extract, cache_dir=session.cache_dir
    )
    if as_json:
        print_json({"path": str(path)})
    else:
        click.echo(str(path))


@cli.command("inspect")
@click.argument("source", metavar="FILE|URL")
@click.option("--tensors", is_flag=True, help="Add a table of every tensor.")
@key_option
@trust_option
@globals_option
@json_option
@click.pass_obj
def inspect_command(
    session: Session,
    source: str,
    tensors: bool,
    key: str | None,
    trust_pickle: bool,
    allow_globals: tuple[str, ...],
    as_json: bool,
) -> None:
    """Say what a checkpoint, archive or folder holds.

    \b
    Examples:
      zooload inspect last.ckpt
      zooload inspect https://example.org/vad.tar.gz --tensors
    """
    info = inspect(
        source,
        key=key,
        trust_pickle=trust_pickle,
        allow_globals=allow_globals,
        cache_dir=session.cache_dir,
    )
    if as_json:
        print_json(inspect_json(info))
        return
    print_fields(inspect_fields(info))
    if tensors:
        click.echo()
        print_table(["name", "shape", "dtype", "bytes"], tensor_rows(info), right={3})


@cli.command("diff")
@click.argument("sources", nargs=-1, metavar="[A] [B]")
@click.option(
    "--arch",
    "archs",
    multiple=True,
    metavar="NAME",
    help="A side that is an architecture; after the checkpoints, in order.",
)
@click.option(
    "--arch-kwargs",
    "arch_kwargs",
    multiple=True,
    callback=json_object,
    help="""Keyword arguments of each --arch, in order: '{"width": 64}'""",
)
@key_option
@trust_option
@json_option
@click.pass_obj
def diff_command(
    session: Session,
    sources: tuple[str, ...],
    archs: tuple[str, ...],
    arch_kwargs: tuple[dict[str, Any], ...],
    key: str | None,
    trust_pickle: bool,
    as_json: bool,
) -> int:
    """Compare two checkpoints, or a checkpoint and an architecture.

    A is loaded into B: the prefix change that makes them fit is applied to
    A's names. Exit status 0 when A fits B, 1 when it does not.

    \b
    Examples:
      zooload diff old.pt new.safetensors
      zooload diff ckpt.pt --arch my-net --arch-kwargs '{"width": 64}'
    """
    if len(sources) + len(archs) != 2 or len(arch_kwargs) > len(archs):
        message = "give two sides: A and B, A and --arch NAME, or two --arch"
        raise click.UsageError(message)
    sides = [(s, _checkpoint_side(s, key, trust_pickle, session)) for s in sources]
    kwargs = [*arch_kwargs, *({} for _ in range(len(archs) - len(arch_kwargs)))]
    pairs = zip(archs, kwargs, strict=True)
    sides += [(f"--arch {a}", _arch_side(a, k)) for a, k in pairs]
    (label_a, a), (label_b, b) = sides
    difference = diff_state_dicts(a, b)
    if as_json:
        print_json(diff_json(difference, label_a, label_b))
    else:
        click.echo(diff_text(difference, label_a, label_b))
    return EXIT_OK if difference.compatible else EXIT_ERROR


def _checkpoint_side(
    source: str, key: str | None, trust_pickle: bool, session: Session
) -> StateDict:
    return load_state_dict(
        source,
        key=key,
        map_location="meta",
        trust_pickle=trust_pickle,
        cache_dir=session.cache_dir,
    )


def _arch_side(name: str, kwargs: dict[str, Any]) -> StateDict:
    model = build_without_parameters(resolve_architecture(name), kwargs)
    return dict(model.state_dict())


@cli.command("convert")
@click.argument("source", metavar="IN")
@click.argument("dest", metavar="OUT.safetensors", type=click.Path(path_type=Path))
@click.option(
    "--dtype",
    type=click.Choice([p.value for p in Precision]),
    help="Cast floating-point tensors.",
)
@key_option
@trust_option
@globals_option
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.pass_obj
def convert_command(
    session: Session,
    source: str,
    dest: Path,
    dtype: str | None,
    key: str | None,
    trust_pickle: bool,
    allow_globals: tuple[str, ...],
    force: bool,
) -> None:
    """Write any readable checkpoint as safetensors; print the path.

    Tied tensors are stored once and keep every name.

    \b
    Examples:
      zooload convert pytorch_model.bin model.safetensors
      zooload convert last.ckpt ema.safetensors --key ema --dtype bf16
    """
    path = convert(
        source,
        dest,
        dtype=dtype,
        key=key,
        trust_pickle=trust_pickle,
        allow_globals=allow_globals,
        overwrite=force,
        cache_dir=session.cache_dir,
    )
    click.echo(str(path))


@cli.command("pack")
@click.argument("weights")
@click.option("--arch", required=True, metavar="NAME", help="Registered name.")
@kwargs_option
@click.option(
    "--example",
    metavar="FILE",
    help="Checkpoint of example inputs, taken in name order.",
)
@click.option(
    "--rename",
    nargs=2,
    multiple=True,
    metavar="PATTERN REPLACEMENT",
    help=r"Rename rule from WEIGHTS' names to the architecture's: '^net\.' ''",
)
@click.option(
    "--meta",
    multiple=True,
    callback=key_value,
    metavar="KEY=VALUE",
    help="Free metadata: license=MIT",
)
@click.option("--name", help="The model's name (default: the architecture's).")
@key_option
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="The archive or folder to write: net.tar.gz",
)
@click.pass_obj
def pack_command(
    session: Session,
    weights: str,
    arch: str,
    arch_kwargs: dict[str, Any],
    example: str | None,
    rename: tuple[tuple[str, str], ...],
    meta: dict[str, str],
    name: str | None,
    key: str | None,
    output: Path,
) -> None:
    """Pack weights into an archive for zooload load; print its path.

    OUT ending in .zip, .tar, .tar.zst, .tar.gz, .tar.bz2 or .tar.xz (or
    .tzst, .tgz, .tbz2, .txz) makes an archive, a name without an archive
    suffix a folder; other archive suffixes (.rar, .7z, ...) are refused.

    \b
    Examples:
      zooload pack net.pt --arch my-net -o net.tar.gz --meta license=MIT
      zooload pack net.pt --arch my-net --example inputs.safetensors -o net.zip
    """
    state_dict = load_state_dict(weights, key=key, cache_dir=session.cache_dir)
    inputs = None
    if example is not None:
        tensors = load_state_dict(example, cache_dir=session.cache_dir)
        inputs = [tensors[input_name] for input_name in sorted(tensors)]
    path = pack(
        state_dict,
        output,
        arch=arch,
        arch_kwargs=arch_kwargs,
        example_inputs=inputs,
        rename=list(rename),
        metadata=meta,
        name=name,
    )
    click.echo(str(path))
