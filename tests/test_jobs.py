from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mirror import runner
from mirror.broker import Topology
from mirror.broker.memory import MemoryBroker
from mirror.errors import ConfigError, ProtocolError
from mirror.jobs import (
    SPEC_VERSION,
    FetchJob,
    JobSpec,
    ListJob,
    Reason,
    decode_job,
    encode_job,
    shard_of,
)
from mirror.jobsource import options_of
from mirror.sources.httpindex import HttpIndexOptions
from mirror.sources.upyun import UpyunOptions

paths = st.text(min_size=0, max_size=80).map(lambda s: s.replace("\x00", ""))


@given(path=paths, cursor=st.none() | st.text(max_size=40), page=st.integers(0, 10**6))
def test_list_job_round_trip(path: str, cursor: str | None, page: int) -> None:
    job = ListJob(path, cursor, page)
    assert decode_job(encode_job(job)) == job


@given(path=paths, size=st.integers(0, 2**50), mtime=st.none() | st.floats(0, 2e9),
       etag=st.none() | st.text(max_size=32), is_dir=st.booleans())
def test_fetch_job_round_trip(path: str, size: int, mtime: float | None, etag: str | None,
                              is_dir: bool) -> None:
    job = FetchJob(path, size, mtime, etag, is_dir)
    assert decode_job(encode_job(job)) == job


def test_a_lone_surrogate_survives_encoding() -> None:
    job = FetchJob("dir/\udcff.jpg", 3)
    assert decode_job(encode_job(job)) == job


@pytest.mark.parametrize("raw, words", [
    (b"not json", "not valid JSON"),
    (b"[1,2]", "not a JSON object"),
    (b'{"v":99,"t":"list","path":""}', "schema version 99"),
    (b'{"v":1,"t":"what","path":""}', "unknown message type"),
    (b'{"v":1,"t":"fetch","path":"a","bogus":1}', "unexpected fields"),
])
def test_decode_refuses_what_it_does_not_understand(raw: bytes, words: str) -> None:
    with pytest.raises(ProtocolError, match=words):
        decode_job(raw)


def test_shard_is_stable_and_keeps_a_folder_together() -> None:
    assert shard_of("a/b/c.jpg", 8) == shard_of("a/b/d.jpg", 8)
    # Values fixed by blake2b: a change here would move files between disks on upgrade.
    assert [shard_of(f"dir{i}/x", 4) for i in range(8)] == \
        [shard_of(f"dir{i}/y", 4) for i in range(8)]
    counts = [0] * 4
    for i in range(4000):
        counts[shard_of(f"folder-{i}/file", 4)] += 1
    assert min(counts) > 800  # spread evenly enough
    assert shard_of("x", 1) == 0
    # An empty folder's own job goes where its files would go.
    assert shard_of("a/b", 8, is_dir=True) == shard_of("a/b/anything", 8)
    assert shard_of("a/b/c", 8, by="path") in range(8)


def test_topology_names_and_tiers() -> None:
    t = Topology(JobSpec(name="j", source="upyun://b/", shards=3, retry_delays_s=(5, 60, 600)))
    assert t.list_queue == "j.list"
    assert t.fetch_queues == ["j.fetch.0", "j.fetch.1", "j.fetch.2"]
    assert t.retry_queues == ["j.retry.0", "j.retry.1", "j.retry.2"]
    assert t.tier_for(1) == 0 and t.tier_for(30) == 1 and t.tier_for(10_000) == 2
    assert [t.delay_for_attempt(a) for a in (1, 2, 3, 4, 9)] == [5, 60, 600, 600, 600]
    assert t.queue_for(ListJob("x")) == "j.list"
    assert t.queue_for(FetchJob("x/y")).startswith("j.fetch.")


def test_spec_and_reason_round_trip() -> None:
    spec = JobSpec(name="j", source="upyun://b/p", shards=2,
                   source_options={"endpoint": "http://127.0.0.1:1", "list_limit": 10})
    assert JobSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ProtocolError):
        JobSpec.from_json(b'{"v": 1}')
    reason = Reason.from_error(ProtocolError("bad"), attempts=2)
    assert Reason.from_dict(reason.to_dict()) == reason


def test_a_spec_carries_its_source_options_through_json() -> None:
    spec = JobSpec(name="j", source="upyun://b/",
                   source_options={"endpoint": "http://127.0.0.1:1", "list_limit": 10})
    body = json.loads(spec.to_json())
    assert body["v"] == SPEC_VERSION and "endpoint" not in body and "list_limit" not in body
    assert body["source_options"] == {"endpoint": "http://127.0.0.1:1", "list_limit": 10}
    back = JobSpec.from_json(spec.to_json())
    assert back == spec and options_of(back) == UpyunOptions("http://127.0.0.1:1", 10)
    for bad in ({**body, "source_options": [1]}, {**body, "v": SPEC_VERSION + 1}):
        with pytest.raises(ProtocolError):
            JobSpec.from_json(json.dumps(bad).encode())


# As version 1 stored it (before backends had their own options), on a broker or in a
# state directory's last-run record.
OLD_SPEC = {"name": "old", "source": "upyun://b/p", "endpoint": "http://127.0.0.1:1",
            "shards": 2, "shard_by": "folder", "retry_delays_s": [5.0, 60.0, 600.0],
            "max_attempts": 5, "list_limit": 250, "created": 1700000000.0, "v": 1}


def test_a_spec_stored_by_the_previous_version_still_loads() -> None:
    spec = JobSpec.from_json(json.dumps(OLD_SPEC).encode())
    assert spec.source_options == {"endpoint": "http://127.0.0.1:1", "list_limit": 250}
    assert (spec.shards, spec.retry_delays_s, spec.created) == (2, (5.0, 60.0, 600.0), 1.7e9)
    assert JobSpec.from_json(spec.to_json()) == spec  # and is stored anew as version 2
    # Its endpoint was None when the default was meant; other sources ignored both fields.
    default = JobSpec.from_json(json.dumps({**OLD_SPEC, "endpoint": None}).encode())
    assert options_of(default) == UpyunOptions(list_limit=250)
    assert options_of(default).endpoint == "https://v0.api.upyun.com"
    http = JobSpec.from_json(json.dumps({**OLD_SPEC, "source": "http://h/p/"}).encode())
    assert http.source_options == {} and options_of(http) == HttpIndexOptions()


async def test_a_job_resumes_only_with_its_source_and_options() -> None:
    broker = MemoryBroker()
    old = JobSpec.from_json(json.dumps({**OLD_SPEC, "endpoint": None, "list_limit": 1000})
                            .encode())
    await broker.declare(old)
    # The same options, all stated (as the command line now states them): the same job.
    same = JobSpec(name="old", source="upyun://b/p", shards=2,
                   source_options=UpyunOptions().to_dict())
    assert (await runner.seed(broker, same))[0] == old
    with pytest.raises(ConfigError, match="already mirrors upyun://b/p; choose another"):
        await runner.seed(broker, replace(same, source="upyun://b/q"))
    other = replace(same, source_options={"endpoint": "http://elsewhere"})
    with pytest.raises(ConfigError, match="with --endpoint https://v0.api.upyun.com "
                                          r"\(not http://elsewhere\)"):
        await runner.seed(broker, other)
