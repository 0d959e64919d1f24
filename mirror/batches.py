"""Small files travel in batches (one message per page and shard) and are settled one by one.

The lister packs the small files of a listing page into ``FetchBatch`` messages. A worker
splits each batch delivery into one delivery per file and hands them to its usual handler, so
the error policy stays per file: a file's ack only counts; its retry or park publishes a
single-file job (retry tier, parked queue), durable before the batch is acked; a release marks
the batch. Once every file is settled the batch message is acked, or released when any file
was released or could not be settled. A released batch comes back whole, and the files
already written are skipped by the usual "already current" check.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from mirror.broker import Broker, Delivery, Handler, Topology
from mirror.errors import MirrorError
from mirror.events import files_event
from mirror.jobs import FetchBatch, FetchJob, Job, Reason

log = logging.getLogger(__name__)


def pack(jobs: Sequence[Job], topology: Topology, max_files: int, max_bytes: int,
         small_max: int) -> list[Job]:
    """The jobs of one listing page, small files grouped by queue into batches."""
    if max_files <= 1:
        return list(jobs)
    out: list[Job] = []
    open_batches: dict[str, tuple[list[FetchJob], int]] = {}

    def close(queue: str) -> None:
        files, _ = open_batches.pop(queue)
        out.append(files[0] if len(files) == 1 else FetchBatch(tuple(files)))

    for job in jobs:
        if not isinstance(job, FetchJob) or job.is_dir or job.size > small_max:
            out.append(job)
            continue
        queue = topology.queue_for(job)
        files, size = open_batches.setdefault(queue, ([], 0))
        if files and (len(files) >= max_files or size + job.size > max_bytes):
            close(queue)
            files, size = open_batches.setdefault(queue, ([], 0))
        files.append(job)
        open_batches[queue] = (files, size + job.size)
    for queue in list(open_batches):
        close(queue)
    return out


class FileDelivery:
    """One file of a batch delivery, settled on its own."""

    def __init__(self, whole: Delivery, job: FetchJob, broker: Broker) -> None:
        self._broker = broker
        self.job = job
        self.queue = whole.queue
        self.attempts = whole.attempts
        self.redelivered = whole.redelivered
        self.settled = False
        self.released = False
        self.outcome: str | None = None  # "fetched" or "skipped": told in the batch's event

    def _done(self, released: bool) -> None:
        self.settled = True
        self.released = self.released or released

    async def ack(self) -> None:
        if not self.settled:
            self._done(False)

    async def retry(self, delay_s: float) -> None:
        if self.settled:
            return
        try:
            await self._broker.retry_later(self.job, self.attempts + 1, delay_s)
        except BaseException:
            self._done(True)  # not re-queued on its own: the whole batch comes back
            raise
        self._done(False)

    async def park(self, reason: Reason) -> None:
        if self.settled:
            return
        try:
            await self._broker.park(self.job, reason)
        except BaseException:
            self._done(True)
            raise
        self._done(False)

    async def release(self) -> None:
        if not self.settled:
            self._done(True)


def split_batches(handler: Handler, broker: Broker, job_name: str,
                  whole: Callable[[list[FileDelivery]], Awaitable[None]] | None = None
                  ) -> Handler:
    """Wrap a per-file handler so that batch deliveries reach it file by file (or, given
    ``whole``, reach that all at once).

    The handler marks a file's ``outcome`` instead of sending its event; the batch sends one
    event per kind for all its files, confirmed before the batch is acked.
    """

    async def handle(delivery: Delivery) -> None:
        batch = delivery.job
        if not isinstance(batch, FetchBatch):
            await handler(delivery)
            return
        parts = [FileDelivery(delivery, job, broker) for job in batch.files]
        try:
            if whole is not None:
                await whole(parts)
            else:
                await asyncio.gather(*(handler(part) for part in parts),
                                     return_exceptions=True)
        finally:  # also when cancelled: the batch must be settled either way
            await asyncio.shield(_settle(delivery, parts, broker, job_name))

    return handle


async def _settle(delivery: Delivery, parts: list[FileDelivery], broker: Broker,
                  job_name: str) -> None:
    done: dict[str, list[FetchJob]] = {}
    for part in parts:
        if part.outcome is not None:
            done.setdefault(part.outcome, []).append(part.job)
    release = any(p.released or not p.settled for p in parts)
    try:
        for kind, jobs in done.items():
            await broker.publish_event(files_event(kind, job_name, jobs))
    except MirrorError as exc:
        # Events are confirmed before the ack, or the batch comes back (its files are then
        # skipped and told again as skipped).
        log.warning("could not send the events of a batch (%s); it will be delivered again",
                    exc)
        release = True
    try:
        await (delivery.release() if release else delivery.ack())
    except MirrorError as exc:
        log.warning("could not settle a batch (%s); the broker will deliver it again", exc)


__all__ = ["FileDelivery", "pack", "split_batches"]
