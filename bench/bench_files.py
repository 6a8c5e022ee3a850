"""Benchmarks of the file API on the local gVisor backend: a 1 GiB directory up and back.

Run by `python -m bench files [--quick]` (quick: 256 MiB). Needs root and runsc; without
them the figures are reported as skipped with the reason. The transfer runs in a process of
its own (tests/transfer_memory.py): upload_dir of 64 sparse files of 16 MiB (every byte is
read and sent as a tar stream; the runtime writes each one), then download_dir of the same
tree back to this machine. Measured: MB/s each way, the client's peak RSS (VmHWM of that
process) and the runtime's (VmRSS sampled every 50 ms inside the sandbox, every runtime
process). Floor: the sandbox writing as many bytes to its own workspace (`head -c`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.harness import Context, Result

COMPONENT = "files"
NAMES = ("local upload_dir 1 GiB (64 x 16 MiB)", "local download_dir 1 GiB (64 x 16 MiB)")
GOAL_RSS_MIB = 100


def _skip(reason: str) -> list[Result]:
    return [Result(component=COMPONENT, name=name, unit="", notes=f"skipped: {reason}")
            for name in NAMES]


def run(ctx: Context) -> list[Result]:
    if shutil.which("runsc") is None or os.geteuid() != 0:
        return _skip("needs root and runsc (make system)")
    files = ctx.scale(64, 16)
    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="bench-files-") as state:
        out = subprocess.run(
            [sys.executable, "-m", "tests.transfer_memory", "--state-dir", state,
             "--kind", "dir", "--files", str(files), "--size-mib", "16", "--floor",
             "--download"], cwd=repo, capture_output=True, text=True, timeout=1800, check=True)
    f = json.loads(out.stdout.splitlines()[-1])
    size = f"{files * 16 / 1024:g} GiB"
    names = [n.replace("1 GiB", size).replace("64 x", f"{files} x") for n in NAMES]
    up_rss = max(f["client_peak_mib"], f["runtime_peak_mib"])
    down_rss = max(f["down_client_peak_mib"], f["down_runtime_peak_mib"])
    goal = f"client and runtime peak RSS < {GOAL_RSS_MIB} MiB each"
    floor = f["floor_mb_per_s"]
    return [
        Result(component=COMPONENT, name=names[0], unit="", throughput=f["mb_per_s"],
               throughput_unit="MB/s", peak_rss_mib=up_rss, goal=goal,
               met=f["client_peak_mib"] < GOAL_RSS_MIB and f["runtime_peak_mib"] < GOAL_RSS_MIB
               and f["arrived"] == f["bytes"],
               floor_name="in-sandbox `head -c` of as many bytes",
               ratio_to_floor=floor / f["mb_per_s"],
               notes=f"client peak {f['client_peak_mib']:.1f} MiB, runtime peak "
                     f"{f['runtime_peak_mib']:.1f} MiB; floor {floor:.0f} MB/s",
               extra=f),
        Result(component=COMPONENT, name=names[1], unit="", throughput=f["down_mb_per_s"],
               throughput_unit="MB/s", peak_rss_mib=down_rss, goal=goal,
               met=f["down_client_peak_mib"] < GOAL_RSS_MIB
               and f["down_runtime_peak_mib"] < GOAL_RSS_MIB and f["down_bytes"] == f["bytes"],
               notes=f"client peak {f['down_client_peak_mib']:.1f} MiB (whole process), "
                     f"runtime peak {f['down_runtime_peak_mib']:.1f} MiB",
               extra=f),
    ]
