"""Which Sandbox uid the router forwards to when its watch cache lags (pure; no sockets).

The scene of issue 12: claim `sb` (uid OLD) is deleted and made again (uid NEW); the client
saw NEW Ready from the API server, but the router's watch still shows OLD, whose pod keeps
serving while it terminates. `CacheSource` keeps the watch's view (`cache`) apart from the
API server's (`server`), so each rule is checked with the cache stale on purpose.
"""

from __future__ import annotations

import asyncio

import pytest

from sandbox_common import contract
from sandbox_router.addresses import AddressPolicy
from sandbox_router.headers import Route
from sandbox_router.identity import CONNECTION_NAMES, ConnectionMemory, Reads
from sandbox_router.records import SandboxCache, record_from_sandbox
from sandbox_router.resolve import (
    NOT_READY_RECHECK_SECONDS,
    NotServable,
    Resolver,
    SandboxReplaced,
    Unconfirmed,
    UnknownSandbox,
)
from sandbox_router.sources import StaticSource
from tests.unit.router_fakes import CacheSource, sandbox_object

OLD = "11111111-1111-4111-8111-111111111111"
NEW = "22222222-2222-4222-8222-222222222222"
NEWER = "33333333-3333-4333-8333-333333333333"
OLD_IP, NEW_IP, NEWER_IP = "10.244.0.1", "10.244.0.2", "10.244.0.3"


def old(rv="10", **kw):
    return sandbox_object(uid=OLD, ips=(OLD_IP,), rv=rv, **kw)


def new(rv="20", **kw):
    return sandbox_object(uid=NEW, ips=(NEW_IP,), rv=rv, **kw)


def route(uid=None, name="sb"):
    return Route(namespace="default", name=name, port=8888, timeout=1.0, uid=uid)


def stale():
    """The router's cache still shows OLD; the API server has NEW (Ready)."""
    source = CacheSource(old())
    source.remove("default", "sb")
    source.serve(new())
    return source, Resolver(source, AddressPolicy(), on_read=lambda *read: reads.append(read))


reads: list[tuple[str, str]] = []


@pytest.fixture(autouse=True)
def _reads():
    reads.clear()


def run(resolver, *routes, connection=None):
    async def go():
        return [await resolver.resolve(r, connection=connection) for r in routes]
    return asyncio.run(go())


# ---- records ----------------------------------------------------------------------------------

def test_a_record_carries_uid_pod_version_and_readiness():
    record = record_from_sandbox(sandbox_object(uid=NEW, rv="7", pod="warm-abc"))
    assert (record.uid, record.pod_name, record.resource_version) == (NEW, "warm-abc", "7")
    assert record.unservable == "" and not record.fetched
    annotated = sandbox_object(uid=NEW)
    annotated["metadata"]["annotations"] = {"agents.x-k8s.io/pod-name": "warm-def"}
    assert record_from_sandbox(annotated).pod_name == "warm-def"


@pytest.mark.parametrize(("change", "says"), [
    (lambda o: o["status"]["conditions"][0].update(status="False", reason=contract.POD_LOST),
     "is not ready (PodLost: m)"),
    (lambda o: o["status"]["conditions"][0].update(status="Unknown", reason="X"),
     "is not ready (X: m)"),
    (lambda o: o["status"].pop("conditions"), "reports no Ready condition yet"),
    (lambda o: o["status"].update(conditions="junk"), "reports no Ready condition yet"),
    (lambda o: o["metadata"].update(deletionTimestamp="2026-01-01T00:00:00Z"),
     "is being deleted"),
])
def test_a_record_knows_when_it_must_not_be_dialled(change, says):
    obj = sandbox_object(uid=NEW)
    change(obj)
    assert record_from_sandbox(obj).unservable == says


# ---- the cache and records read directly -----------------------------------------------------

def test_a_fetched_record_newer_than_the_watch_is_served_until_the_watch_passes_it():
    cache = SandboxCache()
    cache.replace([old()], version="10")
    cache.offer(record_from_sandbox(new(rv="20"), fetched=True))
    assert cache.get("default", "sb").uid == NEW
    cache.apply({"type": "DELETED", "object": old(rv="12")})  # the watch, still behind
    assert cache.get("default", "sb").uid == NEW
    cache.apply({"type": "ADDED", "object": new(rv="18")})
    cache.apply({"type": "MODIFIED", "object": new(rv="20")})  # caught up: the watch's own
    assert cache.get("default", "sb").fetched is False


def test_a_fetched_record_never_outlives_a_later_deletion():
    cache = SandboxCache()
    cache.replace([], version="10")
    cache.offer(record_from_sandbox(new(rv="20"), fetched=True))
    cache.apply({"type": "ADDED", "object": new(rv="20")})
    cache.apply({"type": "DELETED", "object": new(rv="25")})
    assert cache.get("default", "sb") is None


