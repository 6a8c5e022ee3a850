"""A 200 MiB file streamed into a local sandbox: every byte arrives, and neither the client
nor the runtime inside gVisor holds it in memory (peak RSS of each well under 100 MiB).
The transfer runs in a process of its own (tests/transfer_memory.py), so the client's peak
RSS is this transfer's alone."""

from __future__ import annotations

import json
import subprocess
import sys

MIB = 1024 * 1024
SIZE_MIB = 200
BOUND_MIB = 100


def test_a_200_mib_upload_streams_with_flat_client_and_runtime_memory(state_dir):
    out = subprocess.run(
        [sys.executable, "-m", "tests.transfer_memory", "--state-dir", str(state_dir),
         "--kind", "file", "--size-mib", str(SIZE_MIB)],
        capture_output=True, text=True, timeout=600, check=True)
    figures = json.loads(out.stdout.splitlines()[-1])
    assert figures["arrived"] == figures["stored_bytes"] == SIZE_MIB * MIB, figures
    assert figures["client_peak_mib"] < BOUND_MIB, figures
    assert 0 < figures["runtime_peak_mib"] < BOUND_MIB, figures
