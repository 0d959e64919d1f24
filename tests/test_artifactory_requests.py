"""What the Artifactory source sends and how it reads the answers, without sockets (over
``MockTransport``): credentials, URLs, the listing modes and their fallback, the error
mapping, redirects. End-to-end behaviour stays with the fake server (test_artifactory_e2e)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable

import pytest

from mirror.checksum import Checksum
from mirror.errors import (
    AccessDenied,
    ConfigError,
    CredentialsRejected,
    MirrorError,
    NotFound,
    PermanentError,
    RateLimited,
    SourceUnavailable,
)
from mirror.ratelimit import Limiter, RateSettings
from mirror.settings import SourceSettings
from mirror.sources.artifactory import ArtifactoryOptions, ArtifactorySource, Credential
from mirror.sources.registry import open_source
from mirror.sources.transport import Request, Transport
from mirror.testing.mock_transport import Handler, MockResponse, MockTransport

ENDPOINT = "http://art.test/artifactory"
SHA1, SHA256 = "1" * 40, "2" * 64
SETTINGS = SourceSettings(request_retries=0)


def source(handle: Handler, env: dict[str, str] | None = None,
           limiter: Limiter | None = None, **options: object
           ) -> tuple[ArtifactorySource, MockTransport]:
    wire = MockTransport(handle)
    settings = SourceSettings(request_retries=0, env=env or {"ARTIFACTORY_TOKEN": "tok-123"})
    opts = ArtifactoryOptions.from_dict({"endpoint": ENDPOINT, **options})
    return ArtifactorySource("repo", "pre", Credential.from_settings(settings), settings,
                             limiter, options=opts,
                             transport=Transport(settings, limiter, wire)), wire


def answer(body: object, status: int = 200, **headers: str) -> MockResponse:
    return MockResponse(status, {"Content-Type": "application/json", **headers},
                        json.dumps(body).encode())


def refused(status: int, message: str, **headers: str) -> MockResponse:
    return answer({"errors": [{"status": status, "message": message}]}, status, **headers)


FILE_LIST = {"files": [{"uri": "/sub", "size": -1, "folder": True,
                        "lastModified": "2020-01-01T00:00:00.000Z"},
                       {"uri": "/f.bin", "size": 10, "folder": False, "sha1": SHA1,
                        "sha2": SHA256, "lastModified": "2020-01-01T00:00:00.000Z"}]}


@pytest.mark.parametrize(("env", "header", "value"), [
    ({"ARTIFACTORY_TOKEN": "tok-123", "ARTIFACTORY_API_KEY": "k"}, "Authorization",
     "Bearer tok-123"),
    ({"ARTIFACTORY_USER": "bob", "ARTIFACTORY_PASSWORD": "pw"}, "Authorization",
     "Basic " + base64.b64encode(b"bob:pw").decode()),
    ({"ARTIFACTORY_API_KEY": "key-9"}, "X-JFrog-Art-Api", "key-9"),
    ({}, None, None),
])
async def test_each_credential_kind_is_sent(env: dict[str, str], header: str | None,
                                            value: str | None) -> None:
    src, wire = source(lambda r: answer(FILE_LIST), env=env or {"UNRELATED": "x"})
    await src.list_page("", None)
    sent = wire.requests[0].headers
    signs = {k for k in sent if k in ("Authorization", "X-JFrog-Art-Api")}
    assert signs == ({header} if header else set())
    if header:
        assert sent[header] == value


def test_a_user_needs_a_password() -> None:
    for env in ({"ARTIFACTORY_USER": "bob"}, {"ARTIFACTORY_PASSWORD": "pw"}):
        with pytest.raises(ConfigError, match="ARTIFACTORY_USER and ARTIFACTORY_PASSWORD"):
            Credential.from_settings(SourceSettings(env=env))


def test_options_and_urls_are_checked() -> None:
    with pytest.raises(ConfigError, match="needs --endpoint"):
        open_source("artifactory://repo/", SourceSettings())
    with pytest.raises(ConfigError, match="http"):
        open_source("artifactory://repo/", SourceSettings(), options={"endpoint": "ftp://x"})
    with pytest.raises(ConfigError, match="no repository"):
        open_source("artifactory:///path", SourceSettings(), options={"endpoint": ENDPOINT})
    with pytest.raises(ConfigError, match="--list-mode"):
        ArtifactoryOptions(endpoint=ENDPOINT, list_mode="fast")


async def test_requests_are_built_and_quoted() -> None:
    def handle(r: Request) -> MockResponse:
        if "/api/storage/" in r.url:
            return answer(FILE_LIST)
        return MockResponse(206, {"Content-Range": "bytes 4-9/10", "X-Checksum-Sha1": SHA1,
                                  "X-Checksum-Sha256": SHA256}, b"456789")

    src, wire = source(handle)
    page = await src.list_page("a b/c;d+e#?%", None)
    assert [(e.path, e.is_dir, e.size) for e in page.entries] == [
        ("a b/c;d+e#?%/sub", True, 0), ("a b/c;d+e#?%/f.bin", False, 10)]
    assert page.entries[1].etag == f"sha256:{SHA256}" and page.cursor is None
    listed = wire.requests[0]
    assert listed.url == (f"{ENDPOINT}/api/storage/repo/pre/a%20b/c%3Bd%2Be%23%3F%25"
                          "?list&deep=0&listFolders=1")
    assert (listed.method, listed.budget, listed.follow_redirects) == ("GET", "list", False)
    assert listed.headers["Accept"] == "application/json"
    async with src.open("x y/f.bin", 4) as body:
        assert (body.offset, body.total_size) == (4, 10)
        assert body.checksum == Checksum("sha256", SHA256)
        assert await body.read_all() == b"456789"
    got = wire.requests[1]
    assert got.url == f"{ENDPOINT}/repo/pre/x%20y/f.bin" and got.budget == "fetch"
    assert got.headers["Range"] == "bytes=4-"


def folder_info_server(seen: list[str], file_list: MockResponse | None = None
                       ) -> Callable[[Request], MockResponse]:
    """Folder info for folders, file info for files; the file list answered ``file_list``."""
    def handle(r: Request) -> MockResponse:
        seen.append(r.url.removeprefix(ENDPOINT))
        if r.url.endswith("?list&deep=0&listFolders=1"):
            return file_list or answer(FILE_LIST)
        if r.url.endswith("/gone.txt"):
            return refused(404, "Unable to find item")
        if r.url.endswith(".txt"):
            return answer({"path": "/x", "size": "3", "lastModified": "2020-01-01T00:00:00Z",
                           "checksums": {"sha1": SHA1}})
        return answer({"children": [{"uri": "/d", "folder": "true"},
                                    {"uri": "/a.txt", "folder": "false"},
                                    {"uri": "/gone.txt", "folder": False},
                                    {"uri": "/../x", "folder": False},
                                    {"uri": "/..", "folder": False}]})
    return handle


async def test_oss_answers_folder_info_with_one_info_per_file() -> None:
    seen: list[str] = []
    oss = refused(400, "This REST API is available only in Artifactory Pro")
    src, _ = source(folder_info_server(seen, oss))
    page = await src.list_page("", None)
    assert [(e.path, e.is_dir, e.size, e.etag) for e in page.entries] == [
        ("d", True, 0, None), ("a.txt", False, 3, f"sha1:{SHA1}"),  # gone.txt went meanwhile
        ("../x", False, 0, None), ("..", False, 0, None)]  # raw, for the crawler to refuse
    assert seen == ["/api/storage/repo/pre?list&deep=0&listFolders=1", "/api/storage/repo/pre",
                    "/api/storage/repo/pre/a.txt", "/api/storage/repo/pre/gone.txt"]
    seen.clear()
    await src.list_page("d", None)  # learnt: no file list asked again
    assert seen[0] == "/api/storage/repo/pre/d"


async def test_anonymous_users_fall_back_and_signed_in_ones_are_refused() -> None:
    seen: list[str] = []
    needs_user = refused(401, "This REST API is not available for anonymous users")
    src, _ = source(folder_info_server(seen, needs_user), env={"NONE": ""})
    assert len((await src.list_page("", None)).entries) == 4
    src, _ = source(folder_info_server(seen, refused(401, "Bad credentials")))
    with pytest.raises(CredentialsRejected) as caught:
        await src.list_page("", None)
    assert "access token (ARTIFACTORY_TOKEN)" in str(caught.value)
    assert "Bad credentials" in str(caught.value) and "tok-123" not in str(caught.value)


async def test_a_forbidden_file_list_falls_back_for_that_folder_only() -> None:
    seen: list[str] = []
    src, _ = source(folder_info_server(seen, refused(403, "no list permission")))
    await src.list_page("", None)
    seen.clear()
    await src.list_page("d", None)
    assert seen[0].endswith("?list&deep=0&listFolders=1")


async def test_fixed_list_modes() -> None:
    seen: list[str] = []
    oss = refused(400, "This REST API is available only in Artifactory Pro")
    src, _ = source(folder_info_server(seen, oss), list_mode="file-list")
    with pytest.raises(PermanentError, match="only in Artifactory Pro"):
        await src.list_page("", None)
    seen.clear()
    src, _ = source(folder_info_server(seen), list_mode="folder-info")
    await src.list_page("", None)
    assert not any("?list" in url for url in seen)


async def test_a_server_that_ignores_the_query_is_read_as_folder_info() -> None:
    seen: list[str] = []
    handle = folder_info_server(seen)
    src, _ = source(lambda r: handle(Request(r.method, r.url.partition("?")[0], r.what)))
    assert [e.path for e in (await src.list_page("", None)).entries][:2] == ["d", "a.txt"]


@pytest.mark.parametrize(("status", "kind", "words"), [
    (404, NotFound, "Unable to find item"),
    (403, AccessDenied, "refused access: no read permission"),
    (429, RateLimited, "429"),
    (503, SourceUnavailable, "503"),
    (500, SourceUnavailable, "500"),
    (401, CredentialsRejected, "rejected the access token (ARTIFACTORY_TOKEN)"),
    (400, PermanentError, "400"),
])
async def test_errors_are_translated_with_their_message(status: int, kind: type[MirrorError],
                                                        words: str) -> None:
    message = {404: "Unable to find item", 403: "no read permission"}.get(status, "boom")
    limiter = Limiter(RateSettings())
    src, _ = source(lambda r: refused(status, message, **{"Retry-After": "2"}), limiter=limiter)
    with pytest.raises(kind) as caught:
        async with src.open("f.bin"):
            pass
    assert words in str(caught.value) and type(caught.value) is kind
    assert caught.value.detail.http_status == status
    if status != 401:
        assert message in caught.value.message  # carried into the parked reason
    if status == 429:
        assert isinstance(caught.value, RateLimited) and caught.value.retry_after_s == 2.0
    # 429 and 503 tell the rate controller, through the transport, without the source's help
    assert limiter.throttled("fetch") == (1 if status in (429, 503) else 0)


async def test_anonymous_refusal_names_the_variables() -> None:
    src, _ = source(lambda r: refused(401, "Authentication is required"), env={"X": ""})
    with pytest.raises(CredentialsRejected, match=r"refused anonymous access.*ARTIFACTORY_TOKEN"):
        await src.stat("")


async def test_redirects_keep_the_credential_at_home_only() -> None:
    def handle(r: Request) -> MockResponse:
        if r.url.startswith(ENDPOINT + "/repo/"):
            return MockResponse(302, {"Location": "/artifactory/api/download/f.bin"})
        if r.url.startswith(ENDPOINT):
            return MockResponse(307, {"Location": "https://bucket.s3.test/f.bin?sig=1"})
        return MockResponse(200, {"X-Checksum-Sha1": SHA1}, b"0123456789")

    src, wire = source(handle)
    async with src.open("f.bin") as body:
        assert await body.read_all() == b"0123456789"
    assert [("Authorization" in r.headers) for r in wire.requests] == [True, True, False]
    assert all(not r.follow_redirects for r in wire.requests)


async def test_stat_of_a_file_a_folder_and_a_missing_path() -> None:
    def handle(r: Request) -> MockResponse:
        if r.url.endswith("/f.bin"):
            return answer({"size": "10", "lastModified": "2020-01-01T00:00:00.000+01:00",
                           "checksums": {"sha256": SHA256, "sha1": SHA1}})
        if r.url.endswith("/none"):
            return refused(404, "Unable to find item")
        return answer({"children": [], "lastModified": "2020-01-01T00:00:00.000Z"})

    src, _ = source(handle)
    f = await src.stat("f.bin")
    assert (f.is_dir, f.size, f.mtime, f.etag) == (False, 10, 1577833200.0, f"sha256:{SHA256}")
    assert (await src.stat("")).is_dir
    with pytest.raises(NotFound):
        await src.stat("none")


async def test_a_refused_file_info_fails_its_folder_and_stops_the_rest() -> None:
    children = [{"uri": f"/f{i}.txt", "folder": False} for i in range(20)]

    async def handle(r: Request) -> MockResponse:
        await asyncio.sleep(0.01)  # an answer takes a while, as on a network
        if r.url.endswith("/f1.txt"):
            return refused(403, "no read permission on f1.txt")
        if r.url.endswith(".txt"):
            return answer({"size": "1", "checksums": {}})
        return answer({"children": children})

    src, wire = source(handle, list_mode="folder-info", info_concurrency=1)
    with pytest.raises(AccessDenied, match=r"stat f1\.txt.*no read permission"):
        await src.list_page("", None)
    # the folder, f0, f1 and at most the one that took f1's turn: the others were not asked
    assert len(wire.requests) <= 4
