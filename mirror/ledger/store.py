"""The ledger's table in SQL (SQLAlchemy Core, async drivers): created if missing, written by
idempotent upserts, read by job and status.

One table, ``mirror_files``, keyed by (``job``, ``path_key``): ``path_key`` is the SHA-256
of the path, so the key is exact (byte for byte, whatever the database's collation), short
enough for any index, and a path of any length (PostgreSQL's btree keys stop near 2.7 KB,
MariaDB's at 3 KB) or with a NUL (refused names, parked) still has its row.

An upsert replaces a row only as ``mirror.ledger.rows.replaces`` says, written as the
condition of the dialect's own upsert (``ON CONFLICT ... DO UPDATE ... WHERE`` for
PostgreSQL and SQLite, ``ON DUPLICATE KEY UPDATE`` with a ``CASE`` per column for MariaDB).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from mirror.errors import ConfigError, LedgerUnavailable
from mirror.ledger.rows import STATUSES, Row, merged

log = logging.getLogger(__name__)

# The driver each URL scheme is given (the ones installed with bucket-mirror).
DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg",
           "postgres": "postgresql+asyncpg", "mysql": "mysql+asyncmy",
           "mariadb": "mariadb+asyncmy"}
ASYNC_DRIVERS = frozenset(DRIVERS.values()) | {"mysql+aiomysql", "mariadb+aiomysql"}

# MariaDB's DATETIME keeps whole seconds unless told; the rule compares event times.
_TIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
METADATA = sa.MetaData()
FILES = sa.Table(
    "mirror_files", METADATA,
    sa.Column("job", sa.String(100), primary_key=True),
    sa.Column("path_key", sa.String(64), primary_key=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("source", sa.Text),
    sa.Column("status", sa.String(8), nullable=False),
    sa.Column("size", sa.BigInteger),
    sa.Column("seconds", sa.Double),
    sa.Column("error", sa.Text),
    sa.Column("host", sa.String(255)),
    sa.Column("updated_at", _TIME, nullable=False),
    sa.Index("mirror_files_status", "job", "status"),
    # Binary collation: paths and job names compare byte for byte, as on the disk.
    mysql_charset="utf8mb4", mysql_collate="utf8mb4_bin",
)
_C = FILES.c
# Updated on a replace; status then updated_at last: MariaDB evaluates its assignments in
# order, each seeing the ones before, and the condition reads both.
_UPDATED = ("path", "source", "size", "seconds", "error", "host", "status", "updated_at")


def engine_url(url: str) -> sa.URL:
    """``url`` with the async driver of its scheme (``sqlite:///PATH``, ``postgresql://...``,
    ``mysql://...``); ConfigError for a scheme or driver the ledger cannot use."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"--ledger {public_url(url)!r} is not a database URL like "
                          "sqlite:///PATH, postgresql://HOST/DB or mysql://HOST/DB") from exc
    name = parsed.drivername
    if name in DRIVERS:
        return parsed.set(drivername=DRIVERS[name])
    if name in ASYNC_DRIVERS:
        return parsed
    raise ConfigError(f"--ledger: {name!r} is not supported; give sqlite:///PATH, "
                      "postgresql://HOST/DB or mysql://HOST/DB (MariaDB)")


def public_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url.rsplit("@", maxsplit=1)[-1]


def _condition(new: Any) -> sa.ColumnElement[bool]:
    """``rows.replaces`` in SQL: ``new`` is the proposed row, the table's columns the kept."""
    # Statuses rendered into the statement: the MySQL drivers' many-row insert keeps the
    # ON DUPLICATE KEY part as it is, and a parameter left there fails.
    # (SQLAlchemy refuses literal_execute parameters in an executemany.)
    fetched, skipped = (sa.literal_column(f"'{s}'", sa.String) for s in ("fetched", "skipped"))
    return sa.and_(sa.not_(sa.and_(_C.status == fetched, new.status == skipped)),
                   new.updated_at >= _C.updated_at)


