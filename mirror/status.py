"""What a job is doing now: queue depths, live workers' totals, rates and an ETA.

Queue depths come from RabbitMQ's management API when it answers (it knows the messages held
by consumers), else from plain AMQP (ready messages and consumers only). Files and bytes done
come from the presence reports the workers broadcast every second: totals since each worker
started, so a worker that was restarted counts again from zero; a worker that stopped counts
only if this command heard its final report. Parked files are read from the parked queue.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from mirror.backlog import fetch_backlog
from mirror.broker import Carriage, QueueDepth, Topology
from mirror.broker.admin import BrokerAdmin
from mirror.controls import Control
from mirror.progress import human_bytes, human_duration

MANAGEMENT_PORT = 15672


@dataclass(frozen=True)
class Snapshot:
    job: str
    broker: str
    via: str  # "management" or "amqp"
    at: float
    queues: dict[str, QueueDepth]
    topology: Topology
    # worker id -> its latest presence report (live workers, and those seen stopping)
    reports: dict[str, dict[str, Any]]
    first_reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    note: str = ""  # why the management API was not used, if it was not

    def total(self, key: str) -> int:
        return sum(int(r.get("counts", {}).get(key, 0)) for r in self.reports.values())

    def queued(self, names: list[str]) -> tuple[int, int]:
        """(ready, held by consumers) over the queues; held is 0 where unknown."""
        ready = sum(self.queues[q].ready for q in names if q in self.queues)
        held = sum(self.queues[q].unacked or 0 for q in names if q in self.queues)
        return ready, held


def management_url(broker_url: str) -> str:
    """The management API base of an AMQP URL: same host and credentials, port 15672."""
    parts = urlsplit(broker_url)
    scheme = "https" if parts.scheme == "amqps" else "http"
    auth = ""
    if parts.username is not None:
        auth = f"{parts.username}:{parts.password or ''}@"
    return f"{scheme}://{auth}{parts.hostname or 'localhost'}:{MANAGEMENT_PORT}"


def vhost_of(broker_url: str) -> str:
    path = urlsplit(broker_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


async def management_depths(base_url: str, vhost: str, job: str,
                            timeout_s: float = 3.0) -> dict[str, QueueDepth]:
    """Depths of the job's queues from the management API; OSError-like errors propagate."""
    parts = urlsplit(base_url)
    headers = {}
    if parts.username is not None:
        token = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
    root = f"{parts.scheme}://{parts.hostname}:{parts.port or MANAGEMENT_PORT}{parts.path}"
    url = (f"{root.rstrip('/')}/api/queues/{quote(vhost, safe='')}"
           f"?page=1&page_size=500&use_regex=true&name={quote('^' + job.replace('.', '[.]'))}"
           "&columns=name,messages_ready,messages_unacknowledged,consumers")
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session, \
            session.get(url, headers=headers) as resp:
        if resp.status != 200:
            raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status,
                                              message=resp.reason or "")
        body = await resp.json()
    items = body.get("items", []) if isinstance(body, dict) else body
    return {
        q["name"]: QueueDepth(int(q.get("messages_ready") or 0),
                              int(q.get("messages_unacknowledged") or 0),
                              int(q.get("consumers") or 0))
        for q in items if isinstance(q, dict) and str(q.get("name", "")).startswith(job + ".")
    }


class Reports:
    """Presence reports heard on the job's control exchange: subscribe once per command,
    then each snapshot opens a fresh listening window."""

    def __init__(self) -> None:
        self.first: dict[str, dict[str, Any]] = {}
        self.latest: dict[str, dict[str, Any]] = {}
        # Final reports of workers that stopped while we watched: their work still counts.
        self.stopped: dict[str, dict[str, Any]] = {}

    def __call__(self, msg: dict[str, Any]) -> None:
        if msg.get("type") != "presence" or not isinstance(msg.get("worker"), str):
            return
        self.first.setdefault(msg["worker"], msg)
        self.latest[msg["worker"]] = msg
        if msg.get("state") == "stopped":
            self.stopped[msg["worker"]] = msg

    def new_window(self) -> None:
        self.first.clear()
        self.latest.clear()


