"""The fake Artifactory's state and shared parts: who may read, what kind of server it plays,
counters, injected answers, the error envelope, faults decided per first attempt, ISO times
and checksums of the files it serves."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from aiohttp import web

from mirror.testing.fake_upyun.core import FakeStats, Faults

CHUNK = 256 * 1024
NO_FAULTS = Faults()
CREATOR = "deployer"


@dataclass(frozen=True)
class Access:
    """Who may read: any one of the credentials set here; anonymous users where allowed.
    A basic password may also be the API key, as Artifactory accepts it."""

    token: str | None = None
    user: str | None = None
    password: str | None = None
    api_key: str | None = None
    anonymous: bool = True


@dataclass(frozen=True)
class Flavour:
    """What kind of server it plays."""

    pro: bool = True  # the file list exists (OSS answers 400 "available only in ... Pro")
    # JSON values as the documentation's examples write them ("folder": "true", sizes as
    # strings), instead of the booleans and numbers servers send.
    strings: bool = False
    sha256: bool = True  # SHA-256 known (not for files stored before Artifactory 5.5)
    utc_offset_min: int = 0  # the server's zone in its ISO times (0: "Z")


@dataclass
class ArtifactoryStats(FakeStats):
    api: dict[str, int] = field(default_factory=dict)  # file-list, folder-info, file-info

    def count(self, kind: str) -> None:
        self.api[kind] = self.api.get(kind, 0) + 1

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "api": dict(self.api)}


@dataclass
class Injection:
    """An answer forced on requests for one path: ``status`` with ``message`` in the error
    envelope, ``times`` more times (None: always); ``on`` "storage", "download" or "any"."""

    status: int
    message: str | None = None
    times: int | None = None
    on: str = "any"


class Refused(Exception):
    """A request Artifactory refuses: its status and the envelope's message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def envelope(status: int, message: str, headers: dict[str, str] | None = None,
             head: bool = False) -> web.Response:
    """An error as Artifactory answers it: ``{"errors": [{"status", "message"}]}``."""
    if head:
        return web.Response(status=status, headers=headers)
    body = json.dumps({"errors": [{"status": status, "message": message}]}, indent=2)
    return web.Response(status=status, text=body, content_type="application/json",
                        headers=headers)


class FakeCore:
    """What every part of the fake reads and counts."""

    def __init__(self, root: Path, *, repo: str = "generic-local", access: Access = Access(),
                 flavour: Flavour = Flavour(), faults: Faults = NO_FAULTS) -> None:
        self.root = Path(root)
        self.repo = repo
        self.access = access
        self.flavour = flavour
        self.faults = faults
        self.stats = ArtifactoryStats()
        # Hostile or odd children added to a folder's listings: folder path -> [(raw name,
        # is a folder)]; and answers forced on a path (see ``inject``).
        self.extra_children: dict[str, list[tuple[str, bool]]] = {}
        self.injected: dict[str, Injection] = {}
        self.corrupt: set[str] = set()  # downloads with one byte changed (same length)
        self._seen: set[str] = set()
        self._sums: dict[tuple[str, int, int], dict[str, str]] = {}
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._tokens = max(1.0, faults.rate_limit_rps / 5)  # a full bucket to begin with
        self._stamp = time.monotonic()

    def inject(self, path: str, status: int, message: str | None = None, *,
               times: int | None = None, on: str = "any") -> None:
        """Answer requests for ``path`` (repository-relative, "" the root) with ``status``."""
        self.injected[path.strip("/")] = Injection(status, message, times, on)

    def _injected(self, path: str, on: str) -> Refused | None:
        found = self.injected.get(path)
        if found is None or found.on not in ("any", on) or found.times == 0:
            return None
        if found.times is not None:
            found.times -= 1
        message = found.message or {401: "Bad credentials", 403: "Forbidden",
                                    404: "Unable to find item", 429: "Too Many Requests",
                                    503: "Service Unavailable"}.get(found.status, "Error")
        return Refused(found.status, message)

    def _fault(self, ident: str) -> str | None:
        """The fault for this request (kind and path), decided once per seed: "429", "503",
        "truncate", "drop" or None."""
        f = self.faults
        if not (f.rate_429 or f.rate_503 or f.rate_truncate or f.rate_drop or f.rate_random):
            return None
        if ident in self._seen:
            return None
        self._seen.add(ident)
        digest = hashlib.blake2b(f"{f.seed}|{ident}".encode(), digest_size=8).digest()
        u = int.from_bytes(digest, "big") / 2**64
        for name, share in (("429", f.rate_429), ("503", f.rate_503),
                            ("truncate", f.rate_truncate), ("drop", f.rate_drop)):
            if u < share:
                self.stats.faults[name] += 1
                return name
            u -= share
        if u < f.rate_random:
            name = "503" if digest[-1] & 1 else "truncate"
            self.stats.faults[name] += 1
            return name
        return None

    def _within_rate(self) -> bool:
        rate = self.faults.rate_limit_rps
        if rate <= 0:
            return True
        now = time.monotonic()
        self._tokens = min(max(1.0, rate / 5), self._tokens + (now - self._stamp) * rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def iso(self, ts: float) -> str:
        """An ISO 8601 time with milliseconds and the server's offset, as Artifactory
        writes them."""
        offset = self.flavour.utc_offset_min
        zone = UTC if offset == 0 else timezone(timedelta(minutes=offset))
        text = datetime.fromtimestamp(ts, zone).isoformat(timespec="milliseconds")
        return text.replace("+00:00", "Z")

    def number(self, value: int) -> int | str:
        return str(value) if self.flavour.strings else value

    def flag(self, value: bool) -> bool | str:
        return ("true" if value else "false") if self.flavour.strings else value

    async def checksums(self, path: Path, info: os.stat_result) -> dict[str, str]:
        """md5, sha1 and (where the server knows it) sha256 of a file, cached."""
        key = (str(path), info.st_size, info.st_mtime_ns)
        sums = self._sums.get(key)
        if sums is None:
            def digest() -> dict[str, str]:
                hashes = {name: hashlib.new(name) for name in ("md5", "sha1", "sha256")}
                with path.open("rb") as f:
                    while block := f.read(1 << 20):
                        for h in hashes.values():
                            h.update(block)
                return {name: h.hexdigest() for name, h in hashes.items()}

            sums = self._sums[key] = await asyncio.to_thread(digest)
        if not self.flavour.sha256:
            return {k: v for k, v in sums.items() if k != "sha256"}
        return sums


__all__ = ["CHUNK", "CREATOR", "Access", "ArtifactoryStats", "FakeCore", "Flavour", "Injection",
           "Refused", "envelope"]
