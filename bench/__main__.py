"""`python -m bench [component ...] [--quick]`: run benchmarks, write JSON, plots and the report.

Each figure is a median over repeated rounds; comparisons to a floor are ratios taken in the
same run. Components not run this time (or skipped) keep their last figures, marked with the
run that measured them.
"""

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

from bench import plots
from bench.harness import Broken, Context, Result, Skipped

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results.json"
REPORT = REPO / "docs" / "benchmarks.md"
PLOTS = REPO / "docs" / "bench"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


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
    with open("/proc/loadavg") as loadavg:
        load = loadavg.read().split()[0]
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "cpu": platform.processor() or platform.machine(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "runsc": version(["runsc", "--version"]),
        "load_at_start": load,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def fmt(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def table(results: list[Result]) -> str:
    head = ("| component | benchmark | p50 | p95 | p99 | throughput | peak RSS MiB | goal | met "
            "| floor | ratio to floor | run |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for r in results:
        unit = f" {r.unit}" if r.p50 is not None else ""
        throughput = f"{r.throughput:.0f} {r.throughput_unit}" if r.throughput else ""
        met = {True: "yes", False: "**no**", None: ""}[r.met]
        rows.append(
            f"| {r.component} | {r.name} | {fmt(r.p50)}{unit} | {fmt(r.p95)} | {fmt(r.p99)} "
            f"| {throughput} | {fmt(r.peak_rss_mib, 1)} | {r.goal} | {met} | {r.floor_name} "
            f"| {fmt(r.ratio_to_floor)} | {r.extra.get('run', '')} |")
    return head + "\n".join(rows) + "\n"


def write_report(info: dict[str, object], results: list[Result], skipped: dict[str, str],
                 errors: dict[str, str], images: list[Path]) -> None:
    lines = [BEGIN, "", "Machine of the latest run: "
             + ", ".join(f"{k}: {v}" for k, v in info.items()), "", table(results)]
    notes = [f"- {r.component} / {r.name}: {r.notes}" for r in results if r.notes]
    if notes:
        lines += ["Notes:", "", *notes, ""]
    if skipped:
        lines += ["Not run in the latest run (figures above, if any, are from an earlier run):",
                  "", *(f"- `{n}`: {why}" for n, why in sorted(skipped.items())), ""]
    if errors:
        lines += ["Failed in the latest run:", "",
                  *(f"- `{n}`: {why}" for n, why in sorted(errors.items())), ""]
    if images:
        lines += ["Plots:", ""]
        lines += [f"![{p.stem}](bench/{p.name})" for p in images]
        lines.append("")
    lines.append(END)
    body = "\n".join(lines)
    text = REPORT.read_text() if REPORT.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + body + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + body + "\n"
    REPORT.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("components", nargs="*", help=f"any of {', '.join(discover())}")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    parser.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                        help="a benchmark's own setting, e.g. --opt claims.scenarios=burst "
                             "(see each bench_*.py)")
    args = parser.parse_args()
    options = dict(o.split("=", 1) for o in args.opt if "=" in o)
    chosen = args.components or discover()
    unknown = sorted(set(chosen) - set(discover()))
    if unknown:
        parser.error(f"no benchmark named {', '.join(unknown)}")
    ctx = Context(quick=args.quick, options=options)
    info = machine()
    stamp = info["date"] + (" (quick)" if args.quick else "")
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"results": []}
    results: list[Result] = []
    skipped: dict[str, str] = {}
    errors: dict[str, str] = {}
    for name in chosen:
        print(f"== bench {name}", flush=True)
        try:
            got = importlib.import_module(f"bench.bench_{name}").run(ctx)
        except Skipped as why:
            print(f"   skipped: {why}", flush=True)
            skipped[name] = str(why)
            continue
        except Broken as broken:  # the figures stand, the run fails
            print(f"   BROKEN: {broken}", flush=True)
            errors[name] = f"Broken: {broken}"
            got = broken.results
        except Exception as exc:  # one broken benchmark must not hide the others
            traceback.print_exc()
            errors[name] = f"{type(exc).__name__}: {exc}"
            continue
        for r in got:
            r.extra["run"] = stamp
            print(f"   {r.name}: p50={fmt(r.p50)} p99={fmt(r.p99)} {r.unit} "
                  f"throughput={fmt(r.throughput, 0)} {r.throughput_unit} goal={r.goal} "
                  f"met={r.met}", flush=True)
        results.extend(got)
    fresh = {r.component for r in results}
    kept = [Result(**r) for r in previous["results"] if r["component"] not in fresh]
    merged = sorted(kept + results, key=lambda r: (r.component, r.name))
    RESULTS.write_text(json.dumps({"machine": info, "results": [r.to_json() for r in merged],
                                   "skipped": skipped, "errors": errors}, indent=1) + "\n")
    images = plots.draw(merged, PLOTS)
    write_report(info, merged, skipped, errors, images)
    print(f"wrote {RESULTS.relative_to(REPO)}, {REPORT.relative_to(REPO)} and "
          f"{len(images)} plots under {PLOTS.relative_to(REPO)}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
