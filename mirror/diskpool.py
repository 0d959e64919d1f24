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
import contextlib
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
_Call = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]"]
_Batch = tuple[asyncio.AbstractEventLoop, list[_Call]]


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
        # Calls that run alone; the batches have threads of their own (below).
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="disk")
        self._batch_max = batch_max
        self._batches = batches  # running at once; more calls wait for one to finish
        self._running = 0
        self._pending: list[_Call] = []
        self._flushing = False
        # A batch goes to a thread through a plain queue and comes back in one loop callback:
        # ``run_in_executor`` (its futures, their chaining and the executor's bookkeeping)
        # was a tenth of a small-file fetch process's loop.
        self._queue: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._serve, name=f"disk-batch-{i}",
                                          daemon=True) for i in range(batches)]
        for thread in self._threads:
            thread.start()
        self._closed = False

    async def run(self, fn: Callable[..., T], *args: Any, alone: bool = False) -> T:
        loop = asyncio.get_running_loop()
        if alone:
            return await loop.run_in_executor(self._executor, fn, *args)
        if self._closed:
            raise RuntimeError("the disk pool stopped")
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((fn, args, future))
        if not self._flushing:
            self._flushing = True
            loop.call_soon(self._flush, loop)  # after the other callbacks of this turn
        return await future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._flushing = False
        if self._closed:
            for _, _, future in self._pending:
                _fail(future, RuntimeError("the disk pool stopped"))
            self._pending.clear()
            return
        # While the threads are busy the calls gather into larger batches: under load a
        # thread goes from batch to batch without sleeping, and fewer wake-ups are paid.
        while self._pending and self._running < self._batches:
            batch = self._pending[:self._batch_max]
            del self._pending[:self._batch_max]
            self._running += 1
            self._queue.put((loop, batch))

    def _serve(self) -> None:
        """A batch thread: run batches until told to stop."""
        while (item := self._queue.get()) is not None:
            loop, batch = item
            results = _run_batch(batch)
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for these
                loop.call_soon_threadsafe(self._finished, loop, batch, results)

    def _finished(self, loop: asyncio.AbstractEventLoop, batch: list[_Call],
                  results: list[tuple[bool, Any]]) -> None:
        self._running -= 1
        _settle(batch, results)
        self._flush(loop)

    def shutdown(self, wait: bool = True) -> None:
        if not self._closed:
            self._closed = True
            for _ in self._threads:
                self._queue.put(None)
            if wait:
                for thread in self._threads:
                    thread.join()
            for _, batch in self._drained():
                for _, _, future in batch:
                    if not future.done():
                        future.get_loop().call_soon_threadsafe(
                            _fail, future, RuntimeError("the disk pool stopped"))
        self._executor.shutdown(wait=wait)

    def _drained(self) -> list[_Batch]:
        left: list[_Batch] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return left
            if item is not None:
                left.append(item)

    def __enter__(self) -> DiskPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _settle(batch: list[_Call], results: list[tuple[bool, Any]]) -> None:
    for (_, _, future), (ok, value) in zip(batch, results, strict=True):
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
