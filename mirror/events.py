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
together: one event per kind with ``files``, a list of ``{"path", "size", ...}`` (the
``FILE_FIELDS``), instead of those fields at the top (``each_file`` spreads it out;
``mirror.broker.batching``). A system that must not miss events binds its own durable queue to
``J.events`` before it seeds the job (the ledger's is ``J.ledger``, ``mirror.ledger``);
``mirror watch`` binds a temporary one.

A file event carries ``path``, ``size`` and, since the ledger, ``source`` (the job's source
URL joined with the path) and, for a fetched file, ``seconds`` (from its transfer slot to its
outcome, durable). Fields are only ever added: a reader ignores those it does not know, and one
that needs a newer field finds it missing in an older worker's events.
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


# The fields of one file, which a shared event lists per file under ``files``.
FILE_FIELDS = ("path", "size", "seconds", "source")


def remote_of(root: str, path: str) -> str:
    """Where ``path`` is at the source: the job's source URL joined with it (not escaped)."""
    return f"{root.rstrip('/')}/{path}" if path else root


def file_event(kind: str, job_name: str, job: FetchJob, seconds: float | None = None,
               root: str | None = None) -> dict[str, Any]:
    """``root``: the job's source URL (the event's ``source``); ``seconds``: the fetch's."""
    event = {**_base(f"file.{kind}", job_name), "path": job.path, "size": job.size}
    if root is not None:
        event["source"] = remote_of(root, job.path)
    if seconds is not None:
        event["seconds"] = round(seconds, 4)
    return event


def each_file(event: dict[str, Any]) -> list[dict[str, Any]]:
    """A file event as one event per file (a shared event's ``files`` spread out)."""
    files = event.get("files")
    if not isinstance(files, list):
        return [event]
    base = {k: v for k, v in event.items() if k != "files"}
    return [{**base, **f} for f in files if isinstance(f, dict)]


def parked_event(job_name: str, job: Job, reason: Reason,
                 root: str | None = None) -> dict[str, Any]:
    if isinstance(job, FetchJob) and not job.is_dir:
        event = file_event("parked", job_name, job, root=root)
    else:
        event = {**_base("folder.parked", job_name), "path": job.path}
        if root is not None:
            event["source"] = remote_of(root, job.path)
    event["reason"] = reason.to_dict()
    return event


def finished_event(job_name: str, counts: dict[str, int]) -> dict[str, Any]:
    return {**_base("job.finished", job_name), **counts}


__all__ = ["FILE_FIELDS", "KINDS", "each_file", "events_exchange", "file_event",
           "finished_event", "parked_event", "remote_of"]
