"""Isolation of a local sandbox: no network at all, no writes outside the workspace, host
secrets hidden, host files unchanged, unprivileged user."""

from __future__ import annotations

import socket
import threading
import uuid
from pathlib import Path

import pytest

CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
    print("CONNECTED")
except OSError as exc:
    print("FAILED", type(exc).__name__, exc.errno)
"""


@pytest.fixture
def host_listener():
    """A TCP listener on the host's loopback that records any connection."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    accepted = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                accepted.append(conn)
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join(2)
    server.close()


def test_no_connection_to_host_loopback(sandbox, host_listener):
    port, accepted = host_listener
    sandbox.write("connect.py", CONNECT)
    result = sandbox.run(f"python3 connect.py 127.0.0.1 {port}")
    assert result.stdout.startswith("FAILED"), result
    assert accepted == []


def test_no_route_to_any_outside_address(sandbox):
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): never routed, so even a broken sandbox sends nothing
    # anywhere real. Inside --network=none there is no interface but loopback.
    sandbox.write("connect.py", CONNECT)
    result = sandbox.run("python3 connect.py 192.0.2.1 80")
    assert result.stdout.startswith("FAILED"), result
    interfaces = sandbox.run("cat /proc/net/dev").stdout
    names = {line.split(":")[0].strip() for line in interfaces.splitlines() if ":" in line}
    assert names <= {"lo"}, names


def test_no_write_outside_the_workspace_and_host_unchanged(sandbox):
    canary_dir = Path("/var/tmp") / f"agent-sandbox-canary-{uuid.uuid4().hex[:8]}"
    canary_dir.mkdir()
    canary = canary_dir / "canary.txt"
    canary.write_text("original")
    canary.chmod(0o666)  # even world-writable host files stay unwritable: the root is read-only
    try:
        script = (f"echo x > {canary}; rm -f {canary}; touch {canary_dir}/new; "
                  "touch /etc/agent-x; mkdir /usr/agent-x; touch /agent-x; "
                  "cat /proc/self/status | grep -i ^CapEff")
        result = sandbox.run(script)
        # The canary's folder is not even there (finding 46); the system folders are read-only.
        assert sum(result.stderr.count(refusal) for refusal in (
            "Read-only file system", "Permission denied", "Directory nonexistent",
            "No such file or directory")) >= 5, result.stderr
        assert canary.read_text() == "original"
        assert sorted(p.name for p in canary_dir.iterdir()) == ["canary.txt"]
        assert not Path("/etc/agent-x").exists() and not Path("/agent-x").exists()
        assert "0000000000000000" in result.stdout  # no effective capabilities
    finally:
        canary.unlink()
        canary_dir.rmdir()


def test_tmp_is_private(sandbox):
    marker = Path("/tmp") / f"agent-sandbox-host-{uuid.uuid4().hex[:8]}"
    marker.write_text("host")
    try:
        result = sandbox.run(f"cat {marker}; echo inside > /tmp/inside-only")
        assert "host" not in result.stdout
        assert not Path("/tmp/inside-only").exists()
    finally:
        marker.unlink()


def test_unprivileged_and_host_secrets_hidden(sandbox):
    result = sandbox.run("id -u; cat /etc/shadow >/dev/null 2>&1 || echo no-shadow; "
                         "python3 -c 'import os; print(sorted(os.listdir(\"/root\")))'")
    lines = result.stdout.splitlines()
    assert lines[0] == "65534"
    assert "no-shadow" in lines
    # Only what the runtime's interpreter needs may show through the empty /root.
    assert ".ssh" not in lines[-1] and ".kube" not in lines[-1] and ".cache" not in lines[-1]


def test_state_folder_is_hidden(sandbox, state_dir):
    result = sandbox.run(f"ls {state_dir}/workspaces 2>&1 || true; "
                         f"python3 -c 'import os; print(os.listdir(\"{state_dir}\"))'")
    assert "agentsbx-" not in result.stdout


def test_world_readable_host_files_outside_the_system_folders_are_not_there(sandbox):
    """The host's other folders may hold world-readable secrets (a project's `.env`, notes,
    logs): before finding 46 of docs/security.md the whole host `/` was there, read-only."""
    secret = Path("/var/tmp") / f"agent-sandbox-secret-{uuid.uuid4().hex}.txt"
    secret.write_text("s3cr3t\n")
    secret.chmod(0o644)
    try:
        result = sandbox.run(f"cat {secret} 2>&1; cat /etc/hostname >/dev/null && echo etc-ok; "
                             "python3 -c 'import os; print(sorted(os.listdir(\"/\")))'")
        assert "s3cr3t" not in result.stdout
        assert "etc-ok" in result.stdout  # the system's folders are still there
        top = result.stdout.splitlines()[-1]
        for absent in ("'var'", "'srv'", "'opt'", "'home'", "'mnt'"):
            assert absent not in top, top
    finally:
        secret.unlink()
