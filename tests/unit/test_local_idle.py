"""Idle local sandboxes, without runsc: when a pause and then a stop are due, one resume or
start for concurrent requests (on a fake clock and fake pause/resume/stop/start), and the idle
timeout's values: durations, the template's `spec.idleTimeout`, the client option, the
claim's field."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx2
import pytest

from agentic_sandbox import SandboxClient
from agentic_sandbox._backends import claims
from agentic_sandbox._backends.local.idle import (
    PAUSED,
    RUNNING,
    STOP_FACTOR,
    STOPPED,
    Activity,
    next_step,
    seconds_left,
)
from agentic_sandbox._templates import load_template
from sandbox_common.durations import IDLE_TIMEOUT_BOUNDS, idle_timeout_seconds

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("now", "last", "in_flight", "timeout", "state", "step", "left"), [
    (10.0, 0.0, 0, 10.0, RUNNING, "pause", 0.0),  # exactly the timeout since the last request
    (9.0, 0.0, 0, 10.0, RUNNING, None, 1.0),  # not yet
    (99.0, 0.0, 1, 10.0, RUNNING, None, None),  # a request under way is not idle
    (99.0, 0.0, 0, None, RUNNING, None, None),  # no idle timeout: never
    (99.0, 0.0, 0, 10.0, PAUSED, None, 1.0),  # paused; stopped at STOP_FACTOR timeouts
    (100.0, 0.0, 0, 10.0, PAUSED, "stop", 0.0),
    (10**6, 0.0, 0, 10.0, STOPPED, None, None),  # stopped: nothing further
    (10**6, 0.0, 0, None, PAUSED, None, None),
])
def test_when_a_pause_or_a_stop_is_due(now, last, in_flight, timeout, state, step, left):
    assert STOP_FACTOR == 10  # the rows above are written for it
    assert next_step(now, last, in_flight, timeout, state) == step
    assert seconds_left(now, last, in_flight, timeout, state) == left


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeSandbox:
    """Counts pause/resume/stop/start calls; a resume or a start takes a while, like runsc."""

    def __init__(self, fail_pause: bool = False, fail_resume: bool = False,
                 fail_stop: bool = False, fail_start: bool = False) -> None:
        self.calls: list[str] = []
        self.fail_pause, self.fail_resume = fail_pause, fail_resume
        self.fail_stop, self.fail_start = fail_stop, fail_start

    def _call(self, name: str, fails: bool, takes: float = 0.0) -> None:
        self.calls.append(name)
        time.sleep(takes)
        if fails:
            raise RuntimeError("no")

    def stop(self) -> None:
        self._call("stop", self.fail_stop)

    def start(self) -> None:
        self._call("start", self.fail_start, takes=0.05)

    def pause(self) -> None:
        self._call("pause", self.fail_pause)

    def resume(self) -> None:
        self._call("resume", self.fail_resume, takes=0.05)


def activity(fake: FakeSandbox, clock: Clock, timeout: float | None = 10.0) -> Activity:
    act = Activity("sb", fake.pause, fake.resume, fake.stop, fake.start, clock=clock)
    act.watch(timeout)
    return act


def test_idle_time_counts_from_the_end_of_the_last_request():
    fake, clock = FakeSandbox(), Clock()
    act = activity(fake, clock)
    clock.now += 9
    act.begin()
    clock.now += 30  # a long request: not idle
    assert act.step_if_due() is None and fake.calls == []
    act.end()
    clock.now += 9
    assert act.step_if_due() == pytest.approx(1.0)
    clock.now += 1
    assert act.step_if_due() == pytest.approx(90.0)  # paused; the stop is due in 90 s
    assert fake.calls == ["pause"] and act.paused and act.pauses == 1


def to_stopped(act: Activity, clock: Clock) -> None:
    """Idle past the timeout (paused), then past STOP_FACTOR timeouts (stopped)."""
    clock.now += 10
    act.step_if_due()
    clock.now += 90
    act.step_if_due()


def requests_at_once(act: Activity, count: int) -> None:
    """`count` threads each make one request on `act`, released together."""
    barrier = threading.Barrier(count)

    def request() -> None:
        barrier.wait()
        act.begin()
        act.end()

    threads = [threading.Thread(target=request) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)


def test_concurrent_requests_on_a_paused_sandbox_share_one_resume():
    fake, clock = FakeSandbox(), Clock()
    act = activity(fake, clock)
    clock.now += 10
    act.step_if_due()
    requests_at_once(act, 10)
    assert fake.calls == ["pause", "resume"]
    assert (act.resumes, act.paused, act.in_flight) == (1, False, 0)


def test_a_failed_resume_fails_the_request_as_never_sent_and_stays_paused():
    fake, clock = FakeSandbox(fail_resume=True), Clock()
    act = activity(fake, clock)
    clock.now += 10
    act.step_if_due()
    with pytest.raises(httpx2.ConnectError, match="could not resume"):
        act.begin()
    assert act.paused and act.in_flight == 0


def test_a_failed_pause_is_tried_again_later_not_at_once():
    fake, clock = FakeSandbox(fail_pause=True), Clock()
    act = activity(fake, clock)
    clock.now += 10
    assert act.step_if_due() == 30.0
    assert act.step_if_due() == pytest.approx(30.0)  # not due again yet
    assert fake.calls == ["pause"] and not act.paused


def test_a_sandbox_paused_for_long_is_stopped_and_the_next_request_starts_it_again():
    fake, clock = FakeSandbox(), Clock()
    act = activity(fake, clock)
    clock.now += 10
    act.step_if_due()
    clock.now += 89.5
    assert act.step_if_due() == pytest.approx(0.5) and act.state == PAUSED
    clock.now += 0.5
    assert act.step_if_due() is None  # stopped: nothing further until a request
    assert (act.state, act.stops, fake.calls) == (STOPPED, 1, ["pause", "stop"])
    clock.now += 10**6
    assert act.step_if_due() is None
    act.begin()
    act.end()
    assert (act.state, act.starts, act.resumes) == (RUNNING, 1, 0)
    assert fake.calls == ["pause", "stop", "start"]
    # Started again, it is idle from its last request: paused, then stopped, again.
    to_stopped(act, clock)
    assert fake.calls == ["pause", "stop", "start", "pause", "stop"]


def test_a_request_to_a_paused_sandbox_puts_off_its_stop():
    fake, clock = FakeSandbox(), Clock()
    act = activity(fake, clock)
    clock.now += 10
    act.step_if_due()
    clock.now += 80
    act.begin()
    act.end()
    clock.now += 9
    assert act.step_if_due() == pytest.approx(1.0)
    assert fake.calls == ["pause", "resume"] and act.state == RUNNING


def test_concurrent_requests_on_a_stopped_sandbox_share_one_start():
    fake, clock = FakeSandbox(), Clock()
    act = activity(fake, clock)
    to_stopped(act, clock)
    requests_at_once(act, 10)
    assert fake.calls == ["pause", "stop", "start"]
    assert (act.starts, act.state, act.in_flight) == (1, RUNNING, 0)


def test_a_failed_start_fails_the_request_as_never_sent_and_stays_stopped():
    fake, clock = FakeSandbox(fail_start=True), Clock()
    act = activity(fake, clock)
    to_stopped(act, clock)
    with pytest.raises(httpx2.ConnectError, match="could not start the stopped sandbox sb"):
        act.begin()
    assert act.state == STOPPED and act.in_flight == 0


def test_a_failed_stop_is_tried_again_later_and_the_sandbox_stays_paused():
    fake, clock = FakeSandbox(fail_stop=True), Clock()
    act = activity(fake, clock)
    clock.now += 10
    act.step_if_due()
    clock.now += 90
    assert act.step_if_due() == 30.0
    assert act.step_if_due() == pytest.approx(30.0)  # not due again yet
    assert fake.calls == ["pause", "stop"] and act.state == PAUSED


def test_closing_a_stopped_sandbox_resumes_nothing():
    fake, clock = FakeSandbox(), Clock()
    act = activity(fake, clock)
    to_stopped(act, clock)
    act.close()
    act.begin()  # after close, a request never starts it again (the sandbox is removed)
    assert fake.calls == ["pause", "stop"]


def test_closing_resumes_a_paused_sandbox_and_ends_pausing():
    fake, clock = FakeSandbox(), Clock()
    act = activity(fake, clock)
    clock.now += 10
    act.step_if_due()
    act.close()
    clock.now += 100
    assert act.step_if_due() is None
    assert fake.calls == ["pause", "resume"] and not act.paused


def test_without_a_timeout_nothing_is_paused():
    fake, clock = FakeSandbox(), Clock()
    act = activity(fake, clock, timeout=None)
    clock.now += 10**6
    assert act.step_if_due() is None and fake.calls == []


@pytest.mark.parametrize(("value", "seconds"), [
    (None, None), ("2s", 2), ("90s", 90), ("1h30m", 5400), (120, 120), ("8760h", 31536000)])
def test_idle_timeout_values(value, seconds):
    assert idle_timeout_seconds(value) == seconds


@pytest.mark.parametrize("value", ["1s", 1, 0, -5, "8761h", "90", "1m30", "abc", 1.5, True,
                                   "30m1h"])
def test_bad_idle_timeouts_are_refused_naming_the_option(value):
    with pytest.raises(ValueError, match="idle_timeout"):
        idle_timeout_seconds(value)
    with pytest.raises(ValueError, match="idle_timeout"):
        SandboxClient("t", backend="local", idle_timeout=value)


@pytest.mark.parametrize("kind", ["sandboxtemplate", "sandboxclaim", "sandbox"])
def test_the_bounds_are_the_schemas(kind):
    schema = json.loads((REPO / "schemas" / f"{kind}.json").read_text())
    assert schema["properties"]["spec"]["properties"]["idleTimeout"]["x-duration"] \
        == IDLE_TIMEOUT_BOUNDS


def template(folder: Path, idle: str) -> Path:
    (folder / "t.yaml").write_text(f"""\
apiVersion: extensions.agents.x-k8s.io/v1alpha1
kind: SandboxTemplate
metadata: {{name: t}}
spec:
  idleTimeout: {idle}
  podTemplate: {{spec: {{containers: [{{name: c, image: x}}]}}}}
""")
    return folder


def test_the_template_idle_timeout_is_read(tmp_path):
    assert load_template("t", [template(tmp_path, "15m")]).idle_timeout_s == 900


def test_a_bad_template_idle_timeout_names_the_field(tmp_path):
    with pytest.raises(ValueError, match=r"t\.yaml.*spec\.idleTimeout.*shorter than 2s"):
        load_template("t", [template(tmp_path, "1s")])


class ClaimApi:
    def __init__(self) -> None:
        self.bodies: list[dict] = []

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.bodies.append(body)
        return body


def test_the_claim_carries_the_idle_timeout_only_when_given():
    api = ClaimApi()
    claims.create(api, "ns", "c1", "t")
    claims.create(api, "ns", "c2", "t", idle_timeout_s=90)
    assert "idleTimeout" not in api.bodies[0]["spec"]
    assert api.bodies[1]["spec"] == {"sandboxTemplateRef": {"name": "t"}, "idleTimeout": "90s"}
