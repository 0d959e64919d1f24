"""The ``mirror`` command: the group, its config file and the console entry point.

Precedence: flags > environment (``MIRROR_*``) > ``--config`` TOML file > defaults. Click
gives exactly that order when the TOML is loaded into the context's ``default_map``.

The subcommands live in ``mirror.commands`` and are added to the group here; what they share
(option decorators, settings built from options) is ``mirror.commands.options``, so nothing
under ``mirror.commands`` imports this module.
"""

from __future__ import annotations

import difflib
import stat
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

from mirror import __version__
from mirror.aio import tune_gc
from mirror.commands import admin, ledger, mirroring, tools, watching
from mirror.errors import ConfigError, FatalError, MirrorError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="bucket-mirror")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              envvar="MIRROR_CONFIG", help="TOML file of defaults (top-level keys apply to every "
              "command, [run]/[work]/... tables to one; [credentials] needs mode 600).")
@click.option("-v", "--verbose", count=True, help="More log detail (-vv: debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and the final summary.")
@click.pass_context
def cli(ctx: click.Context, /, config: Path | None, verbose: int, quiet: bool) -> None:
    """Mirror whole storage buckets onto local disks, over RabbitMQ or an embedded broker."""
    ctx.meta["verbose"], ctx.meta["quiet"] = verbose, quiet
    if config is not None:
        ctx.default_map, ctx.meta["credentials"] = load_config(config)


SUBCOMMANDS: tuple[click.Command, ...] = (
    mirroring.run, mirroring.seed, mirroring.work, watching.status, watching.watch,
    admin.failures, admin.retry, admin.stop, ledger.ledger, tools.demo, tools.ls,
    tools.fake_upyun, tools.fake_artifactory)
for _subcommand in SUBCOMMANDS:
    cli.add_command(_subcommand)
COMMANDS = tuple(cli.commands)  # the tables a config file may have, besides [credentials]


def _keys_of(command: click.Command) -> set[str]:
    return {p.name for p in command.params if p.name}


def _unknown(path: Path, what: str, key: str, known: Iterable[str]) -> click.BadParameter:
    """A misspelt key is an error, not a setting silently left at its default."""
    dashed = sorted({k.replace("_", "-") for k in known})
    close = difflib.get_close_matches(key.replace("_", "-"), dashed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return click.BadParameter(f"{path}: {what} {key!r} is unknown{hint}", param_hint="--config")


def load_config(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Read the TOML file into click's default_map shape, plus its [credentials] table.

    Every key must be an option of the command it is for (any command's, at the top level):
    an unknown one raises, naming it, the file and the closest known key."""
    import tomllib  # only with --config: every start paid 4 ms for it

    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="--config") from exc
    creds = data.pop("credentials", {})
    if creds and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise click.BadParameter(
            f"{path} holds credentials but others can read it; run: chmod 600 {path}",
            param_hint="--config")
    shared = {k.replace("-", "_"): v for k, v in data.items() if not isinstance(v, dict)}
    per_command = {k: v for k, v in data.items() if isinstance(v, dict)}
    any_key = set().union(*(_keys_of(c) for c in cli.commands.values()))
    for key in shared:
        if key not in any_key:
            raise _unknown(path, "key", key, any_key)
    for table, values in per_command.items():
        if table not in cli.commands:
            raise _unknown(path, "table", table, [*cli.commands, "credentials"])
        known = _keys_of(cli.commands[table])
        for key in values:
            if key.replace("-", "_") not in known:
                raise _unknown(path, f"[{table}] key", key, known)
    default_map: dict[str, Any] = {}
    for command in COMMANDS:
        merged = dict(shared)
        merged.update({k.replace("-", "_"): v for k, v in per_command.get(command, {}).items()})
        default_map[command] = merged
    return default_map, {str(k): str(v) for k, v in creds.items()}


def main(argv: list[str] | None = None) -> None:
    """Console entry point: maps errors to the documented exit codes.

    The ``mirror`` command owns its process, so this is where the collector is tuned for it
    (``tune_gc``); code that imports mirror as a library, tests included, keeps Python's."""
    tune_gc()
    try:
        code = cli.main(args=argv, prog_name="mirror", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except ConfigError as exc:
        click.echo(f"mirror: {exc}", err=True)
        sys.exit(2)
    except FatalError as exc:
        click.echo(f"mirror: {exc}", err=True)
        sys.exit(3)
    except MirrorError as exc:
        click.echo(f"mirror: {exc}", err=True)
        sys.exit(3)
    sys.exit(code if isinstance(code, int) else 0)
