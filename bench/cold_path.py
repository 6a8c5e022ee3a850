"""Where the cold path's time goes: `python -m bench.cold_path [--claims 50] [--pool 2]`.

One burst of claims against one small pool (issue 15's cold path: 50 claims at once against a
pool of 2) on a fresh loop (bench/claimlab.py), then a breakdown of it: each claim's stages
(bench/claim_milestones.py), which pod served each Sandbox (one of the pool's pods from before
the burst, a pool pod made free during the burst and bound after, a pool pod made already bound
for it, or its own pod), hook calls per controller over time (the hooks' access log, stamped
as its lines arrive), writes by client and kind (the audit log) and CPU per process. Prints a
report and writes JSON (`--out`, default /tmp/cold-path.json). Measures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.claim_milestones import STAGES
from bench.claimlab import Lab, binary_or_say_why
from sandbox_common.contract import SANDBOX_UID_LABEL


class HookTail:
    """Stamps each new line of the hooks' access log with time.monotonic() as it arrives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[tuple[float, str]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def start(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        self.thread.start()

    def run(self) -> None:
        rest = b""
        while not self.stopping.is_set():
            with self.path.open("rb") as log:
                log.seek(self.offset)
                data = log.read()
            self.offset += len(data)
            now = time.monotonic()
            *whole, rest = (rest + data).split(b"\n")
            for line in whole:
                text = line.decode(errors="replace")
                if '"POST /' in text:
                    self.lines.append((now, text.split('"POST ', 1)[1].split(" ", 1)[0]))
            time.sleep(0.01)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()


def served_by(lab: Lab, before: set[str], names: list[str]) -> dict[str, str]:
    """For each claim, how its pod came: pool-initial, pool-refill, pool-made-bound, own."""
    first: dict[str, dict[str, Any]] = {}
    for event in lab.recorder.snapshot():
        if event.kind == "Pod":
            first.setdefault(event.obj["metadata"]["name"], event.obj)
    out = {}
    for name in names:
        pod = lab.milestones.claims[name].pod
        if not pod:
            out[name] = "none"
        elif pod == name:
            out[name] = "own"
        elif pod in before:
            out[name] = "pool-initial"
        elif SANDBOX_UID_LABEL in ((first.get(pod) or {}).get("metadata", {}).get("labels") or {}):
            out[name] = "pool-made-bound"
        else:
            out[name] = "pool-refill"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cold_path", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--claims", type=int, default=50)
    parser.add_argument("--pool", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--out", default="/tmp/cold-path.json")
    parser.add_argument("--keep-logs", help="a directory to copy the loop's logs into")
    parser.add_argument("--hook-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable of the hooks server (repeatable)")
    args = parser.parse_args()
    binary = binary_or_say_why()
    if binary is None:
        return 2
    hooks_env = dict(item.split("=", 1) for item in args.hook_env)
    with Lab(binary, hooks_env=hooks_env) as lab:
        lab.make_pools(1, args.pool)
        before = {e.obj["metadata"]["name"] for e in lab.recorder.snapshot() if e.kind == "Pod"}
        tail = HookTail(lab.stack.workdir / "hooks.log")
        tail.start()
        window = lab.meter.window()
        names = [lab.name("cold") for _ in range(args.claims)]
        lab.burst(names)
        lab.milestones.wait(names, args.timeout)
        tail.stop()
        report = lab.milestones.report(names)
        cost = lab.meter.cost(window, len(names))
        violations, summary = lab.violations()
        sources = served_by(lab, before, names)
        start = min(lab.milestones.claims[n].created for n in names)
        claims = {n: lab.milestones.claims[n] for n in names}
        if args.keep_logs:
            for log in ("metacontroller.log", "hooks.log"):
                shutil.copy(lab.stack.workdir / log, Path(args.keep_logs) / log)
            if lab.stack.plane.audit_log is not None:
                shutil.copy(lab.stack.plane.audit_log, Path(args.keep_logs) / "audit.log")
    last = max(claims.values(), key=lambda c: c.times.get("claim_ready", float("inf")))
    timeline: dict[str, list[float]] = {}
    for moment, path in tail.lines:
        timeline.setdefault(path, []).append(round(moment - start, 2))
    result = {
        "last_ready_s": report["last_ready_s"],
        "last_sandbox_ready_s": report["last_sandbox_ready_s"],
        "failed": report["failed"], "violations": violations, "violation_summary": summary,
        "served": dict(Counter(sources.values())),
        "stage_means_ms": report["stage_means_ms"],
        "last_claim": {"name": last.name, "served": sources[last.name],
                       "milestones_s": {k: round(v - start, 3) for k, v in last.times.items()},
                       "created_s": round(last.created - start, 3)},
        "milestones_s": {n: {"served": sources[n], **{k: round(v - start, 3)
                                                      for k, v in c.times.items()}}
                         for n, c in claims.items()},
        "hook_timeline_s": timeline,
        "cost": cost,
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"last claim Ready {report['last_ready_s']:.2f} s (Sandbox "
          f"{report['last_sandbox_ready_s']:.2f} s), failed {len(report['failed'])}, "
          f"violations {violations}, served {result['served']}")
    print("stage means ms:", {k: round(v) for k, v in report["stage_means_ms"].items()})
    print("last claim:", result["last_claim"])
    print("hook calls per claim:", cost["hook_calls_per_claim"])
    print("writes:", dict(sorted(cost["writes"].items())))
    print("writes per claim:", cost["writes_per_claim"], "conflicts", cost["conflicts_total"])
    print("cpu ms per claim:", cost["cpu_ms_per_claim"], "elapsed", cost["elapsed_s"])
    for path, moments in sorted(timeline.items()):
        print(f"{path}: {len(moments)} calls, first {moments[0]:.2f} s, last {moments[-1]:.2f}"
              f" s; per second: {dict(sorted(Counter(int(m) for m in moments).items()))}")
    print("stages:", list(STAGES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
