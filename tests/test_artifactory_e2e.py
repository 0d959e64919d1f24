"""Artifactory end to end: the ``mirror`` command (separate processes, default flags) against
the fake Artifactory on loopback, over the embedded broker and over RabbitMQ with sharded
fetchers, with a tenth of first attempts faulted; hostile names, rejected credentials,
``mirror ls``; and what is parked, with Artifactory's own message, run in-process."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from mirror.jobs import JobSpec, shard_of
from mirror.parking import journal_path, read_journal
from mirror.runner import WorkOptions, run_job
from mirror.settings import SourceSettings, WorkerSettings
from mirror.testing.compare import tree_differences
from mirror.testing.fake_artifactory import Access, FakeArtifactory, Faults, Flavour
from mirror.testing.sample import BucketInfo, build_bucket
from tests.test_cli import mirror_cmd

REPO, TOKEN = "libs-local", "art-token-7"
ENV = {"ARTIFACTORY_TOKEN": TOKEN}
# A tenth of first attempts fail: throttled, unavailable, cut short, dropped.
FAULTS = Faults(rate_429=0.025, rate_503=0.025, rate_truncate=0.025, rate_drop=0.025, seed=20)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> BucketInfo:
    """Odd names (spaces, unicode, ``+``, ``%``, ``?``, ``#``, ``;``...), empty folders,
    zero-byte files and a file large enough to be streamed and resumed."""
    root = tmp_path_factory.mktemp("artifactory") / "repo"
    return build_bucket(root, files=140, deep=5, wide=30, big_files=1,
                        big_size=3 * 1024 * 1024, seed=12)


def fake_of(tree: BucketInfo, **kwargs: object) -> FakeArtifactory:
    access = kwargs.pop("access", Access(token=TOKEN, anonymous=False))
    return FakeArtifactory(tree.root, repo=REPO, access=access, **kwargs)  # type: ignore[arg-type]


def faults_seen(fake: FakeArtifactory) -> int:
    return sum(fake.stats.faults.values())


async def test_run_mirrors_odd_names_through_faults(tree: BucketInfo, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    async with fake_of(tree, faults=FAULTS) as fake:
        code, out, err = await mirror_cmd(
            "run", f"artifactory://{REPO}/", str(dest), "--endpoint", fake.url,
            "--state-dir", str(tmp_path / "state"), "--no-progress", env=ENV)
        assert code == 0, out + err
        assert faults_seen(fake) >= 0.05 * tree.files, fake.stats.faults
        assert fake.stats.api.get("file-list", 0) >= tree.folders  # one request a folder
        assert "file-info" not in fake.stats.api
    assert tree_differences(tree.root, dest) == []
    assert f"fetched {tree.files} files" in out


async def test_oss_and_anonymous_list_by_folder_info(tree: BucketInfo, tmp_path: Path) -> None:
    """No file list (OSS), anonymous reads, the documentation's string values, no SHA-256
    and a server west of Greenwich: the same mirror."""
    dest = tmp_path / "dest"
    flavour = Flavour(pro=False, strings=True, sha256=False, utc_offset_min=-300)
    async with fake_of(tree, access=Access(anonymous=True), flavour=flavour,
                       faults=FAULTS) as fake:
        code, out, err = await mirror_cmd(
            "run", f"artifactory://{REPO}/", str(dest), "--endpoint", fake.url,
            "--state-dir", str(tmp_path / "state"), "--no-progress")
        assert code == 0, out + err
        assert fake.stats.api["file-info"] >= tree.files - 5  # zero-byte files need one too
        assert fake.stats.by_status.get(400, 0) == 1  # the file list asked for once only
    assert tree_differences(tree.root, dest) == []


@pytest.mark.slow
async def test_rabbitmq_with_sharded_fetchers(tree: BucketInfo, tmp_path: Path,
                                              rabbit_url: str, job_name: str) -> None:
    from mirror.broker.rabbitmq import RabbitBroker

    disk_a, disk_b = tmp_path / "disk-a", tmp_path / "disk-b"
    disk_a.mkdir()
    disk_b.mkdir()
    env = {**ENV, "MIRROR_BROKER_URL": ""}
    try:
        async with fake_of(tree, faults=FAULTS) as fake:
            code, out, err = await mirror_cmd(
                "seed", f"artifactory://{REPO}/", "--job", job_name, "--broker", rabbit_url,
                "--endpoint", fake.url, "--shards", "3", env=env)
            assert code == 0, out + err
            common = ("work", "--job", job_name, "--broker", rabbit_url, "--until-idle",
                      "--no-progress", "--state-dir", str(tmp_path / "state"))
            results = await asyncio.gather(
                mirror_cmd(*common, "--role", "list", env=env),
                mirror_cmd(*common, "--role", "fetch", "--disk", f"0-1={disk_a}", env=env),
                mirror_cmd(*common, "--role", "fetch", "--disk", f"2={disk_b}", env=env))
            for code, out, err in results:
                assert code == 0, out + err
            assert faults_seen(fake) >= 0.05 * tree.files, fake.stats.faults
    finally:
        broker = await RabbitBroker.connect(rabbit_url, job_name)
        await broker.delete_job()
        await broker.close()
    seen: dict[str, bytes] = {}
    for disk, shards in ((disk_a, {0, 1}), (disk_b, {2})):
        for dirpath, _, names in os.walk(disk):
            for name in names:
                rel = (Path(dirpath) / name).relative_to(disk).as_posix()
                assert rel not in seen and shard_of(rel, 3) in shards, rel
                seen[rel] = (Path(dirpath) / name).read_bytes()
    expected = {p.relative_to(tree.root).as_posix(): p.read_bytes()
                for p in tree.root.rglob("*") if p.is_file()}
    assert seen == expected


async def test_hostile_names_are_refused_and_the_rest_arrives(tree: BucketInfo,
                                                              tmp_path: Path) -> None:
    dest = tmp_path / "inner" / "dest"
    async with fake_of(tree) as fake:
        fake.extra_children[""] = [("../x", False), ("..", True), ("../evil", True)]
        fake.extra_children["names"] = [("a/b", False), ("", False), (".", True)]
        code, out, err = await mirror_cmd(
            "run", f"artifactory://{REPO}/", str(dest), "--endpoint", fake.url,
            "--state-dir", str(tmp_path / "state"), "--no-progress", env=ENV)
    assert code == 1, out + err
    assert "parked 6" in out
    parked = [line for line in out.splitlines() if "UnsafePath" in line]
    assert len(parked) == 6 and all("unsafe" in line.lower() for line in parked), out
    assert tree_differences(tree.root, dest) == []  # every good file, nothing more
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inner", "state"]
    assert [p.name for p in (tmp_path / "inner").iterdir()] == ["dest"]


async def test_a_rejected_token_exits_3_with_one_line(tree: BucketInfo, tmp_path: Path) -> None:
    async with fake_of(tree) as fake:
        code, _, err = await mirror_cmd(
            "run", f"artifactory://{REPO}/", str(tmp_path / "d"), "--endpoint", fake.url,
            "--state-dir", str(tmp_path / "state"), env={"ARTIFACTORY_TOKEN": "stolen-guess"})
    assert code == 3
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "rejected the access token (ARTIFACTORY_TOKEN)" in lines[0]
    assert "Bad credentials" in lines[0] and "stolen-guess" not in err
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())


async def test_a_missing_endpoint_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = await mirror_cmd("run", f"artifactory://{REPO}/", str(tmp_path / "d"),
                                    env={**ENV, "MIRROR_ENDPOINT": ""})
    assert code == 2 and "--endpoint" in err and "https://HOST/artifactory" in err


async def test_ls(tree: BucketInfo) -> None:
    async with fake_of(tree) as fake:
        code, out, err = await mirror_cmd("ls", f"artifactory://{REPO}/names", "-l",
                                          "--endpoint", fake.url, env=ENV)
        assert code == 0, err
        code, deep, err = await mirror_cmd("ls", f"artifactory://{REPO}/", "-R",
                                           "--endpoint", fake.url, env=ENV)
        assert code == 0, err
    names = {p.name for p in (tree.root / "names").iterdir()}
    listed = {line.split("  ")[-1].rstrip("/") for line in out.splitlines()}
    assert listed == names
    every = {p.relative_to(tree.root).as_posix() for p in tree.root.rglob("*")}
    assert {line.rstrip("/") for line in deep.splitlines()} == every


async def test_refusals_are_parked_with_artifactorys_message(tree: BucketInfo,
                                                             tmp_path: Path) -> None:
    """403 and 404 park the file (or folder) with the server's message; a body that does
    not match its SHA-256 is retried, then parked; the rest arrives."""
    state = tmp_path / "state"
    async with fake_of(tree) as fake:
        fake.inject("names/plus+sign.txt", 403, "User reader is not permitted to download",
                    on="download")
        fake.inject("names/hash#tag.txt", 404, "Unable to find item", on="download")
        fake.inject("zero", 403, "No read permission on zero", on="storage")
        fake.corrupt.add("names/with space.txt")
        spec = JobSpec(name="refusals", source=f"artifactory://{REPO}/",
                       source_options={"endpoint": fake.url}, retry_delays_s=(0.1, 0.2),
                       max_attempts=3)
        outcome = await run_job(spec, tmp_path / "dest", None,
                                SourceSettings(env=ENV, request_retries=0),
                                WorkOptions(WorkerSettings(resume_retries=0)), state)
    assert outcome.exit_code == 1 and outcome.fatal is None
    why = {p.job.path: p.reason for p in read_journal(journal_path(state, "refusals"))}
    assert set(why) == {"names/plus+sign.txt", "names/hash#tag.txt", "zero",
                        "names/with space.txt"}
    assert why["names/plus+sign.txt"].error == "AccessDenied"
    assert "not permitted to download" in why["names/plus+sign.txt"].message
    assert why["names/hash#tag.txt"].error == "NotFound"
    assert why["zero"].error == "AccessDenied" and why["zero"].http_status == 403
    assert "No read permission on zero" in why["zero"].message
    assert why["names/with space.txt"].error == "IntegrityError"
    assert "SHA-256" in why["names/with space.txt"].message
    assert why["names/with space.txt"].attempts == 3
    skipped = {"names/plus+sign.txt", "names/hash#tag.txt", "names/with space.txt"}
    for path in tree.root.rglob("*"):
        rel = path.relative_to(tree.root).as_posix()
        if path.is_file() and rel not in skipped and not rel.startswith("zero/"):
            assert (tmp_path / "dest" / rel).read_bytes() == path.read_bytes(), rel


async def test_the_fake_artifactory_command(tree: BucketInfo) -> None:
    """``mirror fake-artifactory`` serves a folder for manual runs and the bench."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mirror", "fake-artifactory", str(tree.root), "--port", "0",
        "--repo", REPO, "--token", TOKEN, "--no-anonymous", "--oss",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        endpoint = line.split(" at ")[1].split()[0]
        assert endpoint.endswith("/artifactory"), line
        code, out, err = await mirror_cmd("ls", f"artifactory://{REPO}/zero", "--endpoint",
                                          endpoint, env=ENV)
        assert code == 0, err
        assert sorted(out.split()) == sorted(p.name for p in (tree.root / "zero").iterdir())
    finally:
        proc.terminate()
        await proc.wait()