def test_an_older_or_unordered_fetched_record_is_not_kept():
    cache = SandboxCache()
    cache.replace([new(rv="20")], version="30")
    cache.offer(record_from_sandbox(old(rv="10"), fetched=True))
    assert cache.get("default", "sb").uid == NEW
    opaque = SandboxCache()
    opaque.replace([], version="abc")
    opaque.offer(record_from_sandbox(new(rv="xyz"), fetched=True))
    assert opaque.get("default", "sb") is None


def test_bookmarks_move_the_watch_position():
    cache = SandboxCache()
    cache.replace([], version="10")
    cache.offer(record_from_sandbox(new(rv="20"), fetched=True))
    cache.apply({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "21"}}})
    assert cache.get("default", "sb") is None


# ---- X-Sandbox-UID ----------------------------------------------------------------------------

def test_a_uid_the_cache_agrees_with_costs_no_read():
    source = CacheSource(new())
    (target,) = run(Resolver(source, AddressPolicy()), route(NEW))
    assert target.addresses == (NEW_IP,) and source.fetched == []


def test_a_uid_the_stale_cache_disagrees_with_is_read_and_reaches_only_its_own_pod():
    source, resolver = stale()
    first, second = run(resolver, route(NEW), route(NEW))
    assert first.addresses == second.addresses == (NEW_IP,)
    assert first.record.uid == NEW
    # The read refreshed the cache: the second request needed none.
    assert source.fetched == [("default", "sb")] and reads == [("uid", "found")]


def test_a_uid_unknown_to_the_cache_is_read():
    source = CacheSource()
    source.serve(new())
    (target,) = run(Resolver(source, AddressPolicy()), route(NEW))
    assert target.addresses == (NEW_IP,)


def test_the_old_uid_reaches_only_its_own_pod_and_then_409():
    source, resolver = stale()
    # While the cache still shows OLD, OLD's own client reaches OLD's own pod: no other uid.
    (target,) = run(resolver, route(OLD))
    assert target.addresses == (OLD_IP,) and source.fetched == []
    run(resolver, route(NEW))  # the read for NEW refreshes the cache
    with pytest.raises(SandboxReplaced, match=f"is uid {NEW} now, not {OLD}") as refused:
        run(resolver, route(OLD))
    assert refused.value.status == 409 and refused.value.retry_after is None


def test_a_uid_whose_sandbox_is_gone_is_refused_with_409_even_if_the_cache_has_another():
    source, resolver = stale()
    source.remove("default", "sb")
    with pytest.raises(SandboxReplaced, match=f"uid {NEW}. no longer exists"):
        run(resolver, route(NEW))


def test_a_read_that_fails_refuses_with_503_and_never_falls_back_to_the_cache():
    source, resolver = stale()
    source.failure = ConnectionRefusedError("down")
    for r in (route(NEW), route(NEW), route()):
        with pytest.raises(Unconfirmed) as refused:
            run(resolver, r, connection=ConnectionMemory())
        assert refused.value.status == 503 and refused.value.retry_after == 1
    assert reads == [("uid", "error"), ("uid", "error"), ("connection", "error")]


# ---- requests without a uid -------------------------------------------------------------------

def test_a_fresh_connection_gets_the_name_as_the_api_server_has_it_now():
    source, resolver = stale()
    memory = ConnectionMemory()
    first, second = run(resolver, route(), route(), connection=memory)
    assert first.addresses == second.addresses == (NEW_IP,)
    assert memory.get(("default", "sb")) == NEW
    assert source.fetched == [("default", "sb")]  # once per connection and name


def test_a_connection_is_told_the_new_uid_when_the_cache_shows_another():
    source = CacheSource(new())
    resolver = Resolver(source, AddressPolicy())
    memory = ConnectionMemory()
    run(resolver, route(), connection=memory)
    assert source.fetched == [("default", "sb")]
    # NEW is deleted and NEWER takes the name; the watch shows it.
    newer = sandbox_object(uid=NEWER, ips=(NEWER_IP,), rv="40")
    source.serve(newer)
    source.deliver(("DELETED", new(rv="30")), ("ADDED", newer))
    (target,) = run(resolver, route(), connection=memory)
    assert target.addresses == (NEWER_IP,) and memory.get(("default", "sb")) == NEWER
    assert len(source.fetched) == 2


def test_an_unknown_name_is_a_404_only_after_the_api_server_says_so():
    source = CacheSource()
    resolver = Resolver(source, AddressPolicy())
    with pytest.raises(UnknownSandbox):
        run(resolver, route(), connection=ConnectionMemory())
    source.serve(new())  # created, the watch has not shown it yet
    (target,) = run(resolver, route(), connection=ConnectionMemory())
    assert target.addresses == (NEW_IP,)


def test_without_connection_memory_every_request_is_read():
    source, resolver = stale()
    targets = run(resolver, route(), route(), route())
    assert {t.addresses for t in targets} == {(NEW_IP,)}
    assert len(source.fetched) == 3 and set(reads) == {("request", "found")}


