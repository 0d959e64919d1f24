"""The ledger: one row per file of a job in a SQL table (``mirror_files``), its outcome, size,
time and error, for operators and other systems to query after the fact.

Rows are written from the job's events (``mirror.events``) by whichever worker holds the
ledger (``--ledger URL``): over RabbitMQ from the durable queue ``J.ledger``, bound to the
job's events exchange when the job is seeded with a ledger, so nothing is missed while no
writer runs; on the embedded broker in-process. Which outcome of a file stands is the rule
of ``mirror.ledger.rows``; the SQL is SQLAlchemy's (``mirror.ledger.store``), written in
batches in the background (``mirror.ledger.writer``); ``mirror.ledger.attach`` puts a writer
on a job's broker (``mirror run``, ``mirror work``, and any command that works a job).

This module holds only the settings, so that importing it costs nothing: SQLAlchemy is
imported with the store, when a ledger is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LedgerSettings:
    url: str = field(repr=False)  # may hold a password: never shown (store.public_url)
    batch_rows: int = 2000  # a batch is written at once when this many rows wait
    linger_s: float = 0.05  # else after this long, gathering what comes meanwhile
    # Events of the RabbitMQ feed held unacked by the writer (a message may tell many files).
    prefetch: int = 2000
    # At the end of a job, how long to wait for the feed to be written out; at close, how
    # long to wait for a database that is away before giving up (the feed keeps the rest).
    drain_s: float = 60.0
    close_patience_s: float = 30.0


__all__ = ["LedgerSettings"]
