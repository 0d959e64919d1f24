"""A ledger writer on a job's broker, for as long as a process works the job (or serves it).

``attached`` opens the database (creating the table), makes sure the job's events are kept
for a ledger (``Bus.declare_ledger_feed``: on RabbitMQ the queue ``J.ledger``, normally
declared when the job was seeded with a ledger, ``runner.seed``), follows them and writes
them. On the way out it waits, with ``drain``, until the feed holds nothing more (the job is
done: every event is in the feed), then writes what it holds and stops; whatever it did not
write stays in the feed for the next writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from mirror.broker import Bus, LedgerFeed
from mirror.errors import MirrorError
from mirror.jobs import JobSpec
from mirror.ledger import LedgerSettings
from mirror.ledger.store import LedgerStore
from mirror.ledger.writer import LedgerWriter

log = logging.getLogger(__name__)
# The feed must look empty this many times in a row, a moment apart: a message on its way
# to this writer is in neither the queue's count nor the writer yet.
QUIET_LOOKS = 3


async def prepare(settings: LedgerSettings) -> str:
    """Check that the ledger's database answers and create its table (``mirror seed
    --ledger``, before the job's events are kept); returns where it is, for the operator."""
    store = await LedgerStore.open(settings.url)
    await store.close()
    return store.where


@contextlib.asynccontextmanager
async def attached(bus: Bus, spec: JobSpec, settings: LedgerSettings,
                   drain: bool = True) -> AsyncIterator[LedgerWriter]:
    store = await LedgerStore.open(settings.url)
    writer = LedgerWriter(store, spec.name, spec.source, settings)
    feed: LedgerFeed | None = None
    try:
        if not await bus.declare_ledger_feed(create=False):
            await bus.declare_ledger_feed()
            log.info("job %s: its events are kept for the ledger from now on", spec.name)
        writer.start()
        feed = await bus.follow_ledger_feed(settings.prefetch, writer.add)
        log.info("ledger of job %s: %s", spec.name, store.where)
        yield writer
        if drain and feed.kept:
            await _drained(feed, writer, settings.drain_s)
    finally:
        if feed is not None:
            with contextlib.suppress(MirrorError):
                await feed.cancel()
        await writer.close()  # what it was handed: written, then acked
        if feed is not None:
            with contextlib.suppress(MirrorError):
                await feed.close()
        await store.close()
        log.info("ledger of job %s: %d rows written%s", spec.name, writer.written,
                 f", {writer.dropped} refused by the database" if writer.dropped else "")


async def _drained(feed: LedgerFeed, writer: LedgerWriter, patience_s: float) -> None:
    deadline = time.monotonic() + patience_s
    quiet = 0
    left = 0
    while quiet < QUIET_LOOKS:
        try:
            left = await feed.waiting()
        except MirrorError as exc:
            log.warning("ledger: cannot tell whether its feed is written out (%s)", exc)
            return
        quiet = quiet + 1 if not left and writer.idle else 0
        if time.monotonic() > deadline:
            log.warning("ledger: %d events still wait in its feed after %.0f s; the next "
                        "worker with --ledger writes them", left, patience_s)
            return
        await asyncio.sleep(0.1)


__all__ = ["attached", "prepare"]
