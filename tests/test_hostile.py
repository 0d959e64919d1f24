"""Hostile or broken input from the source: each case is refused with a specific reason, the rest
of the job carries on, and DEST holds the good files and nothing else.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from mirror.broker import ParkedJob
from mirror.jobs import JobSpec
from mirror.parking import journal_path, read_journal
from mirror.runner import Outcome, WorkOptions, run_job
from mirror.settings import SourceSettings, WorkerSettings
from mirror.sources.upyun import LIST_END
from mirror.testing.fake_upyun import FakeUpyun

from .conftest import BUCKET, CREDENTIALS, OPERATOR, PASSWORD


def make_bucket(root: Path) -> dict[str, bytes]:
    files = {"good/a.txt": b"alpha" * 100, "good/b.bin": os.urandom(3000), "top.txt": b"top"}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


async def mirror(root: Path, tmp: Path, setup: Callable[[FakeUpyun], None], processes: int = 1
                 ) -> tuple[Outcome, list[ParkedJob], Path]:
    dest, state = tmp / "dest", tmp / "state"
    async with FakeUpyun(root, bucket=BUCKET, operator=OPERATOR, password=PASSWORD) as fake:
        setup(fake)
        spec = JobSpec(name="hostile", source=f"upyun://{BUCKET}/",
                       source_options={"endpoint": fake.url, "list_limit": 100},
                       retry_delays_s=(0.1, 0.2), max_attempts=3)
        settings = SourceSettings(env=CREDENTIALS, request_retries=0)
        worker = WorkerSettings(concurrency=4, resume_retries=0)
        outcome = await run_job(spec, dest, None, settings,
                                WorkOptions(worker, processes=processes), state)
    return outcome, read_journal(journal_path(state, "hostile")), dest


def files_under(dest: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(dest):
        for n in names:
            p = Path(dirpath) / n
            out[p.relative_to(dest).as_posix()] = p.read_bytes()
    return out


def listing(entries: list[dict[str, object]], iter_: str = LIST_END) -> bytes:
    return json.dumps({"files": entries, "iter": iter_}).encode()


def entry(name: str, size: int = 3, folder: bool = False) -> dict[str, object]:
    return {"name": name, "type": "folder" if folder else "text/plain",
            "length": 0 if folder else size, "last_modified": 1_700_000_000}


def with_good(root_entries: list[dict[str, object]]) -> list[dict[str, object]]:
    return [entry("top.txt"), entry("good", folder=True), *root_entries]


def reasons(parked: list[ParkedJob]) -> dict[str, str]:
    return {p.job.path: f"{p.reason.error}: {p.reason.message}" for p in parked}


async def test_unsafe_names_are_refused(tmp_path: Path) -> None:
    files = make_bucket(tmp_path / "b")
    bad = ["..", ".", "/etc/passwd", "", "nul\x00name", "a/b", "x" * 300]

    def setup(fake: FakeUpyun) -> None:
        fake.listing_override[""] = lambda _iter: (
            listing(with_good([entry(n) for n in bad])), LIST_END)

    outcome, parked, dest = await mirror(tmp_path / "b", tmp_path, setup)
    assert outcome.exit_code == 1 and outcome.parked_total == len(bad)
    why = reasons(parked)
    assert all(r.startswith("UnsafePath") for r in why.values()), why
    assert "'..'" in why[".."] or "parent" in why[".."]
    assert any("NUL" in r for r in why.values())
    assert any("too long" in r for r in why.values())
    assert "absolute" in why["/etc/passwd"]
    assert files_under(dest) == files


async def test_file_and_folder_of_the_same_name(tmp_path: Path) -> None:
    files = make_bucket(tmp_path / "b")

    def setup(fake: FakeUpyun) -> None:
        fake.listing_override[""] = lambda _iter: (
            listing(with_good([entry("clash", size=3), entry("clash", folder=True)])), LIST_END)
        fake.listing_override["clash"] = lambda _iter: (listing([entry("inner.txt")]), LIST_END)
        fake.body_override["clash"] = lambda data, headers: (b"abc", headers)
        fake.body_override["clash/inner.txt"] = lambda data, headers: (b"xyz", headers)

    outcome, parked, dest = await mirror(tmp_path / "b", tmp_path, setup)
    why = reasons(parked)
    assert len(why) == 1, why
    assert "a file and a folder of the same name" in next(iter(why.values()))
    got = files_under(dest)
    assert {k: v for k, v in got.items() if not k.startswith("clash")} == files
    assert got.get("clash") == b"abc" or got.get("clash/inner.txt") == b"xyz"


async def test_malformed_listing_is_parked(tmp_path: Path) -> None:
    files = make_bucket(tmp_path / "b")
    (tmp_path / "b" / "broken").mkdir()

    def setup(fake: FakeUpyun) -> None:
        fake.listing_override["broken"] = lambda _iter: (b'{"files": [{"name": "x",', None)

    outcome, parked, dest = await mirror(tmp_path / "b", tmp_path, setup)
    why = reasons(parked)
    assert list(why) == ["broken"]
    assert why["broken"].startswith("ProtocolError") and "JSON" in why["broken"]
    assert files_under(dest) == files


async def test_listing_whose_iter_never_ends(tmp_path: Path) -> None:
    files = make_bucket(tmp_path / "b")
    (tmp_path / "b" / "loop").mkdir()
    counter = iter(range(10**6))

    def endless(_iter: str | None) -> tuple[bytes, str | None]:
        token = base64.b64encode(f"loop-{next(counter)}".encode()).decode()
        return listing([entry("same.txt")], token), token

    def setup(fake: FakeUpyun) -> None:
        fake.listing_override["loop"] = endless
        fake.body_override["loop/same.txt"] = lambda data, headers: (b"abc", headers)

    outcome, parked, dest = await mirror(tmp_path / "b", tmp_path, setup)
    why = reasons(parked)
    assert list(why) == ["loop"]
    assert "round in circles" in why["loop"]
    assert files_under(dest) == {**files, "loop/same.txt": b"abc"}  # page 1 was good


@pytest.mark.parametrize("processes", [1, 2])
async def test_bodies_shorter_longer_or_corrupt(tmp_path: Path, processes: int) -> None:
    """With 2 processes the small files go to a fetch process as one batch, and each file's
    error comes back to be retried and parked on its own."""
    files = make_bucket(tmp_path / "b")
    for name in ("short.bin", "long.bin", "corrupt.bin"):
        (tmp_path / "b" / name).write_bytes(os.urandom(2000))

    def short(data: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        return data[:1000], headers  # Content-Length still says 2000, then the server hangs up

    def long(data: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        return data + b"extra", {**headers, "Content-Length": str(len(data) + 5)}

    def corrupt(data: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        return bytes(reversed(data)), headers  # same size, MD5 headers of the real content

    def setup(fake: FakeUpyun) -> None:
        fake.body_override.update({"short.bin": short, "long.bin": long,
                                   "corrupt.bin": corrupt})

    outcome, parked, dest = await mirror(tmp_path / "b", tmp_path, setup, processes)
    why = reasons(parked)
    assert set(why) == {"short.bin", "long.bin", "corrupt.bin"}, why
    assert "cut short" in why["short.bin"]
    assert "2005 bytes" in why["long.bin"] and "listing said 2000" in why["long.bin"]
    assert "MD5" in why["corrupt.bin"]
    assert all(p.reason.attempts == 3 for p in parked)
    assert files_under(dest) == files
