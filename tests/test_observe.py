"""Watching a job: a real Prometheus scraping a worker, the dashboard and alert rules against
what the code exports, job events on RabbitMQ, and ``mirror status``."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from mirror.testing.compare import tree_differences
from mirror.testing.fake_upyun import FakeUpyun, Faults
from mirror.testing.sample import BucketInfo
from tests.conftest import BUCKET, CREDENTIALS, OPERATOR, PASSWORD, need_tool
from tests.test_cli import mirror_cmd

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "grafana" / "dashboards" / "bucket-mirror.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = REPO / "deploy" / "prometheus" / "alerts_test.yml"
PROM_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
OUR_METRIC = re.compile(r"\bbucket_mirror_[a-z0-9_]+")


def need(tool: str) -> str:
    return need_tool(tool, "apt-get install prometheus")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


async def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = await asyncio.to_thread(check)
        except OSError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.5)


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [r["expr"] for g in groups for r in g["rules"]]


def base_name(sample: str) -> str:
    for suffix in ("_total", "_bucket", "_sum", "_count", "_created"):
        if sample.endswith(suffix):
            return sample[: -len(suffix)]
    return sample


async def test_prometheus_scrapes_files_fetched(small_bucket: BucketInfo, tmp_path: Path) -> None:
    """A real Prometheus scrapes `mirror run`; its API then says: fetched == files in bucket."""
    prometheus = need("prometheus")
    metrics_port, prom_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "bucket-mirror",
                            "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
    }))
    server = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("w"))
    api = f"http://127.0.0.1:{prom_port}/api/v1"
    try:
        await wait_for(lambda: get_json(f"{api}/status/buildinfo")["status"] == "success", 60,
                       "Prometheus to start")

        def query(expr: str) -> float | None:
            result = get_json(f"{api}/query?query={urllib.parse.quote(expr)}")["data"]["result"]
            return float(result[0]["value"][1]) if result else None

        dest = tmp_path / "dest"
        async with FakeUpyun(small_bucket.root, bucket=BUCKET, operator=OPERATOR,
                             password=PASSWORD, faults=Faults(latency_s=0.1)) as fake:
            # Slow enough (~10 s) for several scrapes while files are still being fetched.
            code, out, err = await mirror_cmd(
                "run", f"upyun://{BUCKET}/", str(dest), "--endpoint", fake.url,
                "--concurrency", "2", "--list-limit", "10", "--no-progress",
                "--state-dir", str(tmp_path / "state"),
                "--metrics-addr", f"127.0.0.1:{metrics_port}", "--metrics-linger", "4",
                env=CREDENTIALS)
        assert code == 0, out + err
        assert tree_differences(small_bucket.root, dest) == []
        fetched = 'sum(last_over_time(bucket_mirror_files_total{outcome="fetched"}[5m]))'
        value = await wait_for(lambda: query(fetched) == small_bucket.files, 15,
                               "Prometheus to hold the final count")
        assert value
        # Scraped during the run, not only at the end: some scrape saw a partial count.
        partial = query('min(min_over_time(bucket_mirror_files_total{outcome="fetched"}[5m]))')
        assert partial is not None and partial < small_bucket.files
        assert query("max(last_over_time(bucket_mirror_build_info[5m]))") == 1
    finally:
        server.terminate()
        server.wait(timeout=30)


async def test_dashboard_and_rules_use_only_exported_metrics(small_bucket: BucketInfo,
                                                              tmp_path: Path) -> None:
    """Every bucket_mirror_* name in the dashboard and the alert rules is one a live worker
    exports, and promtool accepts the rules, their unit tests and the scrape config."""
    from prometheus_client.parser import text_string_to_metric_families

    promtool = need("promtool")
    port = free_port()
    async with FakeUpyun(small_bucket.root, bucket=BUCKET, operator=OPERATOR,
                         password=PASSWORD) as fake:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mirror", "run", f"upyun://{BUCKET}/",
            str(tmp_path / "dest"), "--endpoint", fake.url, "--no-progress",
            "--state-dir", str(tmp_path / "state"), "--metrics-addr", f"127.0.0.1:{port}",
            "--metrics-linger", "30", env={**os.environ, **CREDENTIALS},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            def scrape() -> str | None:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                            timeout=5) as resp:
                    text: str = resp.read().decode()
                done = 'bucket_mirror_files_total{mirror_job="' in text and any(
                    line.startswith("bucket_mirror_files_total")
                    and 'outcome="fetched"' in line
                    and float(line.rsplit(" ", 1)[1]) == small_bucket.files
                    for line in text.splitlines())
                return text if done else None

            text = await wait_for(scrape, 120, "the worker to fetch every file")
        finally:
            proc.terminate()
            await proc.communicate()
    exported = {f.name for f in text_string_to_metric_families(text)}
    assert "bucket_mirror_files" in exported
    named = {m for expr in [*dashboard_exprs(), *rule_exprs()] for m in OUR_METRIC.findall(expr)}
    assert len(named) >= 10
    missing = sorted(m for m in named if base_name(m) not in exported)
    assert missing == [], f"named in dashboard/rules but not exported: {missing}"
    # Labels the dashboard groups by exist on our series.
    assert 'mirror_job="' in text and 'outcome="fetched"' in text

    for args in (["check", "rules", str(ALERTS)], ["test", "rules", str(ALERT_TESTS)],
                 ["check", "config", str(PROM_CONFIG)]):
        result = subprocess.run([promtool, *args], capture_output=True, text=True,
                                cwd=ALERTS.parent, timeout=120, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_is_provisionable() -> None:
    """The dashboard and its provisioning files agree: fixed datasource uid, file provider."""
    dash = json.loads(DASHBOARD.read_text())
    grafana = REPO / "grafana" / "provisioning"
    ds = yaml.safe_load((grafana / "datasources" / "prometheus.yml").read_text())["datasources"]
    uids = {d["uid"] for d in ds}
    assert dash["uid"] and dash["title"]
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] in uids, panel["title"]
        assert all(t["datasource"]["uid"] in uids for t in panel["targets"]), panel["title"]
        assert panel["gridPos"]["x"] >= 0 and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
    assert "${" not in json.dumps(dash).replace("${job}", "")  # nothing left for an import UI
    providers = yaml.safe_load((grafana / "dashboards" / "bucket-mirror.yml").read_text())
    assert providers["providers"][0]["type"] == "file"
    titles = {p["title"] for p in dash["panels"]}
    for wanted in ("Files/s per host", "Backlog per queue (ready)", "ETA", "Errors by reason",
                   "429 / 503 from the source", "Transfers in flight", "Disk free", "Parked"):
        assert wanted in titles


async def _start(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mirror", *args, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def _delete_job(rabbit_url: str, job_name: str) -> None:
    from mirror.broker.rabbitmq import RabbitBroker

    broker = await RabbitBroker.connect(rabbit_url, job_name)
    try:
        await broker.attach()
        await broker.delete_job()
    finally:
        await broker.close()


@pytest.mark.rabbitmq
async def test_watch_gets_one_event_per_file_and_finished(small_bucket: BucketInfo,
                                                          tmp_path: Path, rabbit_url: str,
                                                          job_name: str) -> None:
    env = {**CREDENTIALS, "MIRROR_BROKER_URL": ""}
    dest = tmp_path / "dest"
    try:
        async with FakeUpyun(small_bucket.root, bucket=BUCKET, operator=OPERATOR,
                             password=PASSWORD) as fake:
            code, out, err = await mirror_cmd(
                "seed", f"upyun://{BUCKET}/", "--job", job_name, "--broker", rabbit_url,
                "--endpoint", fake.url, "--list-limit", "13", env=env)
            assert code == 0, err
            # Seeded but not worked yet: the watcher binds before any event can be sent.
            watcher = await _start("watch", "--job", job_name, "--broker", rabbit_url,
                                   "--json", "--until-finished", "--timeout", "180", env=env)
            assert watcher.stderr is not None
            line = await asyncio.wait_for(watcher.stderr.readline(), 30)
            assert b"watching events" in line
            code, out, err = await mirror_cmd(
                "work", "--job", job_name, "--broker", rabbit_url, "--dest", str(dest),
                "--until-idle", "--no-progress", "--concurrency", "4", env=env)
            assert code == 0, out + err
            out_b, err_b = await asyncio.wait_for(watcher.communicate(), 60)
            assert watcher.returncode == 0, err_b.decode()
        events = [json.loads(x) for x in out_b.decode().splitlines()]
        assert events[-1]["event"] == "job.finished"
        assert events[-1]["fetched"] == small_bucket.files
        assert events[-1]["parked_total"] == 0
        per_file = [e for e in events if e["event"].startswith("file.")]
        assert {e["event"] for e in per_file} == {"file.fetched"}
        paths = [e["path"] for e in per_file]
        assert len(paths) == len(set(paths)) == small_bucket.files
        on_disk = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
        assert set(paths) == on_disk
        assert all(e["job"] == job_name and e["size"] >= 0 for e in per_file)
        assert [e["event"] for e in events].count("job.finished") == 1
    finally:
        await _delete_job(rabbit_url, job_name)


@pytest.mark.rabbitmq
async def test_status_json_adds_up_to_the_bucket(small_bucket: BucketInfo, tmp_path: Path,
                                                 rabbit_url: str, job_name: str) -> None:
    """While two workers run, `mirror status --json` moves forward; by the end its counts are
    the bucket's files, nothing queued, the job done."""
    env = {**CREDENTIALS, "MIRROR_BROKER_URL": ""}
    dest = tmp_path / "dest"
    workers: list[asyncio.subprocess.Process] = []
    try:
        async with FakeUpyun(small_bucket.root, bucket=BUCKET, operator=OPERATOR,
                             password=PASSWORD, faults=Faults(latency_s=0.1)) as fake:
            code, out, err = await mirror_cmd(
                "seed", f"upyun://{BUCKET}/", "--job", job_name, "--broker", rabbit_url,
                "--endpoint", fake.url, "--list-limit", "10", env=env)
            assert code == 0, err
            common = ("work", "--job", job_name, "--broker", rabbit_url, "--dest", str(dest),
                      "--no-progress", "--concurrency", "2")
            workers = [await _start(*common, "--role", "list", env=env),
                       await _start(*common, "--role", "fetch", env=env)]
            seen: list[dict[str, Any]] = []
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                code, out, err = await mirror_cmd("status", "--job", job_name, "--broker",
                                                  rabbit_url, "--json", "--listen", "1.5",
                                                  env=env)
                assert code == 0, err
                seen.append(json.loads(out))
                if seen[-1]["done"]:
                    break
            final = seen[-1]
            assert final["done"], final
            files = final["files"]
            assert files["fetched"] + files["skipped"] + files["parked"] == small_bucket.files
            assert files["queued"] == 0 and files["in_flight"] == 0
            assert final["bytes"]["fetched"] == small_bucket.total_bytes
            assert final["listing_done"] and len(final["workers"]) == 2
            # Each worker says what its adaptive controllers do: the lister its listing,
            # the fetcher its transfers (pinned to 2 here).
            budgets = {c["budget"]: c for w in final["workers"] for c in w["controls"]}
            assert set(budgets) == {"list", "fetch"}
            assert budgets["fetch"]["concurrency"] == 2
            assert final["via"] in ("management", "amqp")
            # It was watched running: some earlier status showed work still to do, with a rate.
            assert any(not s["done"] for s in seen)
            assert any(s["rate"]["files_per_s"] > 0 for s in seen)
            done = [s["files"]["fetched"] for s in seen]
            assert done == sorted(done)
            code, out, err = await mirror_cmd("status", "--job", job_name, "--broker",
                                              rabbit_url, env=env)
            assert code == 0 and "done" in out, out + err
            assert "fetch: free" in out and "2 at once" in out, out
        assert tree_differences(small_bucket.root, dest) == []
    finally:
        for w in workers:
            if w.returncode is None:
                w.terminate()
            await w.communicate()
        await _delete_job(rabbit_url, job_name)


