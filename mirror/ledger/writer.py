"""The ledger's writer: rows from the job's events, written in batches, in the background.

``add`` takes an event (and, for a kept feed, the ack of its message) without waiting: the
fetchers that publish events never wait for the database. One write runs at a time; what
arrives meanwhile makes the next batch, so the batches grow as the database falls behind
and stay small (quick to be seen) when it keeps up. An event's ack is called only once its
rows are committed: a writer that dies leaves its events to be delivered again, and the
upserts make the second write harmless.

A database that is away (restarting, unreachable) is waited for, with the rows kept and
their messages unacked; a row the database refuses (a value it cannot hold) is written
alone, logged and dropped, so that one bad row cannot stop the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from sqlalchemy import exc as sa_exc

from mirror.ledger import LedgerSettings
from mirror.ledger.rows import Row, rows_of
from mirror.ledger.store import LedgerStore

log = logging.getLogger(__name__)
Ack = Callable[[], Awaitable[None]]
# Errors of the data itself, not of the database being away: retrying cannot cure them.
DATA_ERRORS = (sa_exc.DataError, sa_exc.IntegrityError)


class LedgerWriter:
    def __init__(self, store: LedgerStore, job: str, root: str,
                 settings: LedgerSettings) -> None:
        self._store = store
        self._job = job
        self._root = root  # the job's source URL, for events that do not tell theirs
        self._settings = settings
        self._rows: list[Row] = []
        self._acks: list[Ack] = []
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._writing = False
        self._closing = False
        self._deadline = 0.0  # closing: give up on a database still away after this
        self._task: asyncio.Task[None] | None = None
        self.written = 0  # rows committed (after each batch's merge)
        self.dropped = 0  # rows the database refused

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def idle(self) -> bool:
        """Nothing waits to be written, nothing is being written."""
        return not self._rows and not self._acks and not self._writing

    def add(self, event: Mapping[str, Any], ack: Ack | None = None) -> None:
        self._rows.extend(rows_of(event, self._job, self._root))
        if ack is not None:
            self._acks.append(ack)
        self._wake.set()
        if len(self._rows) >= self._settings.batch_rows:
            self._full.set()

    async def _run(self) -> None:
        while not (self._closing and not self._rows and not self._acks):
            await self._wake.wait()
            if len(self._rows) < self._settings.batch_rows and not self._closing:
                # A moment for more to come: a batch per event would be a commit per file.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self._settings.linger_s)
            try:
                await self._write_pending()
            except (sa_exc.SQLAlchemyError, OSError):
                raise  # closing, and the database stayed away: close() says so
            except Exception:  # a bug: the batch stays pending, tried again with the next
                log.exception("ledger %s: writing a batch failed", self._store.where)

    async def _write_pending(self) -> None:
        rows, acks = self._rows, self._acks
        self._rows, self._acks = [], []
        self._wake.clear()
        self._full.clear()
        self._writing = True
        try:
            await self._write(rows)
        except BaseException:
            self._rows[:0], self._acks[:0] = rows, acks  # still pending, for close() to tell
            raise
        finally:
            self._writing = False
        for ack in acks:
            with contextlib.suppress(Exception):  # a lost channel: the message comes again
                await ack()

    async def _write(self, rows: list[Row]) -> None:
        try:
            await self._patiently(rows)
        except DATA_ERRORS as exc:
            log.warning("ledger %s refused a batch (%s); writing its rows one by one",
                        self._store.where, _first_line(exc))
            for row in rows:
                try:
                    await self._patiently([row])
                except DATA_ERRORS as one:
                    self.dropped += 1
                    log.error("ledger %s: row of %r dropped: %s", self._store.where,
                              row.path, _first_line(one))

    async def _patiently(self, rows: list[Row]) -> None:
        """Write ``rows``, waiting for a database that is away (until the close's patience
        is spent); the database's refusal of the data itself is raised at once."""
        delay = 0.5
        while True:
            try:
                self.written += await self._store.write(rows)
                return
            except DATA_ERRORS:
                raise
            except (sa_exc.SQLAlchemyError, OSError) as exc:
                if self._closing and time.monotonic() > self._deadline:
                    raise
                log.warning("ledger %s: cannot write %d rows (%s); trying again in %.0f s",
                            self._store.where, len(rows), _first_line(exc), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def close(self) -> None:
        """Write what is pending (waiting a while for a database that is away), then stop."""
        self._closing = True
        self._deadline = time.monotonic() + self._settings.close_patience_s
        self._wake.set()
        self._full.set()
        if self._task is None:
            return
        try:
            await self._task
        except (sa_exc.SQLAlchemyError, OSError) as exc:
            log.error("ledger %s: %d rows not written (%s); over RabbitMQ their events "
                      "come again to the next writer", self._store.where, len(self._rows),
                      _first_line(exc))


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc) or type(exc).__name__
    line = text.splitlines()[0]
    return line if len(line) < 200 else line[:197] + "..."


__all__ = ["Ack", "LedgerWriter"]
