"""Presence reports between the workers of a job (mirror/control.py), over the in-memory
broker: a worker that runs out of work tells the others at once, not at its next beat."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from mirror.broker.memory import MemoryBroker
from mirror.control import Presence


async def wait_for(condition: Callable[[], object], what: str, timeout: float = 10) -> None:
    """Until ``condition()`` holds; ``timeout`` (well under the 30 s beats here) only ends a
    failing test."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


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
    heard_at: list[float] = []

    def on_report(m: dict[str, Any]) -> None:
        if m.get("worker") == fetcher.worker_id:
            reports.append(m.get("held", -1))
            heard_at.append(loop.time())

    def held_by_fetcher() -> int | None:
        report = lister.peers().get(fetcher.worker_id)
        return None if report is None else int(report["held"])

    await broker.subscribe(on_report)
    await lister.start()
    await fetcher.start()
    try:
        await wait_for(lambda: held_by_fetcher() == 3, "the first beats")
        assert not woken
        held[0] = 0
        nudged_at = loop.time()
        fetcher.nudge()
        # Heard within the wait, so not by the next beat, 30 s away.
        await wait_for(lambda: held_by_fetcher() == 0 and woken, "the nudge")
        assert reports == [3, 0]
        held[0] = 2  # more work came, and was reported (as by a beat) ...
        await fetcher.announce()
        held[0] = 0  # ... and was done within 0.5 s of the last nudge
        fetcher.nudge()  # so soon: held back (at most one report every 0.5 s here) ...
        assert reports == [3, 0, 2] and held_by_fetcher() == 2
        # ... but sent at the end of that interval, not dropped
        await wait_for(lambda: len(reports) == 4, "the held-back report")
        assert reports == [3, 0, 2, 0] and held_by_fetcher() == 0
        assert heard_at[3] - nudged_at >= 0.5 - 0.01  # not before the interval was over
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
        await wait_for(lambda: fetcher.worker_id in listener.peers(), "the first beats")
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