async def take(broker: BrokerAdmin, topology: Topology, reports: Reports, *, broker_url: str,
               management: str | None, listen_s: float = 2.0) -> Snapshot:
    """Ask every live worker for a report, listen ``listen_s`` seconds, read the queues.

    ``reports`` must already be subscribed to the broker's control messages."""
    reports.new_window()
    await broker.broadcast({"type": "ping", "from": f"status-{uuid.uuid4().hex[:8]}"})
    await asyncio.sleep(listen_s)
    via, note = "amqp", ""
    depths: dict[str, QueueDepth] | None = None
    if management != "":
        import aiohttp  # only here and in management_depths: most commands never need it

        try:
            depths = await management_depths(management or management_url(broker_url),
                                             vhost_of(broker_url), topology.job)
            via = "management"
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            note = f"management API not reachable ({type(exc).__name__}); depths via AMQP"
    if depths is None:
        depths = await broker.depths()
    heard = {w: r for w, r in reports.latest.items() if r.get("state") != "stopped"}
    heard.update({w: r for w, r in reports.stopped.items() if w not in heard})
    # The broker reads its message counts as jobs (it may pack several to a message), from
    # what the workers that published and took them report they carried.
    counts = [r.get("counts", {}) for r in heard.values()]
    carried = Carriage(sum(int(c.get("carried_jobs", 0)) for c in counts),
                       sum(int(c.get("carried_messages", 0)) for c in counts))
    depths = broker.in_jobs(depths, carried)
    return Snapshot(topology.job, broker.name, via, time.time(), depths, topology, heard,
                    {w: reports.first.get(w, r) for w, r in heard.items()}, note)


def _files_done(report: Mapping[str, Any]) -> int:
    c = report.get("counts", {})
    return int(c.get("fetched", 0)) + int(c.get("skipped", 0))


def _bytes_done(report: Mapping[str, Any]) -> int:
    return int(report.get("counts", {}).get("received_bytes", 0))


def rates(now: Snapshot, before: Snapshot | None) -> tuple[float, float]:
    """Files/s and received bytes/s: between two snapshots where the same workers report,
    else from each worker's first and last report while this snapshot listened."""
    pairs: list[tuple[Mapping[str, Any], Mapping[str, Any]]] = []
    for worker, report in now.reports.items():
        seen = before.reports.get(worker) if before is not None else None
        pairs.append((seen or now.first_reports.get(worker, report), report))
    files = size = 0.0
    for old, new in pairs:
        span = float(new.get("time", 0)) - float(old.get("time", 0))
        if span > 0:
            files += (_files_done(new) - _files_done(old)) / span
            size += (_bytes_done(new) - _bytes_done(old)) / span
    return max(files, 0.0), max(size, 0.0)


