"""The messages that carry work, and the job's own description.

Every message body is a small JSON object with a schema version ``v`` and a type ``t``, so a
worker of a later version can refuse (park) what it does not understand instead of guessing.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from mirror.errors import MirrorError, ProtocolError

SCHEMA_VERSION = 1
# The job's own description (JobSpec). 1: before each backend had its options (a version 1
# spec is still read, so a job seeded before an upgrade goes on).
SPEC_VERSION = 2
ShardBy = Literal["folder", "path"]


@dataclass(frozen=True)
class ListJob:
    """List one page of a folder; ``cursor`` None means the first page."""

    path: str
    cursor: str | None = None
    page: int = 0  # pages of this folder listed before this one
    empty: int = 0  # empty pages in a row before this one; guards against endless listings
    last: str | None = None  # last entry of the previous page: a page repeating it is a loop


@dataclass(frozen=True)
class FetchJob:
    """Fetch one file (or, with ``is_dir``, reproduce one empty folder)."""

    path: str
    size: int = 0
    mtime: float | None = None
    etag: str | None = None
    is_dir: bool = False


# One unit of work. How jobs travel (one to a message, or several packed into one) is the
# broker's business (``mirror.broker.batching``).
Job = ListJob | FetchJob


def fields_of(job: Job) -> dict[str, Any]:
    # vars(), not asdict(): the fields are flat, and asdict's deep copy (4 us) cost more
    # than the whole encoding; it runs for every message.
    return {k: v for k, v in vars(job).items() if v is not None and v is not False}


def encode_job(job: Job) -> bytes:
    body: dict[str, Any] = {"v": SCHEMA_VERSION,
                            "t": "list" if isinstance(job, ListJob) else "fetch"}
    body.update(fields_of(job))
    # ASCII escapes: a name with a lone surrogate (legal in a JSON listing) still encodes.
    return json.dumps(body, separators=(",", ":")).encode()


def decode_job(raw: bytes) -> Job:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"message is not valid JSON: {exc}") from exc
    return job_from_dict(body)


def job_from_dict(body: Any) -> Job:
    """The job of an already parsed message body."""
    if not isinstance(body, dict):
        raise ProtocolError("message is not a JSON object")
    body = dict(body)
    if body.get("v") != SCHEMA_VERSION:
        raise ProtocolError(
            f"message schema version {body.get('v')!r} is not {SCHEMA_VERSION}; "
            "upgrade bucket-mirror on this worker"
        )
    kind = body.pop("t", None)
    body.pop("v")
    try:
        if kind == "list":
            return ListJob(**body)
        if kind == "fetch":
            return FetchJob(**body)
    except TypeError as exc:
        raise ProtocolError(f"message has unexpected fields: {exc}") from exc
    raise ProtocolError(f"unknown message type {kind!r}")


def shard_of(path: str, shards: int, by: ShardBy = "folder", is_dir: bool = False) -> int:
    """Stable shard of a file: the same on every host, Python version and restart.

    By folder, a file goes with its parent folder so a folder stays on one disk; an empty
    folder's own job goes where its files would have gone.
    """
    if shards <= 1:
        return 0
    key = path if (by == "path" or is_dir) else path.rpartition("/")[0]
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


@dataclass(frozen=True)
class JobSpec:
    """What every worker of a job must agree on; stored with the job on the broker."""

    name: str
    source: str
    # The source's backend options (``mirror.sources.backend``) as a JSON object, checked by
    # the backend's options dataclass when the source is opened.
    source_options: Mapping[str, Any] = field(default_factory=dict)
    shards: int = 1
    shard_by: ShardBy = "folder"
    retry_delays_s: tuple[float, ...] = (5.0, 60.0, 600.0)
    max_attempts: int = 5
    created: float = field(default_factory=time.time)

    def to_json(self) -> bytes:
        body = asdict(self)
        body["v"] = SPEC_VERSION
        return json.dumps(body, ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> JobSpec:
        try:
            body = json.loads(raw)
            version = body.pop("v", None)
            if version == 1:
                body = _spec_of_version_1(body)
            elif version != SPEC_VERSION:
                raise ProtocolError("job description has an unknown schema version")
            if not isinstance(body.get("source_options", {}), dict):
                raise ProtocolError("job description's source_options is not an object")
            body["retry_delays_s"] = tuple(body["retry_delays_s"])
            return cls(**body)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ProtocolError(f"job description is unreadable: {exc}") from exc


def _spec_of_version_1(body: dict[str, Any]) -> dict[str, Any]:
    """A spec stored before backends declared their options: UpYun's endpoint and page size
    were fields of every spec, and only upyun:// sources read them."""
    legacy = {"endpoint": body.pop("endpoint", None), "list_limit": body.pop("list_limit", None)}
    upyun = str(body.get("source", "")).lower().startswith("upyun:")
    body["source_options"] = {k: v for k, v in legacy.items() if v is not None and upyun}
    return body


@dataclass(frozen=True)
class Reason:
    """Why a job was parked: enough to decide what to do without reading logs."""

    error: str
    message: str
    attempts: int
    http_status: int | None = None
    code: str | None = None
    time: float = field(default_factory=time.time)

    @classmethod
    def from_error(cls, exc: BaseException, attempts: int) -> Reason:
        if isinstance(exc, MirrorError):
            return cls(
                error=exc.kind,
                message=exc.message,
                attempts=attempts,
                http_status=exc.detail.http_status,
                code=exc.detail.code,
            )
        return cls(error=type(exc).__name__, message=str(exc) or repr(exc), attempts=attempts)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Reason:
        return cls(
            error=str(body.get("error", "Unknown")),
            message=str(body.get("message", "")),
            attempts=int(body.get("attempts", 0)),
            http_status=body.get("http_status"),
            code=body.get("code"),
            time=float(body.get("time", 0.0)),
        )
