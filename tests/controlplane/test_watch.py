"""Watches on the test control plane behave like a cluster's: they stay open while idle.

A client that watches without a resourceVersion (kubectl's `--watch`, the Python client's
`watch.stream` without one, the walkthrough-era client waiting for a template) gets the current
state and then events. kube-apiserver 1.34 serves such a watch from its watch cache once the
cache has caught up with etcd, which on an idle resource only etcd's progress notifications
tell it; etcd 3.4 has none, so there the watch ends after about 3 s with
`504 Too large resource version`. This test fails on that etcd and passes on v3.5 and later.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from testbed import kube

IDLE_FOR = 12.0  # seconds: well past the 3 s after which etcd 3.4's watch fails


class WatchReader(threading.Thread):
    """Reads one watch stream line by line; records its events and when (and why) it ended."""

    def __init__(self, plane: kube.ControlPlane, path: str) -> None:
        super().__init__(daemon=True)
        self.plane, self.path = plane, path
        self.events: list[dict[str, Any]] = []
        self.ended_after: float | None = None
        self.status_code: int | None = None
        self.failure = ""
        self.started = time.monotonic()

    def run(self) -> None:
        try:
            with self.plane.get_stream(self.path) as response:
                self.status_code = response.status_code
                for line in response.iter_lines():
                    if line:
                        self.events.append(json.loads(line))
        except Exception as exc:
            self.failure = repr(exc)
        finally:
            self.ended_after = time.monotonic() - self.started


def test_a_watch_without_resource_version_on_an_idle_resource_stays_open(control_plane, namespace):
    # PodTemplates: a resource nothing in this cluster writes, so its watch cache stays idle.
    path = f"/api/v1/namespaces/{namespace}/podtemplates?watch=1&timeoutSeconds=60"
    reader = WatchReader(control_plane, path)
    reader.start()

    time.sleep(IDLE_FOR)
    errors = [e for e in reader.events if e.get("type") == "ERROR"]
    assert reader.ended_after is None and not errors, (
        f"the watch ended after {reader.ended_after}s (HTTP {reader.status_code}, "
        f"{reader.failure or 'no exception'}), events {errors}; {kube.etcd_report()}")

    # Still a live watch, not a hung connection: a write now arrives as an event.
    control_plane.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "late"},
        "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not reader.events:
        time.sleep(0.05)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in reader.events] == [
        ("ADDED", "late")]
