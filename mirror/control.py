"""Workers of one job hear each other: presence reports, and whether the whole job is done.

Plain AMQP reports a queue's ready messages but not the ones a consumer holds, so an empty
queue does not mean the job is done: another worker may be listing a page that will publish
a thousand files. Every worker therefore broadcasts, about once a second, how many jobs it
holds and how many it has taken in total. The job is done when all its pending queues are empty
and every live worker, in a report sent after that was seen, holds nothing and has taken
nothing new; the queues are then checked once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mirror.broker import Broker, Topology

log = logging.getLogger(__name__)

NUDGE_INTERVAL_S = 0.05  # out-of-beat reports, at most this often
Snapshot = Callable[[], tuple[int, int]]  # (jobs held now, jobs taken since start)


@dataclass
class _Heard:
    at: float  # monotonic time of receipt
    report: dict[str, Any]


class Presence:
    def __init__(self, broker: Broker, role: str, queues: list[str], snapshot: Snapshot,  # noqa: PLR0913  (the worker's hooks, each optional)
                 interval_s: float = 1.0, on_stop: Callable[[str], None] | None = None,
                 counts: Callable[[], dict[str, int]] | None = None,
                 on_idle_peer: Callable[[], None] | None = None,
                 nudge_interval_s: float = NUDGE_INTERVAL_S,
                 controls: Callable[[], list[dict[str, Any]]] | None = None) -> None:
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._broker = broker
        self._role = role
        self._queues = queues
        self._snapshot = snapshot
        self._interval = interval_s
        self._on_stop = on_stop
        self._counts = counts
        self._controls = controls  # what the worker's adaptive rates and limits are doing
        self._on_idle_peer = on_idle_peer
        self._nudged = 0.0
        self._nudge_interval = nudge_interval_s
        self._deferred: asyncio.TimerHandle | None = None
        self._peers: dict[str, _Heard] = {}
        self._task: asyncio.Task[None] | None = None
        self._replies: set[asyncio.Task[None]] = set()
        self._heard = asyncio.Event()
        self._stopped = False
        self._gone: set[str] = set()  # peers that said "stopped": later reports are stale
        self.state = "running"  # "stopping" once the worker drains

    @property
    def queues(self) -> list[str]:
        return list(self._queues)

    @property
    def ttl_s(self) -> float:
        """A worker not heard of for this long is gone (its held jobs went back on its exit)."""
        return 3 * self._interval + 2.0

    async def start(self) -> None:
        await self._broker.subscribe(self._on_message)
        self._task = asyncio.create_task(self._beat())

    async def stop(self) -> None:
        self._stopped = True
        if self._deferred is not None:
            self._deferred.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # Reports still on their way must not follow "stopped" (a peer would take this worker
        # for alive again and wait for it until its reports grow stale): they are let finish,
        # not cancelled, since a publish cancelled half-way closes its channel.
        if self._replies:
            _, late = await asyncio.wait(set(self._replies), timeout=5)
            for task in late:
                task.cancel()
        with contextlib.suppress(Exception):
            await self.announce("stopped")

    async def announce(self, state: str | None = None) -> None:
        held, taken = self._snapshot()
        await self._broker.broadcast({
            "type": "presence", "worker": self.worker_id, "role": self._role,
            "queues": self._queues, "held": held, "taken": taken, "state": state or self.state,
            "pid": os.getpid(), "host": socket.gethostname(), "time": time.time(),
            "counts": self._counts() if self._counts is not None else {},
            "controls": self._controls() if self._controls is not None else [],
        })

    async def _beat(self) -> None:
        while True:
            try:
                await self.announce()
            except Exception as exc:  # the broker may be reconnecting; keep beating
                log.debug("presence report not sent: %s", exc)
            await asyncio.sleep(self._interval)

    def _on_message(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "presence" and isinstance(msg.get("worker"), str):
            if msg["worker"] != self.worker_id and msg["worker"] not in self._gone:
                if msg.get("state") == "stopped":
                    self._gone.add(msg["worker"])
                old = self._peers.get(msg["worker"])
                self._peers[msg["worker"]] = _Heard(time.monotonic(), msg)
                self._heard.set()
                if (self._on_idle_peer is not None and not msg.get("held")
                        and (old is None or old.report.get("held"))):
                    self._on_idle_peer()  # a peer just ran out of work: the job may be done
        elif kind == "ping" and msg.get("from") != self.worker_id and not self._stopped:
            task = asyncio.create_task(self.announce())
            self._replies.add(task)
            task.add_done_callback(self._replies.discard)
        elif kind == "stop" and self._on_stop is not None:
            self._on_stop(str(msg.get("reason") or "stop requested"))

    def nudge(self) -> None:
        """Report now, between beats (this worker just ran out of work): whoever waits for
        the job to be done hears it at once instead of at the next beat."""
        if self._task is None or self._stopped:
            return
        now = time.monotonic()
        wait = self._nudged + self._nudge_interval - now
        if wait > 0:
            # Too soon after the last one: report at the end of the interval instead. Dropped,
            # the news that this worker ran out of work waited for the next beat, and every
            # peer with it for the end of the job (0.5-1 s at the end of each run).
            if self._deferred is None:
                self._deferred = asyncio.get_running_loop().call_later(wait, self._nudge_late)
            return
        self._nudged = now
        task = asyncio.create_task(self._announce_quietly())
        self._replies.add(task)
        task.add_done_callback(self._replies.discard)

    def _nudge_late(self) -> None:
        self._deferred = None
        self.nudge()

    async def _announce_quietly(self) -> None:
        try:
            await self.announce()
        except Exception as exc:  # the next beat tells it anyway
            log.debug("presence report not sent: %s", exc)

    def peers(self, since: float | None = None) -> dict[str, dict[str, Any]]:
        """Live peers (not this worker), optionally only those heard after ``since``."""
        now = time.monotonic()
        return {
            w: h.report for w, h in self._peers.items()
            if now - h.at <= self.ttl_s and h.report.get("state") != "stopped"
            and (since is None or h.at > since)
        }

    async def fresh_reports(self, timeout_s: float) -> dict[str, dict[str, Any]] | None:
        """Ask every peer for a report now; None if some live peer did not answer in time."""
        mark = time.monotonic()
        wanted = set(self.peers())
        await self._broker.broadcast({"type": "ping", "from": self.worker_id})
        deadline = mark + timeout_s
        while True:
            fresh = self.peers(since=mark)
            # A peer that stopped meanwhile (its report says so) answers no more: its held
            # jobs went back to the queues, which the caller looks at again. Waiting for it
            # held the end of a job up by the whole timeout.
            if wanted & set(self.peers()) <= set(fresh):
                return fresh
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._heard.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._heard.wait(), left)


async def job_done(broker: Broker, topology: Topology, presence: Presence,  # noqa: PLR0911, PLR0912  (each return is one way the job is not done yet, in the order that is safe)
                   own: Snapshot) -> bool:
    """True only when no work of the job is queued, delayed or held by any worker."""
    if own()[0]:
        return False
    depths = await broker.depths()
    pending = [depths[q] for q in topology.pending_queues if q in depths]
    if any(d.ready for d in pending):
        return False
    if pending and all(d.unacked is not None for d in pending):
        return all(d.unacked == 0 for d in pending)  # the broker knows exactly (embedded)
    before = presence.peers()
    if any(r.get("held") for r in before.values()):
        return False
    taken_before = own()[1]
    fresh = await presence.fresh_reports(timeout_s=3 * presence.ttl_s / 4)
    if fresh is None:
        return False
    for worker, report in fresh.items():
        old = before.get(worker)
        if report.get("held") or old is None or report.get("taken") != old.get("taken"):
            return False
    if own() != (0, taken_before):
        return False
    depths = await broker.depths()
    consumers_of: dict[str, int] = {}
    for report in [*fresh.values(), {"queues": presence.queues}]:
        for q in report.get("queues", []):
            consumers_of[q] = consumers_of.get(q, 0) + 1
    for q in topology.pending_queues:
        d = depths.get(q)
        if d is None:
            continue
        if d.ready:
            return False
        if d.consumers is not None and d.consumers > consumers_of.get(q, 0):
            log.info("queue %s has %d consumers but only %d workers report it; waiting",
                     q, d.consumers, consumers_of.get(q, 0))
            return False
    return True
