"""Small files and sibling folders travel in batches, and are settled one by one.

The lister packs the small files of a listing page into ``FetchBatch`` messages (one per page
and shard) and the folders it found into ``ListBatch`` messages. A worker splits each batch
delivery into one delivery per file or folder and hands them to its usual handler, so the
error policy stays per file and per folder: a part's ack only counts; its retry or park
publishes a single job (retry tier, parked queue), durable before the batch is acked; a
release marks the batch. Once every part is settled the batch message is acked, or released
when any part was released or could not be settled. A released batch comes back whole: the
files already written are skipped by the usual "already current" check, and folders already
listed are listed again (their files then skipped the same way).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeGuard, TypeVar

from mirror.broker import Broker, Delivery, Handler, Topology
from mirror.errors import BrokerError, MirrorError
from mirror.events import files_event
from mirror.jobs import FetchBatch, FetchJob, Job, ListBatch, ListJob, Reason

log = logging.getLogger(__name__)
# Folders to list per message. A folder's page is one request, so a batch is held for a few
# requests' time; a handful of batches still spreads a wide folder over several listers.
LIST_BATCH = 16
P = TypeVar("P", FetchJob, ListJob)


def pack(jobs: Sequence[Job], topology: Topology, max_files: int, max_bytes: int,
         small_max: int, max_folders: int = LIST_BATCH) -> list[Job]:
    """The jobs of one listing page: small files grouped by queue into batches, folders to
    list grouped too."""
    out: list[Job] = []
    folders = [j for j in jobs if isinstance(j, ListJob)]
    if max_folders > 1 and len(folders) > 1:
        for i in range(0, len(folders), max_folders):
            some = folders[i:i + max_folders]
            out.append(some[0] if len(some) == 1 else ListBatch(tuple(some)))
        jobs = [j for j in jobs if not isinstance(j, ListJob)]
    if max_files <= 1:
        return out + list(jobs)
    open_batches: dict[str, tuple[list[FetchJob], int]] = {}

    def close(queue: str) -> None:
        files, _ = open_batches.pop(queue)
        out.append(files[0] if len(files) == 1 else FetchBatch(tuple(files)))

    for job in jobs:
        if not _small(job, small_max):
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


def _small(job: Job, small_max: int) -> TypeGuard[FetchJob]:
    """A file that travels in a batch (folders and large files travel alone)."""
    return isinstance(job, FetchJob) and not job.is_dir and job.size <= small_max


class PartDelivery(Generic[P]):
    """One file or folder of a batch delivery, settled on its own."""

    def __init__(self, whole: Delivery, job: P, broker: Broker) -> None:
        self._broker = broker
        self.job: P = job
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


class FileDelivery(PartDelivery[FetchJob]):
    """One file of a batch delivery."""


def split_batches(handler: Handler, broker: Broker, job_name: str,
                  whole: Callable[[list[FileDelivery]], Awaitable[None]] | None = None
                  ) -> Handler:
    """Wrap a per-job handler so that batch deliveries reach it file by file or folder by
    folder (or, given ``whole``, the files of a batch reach that all at once).

    The handler marks a file's ``outcome`` instead of sending its event; the batch's files are
    told in one event per kind (shared with batches settled at about the same time, see
    ``EventOutbox``), confirmed before the batch is acked.
    """

    events = EventOutbox(broker, job_name)

    async def handle(delivery: Delivery) -> None:
        batch = delivery.job
        files: list[FileDelivery] = []
        parts: Sequence[PartDelivery[FetchJob] | PartDelivery[ListJob]]
        if isinstance(batch, FetchBatch):
            parts = files = [FileDelivery(delivery, job, broker) for job in batch.files]
        elif isinstance(batch, ListBatch):
            parts = [PartDelivery(delivery, job, broker) for job in batch.folders]
        else:
            await handler(delivery)
            return
        try:
            if whole is not None and files:
                await whole(files)
            else:
                await asyncio.gather(*(handler(part) for part in parts),
                                     return_exceptions=True)
        finally:  # also when cancelled: the batch must be settled either way
            await asyncio.shield(_settle(delivery, parts, events))

    return handle


@dataclass
class _Filling:
    """Files gathered for one message, and the signal that it was sent (confirmed)."""

    sent: asyncio.Future[None]
    files: list[FetchJob] = field(default_factory=list)
    size: int = 0


class _Outbox:
    """Files gathered per key for up to ``window_s`` and sent as one message; whoever added
    to it awaits that message's confirm, or its failure. ``_send`` makes the message."""

    what = "a message"  # for the error of a cancelled send

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._open: dict[str, _Filling] = {}
        self._sending: set[asyncio.Task[None]] = set()

    def _filling(self, key: str) -> _Filling:
        filling = self._open.get(key)
        if filling is None:
            loop = asyncio.get_running_loop()
            filling = self._open[key] = _Filling(loop.create_future())
            loop.call_later(self._window_s, self._flush, key, filling)
        return filling

    async def _send(self, key: str, files: list[FetchJob]) -> None:
        raise NotImplementedError

    def _flush(self, key: str, filling: _Filling) -> None:
        if self._open.get(key) is not filling:
            return  # sent already, when it was full
        del self._open[key]
        task = asyncio.ensure_future(self._send(key, filling.files))
        self._sending.add(task)
        task.add_done_callback(functools.partial(self._sent, filling.sent))

    def _sent(self, sent: asyncio.Future[None], task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        if task.cancelled():
            sent.set_exception(BrokerError(f"sending {self.what} was cancelled"))
        elif (exc := task.exception()) is not None:
            sent.set_exception(exc)
        else:
            sent.set_result(None)
        # Every sender that shared it awaits it; this keeps an unawaited failure out of the log.
        sent.add_done_callback(lambda f: f.cancelled() or f.exception())


class FileOutbox(_Outbox):
    """Small files of pages listed at about the same time, packed into shared batches.

    A page of 20 small files made a batch message of its own: over RabbitMQ each message is a
    publish, a delivery and an ack, on a broker and workers that share the cores with the
    downloads. Pages listed within ``window_s`` now fill batches together (per queue, up to
    ``max_files`` and ``max_bytes``). ``send`` returns once every message carrying one of its
    files is confirmed and raises if one failed; the folder is then listed again, and its
    files already published are skipped by the fetchers as already current.
    """

    what = "a batch of files"

    def __init__(self, broker: Broker, topology: Topology, max_files: int, max_bytes: int,
                 small_max: int, on_message: Callable[[], None] = lambda: None,
                 window_s: float = 0.005) -> None:
        super().__init__(window_s)
        self._broker = broker
        self._topology = topology
        self._max_files = max_files
        self._max_bytes = max_bytes
        self._small_max = small_max
        self._on_message = on_message

    def takes(self, job: Job) -> bool:
        return _small(job, self._small_max)

    def messages_for(self, files: int) -> int:
        """About how many messages ``files`` small files make (for the backlog gate)."""
        return -(-files // self._max_files)

    async def send(self, files: Sequence[FetchJob]) -> None:
        waits: list[asyncio.Future[None]] = []
        for job in files:
            queue = self._topology.queue_for(job)
            filling = self._filling(queue)
            if filling.files and (len(filling.files) >= self._max_files
                                  or filling.size + job.size > self._max_bytes):
                self._flush(queue, filling)
                filling = self._filling(queue)
            filling.files.append(job)
            filling.size += job.size
            if filling.sent not in waits:
                waits.append(filling.sent)
        for queue, filling in list(self._open.items()):
            if len(filling.files) >= self._max_files:
                self._flush(queue, filling)
        for sent in waits:
            await asyncio.shield(sent)

    async def _send(self, key: str, files: list[FetchJob]) -> None:
        await self._broker.publish([files[0] if len(files) == 1 else FetchBatch(tuple(files))])
        self._on_message()


class EventOutbox(_Outbox):
    """The file events of batches settled close together, sent as one event per kind.

    A confirmed publish costs a fetcher about 0.3 ms of CPU, and RabbitMQ a share of its
    own; one per batch message was a tenth of a small-file run's CPU. Files settled within
    ``window_s`` share one event instead, and every batch waits for the confirm of the event
    that carries its files before it is acked (at least once, as before).
    """

    what = "a batch's events"

    def __init__(self, broker: Broker, job_name: str, window_s: float = 0.02,
                 max_files: int = 1000) -> None:
        super().__init__(window_s)
        self._broker = broker
        self._job_name = job_name
        self._max_files = max_files

    async def send(self, kind: str, jobs: Sequence[FetchJob]) -> None:
        """Return once an event telling of ``jobs`` is confirmed; raise if it failed."""
        filling = self._filling(kind)
        filling.files.extend(jobs)
        if len(filling.files) >= self._max_files:
            self._flush(kind, filling)
        await asyncio.shield(filling.sent)

    async def _send(self, key: str, files: list[FetchJob]) -> None:
        await self._broker.publish_event(files_event(key, self._job_name, files))


async def _settle(delivery: Delivery,
                  parts: Sequence[PartDelivery[FetchJob] | PartDelivery[ListJob]],
                  events: EventOutbox) -> None:
    done: dict[str, list[FetchJob]] = {}
    for part in parts:
        if part.outcome is not None and isinstance(part.job, FetchJob):
            done.setdefault(part.outcome, []).append(part.job)
    release = any(p.released or not p.settled for p in parts)
    try:
        for kind, jobs in done.items():
            await events.send(kind, jobs)
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


__all__ = ["EventOutbox", "FileDelivery", "FileOutbox", "PartDelivery", "pack",
           "split_batches"]
