"""How ``RabbitBroker`` carries small jobs: several to a message, each still settled on its own.

Over RabbitMQ every message costs a publish, a delivery and an ack, on a broker and workers
that share the cores with the downloads; for small files that overhead was most of the work
(bench/RESULTS.md). So the RabbitMQ broker packs, when publishing:

- the small files of pages listed at about the same time, per fetch queue, up to
  ``BatchLimits.files`` and ``.bytes`` to a message (``FileOutbox``);
- the folders a page found, up to ``BatchLimits.folders`` to a message (``split``);
- the file events of jobs settled at about the same time, one event per kind
  (``EventOutbox``; ``mirror.events.each_file`` spreads one out).

When consuming it unpacks a message into one delivery per job (``decode_message``), each
acked, retried, parked and reported on its own; the message is acked once every job it
carried is settled (see ``mirror.broker.rabbitmq``). Handlers, the worker, the fetch pool and
the embedded broker see single jobs only; nothing outside this module and its broker knows
that a message may carry several.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

from mirror.broker import Carriage, QueueDepth, Topology
from mirror.errors import BrokerError, ProtocolError
from mirror.events import FILE_FIELDS
from mirror.jobs import SCHEMA_VERSION, FetchJob, Job, ListJob, encode_job, fields_of, job_from_dict

T = TypeVar("T")
# File events a batching broker sends together (a parked one goes alone, with its reason).
COALESCED_EVENTS = frozenset({"file.fetched", "file.skipped"})


@dataclass(frozen=True)
class BatchLimits:
    """How many jobs a message carries (``--batch-files``, ``--batch-bytes``)."""

    files: int = 32  # small files to a message; 1: one message per file
    bytes: int = 32 << 20  # their listed sizes, in all
    small_max: int = 1 << 20  # a file up to this size travels in a batch
    # Folders to list per message. A folder's page is one request, so a batch is held for a
    # few requests' time; a handful of batches still spreads a wide folder over several
    # listers.
    folders: int = 16
    # Pages listed within this window fill batches together (a page of 20 small files made
    # a message of its own).
    file_window_s: float = 0.005
    # A confirmed publish costs a fetcher about 0.3 ms of CPU, and RabbitMQ a share of its
    # own; one event per file was a tenth of a small-file run's CPU. Files settled within
    # this window share one event.
    event_window_s: float = 0.02
    event_files: int = 1000

    @property
    def packs_files(self) -> bool:
        return self.files > 1


def small(job: Job, limits: BatchLimits) -> bool:
    """A file that travels in a batch (folders to list, empty folders and large files do
    not)."""
    return (isinstance(job, FetchJob) and not job.is_dir and job.size <= limits.small_max
            and limits.packs_files)


def split(jobs: Sequence[Job], limits: BatchLimits | None) -> tuple[list[FetchJob],
                                                                     list[list[Job]]]:
    """The small files of ``jobs`` (for the ``FileOutbox``) and the messages of the rest:
    folders to list grouped, everything else one to a message."""
    if limits is None:
        return [], [[job] for job in jobs]
    files: list[FetchJob] = []
    messages: list[list[Job]] = []
    folders = [j for j in jobs if isinstance(j, ListJob)]
    step = max(1, limits.folders)
    messages += [list(folders[i:i + step]) for i in range(0, len(folders), step)]
    for job in jobs:
        if isinstance(job, ListJob):
            continue
        if small(job, limits):
            files.append(job)
        else:
            messages.append([job])
    return files, messages


def encode_message(jobs: Sequence[Job]) -> bytes:
    """One message body for ``jobs`` (all of one queue): a single job's own body, or a batch."""
    if len(jobs) == 1:
        return encode_job(jobs[0])
    kind, key = ("lists", "folders") if isinstance(jobs[0], ListJob) else ("batch", "files")
    return json.dumps({"v": SCHEMA_VERSION, "t": kind, key: [fields_of(j) for j in jobs]},
                      separators=(",", ":")).encode()


