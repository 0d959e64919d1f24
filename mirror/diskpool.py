"""The threads that run blocking file work, fed a batch at a time.

A small file costs two calls into the disk threads (open the part file; write, stamp and
rename it). Handing each call to a thread on its own costs a thread wake-up there and a loop
wake-up back (futex and pipe traffic, GIL hand-overs): in profiles of 20,000 small files that
was more CPU than the file operations themselves. Here the calls made during one turn of the
event loop are gathered and run by one thread one after the other, and their results come back
in one loop callback. Calls that can take long (fsync, a large write) go to a thread of their
own with ``alone=True``, so that nothing quick waits behind them.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
_Call = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]"]


def _run_batch(calls: list[_Call]) -> list[tuple[bool, Any]]:
    """In a disk thread: run each call; one failing does not stop the others."""
    results: list[tuple[bool, Any]] = []
    for fn, args, _ in calls:
        try:
            results.append((True, fn(*args)))
        except Exception as exc:  # handed to the caller's await
            results.append((False, exc))
    return results


class DiskPool:
    def __init__(self, threads: int, *, batch_max: int = 32, batches: int = 2) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="disk")
        self._batch_max = batch_max
        self._batches = batches  # running at once; more calls wait for one to finish
        self._running = 0
        self._pending: list[_Call] = []
        self._flushing = False

    async def run(self, fn: Callable[..., T], *args: Any, alone: bool = False) -> T:
        loop = asyncio.get_running_loop()
        if alone:
            return await loop.run_in_executor(self._executor, fn, *args)
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((fn, args, future))
        if not self._flushing:
            self._flushing = True
            loop.call_soon(self._flush, loop)  # after the other callbacks of this turn
        return await future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._flushing = False
        # While the threads are busy the calls gather into larger batches: under load a
        # thread goes from batch to batch without sleeping, and fewer wake-ups are paid.
        while self._pending and self._running < self._batches:
            batch = self._pending[:self._batch_max]
            del self._pending[:self._batch_max]
            self._running += 1
            done = loop.run_in_executor(self._executor, _run_batch, batch)
            done.add_done_callback(functools.partial(self._finished, loop, batch))

    def _finished(self, loop: asyncio.AbstractEventLoop, batch: list[_Call],
                  done: asyncio.Future[list[tuple[bool, Any]]]) -> None:
        self._running -= 1
        _settle(batch, done)
        self._flush(loop)

    def shutdown(self, wait: bool = True) -> None:
        self._executor.shutdown(wait=wait)

    def __enter__(self) -> DiskPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _settle(batch: list[_Call], done: asyncio.Future[list[tuple[bool, Any]]]) -> None:
    if done.cancelled() or done.exception() is not None:
        # The pool was shut down under us (the loop is closing): fail every caller.
        error = done.exception() if not done.cancelled() else None
        for _, _, future in batch:
            if not future.done():
                future.set_exception(error or RuntimeError("the disk pool stopped"))
        return
    for (_, _, future), (ok, value) in zip(batch, done.result(), strict=True):
        if future.done():  # its caller was cancelled; the call ran anyway
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def disk_pool(concurrency: int) -> DiskPool:
    # Calls that run alone (fsync, large writes) each hold a thread: a pool a little wider
    # than the transfers keeps them from queueing.
    return DiskPool(max(4, concurrency + 4))


__all__ = ["DiskPool", "disk_pool"]
