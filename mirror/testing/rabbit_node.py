"""A private RabbitMQ node for tests that stop, kill or reconfigure a broker.

The shared broker at 5672 is never touched: this node has its own name, ports, config, data and
log folders, and is stopped by its own process id. The Debian ``rabbitmq-server`` script drops
to the ``rabbitmq`` user, so the node's folders are handed to that user when we run as root.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PrivateRabbit:
    def __init__(self, *, consumer_timeout_ms: int | None = None,
                 start_timeout_s: float = 60, extra_config: str = "",
                 plugins: tuple[str, ...] = ()) -> None:
        # Its own folder under the system temp dir: the node runs as the rabbitmq user, who
        # cannot enter a test's private tmp_path.
        self.base = Path(tempfile.mkdtemp(prefix="bucket-mirror-rabbit-"))
        self.base.chmod(0o755)
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"bmtest-{uuid.uuid4().hex[:8]}@localhost"
        self.consumer_timeout_ms = consumer_timeout_ms
        self.start_timeout_s = start_timeout_s
        self.extra_config = extra_config  # rabbitmq.conf lines appended to ours
        self.plugins = plugins
        # The management API's port, when the rabbitmq_management plugin is asked for.
        self.management_port = free_port() if "rabbitmq_management" in plugins else None
        self._launcher: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def pid_file(self) -> Path:
        return self.base / "node.pid"

    def _prepare(self) -> dict[str, str]:
        for sub in ("mnesia", "log"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        lines = [f"listeners.tcp.default = 127.0.0.1:{self.port}", "loopback_users = none"]
        if self.consumer_timeout_ms is not None:
            lines.append(f"consumer_timeout = {self.consumer_timeout_ms}")
        if self.management_port is not None:
            lines.append(f"management.tcp.port = {self.management_port}")
            lines.append("management.tcp.ip = 127.0.0.1")
        (self.base / "rabbitmq.conf").write_text("\n".join(lines) + "\n" + self.extra_config)
        (self.base / "enabled_plugins").write_text(f"[{','.join(self.plugins)}].\n")
        if os.geteuid() == 0:
            shutil.chown(self.base, "rabbitmq", "rabbitmq")
            for path in self.base.rglob("*"):
                shutil.chown(path, "rabbitmq", "rabbitmq")
        env = dict(os.environ)
        env.update({
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
        })
        return env

    async def start(self) -> None:
        if shutil.which("rabbitmq-server") is None:
            raise RuntimeError("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
        env = self._prepare()
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        out = (self.base / "launcher.out").open("ab")
        self._launcher = await asyncio.create_subprocess_exec(
            "rabbitmq-server", env=env, stdout=out, stderr=out, start_new_session=True)
        out.close()
        deadline = time.monotonic() + self.start_timeout_s
        while not await self._accepting():
            if self._launcher.returncode is not None or time.monotonic() > deadline:
                tail = (self.base / "launcher.out").read_text(errors="replace")[-2000:]
                await self.kill()
                raise RuntimeError(f"private RabbitMQ node {self.node} did not start:\n{tail}")
            await asyncio.sleep(0.3)

    async def _accepting(self) -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    def _beam_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    async def _signal_and_wait(self, sig: signal.Signals, timeout_s: float) -> None:
        pid = self._beam_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        launcher = self._launcher
        if launcher is not None:
            try:
                await asyncio.wait_for(launcher.wait(), timeout_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(launcher.pid, signal.SIGKILL)
                await launcher.wait()
        # epmd may keep the name for a moment; the port must be free before a restart.
        for _ in range(75):
            if not await self._accepting():
                break
            await asyncio.sleep(0.2)
        self._launcher = None

    async def stop(self) -> None:
        """A clean broker shutdown (what `systemctl stop rabbitmq-server` does)."""
        await self._signal_and_wait(signal.SIGTERM, 60)

    async def kill(self) -> None:
        """The broker dies at once (power loss for everything not yet fsynced)."""
        await self._signal_and_wait(signal.SIGKILL, 15)

    async def close(self) -> None:
        """Stop the node and remove its folder."""
        await self.stop()
        await asyncio.to_thread(shutil.rmtree, self.base, True)

    async def eval(self, expr: str) -> str:
        """Evaluate an Erlang expression on the node (rabbitmqctl eval)."""
        proc = await asyncio.create_subprocess_exec(
            "rabbitmqctl", "-n", self.node, "eval", expr, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"rabbitmqctl eval {expr!r} failed: {out.decode()[-500:]}")
        return out.decode().strip()

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in (self.base / "log").glob("*.log"))

    async def __aenter__(self) -> PrivateRabbit:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


__all__ = ["PrivateRabbit", "free_port"]
