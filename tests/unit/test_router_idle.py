"""The router's part of idle sandboxes (sandbox_router/idle.py) on a fake source: activity is
reported at most once per interval and only for Sandboxes with an idle timeout; concurrent
requests for a suspended Sandbox share one wake, written with the suspension's token only
while the Sandbox is unchanged; past the bound, a 503 with Retry-After.

The same behaviour on the real loop: tests/metacontroller/test_idle.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping

import pytest

from sandbox_common.contract import LAST_ACTIVITY_ANNOTATION as ACTIVITY_ANNOTATION
from sandbox_common.contract import WAKE_ANNOTATION
from sandbox_router.idle import Idle
from sandbox_router.metrics import create_metrics
from sandbox_router.records import SandboxRecord, record_from_sandbox
from sandbox_router.resolve import WakeTimedOut
from sandbox_router.sources import Conflict

SINCE = "2026-01-01T00:00:00Z"


def sandbox(*, suspended: bool, ready: bool, version: str = "10", idle: int = 8,
            wake: str = "") -> SandboxRecord:
    conditions = [{"type": "Ready", "status": "True" if ready else "False",
                   "reason": "SandboxReady" if ready else "Suspended", "message": ""}]
    if suspended:
        conditions.append({"type": "Suspended", "status": "True", "reason": "Idle",
                           "lastTransitionTime": SINCE})
    obj = {"metadata": {"name": "box", "namespace": "ns", "uid": "u1",
                        "resourceVersion": version,
                        "annotations": {WAKE_ANNOTATION: wake} if wake else {}},
           "spec": {"podTemplate": {"spec": {"containers": [{"ports": [
               {"containerPort": 8888}]}]}}},
           "status": {"conditions": conditions, "idleTimeoutSeconds": idle,
                      "podIPs": ["10.0.0.1"] if ready else []}}
    record = record_from_sandbox(obj)
    assert record is not None
    return record


class FakeSource:
    """Knows one Sandbox; a wake makes it Ready after `wake_delay` seconds (or never)."""

    live = True
    allow_loopback = False

    def __init__(self, record: SandboxRecord, *, wake_delay: float | None = 0.05,
                 conflicts: int = 0) -> None:
        self.record = record
        self.wake_delay = wake_delay
        self.conflicts = conflicts
        self.patches: list[tuple[dict[str, str], bool]] = []

    def lookup(self, namespace: str, name: str) -> SandboxRecord | None:
        return self.record

    async def fetch(self, namespace: str, name: str) -> SandboxRecord | None:
        return self.record

    async def annotate(self, record: SandboxRecord, annotations: Mapping[str, str], *,
                       if_unchanged: bool = False) -> None:
        if if_unchanged and self.conflicts:
            self.conflicts -= 1
            self.record = dataclasses.replace(self.record, resource_version="11")
            raise Conflict("changed")
        if if_unchanged:
            assert record.resource_version == self.record.resource_version
        self.patches.append((dict(annotations), if_unchanged))
        if WAKE_ANNOTATION in annotations and self.wake_delay is not None:
            asyncio.get_running_loop().call_later(self.wake_delay, self._woken)

    def _woken(self) -> None:
        self.record = sandbox(suspended=False, ready=True, version="20", wake=SINCE)


def idle(source: FakeSource, **kwargs: float) -> Idle:
    return Idle(source, create_metrics(), **{"wake_timeout": 5.0,  # type: ignore[arg-type]
                                             "activity_interval": 10.0, **kwargs})


def test_concurrent_requests_share_one_wake_written_with_the_suspensions_token():
    source = FakeSource(sandbox(suspended=True, ready=False))
    waker = idle(source)

    async def ten() -> list[SandboxRecord]:
        return await asyncio.gather(*(waker.wake(source.record) for _ in range(10)))

    answers = asyncio.run(ten())
    assert source.patches == [({WAKE_ANNOTATION: SINCE}, True)]
    assert all(not a.unservable for a in answers)
    assert waker.metrics.wakes.labels("written")._value.get() == 1


def test_a_sandbox_already_woken_is_waited_for_not_woken_again():
    source = FakeSource(sandbox(suspended=True, ready=False, wake=SINCE), wake_delay=None)
    waker = idle(source, wake_timeout=0.3)
    with pytest.raises(WakeTimedOut) as raised:
        asyncio.run(waker.wake(source.record))
    assert source.patches == []
    assert raised.value.status == 503 and raised.value.retry_after
    assert "not ready within 0.3s" in str(raised.value)


def test_a_wake_that_meets_a_changed_sandbox_looks_again_before_writing():
    source = FakeSource(sandbox(suspended=True, ready=False), conflicts=1)
    answer = asyncio.run(idle(source).wake(source.record))
    assert not answer.unservable
    assert source.patches == [({WAKE_ANNOTATION: SINCE}, True)]


def test_activity_is_reported_once_per_interval_and_only_with_an_idle_timeout():
    async def scenario() -> tuple[list, list]:
        source = FakeSource(sandbox(suspended=False, ready=True, idle=8))
        other = FakeSource(sandbox(suspended=False, ready=True, idle=0))
        clock = [1_000.0]
        reporter = Idle(source, create_metrics(), wake_timeout=5, activity_interval=10,
                        wall=lambda: clock[0])
        quiet = Idle(other, create_metrics(), wake_timeout=5, activity_interval=10)
        for _ in range(5):
            reporter.begin(source.record)
            reporter.end(source.record)
            quiet.begin(other.record)
            quiet.end(other.record)
            await reporter.report()
            await quiet.report()
            clock[0] += 0.3
        return source.patches, other.patches

    reported, unreported = asyncio.run(scenario())
    assert reported == [({ACTIVITY_ANNOTATION: "1970-01-01T00:16:40Z"}, False)]
    assert unreported == []


def test_a_long_request_keeps_its_sandbox_awake():
    async def scenario() -> list:
        source = FakeSource(sandbox(suspended=False, ready=True, idle=2))
        clock = [1_000.0]
        reporter = Idle(source, create_metrics(), wake_timeout=5, activity_interval=10,
                        wall=lambda: clock[0])
        reporter.begin(source.record)  # and it does not end
        for _ in range(4):
            await reporter.report()
            clock[0] += 2
            await asyncio.sleep(0.55)  # past the interval: a quarter of 2 s
        return source.patches

    written = [p[0][ACTIVITY_ANNOTATION] for p in asyncio.run(scenario())]
    assert len(written) >= 3 and written == sorted(set(written))


def test_lifecycle_steps_are_read_from_the_sandbox_and_named_deterministically():
    from sandbox_router.events import event_name, steps

    obj = {"metadata": {"name": "box", "namespace": "ns", "uid": "u1",
                        "creationTimestamp": "2026-01-01T00:00:00Z"},
           "status": {"podName": "pool-ab12-0", "conditions": [
               {"type": "Ready", "status": "False", "reason": "Suspended", "message": "m",
                "lastTransitionTime": "2026-01-01T00:05:00Z"},
               {"type": "Suspended", "status": "True", "reason": "Idle", "message": "idle",
                "lastTransitionTime": "2026-01-01T00:05:00Z"}]}}
    found = steps(obj)
    assert [s[0] for s in found] == ["Created", "BoundWarmPod", "Suspended"]
    assert found[2][2] == "2026-01-01T00:05:00Z", "the step's own time"
    names = {event_name("box", "u1", *step) for step in found}
    assert names == {event_name("box", "u1", *step) for step in steps(obj)}, "same step, same name"
    assert len(names) == 3