@pytest.mark.slow
async def test_status_reads_depths_through_the_management_api(small_bucket: BucketInfo,
                                                              rabbit_available: None) -> None:
    """With the management plugin on, status reports messages held by consumers too; with
    the API unreachable it falls back to AMQP and says so."""
    from mirror.broker.rabbitmq import RabbitBroker
    from mirror.testing.rabbit_node import PrivateRabbit

    async with PrivateRabbit(plugins=("rabbitmq_management",)) as node:
        env = {**CREDENTIALS, "MIRROR_BROKER_URL": ""}
        async with FakeUpyun(small_bucket.root, bucket=BUCKET, operator=OPERATOR,
                             password=PASSWORD) as fake:
            code, _, err = await mirror_cmd("seed", f"upyun://{BUCKET}/", "--job", "mgmt",
                                            "--broker", node.url, "--shards", "2",
                                            "--endpoint", fake.url, env=env)
        assert code == 0, err
        # Hold the root listing job unacknowledged, as a busy lister would.
        holder = await RabbitBroker.connect(node.url, "mgmt")
        held = asyncio.Event()

        async def hold(delivery: Any) -> None:
            held.set()
            await asyncio.sleep(3600)

        await holder.attach()
        consumer = await holder.consume("mgmt.list", 1, hold)
        await asyncio.wait_for(held.wait(), 30)
        api = f"http://guest:guest@127.0.0.1:{node.management_port}"
        summary: dict[str, Any] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the API's queue stats lag a few seconds
            code, out, err = await mirror_cmd("status", "--job", "mgmt", "--broker", node.url,
                                              "--management-url", api, "--json",
                                              "--listen", "0.5", env=env)
            assert code == 0, err
            summary = json.loads(out)
            queues = {q["name"]: q for q in summary["queues"]}
            if queues.get("mgmt.list", {}).get("unacked") == 1:
                break
            await asyncio.sleep(1)
        assert summary["via"] == "management", summary
        assert queues["mgmt.list"] == {"name": "mgmt.list", "ready": 0, "unacked": 1,
                                       "consumers": 1}
        assert {"mgmt.fetch.0", "mgmt.fetch.1", "mgmt.parked"} <= set(queues)
        assert not summary["listing_done"] and not summary["done"]

        code, out, err = await mirror_cmd("status", "--job", "mgmt", "--broker", node.url,
                                          "--management-url", "http://127.0.0.1:9",
                                          "--json", "--listen", "0.5", env=env)
        assert code == 0, err
        fallback = json.loads(out)
        assert fallback["via"] == "amqp" and "management API not reachable" in fallback["note"]
        assert {q["name"]: q["ready"] for q in fallback["queues"]}["mgmt.list"] == 0
        await consumer.cancel()
        await holder.close()


