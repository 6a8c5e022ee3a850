"""Why claim figures rose on etcd 3.6: `python -m bench.etcd_watch_wait [--etcd34 PATH]`.

kube-apiserver 1.34 serves a LIST, or a watch opened without a resourceVersion, as a consistent
read from its watch cache once etcd can answer progress requests (etcd 3.5 and later): it asks
etcd for its current revision and waits until the cache of that resource has seen it. When the
last write went to another resource, only a progress notification moves the cache there, and
the API server requests one at most every 100 ms. On etcd 3.4 (no progress requests) it reads
etcd instead, in a few milliseconds.

On each etcd, alternating, this measures (1) right after a write to another resource: a
consistent LIST, a watch opened without a resourceVersion (until its first event), and a LIST
at resourceVersion 0 (from the cache, no wait); (2) on the whole loop (bench/claimlab.py), warm
claims one after another, each timed twice: as the old claim benchmark did, by opening a watch
on the claim after creating it, and from the long-lived watch that records milestones.
Measures only. Needs etcd 3.4 (Debian's etcd-server) for the comparison; without it, 3.6 only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.claimlab import NS, Lab
from sandbox_common.contract import CLAIMS, EXTENSIONS_GROUP, VERSION
from testbed import kube
from testbed.metacontroller import metacontroller_binary
from testbed.tenancy_rules import is_ready


def after_other_write(core: Any, count: int) -> dict[str, float]:
    from kubernetes import watch

    core.create_namespaced_config_map("default", {"metadata": {"name": "watched"}})
    serial = iter(range(10**9))

    def write_elsewhere() -> None:
        core.create_namespaced_secret("default", {"metadata": {"name": f"s-{next(serial)}"}},
                                      _preload_content=False)

    def open_watch() -> None:
        stream = watch.Watch()
        for _ in stream.stream(core.list_namespaced_config_map, "default", timeout_seconds=10,
                               field_selector="metadata.name=watched"):
            stream.stop()
            break

    def watch_or_timeout() -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            open_watch()
        except ApiException as exc:  # etcd 3.4: "Too large resource version" after ~3 s
            if exc.status != 504:
                raise

    calls = {
        "consistent LIST": lambda: core.list_namespaced_config_map(
            "default", _preload_content=False),
        "watch without resourceVersion (3.4: a 504 after)": watch_or_timeout,
        "LIST at resourceVersion 0": lambda: core.list_namespaced_config_map(
            "default", resource_version="0", _preload_content=False),
        "GET": lambda: core.read_namespaced_config_map("watched", "default",
                                                       _preload_content=False),
        "create (a write)": lambda: core.create_namespaced_config_map(
            "default", {"metadata": {"name": f"c-{next(serial)}"}}, _preload_content=False),
    }
    out = {}
    for name, call in calls.items():
        samples = []
        for _ in range(count if "watch" not in name else max(3, count // 6)):
            write_elsewhere()
            began = time.perf_counter()
            call()
            samples.append(time.perf_counter() - began)
        out[name] = statistics.median(samples) * 1e3
    return out


def claims_timed_twice(binary: str, count: int) -> dict[str, float]:
    with Lab(binary) as lab:
        pool = lab.make_pools(1, 2)[0]
        by_watch = []
        names = []
        for _ in range(count):
            name = lab.name("etcd")
            names.append(name)
            claim = lab.create_claim(name)
            wait_by_own_watch(lab, name)
            by_watch.append(time.monotonic() - claim.created)
            lab.milestones.wait([name], 60)
            lab.delete_claims([name])
            lab.pool_full(2, pool)
        recorded = lab.milestones.report(names)["latencies"]
    return {"per-claim watch (old benchmark)": statistics.median(by_watch) * 1e3,
            "long-lived watch (milestones)": statistics.median(recorded) * 1e3}


def wait_by_own_watch(lab: Lab, name: str) -> None:
    from kubernetes import watch

    stream = watch.Watch()
    for event in stream.stream(lab.custom.list_namespaced_custom_object, EXTENSIONS_GROUP,
                               VERSION, NS, CLAIMS, field_selector=f"metadata.name={name}",
                               timeout_seconds=60):
        if is_ready(event["object"]):
            stream.stop()
            return


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.etcd_watch_wait", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--etcd34", default=shutil.which("etcd") or "",
                        help="an etcd 3.4 binary (default: etcd on PATH)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--claims", type=int, default=15)
    args = parser.parse_args()
    binary, why_not = metacontroller_binary()
    etcds = {"3.6": str(kube.BUILT_ETCD)}
    if args.etcd34 and kube.etcd_version(args.etcd34).startswith("3.4"):
        etcds["3.4"] = args.etcd34
    results: dict[str, list[dict[str, float]]] = {k: [] for k in etcds}
    for _ in range(args.rounds):
        for label, path in etcds.items():
            os.environ["ETCD_BIN"] = path
            with tempfile.TemporaryDirectory(prefix="etcd-wait-") as tmp:
                plane = kube.start(Path(tmp), controller_manager=False)
                try:
                    api = plane.api_client()
                    from kubernetes import client

                    got = after_other_write(client.CoreV1Api(api), args.calls)
                    api.close()
                finally:
                    plane.stop()
            if binary is not None:
                got |= claims_timed_twice(binary, args.claims)
            results[label].append(got)
            print(label, {k: round(v, 1) for k, v in got.items()}, flush=True)
    print("\nmedians over rounds (ms):")
    keys = list(results["3.6"][0])
    print("| measured | " + " | ".join(f"etcd {k}" for k in etcds) + " |")
    print("|---|" + "---|" * len(etcds))
    for key in keys:
        cells = [f"{statistics.median(r[key] for r in results[k]):.1f}" for k in etcds]
        print(f"| {key} | " + " | ".join(cells) + " |")
    if binary is None:
        print(f"(no claim figures: {why_not})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
