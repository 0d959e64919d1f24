"""The source registry: URL schemes to backends, each backend's declared options, and the
command-line flags built from them."""

from __future__ import annotations

import importlib
import subprocess
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from mirror.commands import sourceflags
from mirror.commands.sourceflags import chosen_options, source_options
from mirror.errors import ConfigError
from mirror.ratelimit import Limiter
from mirror.settings import SourceSettings
from mirror.sources.backend import Backend, SourceOptions, declared, option
from mirror.sources.base import Source
from mirror.sources.httpindex import HttpIndexSource
from mirror.sources.registry import MODULES, backend_for, backends, open_source, scheme_of
from mirror.sources.s3 import S3Source
from mirror.sources.upyun import UpyunOptions, UpyunSource
from tests.conftest import CREDENTIALS
from tests.test_imports import graph

# A URL of every registered backend and the source it opens: a new backend adds its line.
EXAMPLES: list[tuple[str, type, str]] = [
    ("upyun://bkt/some/prefix/", UpyunSource, "upyun://bkt/some/prefix"),
    ("UPYUN://bkt", UpyunSource, "upyun://bkt/"),
    ("http://127.0.0.1:1/pub/", HttpIndexSource, "http://127.0.0.1:1/pub/"),
    ("https://example.org/a/b", HttpIndexSource, "https://example.org/a/b/"),
    ("s3://bkt/some/prefix/", S3Source, "s3://bkt/some/prefix"),
]


@pytest.mark.parametrize(("url", "scheme"), [
    ("upyun://bucket/prefix", "upyun"), ("HTTPS://host/", "https"), ("s3://b", "s3"),
    ("artifactory://repo/path", "artifactory"),
    # urls:FILE has no "//" (and urls:- is stdin); its backend is still to come.
    ("urls:/srv/list.txt", "urls"), ("urls:-", "urls"), ("urls:relative/list", "urls"),
    ("/data/bucket", None), ("bucket/prefix", None), ("", None), ("1x://y", None),
])
def test_the_scheme_of_both_url_forms(url: str, scheme: str | None) -> None:
    assert scheme_of(url) == scheme


@pytest.mark.parametrize(("url", "kind", "name"), EXAMPLES)
async def test_each_backend_opens_from_its_urls(url: str, kind: type, name: str) -> None:
    source = open_source(url, SourceSettings(env=CREDENTIALS))
    try:
        assert isinstance(source, kind) and source.name == name
    finally:
        await source.close()


def test_every_backend_is_registered_consistently() -> None:
    assert {backend_for(url) for url, _, _ in EXAMPLES} == set(backends())
    for module, schemes in MODULES.items():
        backend = importlib.import_module(module).BACKEND
        assert backend.schemes == schemes, module
        assert backend.form.split(":")[0] in (*schemes, "http(s)"), backend.form
        assert backend.options.__dataclass_params__.frozen, module
        backend.options()  # its defaults are valid, and each field is declared
        assert all(info.flag.help for info in declared(backend.options)), module
        assert all(name.isupper() for name in backend.credentials), module


def test_backends_never_import_the_registry() -> None:
    """The registry imports a backend by name; a backend importing the registry (or the
    package's ``__init__``) back would be a circle the import-graph test cannot see."""
    edges = graph()
    for module in MODULES:
        assert not {"mirror.sources", "mirror.sources.registry"} & edges[module], module


