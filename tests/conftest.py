"""Shared fixtures. Servers are real: the RabbitMQ at 127.0.0.1:5672, our fake UpYun on loopback.

A missing RabbitMQ fails the run in CI (``CI`` set) and is a loud skip on a laptop.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from pathlib import Path

import pytest

from mirror.testing.sample import BucketInfo, build_bucket

RABBIT_URL = os.environ.get("MIRROR_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
OPERATOR, PASSWORD, BUCKET = "tester", "s3cret-pass", "testbucket"
CREDENTIALS = {"UPYUN_OPERATOR": OPERATOR, "UPYUN_PASSWORD": PASSWORD}


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def rabbit_url() -> str:
    if not _reachable("127.0.0.1", 5672):
        message = ("RabbitMQ is not reachable at 127.0.0.1:5672 "
                   "(start it: rabbitmq-server -detached)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return RABBIT_URL


@pytest.fixture(scope="session")
def rabbit_available() -> None:
    """rabbitmq-server can start private nodes (tests that kill or reconfigure a broker)."""
    if shutil.which("rabbitmq-server") is None:
        message = "rabbitmq-server is not installed (apt-get install rabbitmq-server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


# The SQL servers of the ledger's tests (trust / password-less root on loopback, as .ci/run
# sets them up).
POSTGRES_URL = os.environ.get("MIRROR_TEST_POSTGRES_URL",
                              "postgresql://postgres@127.0.0.1:5432/test")
MARIADB_URL = os.environ.get("MIRROR_TEST_MARIADB_URL", "mysql://root@127.0.0.1:3306/test")


def need_server(port: int, what: str, start: str) -> None:
    """A server on 127.0.0.1:``port``: a failure in CI without it, a loud skip elsewhere."""
    if not _reachable("127.0.0.1", port):
        message = f"{what} is not reachable at 127.0.0.1:{port} (start it: {start})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def need_tool(tool: str, install: str) -> str:
    """The path of a command-line tool; a failure in CI without it, a loud skip elsewhere."""
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not installed ({install})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def job_name() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def big_bucket(tmp_path_factory: pytest.TempPathFactory) -> BucketInfo:
    """The issue's end-to-end bucket: over 3,000 files, 40-deep folders, a 2,500-entry folder."""
    root = tmp_path_factory.mktemp("bucket") / "data"
    return build_bucket(root, files=3100, deep=40, wide=2500, big_files=2,
                        big_size=9 * 1024 * 1024)


@pytest.fixture(scope="session")
def small_bucket(tmp_path_factory: pytest.TempPathFactory) -> BucketInfo:
    root = tmp_path_factory.mktemp("small") / "data"
    return build_bucket(root, files=150, deep=6, wide=40, big_files=1,
                        big_size=2 * 1024 * 1024, seed=7)


def pytest_report_header() -> str:
    return f"broker for tests: {RABBIT_URL.split('@')[-1]}; CI={os.environ.get('CI', '')}"


__all__ = ["BUCKET", "CREDENTIALS", "MARIADB_URL", "OPERATOR", "PASSWORD", "POSTGRES_URL", "Path",
           "need_server"]