def _upsert(dialect: str) -> sa.Executable:
    if dialect in ("mysql", "mariadb"):
        stmt = mysql.insert(FILES)
        ok = _condition(stmt.inserted)
        return stmt.on_duplicate_key_update(
            [(name, sa.case((ok, stmt.inserted[name]), else_=_C[name])) for name in _UPDATED])
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        pg = pg_insert(FILES)
        return pg.on_conflict_do_update(
            index_elements=[_C.job, _C.path_key],
            set_={name: pg.excluded[name] for name in _UPDATED}, where=_condition(pg.excluded))
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as lite_insert

        lite = lite_insert(FILES)
        return lite.on_conflict_do_update(
            index_elements=[_C.job, _C.path_key],
            set_={name: lite.excluded[name] for name in _UPDATED},
            where=_condition(lite.excluded))
    raise ConfigError(f"the ledger cannot write to a {dialect} database")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: `mirror ledger` reads while a worker writes; each commit still reaches the disk.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


class LedgerStore:
    """One database's ledger table. ``open`` connects and creates the table if missing."""

    def __init__(self, engine: AsyncEngine, where: str) -> None:
        self._engine = engine
        self.where = where  # the URL without its password
        self._upsert = _upsert(engine.dialect.name)

    @classmethod
    async def open(cls, url: str, create: bool = True) -> LedgerStore:
        where = public_url(url)
        target = engine_url(url)
        if (not create and target.get_backend_name() == "sqlite" and target.database
                and not await asyncio.to_thread(os.path.exists, target.database)):
            raise ConfigError(f"the ledger {where} does not exist")  # (not made empty here)
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if target.get_backend_name() == "sqlite":
            kwargs["connect_args"] = {"timeout": 30}  # another process's write: wait for it
        engine = create_async_engine(target, **kwargs)
        if target.get_backend_name() == "sqlite":
            sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        store = cls(engine, where)
        try:
            await store._check(create)
        except (OSError, sa.exc.DBAPIError) as exc:
            await engine.dispose()
            raise LedgerUnavailable(f"cannot open the ledger {where}: {_short(exc)}") from exc
        except BaseException:
            await engine.dispose()
            raise
        return store

    async def _check(self, create: bool) -> None:
        """The table is there (made, with ``create``), else ConfigError."""
        for attempt in range(2):
            try:
                async with self._engine.begin() as conn:
                    if await conn.run_sync(lambda c: sa.inspect(c).has_table(FILES.name)):
                        return
                    if create:
                        await conn.run_sync(METADATA.create_all, checkfirst=True)
                        return
            except sa.exc.DBAPIError:
                # Two workers creating it at once: one fails; the table is there next time.
                if attempt or not create:
                    raise
                continue
            raise ConfigError(f"the ledger {self.where} has no table {FILES.name}; no job has "
                              "written to it yet")

    async def write(self, rows: Sequence[Row]) -> int:
        """Upsert ``rows`` in one transaction (one row per file: a batch is merged first);
        returns the rows sent."""
        batch = merged(rows)
        if batch:
            async with self._engine.begin() as conn:
                await conn.execute(self._upsert, [r.to_dict() for r in batch])
        return len(batch)

    async def counts(self, job: str) -> dict[str, tuple[int, int]]:
        """(rows, bytes) per status of ``job``, every status present."""
        query = (sa.select(_C.status, sa.func.count(), sa.func.coalesce(sa.func.sum(_C.size), 0))
                 .where(_C.job == job).group_by(_C.status))
        out = {status: (0, 0) for status in STATUSES}
        async with self._engine.connect() as conn:
            for status, count, size in await conn.execute(query):
                out[str(status)] = (int(count), int(size))
        return out

    async def rows(self, job: str, statuses: Sequence[str] = (),
                   limit: int | None = None) -> AsyncIterator[Row]:
        """The rows of ``job`` (of ``statuses``, if given), by path, streamed."""
        query = sa.select(*(_C[name] for name in Row.__dataclass_fields__)).where(
            _C.job == job).order_by(_C.path, _C.path_key)
        if statuses:
            query = query.where(_C.status.in_(list(statuses)))
        if limit is not None:
            query = query.limit(limit)
        async with self._engine.connect() as conn:
            result = await conn.stream(query.execution_options(yield_per=1000))
            async for record in result:
                yield Row(**record._asdict())

    async def delete_job(self, job: str) -> int:
        async with self._engine.begin() as conn:
            result = await conn.execute(sa.delete(FILES).where(_C.job == job))
            return int(result.rowcount or 0)

    async def close(self) -> None:
        await self._engine.dispose()


def _short(exc: BaseException) -> str:
    lines = str(getattr(exc, "orig", None) or exc).splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) < 200 else text[:197] + "..."


__all__ = ["FILES", "LedgerStore", "engine_url", "public_url"]
