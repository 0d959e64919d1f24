"""A private nginx on loopback serving a folder with directory indexes, for tests and bench.

``/`` serves HTML indexes (what rclone's http backend reads), ``/json/`` the same tree with
``autoindex_format json``. The server runs in the foreground as our child, in its own temp
folder, and is stopped by its process id.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
from pathlib import Path
from types import TracebackType

from mirror.testing.rabbit_node import free_port

NGINX_PATHS = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


def find_nginx() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    for path in NGINX_PATHS:
        if Path(path).is_file():
            return path
    return None


class Nginx:
    def __init__(self, root: Path, *, workers: int = 1) -> None:
        self.root = root.resolve()
        self.workers = workers
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="bucket-mirror-nginx-"))
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def json_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/json/"

    def _config(self) -> str:
        b = self.base
        # As root, nginx's workers would drop to nobody, who cannot read a private temp tree.
        user = "user root;" if os.geteuid() == 0 else ""
        return f"""
{user}
worker_processes {self.workers};
daemon off;
pid {b}/nginx.pid;
error_log {b}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_body_temp_path {b}/body;
    proxy_temp_path {b}/proxy;
    fastcgi_temp_path {b}/fastcgi;
    uwsgi_temp_path {b}/uwsgi;
    scgi_temp_path {b}/scgi;
    types {{ }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{self.port};
        root {self.root};
        autoindex on;
        autoindex_exact_size on;
        location /json/ {{
            alias {self.root}/;
            autoindex on;
            autoindex_format json;
        }}
    }}
}}
"""

    async def start(self) -> None:
        nginx = find_nginx()
        if nginx is None:
            raise RuntimeError("nginx is not installed (apt-get install nginx)")
        conf = self.base / "nginx.conf"
        conf.write_text(self._config())
        out = (self.base / "stderr.log").open("ab")
        self._proc = await asyncio.create_subprocess_exec(
            nginx, "-c", str(conf), "-p", str(self.base), stdout=out, stderr=out)
        out.close()
        for _ in range(100):
            if self._proc.returncode is not None:
                break
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return
        log = (self.base / "stderr.log").read_text(errors="replace")
        log += (self.base / "error.log").read_text(errors="replace") \
            if (self.base / "error.log").exists() else ""
        await self.stop()
        raise RuntimeError(f"nginx did not start:\n{log[-2000:]}")

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGQUIT)  # graceful
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        await asyncio.to_thread(shutil.rmtree, self.base, True)

    async def __aenter__(self) -> Nginx:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()


__all__ = ["Nginx", "find_nginx"]
