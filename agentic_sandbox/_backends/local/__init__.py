"""The local backend: each sandbox is a gVisor `runsc` sandbox on this machine, no cluster.

Called by SandboxClient (backend="local", or "auto" without a cluster). Each sandbox is
`runsc run` (in the foreground, our child) of an OCI bundle written here: an empty root with
only the host's system folders (/usr, /etc, /bin, /lib, ...) and the Python, packages and
source that run the runtime bound in read-only (nothing else of the host), a private
writable workspace at /workspace (its own bounded file system), a private /tmp tmpfs,
`--network=none`, uid 65534 with no capabilities, the template's CPU and memory in a
cgroup. Its first process is the runtime (`sandbox-runtime --stdio`, through
sandbox_runtime/launch.py), speaking HTTP/1.1 over its stdin/stdout, which are one end of a
socketpair; the other end is this process's. So no socket listens anywhere: only this
process holds the channel (docs/client.md, "Why a socketpair"). When that first channel
ends, the runtime stays as the sandbox's init (it reaps orphans).

If that channel breaks (an abandoned stream, a client-side timeout), the runtime sees
end-of-file, kills what it was running and exits once the background processes it started
have ended; the next request starts a fresh runtime in
the same sandbox with another `runsc exec` on a new socketpair, so the workspace and
background processes survive.

Every sandbox is `runsc delete --force`d on close and at interpreter exit (atexit), with its
workspace removed. A sandbox left by a crashed process is recognised by its owner record
(pid + process start time) under the state folder and removed on the next start. runsc
state lives under its own `--root`, so other runsc users are never touched.

This package must never run a command outside gVisor: if runsc is missing, we are not root,
or runsc cannot start a sandbox, it raises BackendUnavailableError and stops there.

Rooms:

    backend.py    LocalBackend: open() gets a ready sandbox, close() gives it back
    manager.py    the process-wide Manager per state folder, and the warm pools
    sandbox.py    LocalSandbox: bundle, `runsc run`, the runtime channels, destroy()
    spec.py       the OCI spec (what a sandbox may see and use) and its CPU bound
    launch.py     how the runtime is launched inside (the argv of sandbox_runtime/launch.py)
    workspace.py  the workspace's own bounded file system
    owner.py      owner records (pid + start time) of sandboxes and holders
    idle.py       the idle timeout: requests counted, runsc pause when idle, a stop
                  (workspace kept) after 10 timeouts, resume or start on a request
    stale.py      removing the sandboxes whose owner is gone
    runsc.py      finding runsc, its state folder, its commands

The transport itself (HTTP over a socket that is handed out, not dialled) is
agentic_sandbox._backends.channel, shared with named local sandboxes.
"""

from __future__ import annotations

from agentic_sandbox._backends.local.backend import LocalBackend
from agentic_sandbox._backends.local.manager import Manager, manager
from agentic_sandbox._backends.local.runsc import default_state_dir, runsc_binary
from agentic_sandbox._backends.local.sandbox import LocalSandbox
from agentic_sandbox._backends.local.stale import clean_stale

__all__ = ["LocalBackend", "LocalSandbox", "Manager", "clean_stale", "default_state_dir",
           "manager", "runsc_binary"]
