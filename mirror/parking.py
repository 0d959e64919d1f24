"""Parked jobs as the operator sees them: grouped by reason, selected for a retry, journaled.

RabbitMQ keeps a job's parked work in its ``J.parked`` queue; an embedded run has no broker
that outlives it, so it keeps the same records in ``STATE/jobs/J/parked.jsonl``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirror.broker import ParkedJob
from mirror.errors import ProtocolError
from mirror.jobs import Reason, decode_job, encode_job

SAMPLE_PATHS = 5


def reason_label(reason: Reason) -> str:
    parts = [reason.error]
    if reason.http_status:
        parts.append(f"HTTP {reason.http_status}")
    if reason.code:
        parts.append(str(reason.code))
    return " ".join(parts)


def reason_matches(reason: Reason, selector: str) -> bool:
    """``--reason`` takes an error class, an HTTP status, a source error code or the label."""
    wanted = selector.strip().lower()
    candidates = {reason.error.lower(), reason_label(reason).lower()}
    if reason.http_status:
        candidates.add(str(reason.http_status))
    if reason.code:
        candidates.add(str(reason.code).lower())
    return wanted in candidates


@dataclass
class Group:
    label: str
    error: str
    http_status: int | None
    code: str | None
    count: int = 0
    example: str = ""
    paths: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.label, "error": self.error, "http_status": self.http_status,
                "code": self.code, "count": self.count, "example": self.example,
                "paths": self.paths}


def group(parked: Iterable[ParkedJob]) -> list[Group]:
    groups: dict[str, Group] = {}
    for p in parked:
        label = reason_label(p.reason)
        g = groups.get(label)
        if g is None:
            g = groups[label] = Group(label, p.reason.error, p.reason.http_status,
                                      p.reason.code, example=p.reason.message)
        g.count += 1
        if len(g.paths) < SAMPLE_PATHS:
            g.paths.append(p.job.path or "/")
    return sorted(groups.values(), key=lambda g: (-g.count, g.label))


def journal_path(state_dir: Path, job: str) -> Path:
    return state_dir / "jobs" / job / "parked.jsonl"


def write_journal(path: Path, parked: Iterable[ParkedJob]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for p in parked:
            out.write(json.dumps({"queue": p.queue, "job": json.loads(encode_job(p.job)),
                                  "reason": p.reason.to_dict()}, ensure_ascii=False) + "\n")
    tmp.replace(path)


def read_journal(path: Path) -> list[ParkedJob]:
    out: list[ParkedJob] = []
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return out
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            job = decode_job(json.dumps(record["job"]).encode())
            out.append(ParkedJob(job, str(record["queue"]), Reason.from_dict(record["reason"])))
        except (ValueError, KeyError, TypeError, ProtocolError) as exc:
            raise ProtocolError(f"{path}:{number}: unreadable parked record ({exc}); fix or "
                                "remove that line") from exc
    return out


__all__ = ["Group", "group", "journal_path", "read_journal", "reason_label", "reason_matches",
           "write_journal"]
