"""The deploy files are part of the product: each is checked with the real tool where it runs
here (promtool, systemd-analyze, a private RabbitMQ node), and every `mirror` command in them
and in the runbook must parse with the real command line."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
import warnings
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from mirror.cli import cli, load_config
from mirror.testing.rabbit_node import PrivateRabbit
from tests.conftest import need_tool

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*@.service"))


def need(tool: str) -> str:
    return need_tool(tool, "apt-get install systemd prometheus")


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


def parse_mirror(args: list[str], monkeypatch: pytest.MonkeyPatch,
                 env: dict[str, str] | None = None) -> tuple[str, dict[str, Any]]:
    """Parse a `mirror ...` command line as the real CLI would, without running it."""
    for key in [k for k in os.environ if k.startswith(("MIRROR_", "UPYUN_"))]:
        monkeypatch.delenv(key)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    ctx = cli.make_context("mirror", list(args))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        rest = [*ctx.protected_args, *ctx.args]
    if ctx.params.get("config"):
        ctx.default_map = load_config(ctx.params["config"])[0]
    name, command, sub = cli.resolve_command(ctx, rest)
    assert name is not None and command is not None, args
    sub_ctx = command.make_context(name, sub, parent=ctx)
    return name, sub_ctx.params


def test_prometheus_config_and_rules_pass_promtool() -> None:
    promtool = need("promtool")
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"],
                 ["test", "rules", "alerts_test.yml"]):
        result = subprocess.run([promtool, *args], cwd=DEPLOY / "prometheus", capture_output=True,
                                text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


def test_systemd_units_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """systemd-analyze verify accepts each unit; its ExecStart parses as a mirror command with
    the example config and environment; it stops gracefully after the drain deadline."""
    analyze = need("systemd-analyze")
    mirror = shutil.which("mirror")
    assert mirror is not None, "pip install -e . puts `mirror` on PATH"
    assert {u.name for u in UNITS} == {"bucket-mirror-list@.service",
                                       "bucket-mirror-fetch@.service"}
    env = read_env_file(DEPLOY / "systemd" / "photos.env.example")
    config = tmp_path / "photos.toml"
    shutil.copy(DEPLOY / "systemd" / "photos.toml.example", config)
    for unit in UNITS:
        text = unit.read_text()
        # verify checks the command exists: point it at this machine's mirror.
        local = tmp_path / unit.name
        local.write_text(text.replace("/usr/local/bin/mirror", mirror))
        result = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True,
                                timeout=120, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        service = dict(re.findall(r"^(\w+)=(.*)$", text, re.MULTILINE))
        assert service["Restart"] == "on-failure"
        assert service["KillSignal"] == "SIGTERM"
        exec_args = shlex.split(service["ExecStart"].replace("%i", "photos"))
        assert exec_args[0] == "/usr/local/bin/mirror"
        exec_args[exec_args.index("--config") + 1] = str(config)
        name, params = parse_mirror(exec_args[1:], monkeypatch,
                                    {**env, "MIRROR_JOB": "photos"})
        assert name == "work"
        assert int(service["TimeoutStopSec"]) > params["drain_deadline"]
        if "fetch" in unit.name:
            assert params["disks"], "the fetcher's disks come from the example config"
    # Every key of the example config is an option of `mirror work` (a typo would be ignored).
    work = cli.commands["work"]
    names = {p.name for p in work.params}
    for key in tomllib.loads(config.read_text())["work"]:
        assert key.replace("-", "_") in names, key


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def test_compose_commands_volumes_env_and_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    stack = compose()
    services: dict[str, Any] = stack["services"]
    env = read_env_file(DEPLOY / "mirror.env.example")
    ours = {name: s for name, s in services.items() if s.get("image") == "bucket-mirror:latest"}
    assert {"seed", "lister", "fetcher-a", "fetcher-b"} <= set(ours)
    metrics_ports: dict[str, int] = {}
    claimed: list[int] = []
    for name, service in ours.items():
        assert (DEPLOY / service["build"]["context"] / "Dockerfile").resolve().is_file()
        command, params = parse_mirror(service["command"], monkeypatch, env)
        assert command in ("seed", "work"), name
        if command == "work":
            assert params["metrics_addr"], f"{name} serves no metrics"
            metrics_ports[name] = int(params["metrics_addr"].rsplit(":", 1)[1])
            assert int(service["stop_grace_period"].rstrip("s")) > params["drain_deadline"]
        if command == "seed":
            shards = params["shards"]
        for disk in params.get("disks", ()):
            spec, _, path = disk.partition("=")
            lo, _, hi = spec.partition("-")
            claimed += range(int(lo), int(hi or lo) + 1)
            assert any(v.endswith(f":{path}") for v in service["volumes"]), (name, path)
    assert sorted(claimed) == list(range(shards)), "each shard on exactly one fetcher"

    # Volumes: bind sources exist, named ones are declared.
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), (name, source)
            else:
                assert source in stack["volumes"], (name, source)
        for env_file in service.get("env_file", []):
            path = DEPLOY / (env_file["path"] if isinstance(env_file, dict) else env_file)
            assert Path(f"{path}.example").is_file(), f"no example for {path.name}"
            ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=REPO,
                                     check=False)
            assert ignored.returncode == 0, f"{path.name} holds secrets: it must be ignored"

    # Ports: what Prometheus scrapes is what the services serve.
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in scrape["scrape_configs"] for sc in job["static_configs"]
               for t in sc["targets"]}
    assert targets == {f"{n}:{p}" for n, p in metrics_ports.items()} | {"rabbitmq:15692"}
    assert "15692:15692" in services["rabbitmq"]["ports"]
    assert services["rabbitmq"]["image"].startswith("rabbitmq:4")
    assert "management" in services["rabbitmq"]["image"]
    prom_mounts = " ".join(services["prometheus"]["volumes"])
    assert "prometheus.yml" in prom_mounts and "alerts.yml" in prom_mounts
    graf_mounts = " ".join(services["grafana"]["volumes"])
    provider = yaml.safe_load((REPO / "grafana/provisioning/dashboards/bucket-mirror.yml")
                              .read_text())["providers"][0]
    assert f":{provider['options']['path']}:" in graf_mounts


def test_dockerfile_is_small_non_root_with_mirror_entrypoint() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.\d+-slim", text, re.MULTILINE)
    user = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert user and not user[-1].startswith(("root", "0"))
    assert re.search(r'^ENTRYPOINT \["mirror"\]', text, re.MULTILINE)
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE):
        for path in src.split():
            assert (REPO / path).exists(), path
    ignore = (REPO / ".dockerignore").read_text().split()
    assert ignore[0] == "*" and {"!mirror/", "!pyproject.toml"} <= set(ignore)
    compose_dirs = {v.split(":")[1] for s in compose()["services"].values()
                    for v in s.get("volumes", []) if ":/data/" in v}
    for mount in compose_dirs:
        assert mount in text, f"{mount} must exist in the image, owned by the mirror user"


def runbook_commands() -> list[list[str]]:
    text = (REPO / "docs" / "runbook.md").read_text()
    found = []
    for block in re.findall(r"```(?:sh|bash|console)\n(.*?)```", text, re.DOTALL):
        for raw in block.replace("\\\n", " ").splitlines():
            line = raw.split("  #")[0].strip()
            if line.startswith("mirror "):
                found.append(shlex.split(line)[1:])
    return found


def test_runbook_commands_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    found = runbook_commands()
    used = set()
    for args in found:
        try:
            name, _ = parse_mirror(args, monkeypatch)
        except click.ClickException as exc:
            pytest.fail(f"runbook command `mirror {shlex.join(args)}` does not parse: "
                        f"{exc.format_message()}")
        used.add(name)
    assert {"seed", "status", "watch", "failures", "retry", "stop", "work"} <= used, used


@pytest.mark.slow
async def test_rabbitmq_conf_boots_a_node(rabbit_available: None) -> None:
    """Our rabbitmq.conf is accepted by a real node and sets a consumer timeout long enough
    for multi-hour downloads."""
    conf = (DEPLOY / "rabbitmq" / "rabbitmq.conf").read_text()
    async with PrivateRabbit(extra_config=conf) as node:
        value = await node.eval("application:get_env(rabbit, consumer_timeout).")
    timeout_ms = int(re.fullmatch(r"\{ok,(\d+)\}", value).group(1))  # type: ignore[union-attr]
    assert timeout_ms >= 6 * 3600 * 1000
