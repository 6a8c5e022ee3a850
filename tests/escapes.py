"""The escape corpus: commands that try to leave a process running past their own timeout.

Used by tests/http/test_runtime_escapes.py (the pod runtime, gunicorn over TCP, processes
visible in the host's /proc) and tests/dataplane/test_local_escapes.py (the local backend
under runsc, where the sandbox's processes are only visible from inside it). Each form
starts a process whose argv carries a unique marker (`sleep <marker>` or a script named
after it), tries its own way of detaching, then waits far past the command's timeout. After
the timed-out answer, no live process may carry the marker.

A form is a shell command template: `{m}` is replaced by the marker, `{py}` by the
Python that starts the detaching helper.
"""

from __future__ import annotations

# Python one-liners as a command-line program would write them.
DAEMONIZE = (
    "import os, sys\n"
    "if os.fork(): sys.exit(0)\n"
    "os.setsid()\n"
    "if os.fork(): os._exit(0)\n"
    "os.chdir('/')\n"
    "os.closerange(0, 1024)\n"
    "fd = os.open(os.devnull, os.O_RDWR)\n"
    "os.dup2(fd, 1); os.dup2(fd, 2)\n"
    "os.execve('/bin/sleep', ['sleep', '{m}'], {{}})\n"
)
SETPGID = ("import os\n"
           "os.setpgid(0, 0)\n"
           "os.execvp('sleep', ['sleep', '{m}'])\n")

QUIET = "</dev/null >/dev/null 2>&1"

FORMS: dict[str, str] = {
    # The issue's own example: subshell, env scrubbed, new session, every fd closed.
    "env -i setsid in a subshell, fds closed":
        f"(env -i setsid sh -c 'exec sleep {{m}} {QUIET}' &); sleep 30",
    "double fork": "(sleep {m} &); sleep 30",
    "setsid": f"setsid sleep {{m}} {QUIET} & sleep 30",
    "setpgid to a new process group":
        f"cat > setpgid-{{m}}.py <<'EOF'\n{SETPGID}EOF\n{{py}} setpgid-{{m}}.py {QUIET} & sleep 30",
    "nohup, output redirected": f"nohup sleep {{m}} {QUIET} & sleep 30",
    "bash disown": f"bash -c 'sleep {{m}} {QUIET} & disown'; sleep 30",
    "python daemonize (fork, setsid, fork, close fds, empty env)":
        f"cat > daemon-{{m}}.py <<'EOF'\n{DAEMONIZE}EOF\n{{py}} daemon-{{m}}.py {QUIET}; sleep 30",
    "exec chain": f"sh -c 'exec sh -c \"exec env -i setsid sleep {{m}}\"' {QUIET} & sleep 30",
    "subshell that sleeps after its parent exits":
        f"sh -c '(sleep 0.3; exec sleep {{m}}) {QUIET} &'; sleep 30",
    "respawner: each copy double-forks the next, then becomes the marker":
        "printf '%s\\n' 'sleep 0.1; (setsid sh \"$0\" </dev/null >/dev/null 2>&1 &); "
        "exec sleep {m}' > respawn-{m}.sh; (setsid sh respawn-{m}.sh &); sleep 30",
    "ignores TERM, HUP and INT":
        f"(trap '' TERM HUP INT; exec setsid sleep {{m}} {QUIET} &); sleep 30",
    "stopped with SIGSTOP": f"(setsid sleep {{m}} {QUIET} & kill -STOP $!); sleep 30",
    "stops its keeper (the shell's parent) first":
        f"kill -STOP $PPID; (setsid sleep {{m}} {QUIET} &); sleep 30",
    "new user and pid namespace": f"(unshare -Urpf setsid sleep {{m}} {QUIET} &); sleep 30",
}

FIRST_MARKER = 4246001


def markers() -> dict[str, int]:
    """One marker per form, stable across runs."""
    return {name: FIRST_MARKER + i for i, name in enumerate(sorted(FORMS))}


def command(name: str, python: str = "python3") -> str:
    return FORMS[name].format(m=markers()[name], py=python)


# A command that lists live processes whose argv carries `marker`, from inside a sandbox;
# the bracket keeps the grep itself from matching, zombies (state Z) are dead already.
def survivors_command(marker: int) -> str:
    text = str(marker)
    pattern = f"[{text[0]}]{text[1:]}"
    return f"ps -eo stat=,args= | grep -v '^Z' | grep -- '{pattern}' || true"
