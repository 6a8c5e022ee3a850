"""Before/after on the claim loop, in one run: `python -m bench.ab_claims A B [options]`.

A and B are arms: a git revision (its hooks/, schemas/ and manifests/ are exported with `git
archive`; the hooks server runs them through PYTHONPATH and the revision's loopback overlay,
CRDs included, is what gets applied) or `.` for the working tree, optionally followed by
Metacontroller flags after a colon: `HEAD~1`, `.:--workers=32`; `hook-workers=N` among them
sets the hooks server's workers for that arm (`.:hook-workers=4`), and `hook-env=NAME=VALUE` an
environment variable of its hooks server (`.:hook-env=SANDBOX_HOOKS_WARM_POD_GRACE_SECONDS=10`)
and `mc-env=NAME=VALUE` one of Metacontroller's, over testbed's METACONTROLLER_ENV
(`.:mc-env=GOGC=100`);
`pools=N` and `pool=M` give that arm its own pool layout (`.:pools=50,pool=10`: the same warm
pods in more, smaller pools). Rounds alternate A, B, A, B on
a fresh loop each (testbed/metacontroller.py through bench/claimlab.py), so both arms see
the same machine; the report gives each arm's medians over its rounds and the B/A ratios. This
machine is shared: compare the ratios, not figures across runs.

Scenarios (`--scenario`): `seq` (claims one after another, kept, on a pool of 2), `burst`
(`--claims` at once against `--pools` pools of `--pool` warm pods), `steady` (`--rate` claims/s
for `--seconds`, same pools), `resync` (`--existing` Sandboxes made at replicas 0, then from
`--at` seconds after the loop started, when a periodic resync of 300 s falls, claims one after
another for `--seconds`: per-claim figures include the background load of the existing ones).
The kubelet stand-in is instant. Prints a table and writes JSON
(`--out`, default /tmp/ab-claims.json). Measures only; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import loop_probes
from bench.claimlab import Lab, binary_or_say_why
from bench.harness import percentiles
from testbed.support import REPO

EXPORTED = ("hooks", "schemas", "manifests")


def export(revision: str, into: Path) -> Path:
    """The revision's hooks, schemas and manifests under `into` (the working tree for '.')."""
    if revision == ".":
        return REPO
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, *EXPORTED],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run_round(binary: str, tree: Path, arm: Arm, args: argparse.Namespace) -> dict[str, Any]:
    _, flags, hook_workers, hook_env, layout, mc_env = arm
    pools, per_pool = layout.get("pools", args.pools), layout.get("pool", args.pool)
    env = {**hook_env, **({} if tree == REPO else {"PYTHONPATH": str(tree)})}
    overlay = tree / "manifests" / "overlays" / "loopback"
    with Lab(binary, metacontroller_flags=flags, hooks_env=env, overlay=overlay,
             hooks_workers=hook_workers or args.hook_workers, metacontroller_env=mc_env) as lab:
        if args.scenario == "seq":
            lab.make_pools(1, 2)
            window, names = lab.meter.window(), []
            for _ in range(args.claims):
                name = lab.name("seq")
                names.append(name)
                lab.create_claim(name)
                lab.milestones.wait([name], 60)
        elif args.scenario == "burst":
            lab.make_pools(pools, per_pool)
            window = lab.meter.window()
            names = [lab.name("burst") for _ in range(args.claims)]
            lab.burst(names)
            lab.milestones.wait(names, args.timeout)
        elif args.scenario == "resync":
            entered = time.monotonic()  # the controllers' resync timers started just before
            lab.make_pools(1, 2)
            made = [lab.name("existing") for _ in range(args.existing)]
            lab.create_sandboxes(made, replicas=0)
            lab.wait_sandboxes_settled(made, 600)
            time.sleep(max(0.0, entered + args.at - time.monotonic()))
            window, names = lab.meter.window(), []
            while time.monotonic() < window.began + args.seconds:
                name = lab.name("probe")
                names.append(name)
                lab.create_claim(name)
                lab.milestones.wait([name], args.timeout)
        else:
            lab.make_pools(pools, per_pool)
            window = lab.meter.window()
            names, _ = lab.steady("steady", args.rate, args.seconds)
            lab.milestones.wait(names, args.timeout)
        report = lab.milestones.report(names)
        cost = lab.meter.cost(window, len(names))
        violations, _ = lab.violations()
        peak = loop_probes.rss(lab.stack, "VmHWM")
    latencies = percentiles([s * 1e3 for s in report["latencies"]])
    return {
        "p50_ms": latencies.get("p50"), "p99_ms": latencies.get("p99"),
        "last_ready_s": report["last_ready_s"], "failed": len(report["failed"]),
        "last_sandbox_ready_s": report["last_sandbox_ready_s"],
        "warm_served": report["warm_served"], "violations": violations,
        "controller_writes_per_claim": cost["controller_writes_per_claim"],
        "conflicts": cost["conflicts_total"],
        "hook_calls_per_claim": sum(cost["hook_calls_per_claim"].values()),
        "cpu_ms_per_claim": sum(cost["cpu_ms_per_claim"].values()),
        "metacontroller_cpu_ms_per_claim": cost["cpu_ms_per_claim"].get("metacontroller", 0.0),
        "metacontroller_peak_rss_mib": peak.get("metacontroller", 0.0),
        "stages_ms": report["stage_means_ms"], "cost": cost,
    }


