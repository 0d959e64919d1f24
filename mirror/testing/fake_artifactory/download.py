"""Downloads as Artifactory serves them: ``GET``/``HEAD /REPO/PATH`` with ``X-Checksum-Sha1``,
``-Md5`` and ``-Sha256``, ``ETag`` (the SHA-1), ``Last-Modified``, one ``Range`` (206, or 416
with ``bytes */SIZE``), bodies streamed (optionally slowly), and the faults a body can play."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from mirror.testing.fake_artifactory.core import CHUNK, FakeCore, Refused
from mirror.testing.fake_upyun.core import content_type, drop, hang_up, http_date


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """The one range asked for, or None to send the whole file (several ranges, a unit we do
    not know); Refused 416 when it lies beyond the file."""
    unit, _, spec = value.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if first:
            start, end = int(first), int(last) if last else size - 1
        else:
            start, end = max(0, size - int(last)), size - 1  # the last N bytes
    except ValueError:
        return None
    if start >= size or end < start:
        raise Refused(416, "Requested Range Not Satisfiable",
                      {"Content-Range": f"bytes */{size}"})
    return start, min(end, size - 1)


class Download(FakeCore):
    async def _download(self, request: web.Request, path: str, target: Path,
                        info: os.stat_result) -> web.StreamResponse:
        head = request.method == "HEAD"
        fault = self._fault(f"{request.method}|{path}")
        if fault in ("429", "503"):
            raise Refused(int(fault), "Too Many Requests" if fault == "429"
                          else "Service Unavailable")
        if fault == "drop" and not head:
            return drop(request)
        size = info.st_size
        sums = await self.checksums(target, info)
        headers = {"Content-Type": content_type(target.name), "ETag": sums["sha1"],
                   "Last-Modified": http_date(info.st_mtime), "Accept-Ranges": "bytes",
                   "X-Checksum-Sha1": sums["sha1"], "X-Checksum-Md5": sums["md5"],
                   "X-Artifactory-Filename": quote(target.name),
                   "Content-Disposition": f"attachment; filename*=UTF-8''{quote(target.name)}"}
        if "sha256" in sums:
            headers["X-Checksum-Sha256"] = sums["sha256"]
        start, end, status = 0, size - 1, 200
        wanted = request.headers.get("Range")
        chosen = parse_range(wanted, size) if wanted and size else None
        if chosen is not None:
            (start, end), status = chosen, 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1 if size else 0
        stream = web.StreamResponse(status=status, headers=headers)
        stream.content_length = length
        if head:
            return stream
        limit = length // 2 if fault == "truncate" else length
        try:
            await stream.prepare(request)
            self.stats.bodies[path] = self.stats.bodies.get(path, 0) + 1
            sent = await self._stream_file(stream, target, start, limit, path in self.corrupt)
        except (ConnectionError, RuntimeError):
            return stream  # the client went away
        self.stats.bytes_sent += sent
        if sent < length:
            hang_up(request)  # the body ends short of its Content-Length
            return stream
        self.stats.complete[path] = self.stats.complete.get(path, 0) + 1
        with contextlib.suppress(ConnectionError, RuntimeError):
            await stream.write_eof()
        return stream

    async def _stream_file(self, stream: web.StreamResponse, path: Path, start: int,
                           length: int, spoil: bool) -> int:
        rate = self.faults.body_rate_bps
        step = CHUNK if rate <= 0 else max(1, min(CHUNK, int(rate / 10)))
        loop = asyncio.get_running_loop()
        sent = 0
        fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
        try:
            began = time.monotonic()
            while sent < length:
                block = await loop.run_in_executor(None, os.pread, fd, min(step, length - sent),
                                                   start + sent)
                if not block:
                    break
                if spoil and sent == 0:
                    block = bytes([block[0] ^ 0xFF]) + block[1:]
                try:
                    await stream.write(block)
                except ConnectionError:
                    if sent + len(block) < length:
                        raise
                    # A client that has read every declared byte may close first.
                sent += len(block)
                if rate > 0 and sent < length:
                    ahead = sent / rate - (time.monotonic() - began)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        finally:
            await asyncio.to_thread(os.close, fd)
        return sent