def summarize(now: Snapshot, before: Snapshot | None = None) -> dict[str, Any]:
    t = now.topology
    backlog = fetch_backlog(now.queues, t)  # in files, as the broker reckons them (``take``)
    fetch_ready, fetch_held = backlog.ready, backlog.held
    list_ready, list_held = now.queued([t.list_queue])
    in_flight = sum(int(r.get("counts", {}).get("inflight", 0)) for r in now.reports.values())
    listing_now = now.total("listing")
    held = sum(int(r.get("held", 0)) for r in now.reports.values())
    parked_depth = now.queues.get(t.parked_queue)
    parked = parked_depth.ready if parked_depth is not None else now.total("parked")
    queued = fetch_ready + (fetch_held if now.via == "management" else
                            max(0, held - listing_now))
    listing_done = list_ready == 0 and list_held == 0 and listing_now == 0
    files_s, bytes_s = rates(now, before)
    eta = queued / files_s if files_s > 0 else None
    done = listing_done and queued == 0 and held == 0
    return {
        "job": now.job,
        "broker": now.broker,
        "via": now.via,
        "note": now.note,
        "time": round(now.at, 3),
        "queues": [{"name": name, "ready": d.ready, "unacked": d.unacked,
                    "consumers": d.consumers} for name, d in sorted(now.queues.items())],
        "workers": [{"worker": w, "host": r.get("host"), "role": r.get("role"),
                     "state": r.get("state"), "held": r.get("held", 0),
                     "queues": r.get("queues", []), **r.get("counts", {}),
                     "controls": r.get("controls", [])}
                    for w, r in sorted(now.reports.items())],
        "files": {"fetched": now.total("fetched"), "skipped": now.total("skipped"),
                  "parked": parked, "retried": now.total("retried"), "queued": queued,
                  "in_flight": in_flight, "listed": now.total("listed_files")},
        "bytes": {"fetched": now.total("fetched_bytes"), "skipped": now.total("skipped_bytes"),
                  "received": now.total("received_bytes"),
                  "listed": now.total("listed_bytes")},
        "rate": {"files_per_s": round(files_s, 2), "bytes_per_s": round(bytes_s)},
        "listing_done": listing_done,
        "eta_s": None if eta is None else round(eta, 1),
        "eta_is_lower_bound": not listing_done,
        "done": done,
    }


def _duration(s: float | None) -> str:
    if s is None:
        return "unknown (no files done in the last seconds)"
    days, rest = divmod(int(s), 86400)
    return (f"{days}d " if days else "") + human_duration(rest)


def render(summary: Mapping[str, Any]) -> str:
    f, b, r = summary["files"], summary["bytes"], summary["rate"]
    lines = [f"job {summary['job']} on {summary['broker']} (queues via {summary['via']})"]
    if summary["note"]:
        lines.append(f"  note: {summary['note']}")
    lines.append(f"  {'queue':<40} {'ready':>10} {'in flight':>10} {'consumers':>10}")
    for q in summary["queues"]:
        unacked = "?" if q["unacked"] is None else str(q["unacked"])
        consumers = "?" if q["consumers"] is None else str(q["consumers"])
        lines.append(f"  {q['name']:<40} {q['ready']:>10} {unacked:>10} {consumers:>10}")
    live = sum(1 for w in summary["workers"] if w["state"] != "stopped")
    lines.append(f"  workers: {live} live, {len(summary['workers']) - live} stopped")
    for w in summary["workers"]:
        lines.append(f"    {w['worker']:<40} {w['role']:<8} {w['state']:<9} holds {w['held']}, "
                     f"fetched {w.get('fetched', 0)}, skipped {w.get('skipped', 0)}")
        for c in w.get("controls", []):
            lines.append(f"      {Control.from_dict(c).line()}")
    lines.append(f"  files: {f['fetched']} fetched, {f['skipped']} current, {f['parked']} parked,"
                 f" {f['queued']} queued, {f['in_flight']} transferring")
    lines.append(f"  bytes: {human_bytes(b['fetched'])} fetched, "
                 f"{human_bytes(b['skipped'])} current, {human_bytes(b['received'])} received")
    lines.append(f"  rate: {r['files_per_s']:.1f} files/s, {human_bytes(r['bytes_per_s'])}/s")
    if summary["done"]:
        lines.append("  state: done (nothing queued or held)")
    else:
        bound = "at least " if summary["eta_is_lower_bound"] else ""
        listing = "done" if summary["listing_done"] else "still running"
        lines.append(f"  listing: {listing}; ETA {bound}{_duration(summary['eta_s'])}")
    return "\n".join(lines)


__all__ = ["Reports", "Snapshot", "management_depths", "management_url", "rates", "render",
           "summarize", "take"]
