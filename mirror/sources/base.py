"""What every storage backend implements and returns: ``Source``, its ``Entry`` and ``Page``
listings and its ``Body`` downloads.

Its own module so that backends import it without the registry that opens them
(``mirror.sources.registry``). A backend translates its wire errors into ``mirror.errors``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol


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
    """One page of a folder listing; ``cursor`` None means this was the last page.

    A ``flat`` page lists a whole subtree (S3 without a delimiter): its entries' paths may
    lie in sub-folders, and its folders are made, not listed again. ``forks`` are cursors of
    further pages of the same listing that can be listed in parallel with ``cursor`` (key
    ranges split off).
    """

    entries: tuple[Entry, ...]
    cursor: str | None
    flat: bool = False
    forks: tuple[str, ...] = ()


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


__all__ = ["Body", "Entry", "Page", "Source"]
