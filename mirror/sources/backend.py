"""What a storage backend declares about itself: the ``BACKEND`` its module exports.

A backend module (``mirror.sources.upyun``, ``mirror.sources.httpindex``...) states its URL
schemes, a short URL form for help and errors, its own options and the function that opens
its source. Its options are a frozen dataclass of ``option`` fields: each field carries what
the command line shows of it (``mirror.commands.sourceflags`` builds the flags of every
backend from them), and the dataclass checks its values when built, so options read back
from a job stored on a broker are as sound as those parsed from flags. The options travel
with a job as a plain JSON object (``JobSpec.source_options``), not as flags: a worker on
another host needs none of them.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Generic, Self, TypeVar, Union, get_args, get_origin, get_type_hints

from mirror.errors import ConfigError
from mirror.ratelimit import Limiter
from mirror.settings import SourceSettings
from mirror.sources.base import Source

T = TypeVar("T")
_FLAG = "mirror.flag"  # the key of an option field's metadata
_KINDS = (bool, int, float, str)  # what a flag and a JSON value can both carry


@dataclass(frozen=True)
class Flag:
    """What the command line shows of one option; the flag itself is the field's name with
    dashes (``list_limit``: ``--list-limit``, environment ``MIRROR_LIST_LIMIT``)."""

    help: str
    metavar: str | None = None
    min: float | None = None
    max: float | None = None


def option(default: T, help: str, *, metavar: str | None = None, min: float | None = None,
           max: float | None = None) -> T:
    """A field of a backend's options dataclass, with its default and its flag's help."""
    return field(default=default, metadata={_FLAG: Flag(help, metavar, min, max)})


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class OptionInfo:
    """One declared option, as the command line and the checks see it."""

    name: str
    kind: type  # bool, int, float or str
    optional: bool  # None is a value (the backend decides what its absence means)
    default: Any
    flag: Flag

    @property
    def flag_name(self) -> str:
        return flag_name(self.name)


def declared(cls: type[SourceOptions]) -> tuple[OptionInfo, ...]:
    """The options of a backend's dataclass; an undeclared or unsupported field is a bug of the
    backend, raised at once (the registry's tests load every backend)."""
    hints = get_type_hints(cls)
    found = []
    for f in fields(cls):
        flag = f.metadata.get(_FLAG)
        if not isinstance(flag, Flag):
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with option()")
        hint = hints[f.name]
        members = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
        kinds = [m for m in members if m is not type(None)]
        if len(kinds) != 1 or kinds[0] not in _KINDS:
            raise TypeError(f"{cls.__name__}.{f.name}: an option is one of bool, int, float "
                            f"or str (or None), not {hint}")
        found.append(OptionInfo(f.name, kinds[0], len(members) > 1, f.default, flag))
    return tuple(found)


def _check(info: OptionInfo, value: Any) -> None:
    name = info.flag_name
    if value is None:
        if not info.optional:
            raise ConfigError(f"{name} needs a value")
        return
    # True is an int to Python, not to an operator; 3 is a fine float.
    kinds = (int, float) if info.kind is float else (info.kind,)
    if isinstance(value, bool) != (info.kind is bool) or not isinstance(value, kinds):
        raise ConfigError(f"{name} takes {info.kind.__name__} values, not {value!r}")
    low, high = info.flag.min, info.flag.max
    if isinstance(value, int | float) and ((low is not None and value < low) or
                                           (high is not None and value > high)):
        raise ConfigError(f"{name} must be within {_bound(low)}..{_bound(high)}, got {value}")


def _bound(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


@dataclass(frozen=True)
class SourceOptions:
    """Base of a backend's options dataclass: checks each value when built."""

    def __post_init__(self) -> None:
        for info in declared(type(self)):
            _check(info, getattr(self, info.name))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Self:
        """Options from a JSON object or parsed flags; the dataclass's defaults for the rest."""
        known = {info.name for info in declared(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            takes = ", ".join(sorted(known)) or "none"
            raise ConfigError(f"unknown source option {unknown[0]!r} (this source takes: {takes})")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def differences(self, other: SourceOptions) -> list[str]:
        """Where these options differ from ``other``, as flags with both values."""
        theirs = other.to_dict()
        return [f"{flag_name(k)} {v} (not {theirs.get(k)})"
                for k, v in self.to_dict().items() if theirs.get(k) != v]


OptionsT = TypeVar("OptionsT", bound=SourceOptions)


@dataclass(frozen=True)
class Backend(Generic[OptionsT]):
    """What a backend module exports as ``BACKEND``."""

    schemes: tuple[str, ...]  # lower case: ("http", "https")
    form: str  # the URL's shape for help and errors: "upyun://BUCKET/PREFIX"
    options: type[OptionsT]
    # Opens the source of a URL of one of the schemes with this job's options and this
    # host's settings (credentials, timeouts); raises ConfigError for a URL it cannot use.
    open: Callable[[str, OptionsT, SourceSettings, Limiter | None], Source]
    separator: str = "://"  # ":" for a scheme whose URLs have no "//" (urls:FILE)
    # The environment variables it reads credentials from (SourceSettings.credential), never
    # options: options are stored with the job and shown in messages.
    credentials: tuple[str, ...] = ()

    @property
    def prefixes(self) -> tuple[str, ...]:
        return tuple(scheme + self.separator for scheme in self.schemes)

    @property
    def label(self) -> str:
        """The backend's URLs in a sentence: "upyun://", "http:// or https://"."""
        return " or ".join(self.prefixes)


__all__ = ["Backend", "Flag", "OptionInfo", "SourceOptions", "declared", "flag_name", "option"]