@pytest.mark.parametrize(("url", "words"), [
    ("ftp://host/dir/", "unknown scheme 'ftp'"),
    ("urls:/srv/list.txt", "unknown scheme 'urls'"),
    ("/data/bucket", "has no scheme"),
])
def test_an_unknown_url_names_the_supported_forms(url: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        open_source(url, SourceSettings())
    message = str(caught.value)
    assert words in message and repr(url) in message
    assert "upyun://BUCKET/PREFIX, http(s)://HOST/PATH/" in message


def test_a_url_without_its_slashes_is_refused() -> None:
    with pytest.raises(ConfigError, match="not a source URL like upyun://BUCKET/PREFIX"):
        backend_for("upyun:bucket/prefix")


def test_options_are_checked_wherever_they_come_from() -> None:
    assert UpyunOptions() == UpyunOptions("https://v0.api.upyun.com", 1000)
    assert UpyunOptions.from_dict({"list_limit": 5}).to_dict() == {
        "endpoint": "https://v0.api.upyun.com", "list_limit": 5}
    for values, words in [({"list_limit": 20000}, "--list-limit must be within 1..10000"),
                          ({"list_limit": True}, "--list-limit takes int values"),
                          ({"list_limit": 5.0}, "--list-limit takes int values"),
                          ({"endpoint": None}, "--endpoint needs a value"),
                          ({"list_lmit": 5}, "unknown source option 'list_lmit'")]:
        with pytest.raises(ConfigError, match=words):
            UpyunOptions.from_dict(values)
    with pytest.raises(ConfigError, match="this source takes: none"):
        open_source("http://h/", SourceSettings(), options={"endpoint": "http://x"})
    with pytest.raises(ConfigError, match="--endpoint must be an http"):
        open_source("upyun://b/", SourceSettings(env=CREDENTIALS),
                    options={"endpoint": "ftp://x"})


# -- the flags ----------------------------------------------------------------------------


@dataclass(frozen=True)
class S3LikeOptions(SourceOptions):
    """A second backend taking --endpoint and --list-limit, as S3 will, with its own
    defaults, help and bounds, and a flag of its own."""

    endpoint: str | None = option(None, "S3 endpoint.", metavar="URL")
    list_limit: int = option(500, "Keys per listing page.", min=1, max=1000)
    path_style: bool = option(False, "Path-style requests.")
    part_rate: float = option(1.5, "A float.", min=0)


def _never(url: str, options: Any, settings: SourceSettings, limiter: Limiter | None) -> Source:
    raise AssertionError("not opened here")


S3_LIKE = Backend(schemes=("s3",), form="s3://BUCKET/PREFIX", options=S3LikeOptions,
                  open=_never)


@pytest.fixture
def two_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flags of UpYun and an S3-like backend (the registry's own list is left alone)."""
    upyun = backend_for("upyun://b")
    monkeypatch.setattr(sourceflags, "backends", lambda: (upyun, S3_LIKE))
    monkeypatch.setattr(sourceflags, "backend_for",
                        lambda url: S3_LIKE if url.startswith("s3:") else backend_for(url))


def _command() -> click.Command:
    @click.command()
    @click.argument("source")
    @source_options
    @click.pass_context
    def show(ctx: click.Context, /, source: str, **o: Any) -> None:
        click.echo(sorted(chosen_options(ctx, source, o).items()))

    return show


@pytest.mark.usefixtures("two_backends")
def test_flags_are_merged_by_name_each_backend_with_its_default() -> None:
    command = _command()
    flags = {p.name: p for p in command.params if isinstance(p, click.Option)}
    assert [n for n in flags if n in {f.name for f in fields(S3LikeOptions)}] == [
        "endpoint", "list_limit", "path_style", "part_rate"]
    assert all(flags[n].default is None for n in ("endpoint", "list_limit", "path_style"))
    assert flags["list_limit"].envvar == "MIRROR_LIST_LIMIT"
    assert isinstance(flags["list_limit"].type, type(click.INT))  # bounds differ: each checks
    assert isinstance(flags["part_rate"].type, click.FloatRange)
    helps = CliRunner().invoke(command, ["--help"], terminal_width=200).output
    assert "[upyun://, default: https://v0.api.upyun.com] S3 endpoint. [s3://]" in helps
    assert "--path-style / --no-path-style" in helps
    assert "[upyun://, default: 1000, 1..10000] Keys per listing page. [s3://, default: 500, " \
           "1..1000]" in helps

    run = CliRunner().invoke
    out = run(command, ["upyun://b/", "--list-limit", "7"]).output
    assert out.strip() == "[('endpoint', 'https://v0.api.upyun.com'), ('list_limit', 7)]"
    out = run(command, ["s3://b/", "--endpoint", "http://minio", "--path-style"]).output
    assert "('endpoint', 'http://minio'), ('list_limit', 500), ('part_rate', 1.5), " \
           "('path_style', True)" in out
    result = run(command, ["s3://b/", "--list-limit", "5000"])
    assert result.exit_code != 0 and "--list-limit must be within 1..1000" in str(
        result.exception)


@pytest.mark.usefixtures("two_backends")
def test_a_flag_of_another_backend_is_a_usage_error() -> None:
    result = CliRunner().invoke(_command(), ["http://h/", "--list-limit", "5"])
    assert result.exit_code == 2
    assert "--list-limit is for upyun:// and s3:// sources, not http://" in result.output
    result = CliRunner().invoke(_command(), ["upyun://b/", "--path-style"])
    assert result.exit_code == 2 and "--path-style is for s3:// sources, not upyun://" in (
        result.output)
    # From the environment (or a config file), shared by every command and source, it is
    # a default for the backends that take it.
    result = CliRunner().invoke(_command(), ["http://h/"], env={"MIRROR_LIST_LIMIT": "5"})
    assert result.exit_code == 0 and result.output.strip() == "[]"


def test_the_mirror_command_refuses_another_backends_flag(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "mirror", "run", "http://127.0.0.1:1/",
                           str(tmp_path / "dest"), "--list-limit", "5"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "--list-limit is for upyun:// and s3:// sources, not http://" in done.stderr