# An arm: revision, Metacontroller flags, hooks server workers (None: --hook-workers),
# environment of the hooks server, its own --pools/--pool (None: the run's), and
# Metacontroller's environment.
Arm = tuple[str, tuple[str, ...], int | None, dict[str, str], dict[str, int], dict[str, str]]


def parse_arm(text: str) -> Arm:
    """`REV[:FLAG,...]`: Metacontroller flags and `mc-env=NAME=VALUE` for its environment,
    `hook-workers=N` and `hook-env=NAME=VALUE` for the hooks server, `pools=N` and `pool=M`
    for the pool layout."""
    revision, _, listed = text.partition(":")
    flags = [f for f in listed.split(",") if f]
    workers = [f for f in flags if f.startswith("hook-workers=")]
    hook_workers = int(workers[-1].split("=", 1)[1]) if workers else None
    layout = {f.split("=", 1)[0]: int(f.split("=", 1)[1]) for f in flags
              if f.startswith(("pools=", "pool="))}
    ours = [f for f in flags if f.startswith(("hook-workers=", "hook-env=", "mc-env=", "pools=",
                                              "pool="))]
    return (revision or ".", tuple(f for f in flags if f not in ours), hook_workers,
            environment(flags, "hook-env="), layout, environment(flags, "mc-env="))


def environment(flags: list[str], prefix: str) -> dict[str, str]:
    """`NAME=VALUE` of every flag `<prefix>NAME=VALUE`."""
    return dict(f.removeprefix(prefix).split("=", 1) for f in flags if f.startswith(prefix))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab_claims", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--scenario", choices=("seq", "burst", "steady", "resync"),
                        default="seq")
    parser.add_argument("--claims", type=int, default=30)
    parser.add_argument("--pool", type=int, default=50, help="warm pods per pool")
    parser.add_argument("--pools", type=int, default=1)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--existing", type=int, default=1000, help="resync: Sandboxes made")
    parser.add_argument("--at", type=float, default=290.0,
                        help="resync: seconds after the loop started that the window opens")
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--hook-workers", type=int, default=2)
    parser.add_argument("--out", default="/tmp/ab-claims.json")
    args = parser.parse_args()
    binary = binary_or_say_why()
    if binary is None:
        return 2
    arms = {"A": parse_arm(args.a), "B": parse_arm(args.b)}
    results: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory(prefix="ab-claims-") as tmp:
        trees = {k: export(arm[0], Path(tmp) / k) for k, arm in arms.items()}
        for round_ in range(args.rounds):
            for arm in ("A", "B"):
                got = run_round(binary, trees[arm], arms[arm], args)
                results[arm].append(got)
                print(f"round {round_ + 1} {arm}: p50 {got['p50_ms']:.0f} ms, p99 "
                      f"{got['p99_ms']:.0f} ms, last {got['last_ready_s']:.2f} s (Sandbox "
                      f"{got['last_sandbox_ready_s']:.2f} s), writes/claim "
                      f"{got['controller_writes_per_claim']}, hooks/claim "
                      f"{got['hook_calls_per_claim']:.1f}, cpu ms/claim "
                      f"{got['cpu_ms_per_claim']:.0f} (Metacontroller "
                      f"{got['metacontroller_cpu_ms_per_claim']:.0f}), peak RSS "
                      f"{got['metacontroller_peak_rss_mib']:.0f} MiB, warm {got['warm_served']}, "
                      f"failed {got['failed']}, violations {got['violations']}", flush=True)
    keys = ("p50_ms", "p99_ms", "last_ready_s", "last_sandbox_ready_s",
            "controller_writes_per_claim", "conflicts",
            "hook_calls_per_claim", "cpu_ms_per_claim", "metacontroller_cpu_ms_per_claim",
            "metacontroller_peak_rss_mib", "warm_served", "failed", "violations")
    print(f"\n{args.scenario}: A = {args.a}, B = {args.b}, medians of {args.rounds} rounds")
    print("| figure | A | B | B/A |\n|---|---|---|---|")
    summary = {}
    for key in keys:
        a = statistics.median(r[key] for r in results["A"])
        b = statistics.median(r[key] for r in results["B"])
        summary[key] = {"A": a, "B": b}
        ratio = f"{b / a:.2f}" if a else ""
        print(f"| {key} | {a:.2f} | {b:.2f} | {ratio} |")
    Path(args.out).write_text(json.dumps({"args": vars(args), "rounds": results,
                                          "medians": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
