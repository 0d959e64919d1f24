"""A faithful fake of JFrog Artifactory's REST API: a local folder served as one repository
under ``http://HOST:PORT/artifactory``.

Built from JFrog's published REST documentation: the Storage API (folder info, file info, the
file list with ``deep``, ``depth`` and ``listFolders``), downloads with checksum headers,
``ETag``, ``Last-Modified`` and ``Range``, the ``{"errors": [...]}`` envelope, matrix
parameters (an unencoded ``;`` in a path starts them), and the three ways to sign in plus
anonymous reads. It misbehaves on purpose: deterministic faults on a share of first attempts
(429, 503, bodies cut short, dropped connections), latency, slow bodies, a request rate
beyond which it answers 429, hostile child names (``extra_children``), any status forced on
a path (``inject``), corrupted bodies (``corrupt``).

Test hooks (no auth): ``GET /_fake/stats`` and ``POST /_fake/reset``.
"""

from __future__ import annotations

import asyncio
import os
import stat
from html import escape
from pathlib import Path
from types import TracebackType
from urllib.parse import quote, unquote

from aiohttp import web

from mirror.testing.fake_artifactory.auth import Auth
from mirror.testing.fake_artifactory.core import (
    Access,
    ArtifactoryStats,
    Flavour,
    Injection,
    Refused,
    envelope,
)
from mirror.testing.fake_artifactory.download import Download
from mirror.testing.fake_artifactory.storage import Storage
from mirror.testing.fake_upyun.core import Dropped, Faults

BASE = "/artifactory"


class FakeArtifactory(Auth, Storage, Download):
    """The server: its life cycle, the test hooks and the routes."""

    @property
    def url(self) -> str:
        """The endpoint to give the source: ``http://127.0.0.1:PORT/artifactory``."""
        if self._url is None:
            raise RuntimeError("the fake Artifactory server is not started")
        return self._url + BASE

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024)
        app.router.add_get("/_fake/stats", self._stats)
        app.router.add_post("/_fake/reset", self._reset)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        bound = sockets[0].getsockname()[1] if sockets else port
        self._url = f"http://{host}:{bound}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeArtifactory:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.to_dict())

    async def _reset(self, request: web.Request) -> web.Response:
        self.stats = ArtifactoryStats()
        self.rearm()
        return web.json_response({"ok": True})

    def rearm(self) -> None:
        """Forget which requests were tried: the same first attempts fail again."""
        self._seen.clear()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.stats.requests += 1
        if self.faults.latency_s:
            await asyncio.sleep(self.faults.latency_s)
        head = request.method == "HEAD"
        try:
            if not self._within_rate():
                self.stats.limited += 1
                raise Refused(429, "Too Many Requests")
            response = await self._serve(request)
        except Refused as exc:
            response = envelope(exc.status, exc.message, exc.headers, head)
        if not isinstance(response, Dropped):
            self.stats.by_status[response.status] = self.stats.by_status.get(
                response.status, 0) + 1
        return response

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            raise Refused(405, "Method Not Allowed: a read-only fake")
        raw = request.raw_path.partition("?")[0]
        if raw == f"{BASE}/api/system/ping":
            return web.Response(text="OK")
        api = raw.startswith(f"{BASE}/api/storage/")
        if not api and raw.startswith(f"{BASE}/api/"):
            raise Refused(404, "Not Found")
        signed_in = self._signed_in(request)
        prefix = f"{BASE}/api/storage/" if api else f"{BASE}/"
        if not raw.startswith(prefix):
            raise Refused(404, "Not Found")
        repo, path = _split(raw[len(prefix):])
        if repo != self.repo:
            raise Refused(404, f"Repository {repo!r} not found" if repo else "Not Found")
        forced = self._injected(path, "storage" if api else "download")
        if forced is not None:
            raise forced
        target = self.root.joinpath(*path.split("/")) if path else self.root
        try:
            info = await asyncio.to_thread(os.stat, target)
        except (FileNotFoundError, NotADirectoryError):
            raise Refused(404, "Unable to find item") from None
        if api:
            return await self._storage(request, path, target, info, signed_in)
        if stat.S_ISDIR(info.st_mode):
            return await self._browse(path, target)
        return await self._download(request, path, target, info)

    async def _browse(self, path: str, target: Path) -> web.Response:
        """A folder's download URL answers the HTML listing Artifactory's browser shows."""
        rows = "".join(f'<a href="{quote(name)}{"/" if d else ""}">{escape(name)}</a>\n'
                       for name, d in await self._children(path, target))
        return web.Response(text=f"<html><body><pre>{rows}</pre></body></html>",
                            content_type="text/html")


def _split(raw: str) -> tuple[str, str]:
    """Repository and path of a raw request path: matrix parameters (from an unencoded
    ``;`` to the end of its segment) dropped, each segment decoded; ``.`` and ``..`` are
    refused."""
    segments = []
    for segment in raw.split("/"):
        try:
            name = unquote(segment.partition(";")[0], errors="strict")
        except UnicodeDecodeError:
            raise Refused(400, "Invalid path: not UTF-8") from None
        if name in (".", "..") or "\x00" in name:
            raise Refused(400, f"Invalid path {raw!r}")
        if name:
            segments.append(name)
    return (segments[0], "/".join(segments[1:])) if segments else ("", "")


async def run_fake_server(root: Path, *, host: str, port: int, repo: str, access: Access,
                          flavour: Flavour, faults: Faults) -> None:
    fake = FakeArtifactory(root, repo=repo, access=access, flavour=flavour, faults=faults)
    await fake.start(host, port)
    print(f"fake Artifactory serving {root} as repository {repo!r} at {fake.url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await fake.stop()


__all__ = ["Access", "FakeArtifactory", "Faults", "Flavour", "Injection", "run_fake_server"]
