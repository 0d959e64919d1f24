"""The Storage API as JFrog documents it: folder info (``children``), file info (size as a
string, ``checksums`` and ``originalChecksums``) and the file list (``?list``, ``deep``,
``depth``, ``listFolders``, ``includeRootPath``; Artifactory Pro and signed-in users only)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from mirror.testing.fake_artifactory.core import CREATOR, FakeCore, Refused
from mirror.testing.fake_upyun.core import content_type, hang_up

PRO_ONLY = ("This REST API is available only in Artifactory Pro (see: jfrog.com/artifactory/"
            "features). If you are already running Artifactory Pro please make sure your "
            "server is activated with a valid license key.\n")
_HOSTILE_BODY = b"bad"  # what an injected child claims to hold


class Storage(FakeCore):
    def _storage_uri(self, request: web.Request, path: str) -> str:
        base = f"{request.scheme}://{request.host}/artifactory"
        return f"{base}/api/storage/{self.repo}" + (f"/{path}" if path else "")

    async def _storage(self, request: web.Request, path: str, target: Path,
                       info: os.stat_result, signed_in: bool) -> web.StreamResponse:
        is_dir = stat.S_ISDIR(info.st_mode)
        if "list" in request.query:
            kind = "file-list"
            if not self.flavour.pro:
                raise Refused(400, PRO_ONLY)
            if not signed_in:
                raise Refused(401, "This REST API is not available for anonymous users")
            if not is_dir:
                raise Refused(400, "Expected a folder but found a file")
        else:
            kind = "folder-info" if is_dir else "file-info"
        fault = self._fault(f"{kind}|{path}|{request.query_string}")
        if fault in ("429", "503"):
            raise Refused(int(fault), "Too Many Requests" if fault == "429"
                          else "Service Unavailable")
        if fault == "drop":
            hang_up(request)
            return web.Response(status=499)
        self.stats.count(kind)
        if kind == "file-list":
            self.stats.list_pages += 1
            body = await self._file_list(request, path, target)
        elif kind == "folder-info":
            self.stats.list_pages += 1
            body = await self._folder_info(request, path, target, info)
        else:
            body = await self._file_info(request, path, target, info)
        raw = json.dumps(body, indent=2, ensure_ascii=False).encode("utf-8", "surrogateescape")
        media = "application/vnd.org.jfrog.artifactory.storage." + {
            "file-list": "FileList", "folder-info": "FolderInfo",
            "file-info": "FileInfo"}[kind] + "+json"
        if fault == "truncate":
            stream = web.StreamResponse(headers={"Content-Type": media})
            stream.content_length = len(raw)
            await stream.prepare(request)
            await stream.write(raw[: len(raw) // 2])
            hang_up(request)
            return stream
        return web.Response(body=raw, headers={"Content-Type": media})

    def _item(self, request: web.Request, path: str, info: os.stat_result) -> dict[str, Any]:
        when = self.iso(info.st_mtime)
        return {"repo": self.repo, "path": "/" + path, "created": when, "createdBy": CREATOR,
                "lastModified": when, "modifiedBy": CREATOR, "lastUpdated": when}

    async def _children(self, path: str, target: Path) -> list[tuple[str, bool]]:
        def scan() -> list[tuple[str, bool]]:
            found = []
            with os.scandir(target) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        found.append((e.name, True))
                    elif e.is_file(follow_symlinks=False):
                        found.append((e.name, False))
            return sorted(found)

        return [*await asyncio.to_thread(scan), *self.extra_children.get(path, [])]

    async def _folder_info(self, request: web.Request, path: str, target: Path,
                           info: os.stat_result) -> dict[str, Any]:
        children = [{"uri": "/" + name, "folder": self.flag(is_dir)}
                    for name, is_dir in await self._children(path, target)]
        return {**self._item(request, path, info), "children": children,
                "uri": self._storage_uri(request, path)}

    async def _file_info(self, request: web.Request, path: str, target: Path,
                         info: os.stat_result) -> dict[str, Any]:
        sums = await self.checksums(target, info)
        return {**self._item(request, path, info),
                "downloadUri": f"{request.scheme}://{request.host}/artifactory/{self.repo}/"
                               + path,
                "mimeType": content_type(target.name), "size": str(info.st_size),
                "checksums": sums, "originalChecksums": sums,
                "uri": self._storage_uri(request, path)}

    async def _file_list(self, request: web.Request, path: str,
                         target: Path) -> dict[str, Any]:
        q = request.query
        deep = q.get("deep", "0") == "1"
        depth = int(q["depth"]) if deep and q.get("depth", "").isdigit() else None
        folders = q.get("listFolders", "0") == "1"
        files: list[dict[str, Any]] = []
        if q.get("includeRootPath", "0") == "1":
            files.append({"uri": "/", "size": self.number(-1), "folder": self.flag(True),
                          "lastModified": self.iso((await asyncio.to_thread(
                              os.stat, target)).st_mtime)})
        await self._list_into(files, path, target, "", folders,
                              (depth or 1 << 30) if deep else 1)
        return {"uri": self._storage_uri(request, path), "created": self.iso(time.time()),
                "files": files}

    async def _list_into(self, files: list[dict[str, Any]], path: str, target: Path,
                         rel: str, folders: bool, levels: int) -> None:
        for name, is_dir in await self._children(path, target):
            uri = f"{rel}/{name}"
            child = target / name
            real = "/" not in name and name not in ("", ".", "..") and (child.is_dir() if
                                                                          is_dir else
                                                                          child.is_file())
            if is_dir:
                if folders:
                    mtime = child.stat().st_mtime if real else time.time()
                    files.append({"uri": uri, "size": self.number(-1), "folder": self.flag(True),
                                  "lastModified": self.iso(mtime)})
                if real and levels > 1:
                    sub = f"{path}/{name}" if path else name
                    await self._list_into(files, sub, child, uri, folders, levels - 1)
                continue
            if real:
                info = await asyncio.to_thread(os.stat, child)
                size, mtime, sums = (info.st_size, info.st_mtime,
                                     await self.checksums(child, info))
            else:  # an injected name: made-up but well-formed
                size, mtime = len(_HOSTILE_BODY), time.time()
                sums = {n: hashlib.new(n, _HOSTILE_BODY).hexdigest() for n in ("sha1", "sha256")}
            entry: dict[str, Any] = {"uri": uri, "size": self.number(size),
                                     "lastModified": self.iso(mtime),
                                     "folder": self.flag(False), "sha1": sums["sha1"]}
            if "sha256" in sums and self.flavour.sha256:
                entry["sha2"] = sums["sha256"]
            files.append(entry)
