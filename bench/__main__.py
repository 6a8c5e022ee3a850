"""`python -m bench [component ...] [--quick]`: run benchmarks, write JSON and the docs table."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

from bench.harness import Context, Result

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results.json"
REPORT = REPO / "docs" / "benchmarks.md"


def discover() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in BENCH_DIR.glob("bench_*.py"))


def machine() -> dict[str, object]:
    def version(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (out.stdout or out.stderr).splitlines()[0].strip()
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "absent"

    with open("/proc/meminfo") as meminfo:
        mem_kib = int(meminfo.readline().split()[1])
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "cpu": platform.processor() or platform.machine(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "runsc": version(["runsc", "--version"]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def fmt(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def table(results: list[Result]) -> str:
    head = (
        "| component | benchmark | p50 | p95 | p99 | throughput | peak RSS MiB | goal | met "
        "| floor | ratio to floor |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in results:
        unit = f" {r.unit}" if r.p50 is not None else ""
        throughput = f"{r.throughput:.0f} {r.throughput_unit}" if r.throughput else ""
        met = {True: "yes", False: "**no**", None: ""}[r.met]
        rows.append(
            f"| {r.component} | {r.name} | {fmt(r.p50)}{unit} | {fmt(r.p95)} | {fmt(r.p99)} "
            f"| {throughput} | {fmt(r.peak_rss_mib, 1)} | {r.goal} | {met} | {r.floor_name} "
            f"| {fmt(r.ratio_to_floor)} |"
        )
    return head + "\n".join(rows) + "\n"


def write_report(info: dict[str, object], results: list[Result], errors: dict[str, str]) -> None:
    machine_line = ", ".join(f"{k}: {v}" for k, v in info.items())
    failures = "".join(f"- `{name}` failed: {msg}\n" for name, msg in errors.items())
    notes = "".join(f"- {r.component} / {r.name}: {r.notes}\n" for r in results if r.notes)
    text = REPORT.read_text() if REPORT.exists() else "# Benchmarks\n"
    start, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    body = (
        f"{start}\nMachine: {machine_line}\n\n{table(results)}\n"
        + (f"Notes:\n\n{notes}\n" if notes else "")
        + (f"Benchmarks that did not finish:\n\n{failures}\n" if failures else "")
        + end
    )
    if start in text and end in text:
        text = text[: text.index(start)] + body + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + body + "\n"
    REPORT.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("components", nargs="*", help=f"any of {', '.join(discover())}")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    args = parser.parse_args()
    chosen = args.components or discover()
    ctx = Context(quick=args.quick)
    info = machine()
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"results": []}
    results: list[Result] = []
    errors: dict[str, str] = {}
    for name in chosen:
        print(f"== bench {name}", flush=True)
        try:
            module = importlib.import_module(f"bench.bench_{name}")
            got = module.run(ctx)
        except Exception as exc:  # one broken benchmark must not hide the others
            traceback.print_exc()
            errors[name] = f"{type(exc).__name__}: {exc}"
            continue
        for r in got:
            print(
                f"   {r.name}: p50={fmt(r.p50)} p99={fmt(r.p99)} {r.unit} "
                f"throughput={fmt(r.throughput, 0)} {r.throughput_unit} goal={r.goal} met={r.met}",
                flush=True,
            )
        results.extend(got)
    # Keep figures of components not run this time, so a partial run does not erase them.
    kept = [
        Result(**r)
        for r in previous["results"]
        if r["component"] not in {res.component for res in results} | set(errors)
    ]
    merged = sorted(kept + results, key=lambda r: (r.component, r.name))
    RESULTS.write_text(
        json.dumps(
            {"machine": info, "results": [r.to_json() for r in merged], "errors": errors}, indent=2
        )
        + "\n"
    )
    write_report(info, merged, errors)
    print(f"wrote {RESULTS.relative_to(REPO)} and {REPORT.relative_to(REPO)}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
