"""The flags of the sources: those every source shares, and those of each backend, built from
the options the backends declare (``mirror.sources.backend``).

Backends that take an option of the same name share its flag (several take ``--endpoint``,
each with its own default and help). Its click default is None, so a given flag is told from
an absent one; the chosen backend fills in its own defaults. A flag of another backend given
on the command line is a usage error; from the environment or a config file, which hold
defaults for every command and source, it is left to the backends that take it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from mirror.sources.backend import Backend, OptionInfo, SourceOptions, declared, flag_name
from mirror.sources.registry import backend_for, backends, scheme_of

F = TypeVar("F", bound=Callable[..., Any])


def connection_options(f: F) -> F:
    """How this host talks to any source (``SourceSettings``)."""
    options = [
        click.option("--connect-timeout", type=click.FloatRange(0.1), default=30.0,
                     envvar="MIRROR_CONNECT_TIMEOUT", show_default=True, metavar="S"),
        click.option("--timeout", type=click.FloatRange(0.1), default=120.0,
                     envvar="MIRROR_TIMEOUT", show_default=True, metavar="S",
                     help="Abort a request that delivers no byte for this long."),
        click.option("--request-retries", type=click.IntRange(0, 20), default=2,
                     envvar="MIRROR_REQUEST_RETRIES", show_default=True,
                     help="Quick in-process retries before the broker's retry tiers."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _owners() -> dict[str, list[tuple[Backend[Any], OptionInfo]]]:
    """Each backend option's name, with the backends that take it."""
    found: dict[str, list[tuple[Backend[Any], OptionInfo]]] = {}
    for backend in backends():
        for info in declared(backend.options):
            found.setdefault(info.name, []).append((backend, info))
    return found


def _click_type(name: str, infos: list[OptionInfo]) -> click.ParamType[Any]:
    kinds = {info.kind for info in infos}
    if len(kinds) != 1:
        raise TypeError(f"backends declare {flag_name(name)} with different types: {kinds}")
    kind = kinds.pop()
    bounds = {(info.flag.min, info.flag.max) for info in infos}
    # Bounds that differ between backends are checked by each backend's options instead.
    low, high = bounds.pop() if len(bounds) == 1 else (None, None)
    if kind is int and (low, high) != (None, None):
        return click.IntRange(None if low is None else int(low),
                              None if high is None else int(high))
    if kind is float and (low, high) != (None, None):
        return click.FloatRange(low, high)
    return {bool: click.BOOL, int: click.INT, float: click.FLOAT}.get(kind, click.STRING)


def _help(owners: list[tuple[Backend[Any], OptionInfo]]) -> str:
    # Bounds the backends share are shown by click's type; others by each backend.
    own_bounds = len({(info.flag.min, info.flag.max) for _, info in owners}) > 1
    parts = []
    for backend, info in owners:
        notes = [backend.label]
        if info.default is not None:
            notes.append(f"default: {info.default}")
        if own_bounds and (info.flag.min, info.flag.max) != (None, None):
            notes.append(f"{_number(info.flag.min)}..{_number(info.flag.max)}")
        parts.append(f"{info.flag.help} [{', '.join(notes)}]")
    return " ".join(parts)


def _number(bound: float | None) -> str:
    return "" if bound is None else f"{bound:g}"


def _backend_option(name: str, owners: list[tuple[Backend[Any], OptionInfo]]) -> Callable[[F], F]:
    infos = [info for _, info in owners]
    flag = flag_name(name)
    declaration = f"{flag}/--no-{flag[2:]}" if infos[0].kind is bool else flag
    return click.option(declaration, name, type=_click_type(name, infos), default=None,
                        envvar=f"MIRROR_{name.upper()}", metavar=infos[0].flag.metavar,
                        help=_help(owners))


def source_options(f: F) -> F:
    """Every backend's options and the shared ones, for a command given a source URL."""
    f = connection_options(f)
    for name, owners in reversed(_owners().items()):
        f = _backend_option(name, owners)(f)
    return f


def chosen_options(ctx: click.Context, url: str, o: Mapping[str, Any]) -> dict[str, Any]:
    """The options of ``url``'s backend from the parsed flags, its defaults for the rest, as
    a job stores them."""
    backend = backend_for(url)
    takes = {info.name for info in declared(backend.options)}
    for name, owners in _owners().items():
        given = ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
        if name not in takes and given and o.get(name) is not None:
            labels = " and ".join(b.label for b, _ in owners)
            raise click.UsageError(f"{flag_name(name)} is for {labels} sources, not "
                                   f"{scheme_of(url)}{backend.separator}", ctx)
    values = {name: o[name] for name in takes if o.get(name) is not None}
    options: SourceOptions = backend.options.from_dict(values)
    return options.to_dict()


__all__ = ["chosen_options", "connection_options", "source_options"]
