"""Named local sandboxes: one detached holder process per name keeps a local gVisor sandbox
between command-line calls and serves its runtime API on a Unix socket.

The local backend's sandbox lives as long as the process that opened it, and a command line
call is one short process. So `agentic-sandbox create NAME` (agentic_sandbox._named.create)
starts `python -m agentic_sandbox._holder` in its own session: it opens a sandbox with the
local backend (isolation, runsc and stale cleanup stay that backend's), listens on a Unix
socket and forwards every HTTP request it gets there, unchanged, to the sandbox's runtime
over the backend's own channel. `SandboxClient(attach=NAME, backend="local")` reaches it
through HeldBackend; `delete NAME` sends it SIGTERM, and it removes the sandbox and its
files. The holder forwards bytes: it must not interpret paths or commands (confinement
stays the runtime's) and must never answer for the sandbox itself.

Files, under the local backend's state folder (mode 0700, hidden inside every sandbox):

    named/<name>/holder.json   holder pid and start time, template, namespace, sandbox id
    named/<name>/runtime.sock  the socket (0600); the holder also checks the peer's uid
    named/<name>.log           the holder's log
    named/.lock                flock taken while a name is reserved or cleaned up

A holder that dies without cleaning up (SIGKILL) leaves a record whose pid is gone: `delete`
removes it, and the local backend removes the runsc sandbox itself the next time any process
starts it (its owner record named the dead holder).

Rooms:

    records.py   the name's folder and record; reserving and removing a name
    process.py   the holder process: open the sandbox, serve, clean up on SIGTERM
    proxy.py     the Unix socket server that forwards requests to the runtime, as they are
    control.py   the command line's side: spawn() a holder and wait, stop() it
    attach.py    HeldBackend: SandboxClient(attach=NAME) through the holder's socket
"""
