"""The disk pool: calls made in one turn of the loop run as one batch in one thread."""

from __future__ import annotations

import asyncio
import threading

import pytest

from mirror.diskpool import DiskPool


async def test_calls_of_one_turn_share_a_thread_and_each_gets_its_own_result() -> None:
    seen: list[tuple[int, int]] = []

    def work(i: int) -> int:
        seen.append((i, threading.get_ident()))
        if i == 7:
            raise ValueError("seven")
        return i * i

    with DiskPool(4, batch_max=10) as pool:
        results = await asyncio.gather(*(pool.run(work, i) for i in range(25)),
                                       return_exceptions=True)
    assert [r for i, r in enumerate(results) if i != 7] == [i * i for i in range(25) if i != 7]
    assert isinstance(results[7], ValueError)  # only its own caller sees the failure
    # 25 calls of one turn, 10 to a batch: three batches, each run by one thread in order.
    batches = [[i for i, _ in seen if i // 10 == b] for b in range(3)]
    assert batches == [list(range(0, 10)), list(range(10, 20)), list(range(20, 25))]
    for b in range(3):
        assert len({t for i, t in seen if i // 10 == b}) == 1


async def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    gate = threading.Event()

    def slow() -> str:
        gate.wait(5)
        return "slow"

    with DiskPool(2) as pool:
        first = asyncio.ensure_future(pool.run(slow))
        second = asyncio.ensure_future(pool.run(lambda: "quick"))
        await asyncio.sleep(0.05)
        first.cancel()
        gate.set()
        assert await second == "quick"
        with pytest.raises(asyncio.CancelledError):
            await first


async def test_alone_runs_beside_a_busy_batch() -> None:
    gate = threading.Event()

    with DiskPool(2) as pool:
        blocked = asyncio.ensure_future(pool.run(gate.wait, 5))
        await asyncio.sleep(0.05)
        # A long call (an fsync) given its own thread is not queued behind the batch.
        assert await asyncio.wait_for(pool.run(lambda: 42, alone=True), 2) == 42
        gate.set()
        assert await blocked is True
