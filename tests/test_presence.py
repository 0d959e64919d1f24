"""Presence reports between the workers of a job (mirror/control.py), over the in-memory
broker: a worker that runs out of work tells the others at once, not at its next beat."""

from __future__ import annotations

import asyncio

from mirror.broker.memory import MemoryBroker
from mirror.control import Presence


async def test_a_worker_out_of_work_is_heard_before_its_next_beat() -> None:
    broker = MemoryBroker()
    held = [3]
    woken: list[float] = []
    loop = asyncio.get_running_loop()
    fetcher = Presence(broker, "fetch", ["q"], lambda: (held[0], 10), interval_s=30,
                       nudge_interval_s=0.5)
    lister = Presence(broker, "list", ["l"], lambda: (0, 0), interval_s=30,
                      on_idle_peer=lambda: woken.append(loop.time()))
    reports: list[int] = []
    await broker.subscribe(lambda m: reports.append(m.get("held", -1))
                           if m.get("worker") == fetcher.worker_id else None)
    await lister.start()
    await fetcher.start()
    try:
        await asyncio.sleep(0.05)  # the first beats: the fetcher holds 3 jobs
        assert lister.peers()[fetcher.worker_id]["held"] == 3 and not woken
        held[0] = 0
        started = loop.time()
        fetcher.nudge()
        await asyncio.sleep(0.05)
        assert lister.peers()[fetcher.worker_id]["held"] == 0
        assert woken and woken[0] - started < 0.05  # 30 s before the next beat
        assert reports == [3, 0]
        held[0] = 2  # more work came, and was reported (as by a beat) ...
        await fetcher.announce()
        held[0] = 0  # ... and was done within 0.5 s of the last nudge
        fetcher.nudge()  # so soon: held back (at most one report every 0.5 s here) ...
        await asyncio.sleep(0.02)
        assert reports == [3, 0, 2] and lister.peers()[fetcher.worker_id]["held"] == 2
        await asyncio.sleep(0.7)  # ... but sent at the end of that interval, not dropped
        assert reports == [3, 0, 2, 0] and lister.peers()[fetcher.worker_id]["held"] == 0
        assert len(woken) == 2
    finally:
        await fetcher.stop()
        await lister.stop()
        await broker.close()


async def test_a_report_after_stopped_does_not_bring_a_worker_back() -> None:
    """A report sent before "stopped" may arrive after it (a report between beats still on its
    way): the peer stays gone instead of holding up the end of the job until it goes stale."""
    broker = MemoryBroker()
    listener = Presence(broker, "list", ["l"], lambda: (0, 0), interval_s=30)
    fetcher = Presence(broker, "fetch", ["q"], lambda: (0, 5), interval_s=30)
    await listener.start()
    await fetcher.start()
    try:
        await asyncio.sleep(0.05)
        assert fetcher.worker_id in listener.peers()
        late = {"type": "presence", "worker": fetcher.worker_id, "role": "fetch",
                "queues": ["q"], "held": 0, "taken": 5, "state": "running"}
        await fetcher.stop()
        assert fetcher.worker_id not in listener.peers()
        await broker.broadcast(late)
        assert fetcher.worker_id not in listener.peers()
        assert await listener.fresh_reports(timeout_s=1) == {}  # nobody left to wait for
    finally:
        await listener.stop()
        await broker.close()
