"""How a bucket-mirror process runs its event loop, and how it tunes the collector."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def tune_gc() -> None:
    """Tune the garbage collector of the whole process for moving many small files.

    Each file makes a few hundred short-lived objects (tasks, futures, frames, headers); with
    the default gen-0 threshold of 700 the collector ran every few files, about 3% of a
    worker's CPU in profiles. What is loaded by now lives as long as the process: freeze it.

    Process-wide, so only a process's own entry point may call it: the ``mirror`` command
    (``mirror.cli.main``) and a fetch process (``mirror.fetchchild.child``). Library code and
    tests that run mirror's coroutines keep Python's settings.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on uvloop where it is installed, else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return asyncio.run(coro)
    return uvloop.run(coro)
