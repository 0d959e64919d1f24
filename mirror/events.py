"""Job events: what happened to each file, and that the job finished, for other systems.

Each event is one JSON message on the job's topic exchange ``J.events``, with the event's kind
as routing key:

- ``file.fetched``, ``file.skipped`` (already current), ``file.parked`` (failed for good);
- ``folder.parked`` (a listing that failed for good: its files are unknown);
- ``job.finished``: nothing is queued, delayed or held any more; sent by the worker that lists
  (with ``--until-idle``) with its own counts and the whole job's ``parked_total``.

Delivery is at least once: a file's event is confirmed by the broker before its job is acked,
so a worker that dies in between does the file again (a skip) and sends a second event.
Consumers key on ``path``. Over RabbitMQ the files settled at about the same time are reported
together: one event per kind with ``files``, a list of ``{"path", "size"}``, instead of
``path`` and ``size`` (``each_file`` spreads it out; ``mirror.broker.batching``). A system
that must not miss events binds its own durable queue to ``J.events`` before it seeds the job;
``mirror watch`` binds a temporary one.
"""

from __future__ import annotations

import functools
import os
import socket
import time
from typing import Any

from mirror.jobs import FetchJob, Job, Reason

KINDS = ("file.fetched", "file.skipped", "file.parked", "folder.parked", "job.finished")


def events_exchange(job: str) -> str:
    return f"{job}.events"


@functools.cache
def _origin(pid: int) -> tuple[str, int]:
    # Looked up once per process (keyed by pid: a forked child looks again), not per file.
    return socket.gethostname(), pid


def _base(kind: str, job: str) -> dict[str, Any]:
    host, pid = _origin(os.getpid())
    return {"event": kind, "job": job, "time": round(time.time(), 3), "host": host, "pid": pid}


def file_event(kind: str, job_name: str, job: FetchJob) -> dict[str, Any]:
    return {**_base(f"file.{kind}", job_name), "path": job.path, "size": job.size}


def each_file(event: dict[str, Any]) -> list[dict[str, Any]]:
    """A file event as one event per file (a shared event's ``files`` spread out)."""
    files = event.get("files")
    if not isinstance(files, list):
        return [event]
    base = {k: v for k, v in event.items() if k != "files"}
    return [{**base, **f} for f in files if isinstance(f, dict)]


def parked_event(job_name: str, job: Job, reason: Reason) -> dict[str, Any]:
    if isinstance(job, FetchJob) and not job.is_dir:
        event = file_event("parked", job_name, job)
    else:
        event = {**_base("folder.parked", job_name), "path": job.path}
    event["reason"] = reason.to_dict()
    return event


def finished_event(job_name: str, counts: dict[str, int]) -> dict[str, Any]:
    return {**_base("job.finished", job_name), **counts}


__all__ = ["KINDS", "each_file", "events_exchange", "file_event", "finished_event",
           "parked_event"]
