"""What the ledger keeps of a job event: one ``Row`` per file, and which of two outcomes of
one file stands. Nothing here talks to a database: the store applies the same rule in SQL.

The rule (``replaces``): the later outcome stands, by the time the worker gave it (the
event's ``time``), so a late duplicate of an older event (at-least-once delivery, a
redelivered ledger message) never undoes a newer one; except that a skip never replaces a
fetch: a file skipped as already current after it was fetched is that same file, and its
row keeps who fetched it and how long it took. Equal times: the one written last stands
(such twins are the same event told twice).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mirror.events import each_file, remote_of
from mirror.jobs import Reason
from mirror.parking import reason_label

STATUSES = ("fetched", "skipped", "parked")
_STATUS_OF = {"file.fetched": "fetched", "file.skipped": "skipped", "file.parked": "parked",
              "folder.parked": "parked"}
# A parked folder's row: its path with this at the end, which no file's path has.
FOLDER_MARK = "/"


@dataclass(frozen=True)
class Row:
    """One file of one job. ``path`` is as the database can hold it (``stored_path``);
    ``path_key`` the SHA-256 of the path's own bytes, unique per file."""

    job: str
    path_key: str
    path: str
    source: str | None
    status: str
    size: int | None
    seconds: float | None
    error: str | None
    host: str | None
    updated_at: datetime  # UTC, naive: every database keeps it the same way

    def to_dict(self) -> dict[str, Any]:
        # vars(), not asdict(): asdict's deep copy was half the writer's CPU.
        return dict(vars(self))

    @property
    def key(self) -> tuple[str, str]:
        return self.job, self.path_key


def replaces(old_status: str, old_time: datetime, new_status: str, new_time: datetime) -> bool:
    """Whether an outcome given at ``new_time`` replaces the row's (see the module's rule)."""
    if old_status == "fetched" and new_status == "skipped":
        return False
    return new_time >= old_time


def merged(rows: Iterable[Row]) -> list[Row]:
    """One row per file of ``rows``, by the rule, in the order each file first came."""
    out: dict[tuple[str, str], Row] = {}
    for row in rows:
        old = out.get(row.key)
        if old is None or replaces(old.status, old.updated_at, row.status, row.updated_at):
            out[row.key] = row
    return list(out.values())


def path_key(path: str) -> str:
    # surrogatepass: a name that is not valid UTF-8 (refused, parked) still has its own key.
    return hashlib.sha256(path.encode("utf-8", "surrogatepass")).hexdigest()


def stored_path(path: str) -> str:
    """``path`` as every database can hold it: NUL and unpaired surrogates (names that are
    refused, so only parked rows have them) become backslash escapes."""
    if "\x00" in path:
        path = path.replace("\x00", "\\x00")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        path = path.encode("utf-8", "backslashreplace").decode("utf-8")
    return path


def error_text(reason: Mapping[str, Any]) -> str:
    """A parked reason as one line: its label (error, HTTP status, source code), then its
    message; ``reason_of`` reads it back."""
    r = Reason.from_dict(dict(reason))
    return f"{reason_label(r)}: {r.message}"


def reason_of(error: str) -> Reason:
    """The reason of an ``error_text`` line (attempts and time are not kept)."""
    label, _, message = error.partition(": ")
    words = label.split()
    kind = words[0] if words else "Unknown"
    status: int | None = None
    rest = words[1:]
    if len(rest) >= 2 and rest[0] == "HTTP" and rest[1].isdigit():
        status = int(rest[1])
        rest = rest[2:]
    return Reason(error=kind, message=message, attempts=0, http_status=status,
                  code=" ".join(rest) or None, time=0.0)


def rows_of(event: Mapping[str, Any], job: str, root: str) -> list[Row]:
    """The rows of one event of job ``job`` (whose source URL is ``root``); none for events
    that are not about a file or folder's outcome, or of another job."""
    status = _STATUS_OF.get(str(event.get("event", "")))
    if status is None or event.get("job", job) != job:
        return []
    folder = event.get("event") == "folder.parked"
    out = []
    for one in each_file(dict(event)):
        path = one.get("path")
        if not isinstance(path, str):
            continue
        reason = one.get("reason")
        size, seconds = one.get("size"), one.get("seconds")
        source = one.get("source")
        key = path + FOLDER_MARK if folder else path
        out.append(Row(
            job=job, path_key=path_key(key), path=stored_path(key),
            source=stored_path(source if isinstance(source, str) else remote_of(root, path)),
            status=status,
            size=int(size) if isinstance(size, int | float) and not folder else None,
            seconds=float(seconds) if isinstance(seconds, int | float) else None,
            error=stored_path(error_text(reason)) if isinstance(reason, dict) else None,
            host=str(one["host"])[:255] if one.get("host") else None,
            updated_at=_utc(one.get("time")),
        ))
    return out


def _utc(stamp: Any) -> datetime:
    seconds = float(stamp) if isinstance(stamp, int | float) else datetime.now(UTC).timestamp()
    return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)


__all__ = ["FOLDER_MARK", "STATUSES", "Row", "error_text", "merged", "path_key", "reason_of",
           "replaces", "rows_of", "stored_path"]