@pytest.mark.rabbitmq
async def test_status_watch_counts_workers_that_stopped(small_bucket: BucketInfo, tmp_path: Path,
                                                        rabbit_url: str, job_name: str) -> None:
    """`status --watch` follows a worker that finishes and exits: the last refresh still
    counts its files (from its final report) and says the job is done."""
    env = {**CREDENTIALS, "MIRROR_BROKER_URL": ""}
    try:
        async with FakeUpyun(small_bucket.root, bucket=BUCKET, operator=OPERATOR,
                             password=PASSWORD, faults=Faults(latency_s=0.05)) as fake:
            code, _, err = await mirror_cmd(
                "seed", f"upyun://{BUCKET}/", "--job", job_name, "--broker", rabbit_url,
                "--endpoint", fake.url, "--list-limit", "10", env=env)
            assert code == 0, err
            worker = await _start("work", "--job", job_name, "--broker", rabbit_url,
                                  "--dest", str(tmp_path / "dest"), "--until-idle",
                                  "--no-progress", "--concurrency", "2", env=env)
            code, out, err = await mirror_cmd("status", "--job", job_name, "--broker",
                                              rabbit_url, "--watch", "1", "--json",
                                              "--management-url", "", env=env)
            await worker.communicate()
        assert code == 0, err
        refreshes = [json.loads(line) for line in out.splitlines()]
        final = refreshes[-1]
        assert final["done"] and len(refreshes) >= 2
        assert final["files"]["fetched"] == small_bucket.files
        assert [w["state"] for w in final["workers"]] == ["stopped"]
    finally:
        await _delete_job(rabbit_url, job_name)
