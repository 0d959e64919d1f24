"""How much fetch work the queues hold, in files (and bytes where known).

The embedded broker holds the jobs themselves and counts their files and bytes exactly
(``QueueDepth.ready_files`` and the like). RabbitMQ counts messages only, and its broker packs
small files several to a message: it tells about how many jobs a message of a queue carries
(``QueueDepth.per_message``, from ``Broker.in_jobs``), so there the files are an estimate.

Shared by the live view of a run (``mirror.progress``) and ``mirror status``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mirror.broker import QueueDepth, Topology


@dataclass(frozen=True)
class Backlog:
    ready: int  # files queued in the fetch queues and waiting in the retry tiers
    held: int  # files in messages handed to workers, not yet settled; 0 where unknown
    held_known: bool  # False over plain AMQP (no count of unacked messages)
    exact: bool  # counted file by file (embedded broker), not scaled from messages
    lower_bound: bool = False  # one file per message counted: the files per message unknown
    ready_bytes: int | None = None  # listed sizes of the ready files (exact only)
    held_bytes: int | None = None
    listings: int | None = None  # folder listings queued, held or waiting to retry (exact)


def fetch_backlog(depths: Mapping[str, QueueDepth], topology: Topology) -> Backlog:
    """The files the job's fetch queues and retry tiers hold. Without exact counts each
    queue's messages are multiplied by its jobs per message (where that is not known, by 1:
    a lower bound, since every message carries at least one job)."""
    work = [depths[q] for q in topology.fetch_queues if q in depths]
    retry = [depths[q] for q in topology.retry_queues if q in depths]
    counted = [d for d in (*work, *retry)
               if d.ready_files is not None and d.unacked_files is not None]
    if counted and len(counted) == len(work) + len(retry):
        listings = sum(d.listings or 0 for d in retry)
        list_depth = depths.get(topology.list_queue)
        if list_depth is not None:
            listings += list_depth.listings or 0
        return Backlog(ready=sum(d.ready_files or 0 for d in counted),
                       held=sum(d.unacked_files or 0 for d in counted), held_known=True,
                       exact=True, ready_bytes=sum(d.ready_bytes or 0 for d in counted),
                       held_bytes=sum(d.unacked_bytes or 0 for d in counted),
                       listings=listings)
    queues = (*work, *retry)
    held_known = all(d.unacked is not None for d in queues)
    return Backlog(
        ready=sum(d.ready_jobs for d in queues),
        held=round(sum((d.unacked or 0) * (d.per_message or 1.0) for d in queues)),
        held_known=held_known, exact=False,
        lower_bound=any(d.per_message is None for d in queues))


__all__ = ["Backlog", "fetch_backlog"]
