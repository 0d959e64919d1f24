"""The storage-source interface and the registry that opens a source from its URL.

A source lists one page of one folder at a time and streams one file from an offset. Each
backend lives in its own module and translates its wire errors into ``mirror.errors``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from mirror.errors import ConfigError
from mirror.ratelimit import Limiter
from mirror.settings import SourceSettings


@dataclass(frozen=True)
class Entry:
    """One listed item; ``path`` is relative to the source root, without a leading slash."""

    path: str
    is_dir: bool
    size: int = 0
    mtime: float | None = None
    etag: str | None = None


@dataclass(frozen=True)
class Page:
    """One page of a folder listing; ``cursor`` None means this was the last page."""

    entries: tuple[Entry, ...]
    cursor: str | None


class Body(Protocol):
    """An open download: a plain stream of bytes.

    ``offset`` is where these bytes start in the file: the requested offset when the source
    honoured the range, 0 when it sent the whole file instead. (A body carried by
    ``mirror.sources.transport`` can also be copied from its socket to the file in a disk
    thread: ``transport.direct_copy``; that is the transport's business, not the source's.)
    """

    offset: int
    total_size: int | None
    md5: str | None

    def chunks(self, size: int) -> AsyncIterator[bytes]:
        """The body in pieces of at most about ``size`` bytes (a hint: sources may yield
        whatever has arrived)."""
        ...

    async def read_all(self) -> bytes: ...


class Source(Protocol):
    """A storage backend. ``name`` is a short label for logs and metrics (no credentials)."""

    name: str

    async def list_page(self, path: str, cursor: str | None) -> Page: ...

    async def stat(self, path: str) -> Entry: ...

    def open(self, path: str, offset: int = 0) -> AbstractAsyncContextManager[Body]: ...

    async def close(self) -> None: ...


SourceFactory = Callable[[str, SourceSettings, Limiter | None], Source]


def open_source(url: str, settings: SourceSettings, limiter: Limiter | None = None) -> Source:
    """Build the source for ``url`` (e.g. ``upyun://bucket/prefix``)."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    factory = _factories().get(scheme)
    if factory is None:
        known = ", ".join(f"{s}://" for s in sorted(_factories()))
        raise ConfigError(f"unsupported source URL {url!r}; supported: {known}")
    return factory(url, settings, limiter)


def _factories() -> dict[str, SourceFactory]:
    # Imported lazily so a worker only loads the backend it uses.
    from mirror.sources import httpindex, upyun

    return {"upyun": upyun.UpyunSource.from_url, "http": httpindex.HttpIndexSource.from_url,
            "https": httpindex.HttpIndexSource.from_url}
