"""The HTTP directory-index source against a real nginx (HTML and JSON indexes) and against
Apache- and Caddy-style pages served on loopback."""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import os
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from mirror.errors import ProtocolError, TransientError
from mirror.settings import SourceSettings
from mirror.sources.httpindex import child_name, parse_html_index, parse_json_index
from mirror.sources.registry import open_source
from mirror.testing.compare import tree_differences
from mirror.testing.nginx import Nginx, find_nginx
from mirror.testing.rabbit_node import free_port
from mirror.testing.sample import BucketInfo
from tests.test_cli import mirror_cmd


@contextlib.asynccontextmanager
async def serving(app: web.Application,
                  ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """Serve ``app`` on a free loopback port (over TLS, given a context) for the block."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


T0 = float(calendar.timegm((2026, 11, 20, 10, 0, 0)))  # the dates the pages below give


@pytest.fixture(scope="session")
def nginx_available() -> None:
    if find_nginx() is None:
        message = "nginx is not installed (apt-get install nginx)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.mark.parametrize("flavour", ["html", "json"])
async def test_mirror_from_nginx(flavour: str, small_bucket: BucketInfo, tmp_path: Path,
                                 nginx_available: None) -> None:
    """Everything nginx lists arrives byte for byte; a second run downloads nothing."""
    dest = tmp_path / "dest"
    async with Nginx(small_bucket.root) as nginx:
        url = nginx.url if flavour == "html" else nginx.json_url
        for run in (1, 2):
            code, out, err = await mirror_cmd("run", url, str(dest), "--no-progress",
                                              "--state-dir", str(tmp_path / "state"))
            assert code == 0, out + err
            if run == 1:
                assert "fetched 0 files" not in out
            else:
                assert "fetched 0 files" in out, out
    # nginx's indexes hide dot-files; the HTML index gives mtimes to the minute only.
    problems = tree_differences(small_bucket.root, dest, skip_hidden=True,
                                mtime_resolution_s=60 if flavour == "html" else 1)
    assert problems == []


async def test_a_wrong_url_fails_at_once_and_leaves_no_process(
        small_bucket: BucketInfo, tmp_path: Path, nginx_available: None) -> None:
    """A folder the server does not have, the URL of a file, or a server that is not there is
    a clear error at the start (not a listing retried for minutes); the fetch processes
    forked for ``--processes`` end with the run."""
    dest = tmp_path / "dest-of-a-wrong-url"
    async with Nginx(small_bucket.root) as nginx:
        code, _, err = await mirror_cmd("run", f"{nginx.url}not-there/", str(dest),
                                        "--processes", "2", "--no-progress", timeout=60)
        assert code == 2 and "the source folder does not exist" in err, err
        a_file = next(rel for f in sorted(small_bucket.root.rglob("*")) if f.is_file()
                      and _plain(rel := f.relative_to(small_bucket.root).as_posix()))
        code, _, err = await mirror_cmd("run", nginx.url + a_file, str(dest), "--no-progress",
                                        timeout=60)
        assert code == 2 and "is a file, not a folder" in err, err
    code, _, err = await mirror_cmd("run", f"http://127.0.0.1:{free_port()}/", str(dest),
                                    "--processes", "2", "--no-progress", timeout=60)
    assert code == 3 and "cannot connect" in err, err
    await asyncio.sleep(0.2)
    left = [e.name for e in Path("/proc").iterdir() if e.name.isdigit()
            and str(dest).encode() in _cmdline(e)]
    assert left == []


def _plain(path: str) -> bool:
    return path.isascii() and all(part[:1].isalnum() and part.replace(".", "").replace(
        "_", "").replace("-", "").isalnum() for part in path.split("/"))


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


APACHE_PAGE = """<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 3.2 Final//EN">
<html><head><title>Index of /pub/sub</title></head><body>
<h1>Index of /pub/sub</h1>
<table>
<tr><th><a href="?C=N;O=D">Name</a></th><th><a href="?C=M;O=A">Last modified</a></th>
<th><a href="?C=S;O=A">Size</a></th></tr>
<tr><td><a href="/pub/">Parent Directory</a></td><td>&nbsp;</td><td align="right">-</td></tr>
<tr><td><a href="a%20b.txt">a b.txt</a></td><td align="right">2026-11-20 10:00  </td>
<td align="right">1.2K</td></tr>
<tr><td><a href="nested/">nested/</a></td><td align="right">2026-11-20 10:00  </td>
<td align="right">  - </td></tr>
<tr><td><a href="http://elsewhere.example/x">x</a></td></tr>
<tr><td><a href="../up.txt">up</a></td></tr>
<tr><td><a href="deeper/file.txt">deeper</a></td></tr>
</table></body></html>
"""

CADDY_PAGE = """<html><body><table><tbody>
<tr class="file"><td><a href="./docs/"><svg></svg><span class="name">docs/</span></a></td>
<td data-order="-1">&mdash;</td></tr>
<tr class="file"><td><a href="./r%C3%A9sum%C3%A9.pdf"><span class="name">résumé.pdf</span></a>
</td><td data-order="5120"><div class="sizebar">5.0 KiB</div></td></tr>
</tbody></table></body></html>
"""


def test_apache_and_caddy_pages_give_direct_children_only() -> None:
    apache = parse_html_index(APACHE_PAGE.encode(), "sub", "http://h/pub/sub/")
    assert [(e.path, e.is_dir, exact) for e, exact in apache] == [
        ("sub/a b.txt", False, False), ("sub/nested", True, True)]
    caddy = parse_html_index(CADDY_PAGE.encode(), "", "http://h/")
    assert [(e.path, e.is_dir) for e, _ in caddy] == [("docs", True), ("résumé.pdf", False)]
    assert child_name("?C=M;O=A", "http://h/a/") is None
    assert child_name("/a/", "http://h/a/") is None
    assert child_name("x%2Fy", "http://h/a/") == ("x/y", False)  # kept raw; the crawler refuses


def test_json_indexes_of_nginx_and_caddy() -> None:
    nginx = b"""[{"name":"d", "type":"directory", "mtime":"Fri, 20 Nov 2026 10:00:00 GMT"},
      {"name":"f.bin", "type":"file", "mtime":"Fri, 20 Nov 2026 10:00:01 GMT", "size":12},
      {"name":"sock", "type":"other", "mtime":"Fri, 20 Nov 2026 10:00:01 GMT"}]"""
    got = parse_json_index(nginx, "p")
    assert [(e.path, e.is_dir, e.size) for e, _ in got] == [("p/d", True, 0),
                                                           ("p/f.bin", False, 12)]
    assert got[1][0].mtime == T0 + 1
    caddy = b"""[{"name":"x/","size":4096,"is_dir":true,"mod_time":"2026-11-20T10:00:00Z"},
      {"name":"y.txt","size":7,"is_dir":false,"mod_time":"2026-11-20T10:00:02.5Z"}]"""
    got = parse_json_index(caddy, "")
    assert [(e.path, e.is_dir, e.size, e.mtime) for e, _ in got] == [
        ("x", True, 0, T0), ("y.txt", False, 7, T0 + 2.5)]
    with pytest.raises(ProtocolError, match="size"):
        parse_json_index(b'[{"name":"z","type":"file","size":-1}]', "")
    with pytest.raises(ProtocolError, match="malformed JSON"):
        parse_json_index(b"[{", "")


async def test_apache_style_server_sizes_come_from_head(tmp_path: Path) -> None:
    """An index without exact sizes: each file is HEADed once; the mirror is exact."""
    files = {"a b.txt": b"hello" * 300, "nested/n.bin": os.urandom(3000)}
    heads: list[str] = []
    mtime = "Fri, 20 Nov 2026 10:00:00 GMT"

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/pub/sub/":
            return web.Response(text=APACHE_PAGE, content_type="text/html")
        if path == "/pub/sub/nested/":
            return web.Response(text='<a href="../">..</a><a href="n.bin">n.bin</a>   1K',
                                content_type="text/html")
        rel = path.removeprefix("/pub/sub/")
        if rel in files:
            if request.method == "HEAD":
                heads.append(rel)
            return web.Response(body=files[rel], headers={"Last-Modified": mtime})
        raise web.HTTPNotFound()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    async with serving(app) as port:
        source = open_source(f"http://127.0.0.1:{port}/pub/sub/", SourceSettings())
        try:
            page = await source.list_page("", None)
            by_path = {e.path: e for e in page.entries}
            assert by_path["a b.txt"].size == len(files["a b.txt"])
            assert by_path["a b.txt"].mtime == T0
            assert by_path["nested"].is_dir and page.cursor is None
            nested = await source.list_page("nested", None)
            assert [(e.path, e.size) for e in nested.entries] == [("nested/n.bin", 3000)]
            async with source.open("nested/n.bin", 1000) as body:
                data = b"".join([c async for c in body.chunks(1024)])
            assert body.offset in (0, 1000)
            assert data == files["nested/n.bin"][body.offset:]
        finally:
            await source.close()
        assert sorted(heads) == ["a b.txt", "nested/n.bin"]
        started = time.monotonic()
        code, out, err = await mirror_cmd("run", f"http://127.0.0.1:{port}/pub/sub/",
                                          str(tmp_path / "d"), "--no-progress",
                                          "--state-dir", str(tmp_path / "s"))
        assert code == 0, out + err
        assert time.monotonic() - started < 60
        for rel, body_bytes in files.items():
            assert (tmp_path / "d" / rel).read_bytes() == body_bytes


async def test_index_arriving_in_pieces_is_read_whole() -> None:
    """A big index page that arrives slowly is listed in full (read(n) returns only what has
    arrived: reading once lost most of a 1,000-folder page when the listing ran fast), and a
    page cut short of its Content-Length is a transient error, not a shorter listing."""
    names = [f"d{i:04d}/" for i in range(1000)]
    page = "<html><body>" + "".join(f'<a href="{n}">{n}</a>\n' for n in names) + "</body></html>"
    body = page.encode()

    async def slow(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/html"})
        resp.content_length = len(body)
        await resp.prepare(request)
        step = len(body) // 10 + 1
        for i in range(0, len(body), step):
            await resp.write(body[i:i + step])
            await asyncio.sleep(0.05)
        return resp

    async def short(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/html"})
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
        request.transport.close()  # type: ignore[union-attr]
        return resp

    app = web.Application()
    app.router.add_get("/slow/", slow)
    app.router.add_get("/short/", short)
    async with serving(app) as port:
        source = open_source(f"http://127.0.0.1:{port}/slow/", SourceSettings())
        try:
            listed = await source.list_page("", None)
        finally:
            await source.close()
        assert len(listed.entries) == 1000 and all(e.is_dir for e in listed.entries)
        source = open_source(f"http://127.0.0.1:{port}/short/",
                             SourceSettings(request_retries=0))
        try:
            with pytest.raises(TransientError):
                await source.list_page("", None)
        finally:
            await source.close()


@pytest.mark.parametrize("page", [
    # nginx: every link plain; names with entities and spaces
    '<pre><a href="../">../</a>\r\n<a href="a%20b&amp;c.txt">a b&amp;c.txt</a>   '
    '21-Nov-2026 10:00    12\r\n<a href="d/">d/</a>   21-Nov-2026 10:00    -\r\n</pre>',
    # upper-case tags and a link with more attributes: the quick way must not be taken
    '<pre><A HREF="x">x</A> 21-Nov-2026 10:00 1\n<a href="y">y</a> 21-Nov-2026 10:00 2\n</pre>',
    '<a class="n" href="x">x</a> 1\n<a href="y">y</a> 2\n',
    # Caddy-like: markup inside the link
    '<a href="./x"><span class="name">x</span></a><a href="y">y</a> 3\n',
])
def test_quick_link_reading_agrees_with_the_html_parser(page: str) -> None:
    from mirror.sources.htmllinks import links
    from mirror.sources.httpindex import _links

    assert _links(page) == links(page)
