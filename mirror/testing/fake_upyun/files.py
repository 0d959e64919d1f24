"""Files as UpYun serves them: HEAD metadata, GET with ranges, MD5 and ETag, bodies streamed
(optionally slowly), and the faults a body can play (cut short, dropped, overridden)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import stat
import time
import uuid
from pathlib import Path

from aiohttp import web

from mirror.testing.fake_upyun.core import (
    CHUNK,
    FakeCore,
    content_type,
    hang_up,
    http_date,
    parse_range,
)


class Files(FakeCore):
    async def _usage(self, request: web.Request) -> web.Response:
        def total() -> int:
            if self.synthetic is not None:
                return self.synthetic.total_bytes()
            return sum(os.lstat(os.path.join(d, n)).st_size
                       for d, _, names in os.walk(self.root) for n in names)

        return web.Response(text=str(await asyncio.to_thread(total)),
                            headers={"X-Request-Id": uuid.uuid4().hex})

    async def _head(self, request: web.Request, key: str, path: Path,
                    info: os.stat_result | None, is_dir: bool) -> web.StreamResponse:
        # A HEAD answer has no body to cut: only 429 and 503 apply to it.
        answer = self._simple_fault(self._fault("HEAD", key), request, True)
        if answer is not None:
            return answer
        mtime = int(info.st_mtime) if info is not None else 0
        headers = {"x-upyun-file-type": "folder" if is_dir else "file",
                   "x-upyun-file-date": str(mtime), "X-Request-Id": uuid.uuid4().hex}
        if not is_dir and info is not None:
            md5 = await self._md5(path, info)
            headers.update({
                "x-upyun-file-size": str(info.st_size), "Content-Md5": md5,
                "ETag": f'"{md5}"', "Content-Type": content_type(path.name),
                "Last-Modified": http_date(info.st_mtime),
            })
        return web.Response(headers=headers)

    async def _get(self, request: web.Request, key: str, path: Path,  # noqa: PLR0912  (one branch per fault it can play)
                   info: os.stat_result | None) -> web.StreamResponse:
        fault = self._fault("GET", key)
        answer = self._simple_fault(fault, request, False)
        if answer is not None:
            return answer
        override = self.body_override.get(key)
        if info is None or not stat.S_ISREG(info.st_mode):
            data = b""
            size, mtime, md5 = 0, time.time(), hashlib.md5(b"").hexdigest()
        else:
            size, mtime, md5 = info.st_size, info.st_mtime, await self._md5(path, info)
        start, end = 0, size - 1
        status = 200
        rng = request.headers.get("Range")
        if rng and size:
            start, end = parse_range(rng, size)
            status = 206
        headers = {"Content-Type": content_type(path.name), "ETag": f'"{md5}"',
                   "Content-Md5": md5, "Last-Modified": http_date(mtime),
                   "X-Request-Id": uuid.uuid4().hex}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        declared = end - start + 1
        if override is not None:
            if info is not None and stat.S_ISREG(info.st_mode):
                data = (await self._read(path, info))[start:end + 1]
            else:
                data, declared = b"", -1
            data, headers = override(data, headers)
            if declared < 0 and headers.get("Content-Md5") == md5:  # describe made-up data
                made_up = hashlib.md5(data).hexdigest()
                headers.update({"Content-Md5": made_up, "ETag": f'"{made_up}"'})
            # Without its own Content-Length, an override keeps the real one (a short body
            # is then cut short); a made-up file declares what it sends.
            declared = int(headers.pop("Content-Length", len(data) if declared < 0
                                       else declared))
        stream = web.StreamResponse(status=status, headers=headers)
        stream.content_length = declared
        limit = declared // 2 if fault == "truncate" else declared
        try:
            await stream.prepare(request)
            self.stats.bodies[key] = self.stats.bodies.get(key, 0) + 1
            if override is not None:
                sent = min(len(data), limit)
                await stream.write(data[:sent])
            elif self.synthetic is not None and info is not None:
                await stream.write(self.synthetic.content(info.st_ino)[start:start + limit])
                sent = limit
            else:
                sent = await self._stream_file(stream, path, start, limit)
        except (ConnectionError, RuntimeError):
            return stream  # the client went away
        self.stats.bytes_sent += sent
        if sent < declared:
            hang_up(request)  # the body ends short of its Content-Length
            return stream
        # Every declared byte is out: complete, even if the client, having read them all,
        # closes before the end of the response is flushed (as large downloads do).
        self.stats.complete[key] = self.stats.complete.get(key, 0) + 1
        with contextlib.suppress(ConnectionError, RuntimeError):
            await stream.write_eof()
        return stream

    async def _read(self, path: Path, info: os.stat_result) -> bytes:
        if self.synthetic is not None:
            return self.synthetic.content(info.st_ino)
        return await asyncio.to_thread(path.read_bytes)

    async def _stream_file(self, stream: web.StreamResponse, path: Path, start: int,
                           length: int) -> int:
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
                try:
                    await stream.write(block)
                except ConnectionError:
                    if sent + len(block) < length:
                        raise
                    # The last block was handed over; a client that has read every declared
                    # byte may close before the server's write returns (large downloads do).
                sent += len(block)
                if rate > 0 and sent < length:
                    ahead = sent / rate - (time.monotonic() - began)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        finally:
            await asyncio.to_thread(os.close, fd)
        return sent