def test_a_static_source_is_its_own_authority():
    source = StaticSource({"sandboxes": {
        "sb": {"addresses": ["10.0.0.1"], "ports": [8888], "uid": NEW},
        "nouid": {"addresses": ["10.0.0.2"], "ports": [8888]}}})
    resolver = Resolver(source, AddressPolicy())
    assert run(resolver, route(), route(NEW))[1].addresses == ("10.0.0.1",)
    with pytest.raises(SandboxReplaced):
        run(resolver, route(OLD))
    with pytest.raises(SandboxReplaced):
        run(resolver, route(NEW, name="nouid"))
    assert run(resolver, route(name="nouid"))[0].addresses == ("10.0.0.2",)


def test_connection_memory_is_bounded_and_forgets_the_oldest_name():
    memory = ConnectionMemory()
    for i in range(CONNECTION_NAMES + 5):
        memory.bind(("default", f"sb-{i}"), NEW)
    assert len(memory) == CONNECTION_NAMES
    assert memory.get(("default", "sb-0")) is None
    assert memory.get(("default", f"sb-{CONNECTION_NAMES + 4}")) == NEW


# ---- Ready and deletion ----------------------------------------------------------------------

def test_a_sandbox_that_is_not_ready_is_refused_with_503_and_retry_after():
    source = CacheSource(new(ready="False", reason=contract.POD_LOST))
    now = [100.0]
    resolver = Resolver(source, AddressPolicy(), clock=lambda: now[0])
    for _ in range(3):
        with pytest.raises(NotServable, match=contract.POD_LOST) as refused:
            run(resolver, route(NEW))
        assert refused.value.status == 503 and refused.value.retry_after == 1
    # One read to check the cache was not merely behind; clients retrying at once cost none.
    assert len(source.fetched) == 1
    now[0] += NOT_READY_RECHECK_SECONDS
    with pytest.raises(NotServable):
        run(resolver, route(), connection=ConnectionMemory())
    with pytest.raises(NotServable):
        run(resolver, route(NEW))
    assert len(source.fetched) == 2  # the name-only request's read counts for both


def test_a_sandbox_found_not_ready_is_read_again_while_the_watch_lags():
    source = CacheSource(new(rv="20"))
    source.serve(new(rv="21", ready="False", reason=contract.WAITING_FOR_ANNOTATION))
    source.deliver(("MODIFIED", new(rv="21", ready="False",
                                    reason=contract.WAITING_FOR_ANNOTATION)))
    now = [100.0]
    resolver = Resolver(source, AddressPolicy(), clock=lambda: now[0])
    with pytest.raises(NotServable):
        run(resolver, route(NEW))
    source.serve(new(rv="22"))  # Ready now; the watch does not say so yet
    now[0] += NOT_READY_RECHECK_SECONDS
    (target,) = run(resolver, route(NEW))
    assert target.addresses == (NEW_IP,) and len(source.fetched) == 2


def test_a_cache_that_is_behind_a_sandbox_turning_ready_costs_one_read_not_a_refusal():
    source = CacheSource(new(rv="20", ready="False", reason=contract.WAITING_FOR_ANNOTATION))
    source.serve(new(rv="21"))
    (target,) = run(Resolver(source, AddressPolicy()), route(NEW))
    assert target.addresses == (NEW_IP,) and reads == []


def test_a_sandbox_being_deleted_is_never_dialled():
    gone = new(rv="25")
    gone["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    source = CacheSource(gone)
    with pytest.raises(NotServable, match="being deleted"):
        run(Resolver(source, AddressPolicy()), route(), connection=ConnectionMemory())


# ---- reads are new enough and shared ---------------------------------------------------------

def test_requests_share_a_read_only_if_it_began_after_they_arrived():
    async def scenario():
        source, resolver = stale()
        source.gate = asyncio.Event()
        first = asyncio.ensure_future(resolver.resolve(route(NEW)))
        while not source.fetched:  # until its read has begun (and waits at the gate)
            await asyncio.sleep(0)
        source.serve(sandbox_object(uid=NEWER, ips=(NEWER_IP,), rv="40"))
        late = [asyncio.ensure_future(resolver.resolve(route(NEWER))) for _ in range(3)]
        await asyncio.sleep(0)
        source.gate.set()
        done = await asyncio.gather(first, *late, return_exceptions=True)
        return source, done

    source, (first, *late) = asyncio.run(scenario())
    assert first.record.uid == NEW  # the API server's answer when its read began
    # The three that arrived during that read did not take its (older) answer: they shared
    # one new read, which saw NEWER.
    assert [t.record.uid for t in late] == [NEWER] * 3
    assert len(source.fetched) == 2


def test_one_waiter_giving_up_does_not_cancel_the_shared_read():
    async def scenario():
        reads_: Reads[str] = Reads()
        gate = asyncio.Event()
        count = 0

        async def fetch(key):
            nonlocal count
            count += 1
            await gate.wait()
            return "answer"

        arrived = reads_.arrival(), reads_.arrival()
        a = asyncio.ensure_future(reads_.read(("ns", "x"), arrived[0], fetch))
        b = asyncio.ensure_future(reads_.read(("ns", "x"), arrived[1], fetch))
        await asyncio.sleep(0)
        a.cancel()
        gate.set()
        return await b, count

    assert asyncio.run(scenario()) == ("answer", 1)
