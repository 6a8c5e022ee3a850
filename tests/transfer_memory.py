"""A large upload to a local sandbox, with the client's and the runtime's peak RSS measured.

Run as its own process (`python -m tests.transfer_memory ...`) so the client's peak RSS
(VmHWM) is this transfer's and nothing else's; prints one JSON line. Used by
tests/dataplane/test_local_large_transfers.py (200 MiB, one file) and bench/bench_files.py
(1 GiB, 64 files, then downloaded back). The local data is sparse (no disk, no page cache
to read), but every byte of it is read and sent: the runtime writes each one into the
sandbox's workspace.

The runtime's RSS is sampled from inside the sandbox (gVisor's /proc shows VmRSS, not
VmHWM) every SAMPLE_S by a streamed command, over every runtime process (the channel that
serves the upload may be a second `sandbox-runtime --stdio` started by `runsc exec`).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from agentic_sandbox import SandboxClient

MIB = 1024 * 1024
SAMPLE_S = 0.05
STOP = ".stop-sampler"
SAMPLER = r"""
import json, os, time
peak = {}
while not os.path.exists(%(stop)r):
    for pid in os.listdir("/proc"):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
            if b"launch.py" not in cmdline and b"sandbox-runtime" not in cmdline:
                continue
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmRSS:"):
                    peak[pid] = max(peak.get(pid, 0), int(line.split()[1]) / 1024)
        except (OSError, ValueError):
            pass
    print(json.dumps(peak), flush=True)
    time.sleep(%(sample)r)
print(json.dumps(peak), flush=True)
"""
TEMPLATE = """\
apiVersion: extensions.agents.x-k8s.io/v1alpha1
kind: SandboxTemplate
metadata: {name: big-transfers}
spec:
  podTemplate:
    spec:
      containers:
      - name: runtime
        image: unused
        resources: {limits: {ephemeral-storage: %dMi}}
        env: [{name: SANDBOX_RUNTIME_MAX_UPLOAD_BYTES, value: '%d'}]
"""


def vm_hwm_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def sparse_tree(root: Path, files: int, size: int) -> None:
    root.mkdir(parents=True)
    for i in range(files):
        with open(root / f"part-{i:03d}.bin", "wb") as file:
            file.truncate(size)


class Sampler:
    """The streamed sampling command, read in a thread until it is told to stop."""

    def __init__(self, sandbox: SandboxClient) -> None:
        self.sandbox = sandbox
        self.peak: dict[str, float] = {}
        sandbox.write("sampler.py", SAMPLER % {"stop": STOP, "sample": SAMPLE_S})
        self.stream = sandbox.stream("exec python3 sampler.py", timeout=600)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        lines = ""
        for chunk in self.stream:
            lines += chunk.data
            *done, lines = lines.split("\n")
            for line in done:
                if line.strip():
                    self.peak = json.loads(line)

    def stop(self) -> float:
        self.sandbox.write(STOP, "")
        self.thread.join(timeout=30)
        return max(self.peak.values(), default=0.0)


def measure(state_dir: str, kind: str, files: int, size: int, *, floor: bool = False,
            download: bool = False) -> dict[str, Any]:
    """Upload `files` sparse files of `size` bytes (one file, or a directory of them); with
    `floor`, time the sandbox writing as many bytes itself; with `download` (a directory),
    bring it back with download_dir and measure that too."""
    total = files * size
    with tempfile.TemporaryDirectory() as scratch:
        local = Path(scratch) / "src"
        templates = Path(scratch) / "templates"
        templates.mkdir()
        (templates / "big-transfers.yaml").write_text(
            TEMPLATE % (total // MIB + 512, total + 64 * MIB))
        if kind == "dir":
            sparse_tree(local, files, size)
        else:
            with open(local, "wb") as file:
                file.truncate(size)
        with SandboxClient("big-transfers", backend="local", templates_dir=str(templates),
                           state_dir=state_dir, warm_pool=0, request_timeout=600) as sandbox:
            sampler = Sampler(sandbox)
            time.sleep(0.5)  # a first sample of the idle runtime
            client_before = vm_hwm_mib()
            start = time.perf_counter()
            if kind == "dir":
                summary = sandbox.upload_dir(local, "big")
                arrived = summary.bytes
            else:
                sandbox.upload_file(local, "big.bin")
                arrived = sandbox.stat("big.bin").size
            seconds = time.perf_counter() - start
            runtime_peak = sampler.stop()
            figures: dict[str, Any] = {
                "bytes": total, "arrived": arrived, "seconds": seconds,
                "mb_per_s": total / seconds / 1e6, "client_peak_mib": vm_hwm_mib(),
                "client_before_mib": client_before, "runtime_peak_mib": runtime_peak,
                "stored_bytes": int(sandbox.run("du -sb big*").stdout.split()[0])}
            if floor:
                # The sandbox writing the same bytes to its own workspace: the disk's pace.
                start = time.perf_counter()
                sandbox.run(f"head -c {total} /dev/zero > floor.bin && rm floor.bin",
                            timeout=600)
                figures["floor_mb_per_s"] = total / (time.perf_counter() - start) / 1e6
            if download and kind == "dir":
                sandbox.remove(STOP)
                sampler = Sampler(sandbox)
                time.sleep(0.5)
                start = time.perf_counter()
                back = sandbox.download_dir("big", Path(scratch) / "back")
                seconds = time.perf_counter() - start
                figures.update({"down_bytes": back.bytes, "down_seconds": seconds,
                                "down_mb_per_s": total / seconds / 1e6,
                                "down_runtime_peak_mib": sampler.stop(),
                                "down_client_peak_mib": vm_hwm_mib()})
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--kind", choices=("file", "dir"), required=True)
    parser.add_argument("--files", type=int, default=1)
    parser.add_argument("--size-mib", type=int, required=True)
    parser.add_argument("--floor", action="store_true")
    parser.add_argument("--download", action="store_true")
    args = parser.parse_args()
    print(json.dumps(measure(args.state_dir, args.kind, args.files, args.size_mib * MIB,
                             floor=args.floor, download=args.download)))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
