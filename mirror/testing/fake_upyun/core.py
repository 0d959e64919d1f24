"""The fake UpYun's state and its shared parts: the fault knobs and counters, a listed item,
a refusal in UpYun's error envelope, the faults decided per first attempt, and MD5s."""

from __future__ import annotations

import asyncio
import hashlib
import json
import mimetypes
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

from aiohttp import web

from mirror.testing.synthetic import SyntheticBucket

MAX_LIMIT = 10000
DEFAULT_LIMIT = 100
CHUNK = 256 * 1024

ListingOverride = Callable[[str | None], tuple[bytes, str | None]]
BodyOverride = Callable[[bytes, dict[str, str]], tuple[bytes, dict[str, str]]]


@dataclass(frozen=True)
class Faults:
    """Shares of *first* attempts (per method, path and iter) that misbehave, and slowness."""

    rate_429: float = 0.0
    rate_503: float = 0.0
    rate_truncate: float = 0.0  # full Content-Length, part of the body, then the line drops
    rate_drop: float = 0.0  # the connection closes before any response
    # Failures as a real bucket has them, whatever the rate: a listing answered 429 (per
    # bucket), a file answered 503 "read upstream timeout" or cut short (half each).
    rate_random: float = 0.0
    latency_s: float = 0.0  # before every response
    seed: int = 0
    body_rate_bps: float = 0.0  # bodies sent no faster than this (0: as fast as possible)
    # Requests per second the bucket accepts (a token bucket, burst a fifth of a second);
    # beyond it: 429 42900003, as UpYun's per-bucket protection answers. 0: no limit.
    rate_limit_rps: float = 0.0


@dataclass
class FakeStats:
    requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    list_pages: int = 0
    bodies: dict[str, int] = field(default_factory=dict)  # file GETs that began a body
    complete: dict[str, int] = field(default_factory=dict)  # ... that sent through to the end
    bytes_sent: int = 0
    faults: dict[str, int] = field(
        default_factory=lambda: {"429": 0, "503": 0, "truncate": 0, "drop": 0})
    limited: int = 0  # requests refused by rate_limit_rps
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, status)

    def to_dict(self) -> dict[str, object]:
        return {"requests": self.requests, "by_status": dict(self.by_status),
                "list_pages": self.list_pages, "bodies": dict(self.bodies),
                "complete": dict(self.complete), "bytes_sent": self.bytes_sent,
                "faults": dict(self.faults), "limited": self.limited}


@dataclass(frozen=True)
class Item:
    name: str
    is_dir: bool
    size: int
    mtime: int

    @property
    def order(self) -> tuple[int, bytes]:
        # Files (@#) before folders (@~), each by name bytes, as UpYun's key scheme sorts.
        return (1 if self.is_dir else 0, self.name.encode("utf-8", "surrogateescape"))


class Refused(Exception):
    """A request UpYun refuses: answered with its status and error envelope."""

    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg


class FakeCore:
    """What every part of the fake reads and counts."""

    def __init__(self, root: Path, *, bucket: str, operator: str, password: str,
                 faults: Faults = Faults(), max_skew_s: float = 1800,
                 synthetic: SyntheticBucket | None = None) -> None:
        self.root = Path(root)
        self.synthetic = synthetic  # serve a made-up bucket instead of ``root``
        self.bucket = bucket
        self.operator = operator
        self.password = password
        self.password_md5 = hashlib.md5(password.encode()).hexdigest()
        self.faults = faults
        self.max_skew_s = max_skew_s
        self.stats = FakeStats()
        # Per-path misbehaviour for hostile-input tests; keys are bucket-relative paths.
        self.listing_override: dict[str, ListingOverride] = {}
        self.body_override: dict[str, BodyOverride] = {}
        self._seen: set[str] = set()
        self._listings: dict[str, tuple[int, list[Item]]] = {}
        self._md5s: dict[tuple[str, int, int], str] = {}
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._bucket_tokens = max(1.0, faults.rate_limit_rps / 5)  # starts full
        self._bucket_stamp = time.monotonic()

    def _error(self, status: int, code: int, msg: str, head: bool = False) -> web.Response:
        request_id = uuid.uuid4().hex
        headers = {"X-Error-Code": str(code), "X-Request-Id": request_id}
        if head:
            return web.Response(status=status, headers=headers)
        body = json.dumps({"msg": msg, "code": code, "id": request_id})
        return web.Response(status=status, text=body, content_type="application/json",
                            headers=headers)

    def _fault(self, method: str, key: str, list_iter: str = "") -> str | None:
        """The fault for this request, decided once per (method, path, iter) and seed."""
        f = self.faults
        if not (f.rate_429 or f.rate_503 or f.rate_truncate or f.rate_drop or f.rate_random):
            return None
        ident = f"{method}|{key}|{list_iter}"
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
            name = ("429" if method == "LIST" else
                    "503" if method == "HEAD" or digest[-1] & 1 else "truncate")
            self.stats.faults[name] += 1
            return name
        return None

    def _simple_fault(self, fault: str | None, request: web.Request,
                      head: bool) -> web.StreamResponse | None:
        """The answer to a 429, 503 or dropped-connection fault; None to go on serving."""
        if fault == "429":
            return self._error(429, 42900003, "too many requests of the same bucket", head)
        if fault == "503":
            return self._error(503, 50300031, "read upstream timeout", head)
        if fault == "drop" and not head:
            return drop(request)
        return None  # no fault, or truncation (handled where the body is written)

    async def _md5(self, path: Path, info: os.stat_result) -> str:
        if self.synthetic is not None:
            return hashlib.md5(self.synthetic.content(info.st_ino)).hexdigest()
        cache_key = (str(path), info.st_size, info.st_mtime_ns)
        cached = self._md5s.get(cache_key)
        if cached is None:
            def digest() -> str:
                h = hashlib.md5()
                with path.open("rb") as f:
                    while block := f.read(1 << 20):
                        h.update(block)
                return h.hexdigest()

            cached = self._md5s[cache_key] = await asyncio.to_thread(digest)
        return cached


class Dropped(web.Response):
    """Returned for a connection closed on purpose; nothing reaches the client."""


def hang_up(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()


def drop(request: web.Request) -> web.StreamResponse:
    hang_up(request)
    return Dropped(status=499)


def parse_range(value: str, size: int) -> tuple[int, int]:
    unit, _, spec = value.strip().partition("=")
    first, _, last = spec.partition("-")
    try:
        if unit.strip().lower() != "bytes" or "," in spec or not first:
            raise ValueError(value)
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError as exc:
        raise Refused(400, 40001161, "wrong range") from exc
    if start < 0 or start >= size or end < start:
        raise Refused(400, 40001161, "wrong range")
    return start, min(end, size - 1)


def content_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def http_date(ts: float) -> str:
    return format_datetime(datetime.fromtimestamp(ts, UTC), usegmt=True)



__all__ = ["CHUNK", "DEFAULT_LIMIT", "MAX_LIMIT", "BodyOverride", "Dropped", "FakeCore",
           "FakeStats", "Faults", "Item", "ListingOverride", "Refused", "content_type", "drop",
           "hang_up", "http_date", "parse_range"]
