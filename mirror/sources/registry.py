"""Which module serves which source URL, and opening a source from its URL.

A backend module is imported only when a URL needs it, so a worker loads only the backend of
its job (the command line loads them all: their options are its flags).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from mirror.errors import ConfigError
from mirror.ratelimit import Limiter
from mirror.settings import SourceSettings
from mirror.sources.backend import Backend, SourceOptions
from mirror.sources.base import Source

# One line per backend: its module (which exports BACKEND) and the URL schemes it serves,
# the same as its BACKEND.schemes.
MODULES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "mirror.sources.upyun": ("upyun",),
    "mirror.sources.httpindex": ("http", "https"),
    "mirror.sources.s3": ("s3",),
})

# RFC 3986's scheme, before "://" (upyun://BUCKET) or a bare ":" (urls:FILE, urls:-).
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")


def scheme_of(url: str) -> str | None:
    """The scheme of ``x://...`` or ``x:...``, in lower case; None when there is none."""
    found = _SCHEME.match(url)
    return found.group(1).lower() if found else None


def _load(module: str) -> Backend[Any]:
    backend = getattr(importlib.import_module(module), "BACKEND", None)
    if not isinstance(backend, Backend):
        raise TypeError(f"{module} exports no BACKEND")
    return backend


def backends() -> tuple[Backend[Any], ...]:
    """Every backend, in the registry's order (this imports them all)."""
    return tuple(_load(module) for module in MODULES)


def supported() -> str:
    return ", ".join(backend.form for backend in backends())


def backend_for(url: str) -> Backend[Any]:
    """The backend of ``url``; a ConfigError naming the supported forms when there is none."""
    scheme = scheme_of(url)
    module = next((m for m, schemes in MODULES.items() if scheme in schemes), None)
    if scheme is None or module is None:
        what = "has no scheme" if scheme is None else f"has an unknown scheme {scheme!r}"
        raise ConfigError(f"unsupported source URL {url!r} ({what}); supported: {supported()}")
    backend = _load(module)
    if not url[len(scheme):].startswith(backend.separator):
        raise ConfigError(f"{url!r} is not a source URL like {backend.form}")
    return backend


def options_for(url: str, values: Mapping[str, Any]) -> SourceOptions:
    """The options of ``url``'s backend: ``values`` checked, its defaults for the rest."""
    options: SourceOptions = backend_for(url).options.from_dict(values)
    return options


def open_source(url: str, settings: SourceSettings, limiter: Limiter | None = None,
                options: Mapping[str, Any] | None = None) -> Source:
    """Open the source of ``url`` (e.g. ``upyun://bucket/prefix``) with its backend's options
    (a job's ``source_options``; the backend's defaults for those not given)."""
    backend = backend_for(url)
    return backend.open(url, backend.options.from_dict(options or {}), settings, limiter)


__all__ = ["MODULES", "backend_for", "backends", "open_source", "options_for", "scheme_of",
           "supported"]