def decode_message(raw: bytes) -> list[Job]:
    """The jobs a message carries, in order; ProtocolError for one that cannot be read."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"message is not valid JSON: {exc}") from exc
    kind = body.get("t") if isinstance(body, dict) else None
    if kind not in ("batch", "lists"):
        return [job_from_dict(body)]
    if body.get("v") != SCHEMA_VERSION:
        job_from_dict(body)  # raises the usual schema error
    cls: type[FetchJob] | type[ListJob]
    cls, key = (FetchJob, "files") if kind == "batch" else (ListJob, "folders")
    parts = body.get(key)
    if (set(body) != {"v", "t", key} or not isinstance(parts, list) or not parts
            or not all(isinstance(f, dict) for f in parts)):
        raise ProtocolError(f"a batch message needs a non-empty list of {key} and nothing else")
    try:
        return [cls(**f) for f in parts]
    except TypeError as exc:
        raise ProtocolError(f"message has unexpected fields: {exc}") from exc


def in_jobs(depths: Mapping[str, QueueDepth], topology: Topology,
            carried: Carriage) -> dict[str, QueueDepth]:
    """``depths`` with the fetch queues' jobs per message told (from what was carried; None
    when nothing was, so a reading is at least its message count). Retry tiers hold single
    jobs: a job of a batch is retried on its own."""
    per = carried.per_message()
    fetch = set(topology.fetch_queues)
    return {q: replace(d, per_message=per) if q in fetch else d for q, d in depths.items()}


@dataclass
class _Filling(Generic[T]):
    """Items gathered for one message, and the signal that it was sent (confirmed)."""

    sent: asyncio.Future[None]
    items: list[T] = field(default_factory=list)
    size: int = 0


class _Outbox(Generic[T]):
    """Items gathered per key for up to ``window_s`` and sent as one message; whoever added
    to it awaits that message's confirm, or its failure. ``_send`` makes the message."""

    what = "a message"  # for the error of a cancelled send

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._open: dict[str, _Filling[T]] = {}
        self._sending: set[asyncio.Task[None]] = set()

    def _filling(self, key: str) -> _Filling[T]:
        filling = self._open.get(key)
        if filling is None:
            loop = asyncio.get_running_loop()
            filling = self._open[key] = _Filling(loop.create_future())
            loop.call_later(self._window_s, self._flush, key, filling)
        return filling

    async def _send(self, key: str, items: list[T]) -> None:
        raise NotImplementedError

    def _flush(self, key: str, filling: _Filling[T]) -> None:
        if self._open.get(key) is not filling:
            return  # sent already, when it was full
        del self._open[key]
        task = asyncio.ensure_future(self._send(key, filling.items))
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


SendMessage = Callable[[str, list[Job]], Awaitable[None]]


class FileOutbox(_Outbox[FetchJob]):
    """Small files of pages listed at about the same time, packed into shared messages.

    ``send`` returns once every message carrying one of its files is confirmed and raises if
    one failed; the folder is then listed again, and its files already published are skipped
    by the fetchers as already current.
    """

    what = "a batch of files"

    def __init__(self, topology: Topology, limits: BatchLimits, publish: SendMessage) -> None:
        super().__init__(limits.file_window_s)
        self._topology = topology
        self._limits = limits
        self._publish = publish

    async def send(self, files: Sequence[FetchJob]) -> None:
        most, most_bytes = self._limits.files, self._limits.bytes
        waits: list[asyncio.Future[None]] = []
        for job in files:
            queue = self._topology.queue_for(job)
            filling = self._filling(queue)
            if filling.items and (len(filling.items) >= most
                                  or filling.size + job.size > most_bytes):
                self._flush(queue, filling)
                filling = self._filling(queue)
            filling.items.append(job)
            filling.size += job.size
            if filling.sent not in waits:
                waits.append(filling.sent)
        for queue, filling in list(self._open.items()):
            if len(filling.items) >= most:
                self._flush(queue, filling)
        for sent in waits:
            await asyncio.shield(sent)

    async def _send(self, key: str, items: list[FetchJob]) -> None:
        await self._publish(key, list(items))


class EventOutbox(_Outbox[dict[str, Any]]):
    """File events of jobs settled close together, sent as one event per kind (``files``
    instead of ``path`` and ``size``); an event alone in its window goes out as it is. Each
    sender returns once the event carrying its file is confirmed (at least once, as one
    event per file would be)."""

    what = "file events"

    def __init__(self, limits: BatchLimits,
                 publish: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        super().__init__(limits.event_window_s)
        self._most = limits.event_files
        self._publish = publish

    async def send(self, event: dict[str, Any]) -> None:
        kind = str(event.get("event", ""))
        filling = self._filling(kind)
        filling.items.append(event)
        if len(filling.items) >= self._most:
            self._flush(kind, filling)
        await asyncio.shield(filling.sent)

    async def _send(self, key: str, items: list[dict[str, Any]]) -> None:
        if len(items) == 1:
            await self._publish(items[0])
            return
        first = {k: v for k, v in items[0].items() if k not in FILE_FIELDS}
        await self._publish({**first, "files": [{k: e[k] for k in FILE_FIELDS if k in e}
                                                for e in items]})


__all__ = ["COALESCED_EVENTS", "BatchLimits", "EventOutbox", "FileOutbox", "decode_message",
           "encode_message", "in_jobs", "small", "split"]
