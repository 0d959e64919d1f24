"""The ledger: its rule for two outcomes of one file, its table on SQLite, PostgreSQL and
MariaDB (real servers), and a whole run with a hostile name and faults written into it."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mirror.events import file_event, parked_event
from mirror.jobs import FetchJob, JobSpec, ListJob, Reason
from mirror.ledger import LedgerSettings
from mirror.ledger.rows import Row, error_text, merged, reason_of, replaces, rows_of
from mirror.ledger.store import LedgerStore
from mirror.runner import WorkOptions, run_job
from mirror.settings import SourceSettings, WorkerSettings
from mirror.sources.upyun import LIST_END
from mirror.testing.fake_upyun import FakeUpyun, Faults

from .conftest import (
    BUCKET,
    CREDENTIALS,
    MARIADB_URL,
    OPERATOR,
    PASSWORD,
    POSTGRES_URL,
    need_server,
)

ROOT = f"upyun://{BUCKET}/"
T0 = datetime(2025, 1, 1, 12, 0, 0)


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        need_server(5432, "PostgreSQL", "pg_ctlcluster 15 main start")
        return POSTGRES_URL
    if request.param == "mariadb":
        need_server(3306, "MariaDB", "start-stop-daemon --start --exec /usr/sbin/mariadbd")
        return MARIADB_URL
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
async def store(ledger_url: str, job_name: str) -> AsyncIterator[LedgerStore]:
    opened = await LedgerStore.open(ledger_url)
    try:
        yield opened
    finally:
        await opened.delete_job(job_name)
        await opened.close()


def row(path: str, status: str, at: float, job: str = "j", **kw: Any) -> Row:
    event: dict[str, Any] = {"event": f"file.{status}", "job": job, "path": path, "size": 5,
                             "time": T0.timestamp() + at, "host": "h"}
    event.update(kw)
    (one,) = rows_of(event, job, ROOT)
    return one


# -- the rule, without a database ----------------------------------------------------------

def test_the_later_outcome_stands_but_a_skip_never_replaces_a_fetch() -> None:
    t, later = T0, T0 + timedelta(seconds=1)
    assert replaces("parked", t, "fetched", later)  # a retried file that lands
    assert not replaces("fetched", later, "parked", t)  # a late duplicate of the park
    assert replaces("fetched", t, "parked", later)  # parked in a later run: it failed now
    assert not replaces("fetched", t, "skipped", later)  # the same file, told again
    assert replaces("skipped", t, "fetched", later)
    assert replaces("fetched", t, "fetched", t)  # the same event twice


def test_a_batch_keeps_one_row_per_file_by_the_rule() -> None:
    rows = [row("a", "fetched", 2), row("a", "parked", 1), row("b", "parked", 1),
            row("b", "fetched", 3), row("a", "skipped", 5)]
    kept = {r.path: r.status for r in merged(rows)}
    assert kept == {"a": "fetched", "b": "fetched"}


def test_rows_of_events_old_and_new() -> None:
    job = FetchJob("d/x.bin", 10)
    event = file_event("fetched", "j", job, 0.25, ROOT)
    (r,) = rows_of(event, "j", ROOT)
    assert (r.path, r.status, r.size, r.seconds, r.source) == (
        "d/x.bin", "fetched", 10, 0.25, "upyun://testbucket/d/x.bin")
    assert r.host and r.updated_at.year >= 2025
    # An older worker's event: no source, no seconds; the source comes from the job's.
    old = {"event": "file.skipped", "job": "j", "time": 1.0, "path": "y", "size": 3}
    (r,) = rows_of(old, "j", ROOT)
    assert (r.source, r.seconds, r.status) == ("upyun://testbucket/y", None, "skipped")
    # A shared event (RabbitMQ): one row per file of its list.
    shared = {"event": "file.fetched", "job": "j", "time": 1.0, "host": "h",
              "files": [{"path": "p1", "size": 1, "seconds": 0.1}, {"path": "p2", "size": 2}]}
    assert [(r.path, r.size, r.seconds) for r in rows_of(shared, "j", ROOT)] == [
        ("p1", 1, 0.1), ("p2", 2, None)]
    # Another job's events and job.finished make no row.
    assert rows_of({**old, "job": "other"}, "j", ROOT) == []
    assert rows_of({"event": "job.finished", "job": "j"}, "j", ROOT) == []


def test_parked_rows_keep_their_reason_and_folders_their_mark() -> None:
    reason = Reason("NotFound", "gone: 404", 2, http_status=404, code="40400001")
    (r,) = rows_of(parked_event("j", FetchJob("a/b"), reason, ROOT), "j", ROOT)
    assert r.error == "NotFound HTTP 404 40400001: gone: 404"
    back = reason_of(r.error)
    assert (back.error, back.http_status, back.code, back.message) == (
        "NotFound", 404, "40400001", "gone: 404")
    assert error_text(reason.to_dict()) == r.error
    (f,) = rows_of(parked_event("j", ListJob("broken"), reason, ROOT), "j", ROOT)
    assert (f.path, f.size) == ("broken/", None)
    # A name no database holds as it is: escaped, its key still its own.
    (n,) = rows_of(parked_event("j", FetchJob("nul\x00name"), reason), "j", ROOT)
    (s,) = rows_of(parked_event("j", FetchJob("bad\udcffname"), reason), "j", ROOT)
    assert (n.path, s.path) == ("nul\\x00name", "bad\\udcffname")
    assert n.path_key != row("nul\\x00name", "fetched", 0).path_key


class FlakyStore:
    """A database that is away for its first ``away`` writes and refuses one path."""

    where = "flaky"

    def __init__(self, away: int, refused: str) -> None:
        self.away = away
        self.refused = refused
        self.rows: list[Row] = []

    async def write(self, rows: list[Row]) -> int:
        import sqlalchemy as sa

        if self.away:
            self.away -= 1
            raise sa.exc.OperationalError("INSERT", {}, ConnectionError("server closed"))
        if any(r.path == self.refused for r in rows):
            raise sa.exc.DataError("INSERT", {}, ValueError("value too long"))
        self.rows.extend(rows)
        return len(rows)


async def test_the_writer_waits_for_its_database_and_drops_only_what_it_refuses() -> None:
    from mirror.ledger.writer import LedgerWriter

    store = FlakyStore(away=2, refused="bad")
    writer = LedgerWriter(store, "j", ROOT, LedgerSettings("x://", linger_s=0.01))  # type: ignore[arg-type]
    acked: list[str] = []

    def ack_of(path: str) -> Any:
        async def ack() -> None:
            assert any(r.path == path for r in store.rows) or path == "bad"  # after the commit
            acked.append(path)
        return ack

    writer.start()
    for path in ("a", "bad", "b"):
        writer.add({"event": "file.fetched", "job": "j", "path": path, "size": 1, "time": 1.0},
                   ack_of(path))
    await writer.close()
    assert sorted(r.path for r in store.rows) == ["a", "b"]
    assert (writer.written, writer.dropped, sorted(acked)) == (2, 1, ["a", "b", "bad"])


# -- the table, on each database -----------------------------------------------------------

async def test_upserts_follow_the_rule_in_the_database(store: LedgerStore, job_name: str
                                                       ) -> None:
    j = job_name
    await store.write([row("a", "parked", 1, j, reason={"error": "X", "message": "m"}),
                       row("b", "fetched", 2, j, seconds=0.5), row("c", "skipped", 1, j)])
    await store.write([row("a", "fetched", 3, j, seconds=1.5),  # the retry that landed
                       row("b", "parked", 1, j, reason={"error": "X", "message": "late"}),
                       row("b", "skipped", 9, j),  # told again after it landed
                       row("c", "fetched", 2, j, seconds=0.1)])
    await store.write([row("a", "fetched", 3, j, seconds=1.5)])  # a duplicate
    got = {r.path: (r.status, r.seconds, r.error) async for r in store.rows(j)}
    assert got == {"a": ("fetched", 1.5, None), "b": ("fetched", 0.5, None),
                   "c": ("fetched", 0.1, None)}
    # Paths compare byte for byte (MariaDB's default collation would not), any length.
    long = "/".join(["d" * 200] * 30)
    await store.write([row("A.txt", "fetched", 1, j), row("a.txt", "fetched", 1, j),
                       row(long, "fetched", 1, j), row("nul\x00x", "parked", 1, j)])
    paths = [r.path async for r in store.rows(j)]
    assert {"A.txt", "a.txt", long, "nul\\x00x"} <= set(paths) and len(paths) == 7
    counts = await store.counts(j)
    assert counts == {"fetched": (6, 30), "skipped": (0, 0), "parked": (1, 5)}
    assert [r.path async for r in store.rows(j, ["parked"])] == ["nul\\x00x"]


# -- a whole run ---------------------------------------------------------------------------

GOOD = {f"good/f{i:02d}.txt": f"file {i}\n".encode() * (i + 1) for i in range(30)}
HOSTILE = "nul\x00name"


def listing(entries: list[dict[str, object]]) -> bytes:
    return json.dumps({"files": entries, "iter": LIST_END}).encode()


def entry(name: str, size: int = 3, folder: bool = False) -> dict[str, object]:
    return {"name": name, "type": "folder" if folder else "text/plain",
            "length": 0 if folder else size, "last_modified": 1_700_000_000}


async def mirror_cmd(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mirror", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_a_run_with_a_hostile_name_and_faults(ledger_url: str, store: LedgerStore,
                                                    tmp_path: Path, job_name: str) -> None:
    bucket = tmp_path / "bucket"
    for rel, data in {**GOOD, "top.txt": b"top", "corrupt.bin": bytes(range(250)) * 2}.items():
        (bucket / rel).parent.mkdir(parents=True, exist_ok=True)
        (bucket / rel).write_bytes(data)
    faults = Faults(rate_429=0.05, rate_503=0.05, rate_truncate=0.05, seed=11)
    async with FakeUpyun(bucket, bucket=BUCKET, operator=OPERATOR, password=PASSWORD,
                         faults=faults) as fake:
        fake.listing_override[""] = lambda _iter: (listing([
            entry("top.txt"), entry("corrupt.bin", 500), entry("good", folder=True),
            entry(HOSTILE)]), LIST_END)
        # The listed size, other bytes: the MD5 the fake sends is the real content's.
        fake.body_override["corrupt.bin"] = lambda data, headers: (bytes(reversed(data)),
                                                                   headers)
        spec = JobSpec(name=job_name, source=ROOT,
                       source_options={"endpoint": fake.url, "list_limit": 10},
                       retry_delays_s=(0.02, 0.05, 0.1), max_attempts=6)
        worker = WorkerSettings(concurrency=4, resume_retries=0)
        outcome = await run_job(spec, tmp_path / "dest", None,
                                SourceSettings(env=CREDENTIALS, request_retries=0),
                                WorkOptions(worker, ledger=LedgerSettings(ledger_url)),
                                tmp_path / "state")
        faulted = sum(fake.stats.faults.values())
    assert outcome.parked_total == 2 and outcome.stats.retried >= faulted > 0
    rows = {r.path: r async for r in store.rows(job_name)}
    good = [*GOOD, "top.txt"]
    assert sorted(rows) == sorted([*good, "corrupt.bin", "nul\\x00name"])
    for path in good:
        r = rows[path]
        assert (r.status, r.error, r.job) == ("fetched", None, job_name), r
        assert r.size == (len(GOOD[path]) if path in GOOD else 3)
        assert r.seconds is not None and r.seconds > 0 and r.host
        assert r.source == f"upyun://{BUCKET}/{path}"
    hostile, corrupt = rows["nul\\x00name"], rows["corrupt.bin"]
    assert hostile.status == "parked" and hostile.error is not None
    assert hostile.error.startswith("UnsafePath: ") and "NUL" in hostile.error
    assert corrupt.status == "parked" and corrupt.error is not None
    assert corrupt.error.startswith("IntegrityError")

    code, out, err = await mirror_cmd("ledger", "--ledger", ledger_url, "--job", job_name,
                                      "--status", "parked", "--json")
    assert code == 0, err
    printed = json.loads(out)
    assert sorted(r["path"] for r in printed["rows"]) == ["corrupt.bin", "nul\\x00name"]
    assert {r["status"] for r in printed["rows"]} == {"parked"}
    assert printed["counts"]["fetched"]["files"] == len(good)
    assert printed["counts"]["parked"]["files"] == 2
    if ledger_url.startswith("sqlite"):  # the other answers from a ledger, once
        code, out, err = await mirror_cmd("failures", "--job", job_name, "--ledger",
                                          ledger_url, "--json")
        assert code == 0, err
        groups = {g["error"]: g for g in json.loads(out)["groups"]}
        assert set(groups) == {"UnsafePath", "IntegrityError"}
        assert groups["UnsafePath"]["paths"] == ["nul\\x00name"]
        code, out, err = await mirror_cmd("status", "--job", job_name, "--ledger", ledger_url,
                                          "--json")
        assert code == 0, err
        assert json.loads(out)["files"]["fetched"]["files"] == len(good)
        code, out, err = await mirror_cmd("ledger", "--ledger", ledger_url, "--job", job_name,
                                          "--status", "fetched", "--csv", "--limit", "3")
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].startswith("job,path,source,status") and len(lines) == 4
        assert "fetched" in err and str(len(good)) in err


def test_the_bench_runs(tmp_path: Path) -> None:
    """bench/ledger.py stays runnable (a tiny run on SQLite)."""
    import subprocess

    bench = Path(__file__).resolve().parent.parent / "bench" / "ledger.py"
    result = subprocess.run(
        [sys.executable, str(bench), "--rows", "500", "--rounds", "1", "--only", "sqlite",
         "--sqlite", str(tmp_path / "bench.db")],
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert any(line.startswith("| sqlite | ") for line in result.stdout.splitlines())


async def test_a_ledger_that_is_not_there(tmp_path: Path) -> None:
    """Exit 3 for a database that does not answer, 2 for a URL that cannot be a ledger or
    a ledger without the table; nothing is made by reading."""
    code, _, err = await mirror_cmd("ledger", "--ledger", "postgresql://postgres@127.0.0.1:9/x",
                                    "--job", "j")
    assert code == 3 and "cannot open the ledger" in err
    code, _, err = await mirror_cmd("ledger", "--ledger", "oracle://u:secret@h/db", "--job", "j")
    assert code == 2 and "not supported" in err and "secret" not in err
    missing = tmp_path / "missing.db"
    code, _, err = await mirror_cmd("failures", "--job", "j", "--ledger", f"sqlite:///{missing}")
    assert code == 2 and "does not exist" in err and not missing.exists()
