"""The line protocol between a worker and its fetch processes (``mirror.fetchpool``): one JSON
line per request and per answer, the lines of one turn of the loop written together, and an
error carried across as its class, message and detail."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from typing import Any

from mirror import errors
from mirror.errors import ErrorDetail, MirrorError, SourceUnavailable

LINE_LIMIT = 64 * 1024 * 1024


class Lines:
    """Lines for a pipe, written together once per turn of the loop.

    One write per job and one per answer was a system call and a wake-up of the other side
    for every small file; with many transfers running, a turn of the loop sends dozens at once.
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._buffer: list[bytes] = []

    async def send(self, line: bytes) -> None:
        if not self._buffer:
            asyncio.get_running_loop().call_soon(self._flush)
        self._buffer.append(line)
        await self._writer.drain()  # waits only while the pipe is full

    def _flush(self) -> None:
        lines, self._buffer = self._buffer, []
        if not self._writer.is_closing():
            self._writer.write(b"".join(lines))


def error_from(reply: Mapping[str, Any]) -> MirrorError:
    cls = getattr(errors, str(reply.get("error")), None)
    message = str(reply.get("message", "error in a fetch process"))
    detail = ErrorDetail(**reply.get("detail", {}))
    if isinstance(cls, type) and issubclass(cls, errors.RateLimited):
        return cls(message, detail, reply.get("retry_after_s"))
    if isinstance(cls, type) and issubclass(cls, MirrorError):
        return cls(message, detail)
    return SourceUnavailable(f"fetch process: {message}")  # a bug there: retried, then parked


def reply_for(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, MirrorError):
        reply: dict[str, Any] = {"error": type(exc).__name__, "message": exc.message,
                                 "detail": dataclasses.asdict(exc.detail)}
        if isinstance(exc, errors.RateLimited):
            reply["retry_after_s"] = exc.retry_after_s
        return reply
    return {"error": type(exc).__name__, "message": f"{type(exc).__name__}: {exc}"}


__all__ = ["LINE_LIMIT", "Lines", "error_from", "reply_for"]
