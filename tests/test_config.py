"""The ``--config`` TOML file: every key must be one the command knows."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from mirror.cli import load_config

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mirror.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_known_keys_load_with_dashes_or_underscores(tmp_path: Path) -> None:
    path = write(tmp_path, 'concurrency = 8\n[work]\nlist-concurrency = 4\n'
                           'disks = ["0=/srv/a"]\n[run]\nmax_backlog = 10\n'
                           '[credentials]\nUPYUN_PASSWORD = "x"\n')
    default_map, creds = load_config(path)
    assert default_map["work"] == {"concurrency": 8, "list_concurrency": 4,
                                   "disks": ["0=/srv/a"]}
    assert default_map["run"]["max_backlog"] == 10 and default_map["ls"]["concurrency"] == 8
    assert creds == {"UPYUN_PASSWORD": "x"}


def test_source_option_keys_are_known_keys(tmp_path: Path) -> None:
    """Each backend's options (mirror.sources.backend) are keys of the commands given a source
    URL; a worker takes them from its job, not from its config."""
    path = write(tmp_path, 'list-limit = 500\n[seed]\nendpoint = "http://upyun.internal"\n')
    default_map, _ = load_config(path)
    assert default_map["seed"] == {"list_limit": 500, "endpoint": "http://upyun.internal"}
    assert default_map["run"] == default_map["ls"] == {"list_limit": 500}
    with pytest.raises(click.BadParameter, match="\\[work\\] key 'endpoint' is unknown"):
        load_config(write(tmp_path, '[work]\nendpoint = "http://upyun.internal"\n'))


def test_the_shipped_example_loads() -> None:
    default_map, _ = load_config(REPO / "deploy" / "systemd" / "photos.toml.example")
    assert default_map["work"]["cluster_rps"] == 300


@pytest.mark.parametrize(("text", "named", "suggested"), [
    ("[work]\nconcurency = 4\n", "[work] key 'concurency'", "'concurrency'"),
    ("list_limt = 10\n", "key 'list_limt'", "'list-limit'"),
    ("[run]\nendpont = 'http://x'\n", "[run] key 'endpont'", "'endpoint'"),
    ("[wrok]\nconcurrency = 4\n", "table 'wrok'", "'work'"),
    # A key of another command is unknown in this one's table.
    ("[ls]\ndisks = []\n", "[ls] key 'disks'", None),
    ("colour = 'red'\n", "key 'colour'", None),
])
def test_an_unknown_key_is_an_error_naming_it_and_the_file(
        tmp_path: Path, text: str, named: str, suggested: str | None) -> None:
    path = write(tmp_path, text)
    with pytest.raises(click.BadParameter) as caught:
        load_config(path)
    message = caught.value.format_message()
    assert str(path) in message and named in message
    if suggested is not None:
        assert f"did you mean {suggested}?" in message
    else:
        assert "did you mean" not in message
