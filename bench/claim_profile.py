"""Where Metacontroller spends its CPU in a claim burst: `python -m bench.claim_profile`.

Runs one burst on a fresh loop (bench/claimlab.py) with Metacontroller's pprof endpoint on
loopback, records a CPU profile of Metacontroller for `--seconds` from the first create, and
prints the burst's milestones and cost. Read the profile with Go's tools, e.g.
`go tool pprof -top -cum PROFILE` (the shared binary is stripped, but a Go profile carries its
own symbols). Used by hand to find what to change (docs/benchmarks.md, issue 15).

It must not: assert anything about speed (it measures), or leave a process running.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import urllib.request
from pathlib import Path

from bench.claimlab import Lab, binary_or_say_why


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.claim_profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--claims", type=int, default=200)
    parser.add_argument("--pools", type=int, default=4)
    parser.add_argument("--pool", type=int, default=50, help="warm pods per pool")
    parser.add_argument("--seconds", type=int, default=30, help="length of the CPU profile")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--out", default="/tmp/metacontroller-burst.pprof")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="Metacontroller's environment, over testbed's (e.g. GOGC=100)")
    args = parser.parse_args()
    binary = binary_or_say_why()
    if binary is None:
        return 2
    port = free_port()
    url = f"http://127.0.0.1:{port}/debug/pprof/profile?seconds={args.seconds}"
    env = dict(item.split("=", 1) for item in args.env)
    with Lab(binary, metacontroller_flags=(f"--pprof-address=127.0.0.1:{port}",),
             metacontroller_env=env) as lab:
        lab.make_pools(args.pools, args.pool)
        window = lab.meter.window()
        names = [lab.name("burst") for _ in range(args.claims)]
        profile: list[bytes] = []
        recorder = threading.Thread(target=lambda: profile.append(
            urllib.request.urlopen(url, timeout=args.seconds + 60).read()))
        recorder.start()
        lab.burst(names)
        left = lab.milestones.wait(names, args.timeout)
        recorder.join()
        report = lab.milestones.report(names)
        cost = lab.meter.cost(window, args.claims)
        violations, summary = lab.violations()
    Path(args.out).write_bytes(profile[0] if profile else b"")
    print(f"{args.claims} claims, {args.pools} pools of {args.pool}: last claim Ready "
          f"{report['last_ready_s']:.2f} s, last Sandbox Ready "
          f"{report['last_sandbox_ready_s']:.2f} s, {len(left)} not Ready, "
          f"{report['warm_served']} served warm, {violations} violations ({summary})")
    print("stage means (ms):", {k: round(v) for k, v in report["stage_means_ms"].items()})
    print("CPU ms per claim:", cost["cpu_ms_per_claim"])
    print(f"Metacontroller writes per claim: {cost['controller_writes_per_claim']:.2f}")
    print(f"profile: {args.out} (go tool pprof -top -cum {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
