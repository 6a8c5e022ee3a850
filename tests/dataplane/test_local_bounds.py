"""A local sandbox is bounded like a pod: its workspace by the template's ephemeral-storage
(else 1 GiB), its CPU by the template's limit (else one CPU).

Writes past the bound fail inside the sandbox with the command's own ENOSPC, an upload past
it is a JSON 413, and the host's free space shrinks by at most the bound. The CPU bound is
read from the sandbox's cgroup and measured with two busy loops.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agentic_sandbox import SandboxClient, SandboxRequestError
from agentic_sandbox._backends import local
from agentic_sandbox._backends.local.workspace import WORKSPACE_IMAGE
from tests.dataplane.conftest import write_template

MIB = 2**20
BOUND = 64 * MIB


def host_bytes(client: SandboxClient) -> int:
    """What the sandbox's workspace takes from the host: the blocks its ext4 image holds
    (a tmpfs workspace takes memory, not disk: 0)."""
    sandbox = client.backend.sandbox
    if sandbox.workspace_kind != "ext4 image":
        return 0
    return (sandbox.dir / WORKSPACE_IMAGE).stat().st_blocks * 512


@pytest.fixture
def small_disk(state_dir, tmp_path):
    folder = write_template(tmp_path, "small-disk",
                            "resources: {limits: {ephemeral-storage: 64Mi}}")
    with SandboxClient("small-disk", backend="local", templates_dir=str(folder),
                       state_dir=state_dir, warm_pool=0) as client:
        yield client


def test_a_command_writing_past_the_workspace_bound_gets_enospc(hostile, small_disk):
    with hostile("local", "a command writes 100 MB into a 64Mi workspace"):
        result = small_disk.run("head -c 100000000 /dev/zero > big.bin; echo rc=$?; "
                                "wc -c < big.bin", timeout=120)
        lines = result.stdout.split()
        assert lines[0] != "rc=0", result
        assert "No space left on device" in result.stderr, result
        assert int(lines[1]) <= BOUND
        # The host's disk gave at most the bound; deleting gives it back (discard).
        assert host_bytes(small_disk) <= BOUND
        assert small_disk.run("rm big.bin; echo ok").stdout == "ok\n"
        assert host_bytes(small_disk) <= 8 * MIB


def test_an_upload_past_the_workspace_bound_is_a_json_413(hostile, small_disk):
    with hostile("local", "an 80 MiB upload into a 64Mi workspace"):
        with pytest.raises(SandboxRequestError) as info:
            small_disk.write("big.bin", b"u" * (80 * MIB))
        assert info.value.status_code == 413
        assert "No space left on device" in str(info.value), info.value
        assert not small_disk.exists("big.bin")
        assert host_bytes(small_disk) <= 8 * MIB  # nothing of it stayed on the host
        small_disk.write("fits.bin", b"f" * MIB)
        assert small_disk.read("fits.bin") == b"f" * MIB


def test_the_walkthrough_template_gets_its_ephemeral_storage_as_its_workspace(sandbox):
    size = int(sandbox.run("df -B1 --output=size /workspace | tail -1").stdout)
    assert 500 * MIB <= size <= 512 * MIB, size  # 512Mi, less the file system's own


def cgroup_cpu_quota(sandbox_id: str) -> tuple[int, int] | None:
    v1 = Path(f"/sys/fs/cgroup/cpu/agent-sandbox/{sandbox_id}")
    if (v1 / "cpu.cfs_quota_us").exists():
        return (int((v1 / "cpu.cfs_quota_us").read_text()),
                int((v1 / "cpu.cfs_period_us").read_text()))
    v2 = Path(f"/sys/fs/cgroup/agent-sandbox/{sandbox_id}/cpu.max")
    if v2.exists():
        quota, period = v2.read_text().split()
        return (-1 if quota == "max" else int(quota)), int(period)
    return None


def cpu_usage_ns(sandbox_id: str) -> int:
    v1 = Path(f"/sys/fs/cgroup/cpuacct/agent-sandbox/{sandbox_id}/cpuacct.usage")
    if v1.exists():
        return int(v1.read_text())
    stat = Path(f"/sys/fs/cgroup/agent-sandbox/{sandbox_id}/cpu.stat").read_text()
    return int(dict(line.split() for line in stat.splitlines())["usage_usec"]) * 1000


def test_a_template_without_a_cpu_limit_gets_one_cpu(hostile, state_dir, tmp_path):
    if not local.manager(state_dir).cgroups:
        pytest.skip("runsc cannot create cgroups on this machine: no CPU bound can apply")
    folder = write_template(tmp_path, "no-cpu-limit", "resources: {requests: {memory: 256Mi}}")
    with SandboxClient("no-cpu-limit", backend="local", templates_dir=str(folder),
                       state_dir=state_dir, warm_pool=0) as client:
        sandbox_id = client.backend.sandbox.id
        with hostile("local", "two busy loops in a sandbox whose template sets no CPU limit"):
            assert cgroup_cpu_quota(sandbox_id) == (100_000, 100_000)
            used, start = cpu_usage_ns(sandbox_id), time.monotonic()
            client.run("timeout 3 sh -c 'while :; do :; done & while :; do :; done'",
                       timeout=30)
            cores = (cpu_usage_ns(sandbox_id) - used) / 1e9 / (time.monotonic() - start)
            assert cores <= 1.15, cores  # one CPU's worth at most
