"""Listings as UpYun gives them: text or JSON pages, ``x-list-iter`` paging ending in the
sentinel, ascending or descending, with per-folder overrides for hostile-input tests."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import stat
import uuid
from pathlib import Path

from aiohttp import web

from mirror.sources.upyun import LIST_END
from mirror.testing.fake_upyun.core import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    FakeCore,
    Item,
    Refused,
    content_type,
    hang_up,
)


class Listing(FakeCore):
    async def _items(self, key: str, path: Path) -> list[Item]:
        if self.synthetic is not None:  # not cached: a million-file bucket stays small here
            return [Item(*e) for e in self.synthetic.entries(key)]
        dir_mtime = (await asyncio.to_thread(os.stat, path)).st_mtime_ns
        cached = self._listings.get(key)
        if cached is not None and cached[0] == dir_mtime:
            return cached[1]

        def scan() -> list[Item]:
            out = []
            with os.scandir(path) as it:
                for e in it:
                    st = e.stat(follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        out.append(Item(e.name, True, 0, int(st.st_mtime)))
                    elif stat.S_ISREG(st.st_mode):
                        out.append(Item(e.name, False, st.st_size, int(st.st_mtime)))
            return sorted(out, key=lambda i: i.order)

        items = await asyncio.to_thread(scan)
        self._listings[key] = (dir_mtime, items)
        return items

    def _iter_token(self, key: str, item: Item) -> str:
        folders = "".join(f"/~{p}" for p in key.split("/")) if key else ""
        mark = "@~" if item.is_dir else "@#"
        raw = f"{self.bucket}{folders}/{mark}{item.name}"
        return base64.b64encode(raw.encode("utf-8", "surrogateescape")).decode()

    def _start_after(self, token: str, items: list[Item]) -> int:
        try:
            raw = base64.b64decode(token, validate=True).decode("utf-8", "surrogateescape")
        except (binascii.Error, ValueError) as exc:
            raise Refused(400, 40001005, "iter args invalid") from exc
        _, sep, last = raw.rpartition("/@")
        if not sep or not last or last[0] not in "#~":
            raise Refused(400, 40001005, "iter args invalid")
        marker = (1 if last[0] == "~" else 0, last[1:].encode("utf-8", "surrogateescape"))
        lo, hi = 0, len(items)
        while lo < hi:  # first item after the marker; the marker itself may be gone
            mid = (lo + hi) // 2
            if items[mid].order <= marker:
                lo = mid + 1
            else:
                hi = mid
        return lo

    async def _list(self, request: web.Request, key: str, path: Path) -> web.StreamResponse:
        token = request.headers.get("x-list-iter") or None
        fault = self._fault("LIST", key, token or "")
        answer = self._simple_fault(fault, request, False)
        if answer is not None:
            return answer
        override = self.listing_override.get(key)
        if override is not None:
            body, next_iter = override(token)
            self.stats.list_pages += 1
            headers = {"X-Request-Id": uuid.uuid4().hex}
            if next_iter:
                headers["x-upyun-list-iter"] = next_iter
            return web.Response(body=body, content_type="application/json", headers=headers)
        try:
            limit = int(request.headers.get("x-list-limit", DEFAULT_LIMIT))
        except ValueError:
            limit = -1
        if not 1 <= limit <= MAX_LIMIT:
            raise Refused(400, 40001005, "x-list-limit must be 1 to 10000")
        order = request.headers.get("x-list-order", "asc").lower()
        if order not in ("asc", "desc"):
            raise Refused(403, 40300014, "order must be asc or desc")
        if token == LIST_END:
            raise Refused(400, 40001005, "iter args invalid")
        items = await self._items(key, path)
        if order == "desc":
            items = items[::-1]
        start = self._start_after(token, items) if token and order == "asc" else 0
        if token and order == "desc":
            start = len(items) - self._start_after(token, items[::-1])
        page = items[start:start + limit]
        end = start + limit >= len(items)
        next_iter = LIST_END if end or not page else self._iter_token(key, page[-1])
        self.stats.list_pages += 1
        headers = {"x-upyun-list-iter": next_iter, "X-Request-Id": uuid.uuid4().hex}
        if "json" in request.headers.get("Accept", ""):
            body = json.dumps({"files": [
                {"type": "folder" if i.is_dir else content_type(i.name), "name": i.name,
                 "length": i.size, "last_modified": i.mtime} for i in page
            ], "iter": next_iter}, ensure_ascii=False).encode("utf-8", "surrogateescape")
            response = web.Response(body=body, content_type="application/json", headers=headers)
        else:
            text = "\n".join(f"{i.name}\t{'F' if i.is_dir else 'N'}\t{i.size}\t{i.mtime}"
                             for i in page)
            response = web.Response(body=text.encode("utf-8", "surrogateescape"),
                                    content_type="text/plain", headers=headers)
        if fault == "truncate":
            return await self._send_truncated(request, response)
        return response

    async def _send_truncated(self, request: web.Request,
                              response: web.Response) -> web.StreamResponse:
        body = bytes(response.body) if isinstance(response.body, bytes | bytearray) else b""
        stream = web.StreamResponse(status=response.status, headers=response.headers)
        stream.content_length = len(body)
        await stream.prepare(request)
        await stream.write(body[: len(body) // 2])
        hang_up(request)
        return stream
