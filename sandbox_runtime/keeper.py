"""The command keeper: a small process that runs a server's commands, one at a time, each in
a session and process group that nothing it starts can leave.

Who runs it: procs.KeeperPool starts it (`start()`: its own interpreter, `python -I -S -B
keeper.py FD`, in a new process group of the server's session), and so does the local
backend's launcher, first thing, before the rest of the runtime is imported (both
interpreters then start side by side); the runtime imports it too for the protocol and for
`kill_group`. As a program it imports only modules
built into CPython or its own extensions (no site, no package, no typing or collections):
its start-up is one bare interpreter start.

What a keeper is, once set up:

- the leader of its own process group (group id = its pid), in the server's session: the
  group has a member (the keeper) whose parent is in another group of the same session, so
  it is never an orphaned group, and a stopped process in it does not bring the kernel's
  SIGHUP to the whole group (gVisor sends it as soon as any member exits);
- under a seccomp filter that turns setsid() and setpgid() into no-ops that report success
  (inherited by everything it starts, and never removable): no process a command starts can
  leave the keeper's process group, whatever it does (double forks, setsid, setpgid,
  scrubbed environment, closed descriptors, new namespaces). One `killpg` reaches all of
  them, and the kernel delivers it atomically with respect to fork(): a fork bomb cannot
  outrun it;
- a child subreaper where the kernel allows it (Linux; not gVisor 2022-12-19, where orphans
  go to the sandbox's init): orphans then stay its children, so it reaps them and knows, from
  waitpid alone, whether anything of a command is still alive;
- holding the command rlimits (address space, file size, processes, core) as its own hard
  limits, which every command inherits (they come with each command; the first sets them);
- ignoring the catchable signals a command might send to its whole group (`kill 0`), while
  its commands get them at their defaults.

The protocol, on a stream socket the server holds the other end of (FD):

- server -> keeper: RUN = 4-byte little-endian length + marshal((path, argv, env, cwd,
  deadline, rlimits)),
  with the command's stdout and stderr pipe ends attached (SCM_RIGHTS) to its first bytes;
  `deadline` is on the monotonic clock both share.
- keeper -> server: fixed 17-byte messages (kind, a, b): HELLO (flags: LOCKED, SUBREAPER),
  FAILED (errno) then exit, SPAWNED (pid), SPAWN_ERROR (errno), EXITED (the shell's exit
  code) as soon as the shell is reaped, then VERDICT (1 if nothing of the command remains,
  else 0). The verdict comes separately because finding it out without a subreaper means
  reading /proc (1.3 ms under gVisor with four processes): the server answers its client
  meanwhile, and reads the verdict before it gives the keeper another command.

What it must never do: run two commands at once, or take a command while anything of the
previous one is alive (the server kills such a keeper with its group, see procs.py);
outlive a command that is still running when the server goes away (end-of-file on FD: it
kills its group, itself included); leave its group's processes alive past
`deadline + BACKUP_GRACE_S` if the server did not kill them by then (the server may be
stopped or dead).
"""

from __future__ import annotations

import marshal
import os
import select
import sys
import time

TYPE_CHECKING = False  # typing and collections cost start-up time the keeper does not need
if TYPE_CHECKING:
    from collections.abc import Iterable

HELLO, FAILED, SPAWNED, SPAWN_ERROR, EXITED, VERDICT = b"H", b"F", b"S", b"E", b"X", b"V"
LOCKED, SUBREAPER = 1, 2
MESSAGE_SIZE = 17
HEADER_SIZE = 4
MAX_FDS = 2
BACKUP_GRACE_S = 5.0
RETIRED_POLL_S = 1.0  # without a subreaper, how often a retired keeper looks at its group
# Catchable signals a command may send its whole group; the keeper ignores them and its
# commands get them back at their defaults.
GROUP_SIGNALS = (1, 2, 3, 10, 12, 13, 14, 15, 20, 21, 22)  # HUP INT QUIT USR1 USR2 PIPE
# ALRM TERM TSTP TTIN TTOU
SIGKILL = 9
SIGCHLD = 17
PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 4, 22, 36, 38
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
# Audit architecture -> syscall numbers of setsid and setpgid in that ABI. x86-64 also
# answers the x32 numbers (bit 30 set) and the i386 ones; arm64 the 32-bit arm ones.
SYSCALLS: dict[str, dict[int, tuple[int, ...]]] = {
    "x86_64": {0xC000003E: (112, 109, 0x40000000 | 112, 0x40000000 | 109),
               0x40000003: (66, 57)},
    "aarch64": {0xC00000B7: (157, 154), 0x40000028: (66, 57)},
}


# -- shared with the server ------------------------------------------------------------------


def message(kind: bytes, a: int = 0, b: int = 0) -> bytes:
    return kind + a.to_bytes(8, "little", signed=True) + b.to_bytes(8, "little", signed=True)


def parse_message(data: bytes) -> tuple[bytes, int, int]:
    return (data[:1], int.from_bytes(data[1:9], "little", signed=True),
            int.from_bytes(data[9:17], "little", signed=True))


def encode_run(path: str, argv: list[str], env: dict[str, str], cwd: str, deadline: float,
               limits: list[int]) -> bytes:
    """`limits`: address space, file size, processes, core, as soft = hard rlimits."""
    payload = marshal.dumps((path, argv, env, cwd, deadline, limits))
    return len(payload).to_bytes(HEADER_SIZE, "little") + payload


def live_members(pgid: int, exclude: Iterable[int] = (),
                 pids: Iterable[int] | None = None) -> list[int]:
    """Live (not zombie) processes whose process group is `pgid`, from /proc; only among
    `pids` when given (each stat read costs 0.6 ms under gVisor's ptrace platform)."""
    skip = set(exclude)
    if pids is None:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    found = []
    for pid in pids:
        fields = None if pid in skip else proc_stat(pid)
        if fields is not None and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            found.append(pid)
    return found


def proc_stat(pid: int) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after the command name (state, parent, group...);
    None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def kill_group(pgid: int, *, rounds: int = 200) -> int:
    """SIGKILL every process of group `pgid` until /proc shows none alive; how many there were.

    The group's processes cannot leave it (the keeper's filter), and killpg reaches all of
    them at once, forks in flight included; the scan only confirms it, and repeats the kill
    for anything a platform let through (gVisor serialises fork and kill differently).
    """
    count = len(live_members(pgid))
    for _ in range(rounds):
        try:  # noqa: SIM105 (contextlib would cost the keeper's start-up ~20 imports)
            os.killpg(pgid, SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        left = live_members(pgid)
        if not left:
            return count
        count = max(count, len(left))
        time.sleep(0.002)
    return count


# -- the keeper program ----------------------------------------------------------------------


def _filter_program(machine: str) -> bytes:
    """The BPF program: setsid/setpgid return 0 without effect, everything else is allowed."""
    arches = SYSCALLS[machine]
    ld, jeq, ret = 0x20, 0x15, 0x06
    insns: list[tuple[int, int, int, int]] = [(ld, 0, 0, 4)]  # A = arch
    blocks = list(arches.items())
    # Jump table: one `jeq` per arch, then allow (unknown arch: nothing to fake).
    table_end = 1 + len(blocks) + 1
    offsets: list[int] = []
    position = table_end
    for _, numbers in blocks:
        offsets.append(position)
        position += 1 + len(numbers) + 1
    fake = position
    for i, (arch, _) in enumerate(blocks):
        insns.append((jeq, offsets[i] - (len(insns) + 1), 0, arch))
    insns.append((ret, 0, 0, SECCOMP_RET_ALLOW))
    for _, numbers in blocks:
        insns.append((ld, 0, 0, 0))  # A = syscall number
        for nr in numbers:
            insns.append((jeq, fake - (len(insns) + 1), 0, nr))
        insns.append((ret, 0, 0, SECCOMP_RET_ALLOW))
    insns.append((ret, 0, 0, SECCOMP_RET_ERRNO | 0))
    return b"".join(code.to_bytes(2, "little") + bytes([jt, jf]) + k.to_bytes(4, "little")
                    for code, jt, jf, k in insns)


def _secure_self() -> int:
    """No new privileges, not dumpable, subreaper if possible, the group lock; the flags."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    flags = 0
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0:
        flags |= SUBREAPER
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # commands may not ptrace or read their keeper
    machine = os.uname().machine
    if machine in SYSCALLS and libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0:
        program = _filter_program(machine)
        code = ctypes.create_string_buffer(program, len(program))

        class Fprog(ctypes.Structure):
            _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))

        fprog = Fprog(len(program) // 8, ctypes.addressof(code))
        if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) == 0:
            flags |= LOCKED
    return flags


class Keeper:
    """The keeper's state and event loop (see the module docstring)."""

    def __init__(self, fd: int) -> None:
        import _signal
        import _socket

        os.set_inheritable(fd, False)  # commands must never hold the control socket
        self.sock = _socket.socket(fileno=fd)
        self.me = os.getpid()
        self.devnull = os.open(os.devnull, os.O_RDONLY)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        _signal.set_wakeup_fd(self.wake_w)
        _signal.signal(SIGCHLD, lambda *_: None)
        for signum in GROUP_SIGNALS:
            _signal.signal(signum, _signal.SIG_IGN)
        self.flags = 0
        self.child = 0  # the running command's shell
        self.deadline: float | None = None
        self.connected = True
        self.limits: list[int] = []
        self.known: set[int] = set()  # pids /proc showed at the last clean look

    def send(self, kind: bytes, a: int = 0, b: int = 0) -> None:
        if self.connected:
            try:
                self.sock.sendall(message(kind, a, b))
            except OSError:
                self.connected = False

    def setup(self) -> None:
        if os.getpgid(0) != self.me:
            os.setpgid(0, 0)
        self.flags = _secure_self()

    def hold_limits(self, limits: list[int]) -> None:
        """Make `limits` this keeper's own (hard = soft), once: commands inherit them. Hard
        limits only go down, so a server asking for more later gets EPERM."""
        if limits == self.limits:
            return
        import resource

        for res, value in zip((resource.RLIMIT_AS, resource.RLIMIT_FSIZE,
                               resource.RLIMIT_NPROC, resource.RLIMIT_CORE), limits,
                              strict=True):
            resource.setrlimit(res, (value, value))
        self.limits = list(limits)

    def clean(self, shell: int = 0) -> bool:
        """Whether nothing of the last command is alive (zombies are reaped on the way).

        Without a subreaper this reads /proc. `shell`: the command's shell, when the keeper
        was clean before it: then only processes that appeared since the last look, or
        numbered after the shell, can be the command's (no process joins a group from
        outside), so only their stat files are read: 0.4 ms under gVisor instead of 0.6 ms
        per process of the sandbox. A retired keeper looks at everything."""
        if self.flags & SUBREAPER:
            try:
                while True:
                    pid, _ = os.waitpid(-1, os.WNOHANG)
                    if pid == 0:
                        return False
            except ChildProcessError:
                return True
        self.reap()
        pids = {int(name) for name in os.listdir("/proc") if name.isdigit()}
        candidates = [p for p in pids if p not in self.known or p > shell] if shell else pids
        members = live_members(self.me, exclude=(self.me,), pids=candidates)
        self.known = pids.difference(members)
        return not members

    def reap(self) -> int | None:
        """Reap what has ended; the shell's exit code if it was among them."""
        code = None
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return code
            if pid == 0:
                return code
            if pid == self.child:
                code = os.waitstatus_to_exitcode(status)

    def receive(self) -> tuple[str, list[str], dict[str, str], str, float, list[int],
                               list[int]] | None:
        import _socket

        try:
            data, ancillary, _, _ = self.sock.recvmsg(
                65536, _socket.CMSG_SPACE(MAX_FDS * 4), _socket.MSG_CMSG_CLOEXEC)
        except OSError:  # reset: the server closed with our HELLO unread, or died
            return None
        fds: list[int] = []
        for level, kind, payload in ancillary:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                fds += [int.from_bytes(payload[i:i + 4], sys.byteorder, signed=True)
                        for i in range(0, usable, 4)]
        while 0 < len(data) < HEADER_SIZE:
            more = self._recv(HEADER_SIZE - len(data))
            data = data + more if more else b""
        size = int.from_bytes(data[:HEADER_SIZE], "little")
        parts, got = [data[HEADER_SIZE:]], len(data) - HEADER_SIZE
        while data and got < size:
            more = self._recv(min(size - got, 1 << 20))
            if not more:
                data = b""
            parts.append(more)
            got += len(more)
        if not data:  # end-of-file, before or inside a request
            for fd in fds:
                os.close(fd)
            return None
        path, argv, env, cwd, deadline, limits = marshal.loads(b"".join(parts))
        return path, argv, env, cwd, deadline, limits, fds

    def _recv(self, size: int) -> bytes:
        try:
            return bytes(self.sock.recv(size))
        except OSError:
            return b""

    def spawn(self, path: str, argv: list[str], env: dict[str, str], cwd: str,
              limits: list[int], fds: list[int]) -> None:
        try:
            if len(fds) != 2:
                raise OSError(22, "expected the stdout and stderr pipes")
            self.hold_limits(limits)
            os.chdir(cwd)
            self.child = os.posix_spawn(path, argv, env, file_actions=[
                (os.POSIX_SPAWN_DUP2, self.devnull, 0), (os.POSIX_SPAWN_DUP2, fds[0], 1),
                (os.POSIX_SPAWN_DUP2, fds[1], 2)], setsigdef=GROUP_SIGNALS)
        except (OSError, ValueError) as exc:  # ValueError: text argv or env cannot carry
            self.child = 0
            self.send(SPAWN_ERROR, getattr(exc, "errno", None) or 22)
        else:
            self.send(SPAWNED, self.child)
        finally:
            for fd in fds:
                os.close(fd)

    def run(self) -> int:
        self.send(HELLO, self.flags)
        retired = False
        while True:
            if not self.connected:  # the server is gone (end-of-file, or a send failed)
                if self.child:
                    os.killpg(0, SIGKILL)  # mid-command: end it all, this keeper included
                if not retired:
                    return 0
            timeout = None
            if self.child and self.deadline is not None:
                timeout = max(0.0, self.deadline + BACKUP_GRACE_S - time.monotonic())
            elif retired and not self.flags & SUBREAPER:
                timeout = RETIRED_POLL_S
            watched = [self.wake_r] + ([self.sock] if self.connected else [])
            readable, _, _ = select.select(watched, [], [], timeout)
            if self.wake_r in readable:
                os.read(self.wake_r, 4096)
            if self.child:
                code = self.reap()
                if code is not None:
                    shell, self.child, self.deadline = self.child, 0, None
                    self.send(EXITED, code)
                    is_clean = self.clean(shell)
                    self.send(VERDICT, int(is_clean))
                    retired = not is_clean
                elif timeout is not None and not readable:
                    os.killpg(0, SIGKILL)  # the server did not end it in time: end it all
            elif retired:
                if self.clean():
                    return 0
            else:
                self.reap()
            if self.connected and self.sock in readable:
                request = self.receive()
                if request is None:
                    self.connected = False
                    continue
                path, argv, env, cwd, deadline, limits, fds = request
                if self.child or retired:
                    for fd in fds:
                        os.close(fd)
                    self.send(SPAWN_ERROR, 16)  # EBUSY: the server broke the protocol
                    continue
                self.deadline = deadline
                self.spawn(path, argv, env, cwd, limits, fds)


def start(python: str, env: dict[str, str] | None = None) -> tuple[int, int]:
    """Start a keeper: (its pid, our end of its control socket, a non-inheritable fd). The
    caller must not spawn anything else meanwhile (the keeper's end is inheritable for the
    spawn: procs.SPAWN_LOCK)."""
    import _socket

    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        os.set_inheritable(theirs.fileno(), True)
        pid = os.posix_spawn(python, [python, "-I", "-S", "-B", os.path.abspath(__file__),
                                      str(theirs.fileno())],
                             dict(os.environ) if env is None else env, setpgroup=0)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return pid, ours.detach()


def main(argv: list[str]) -> int:
    keeper = Keeper(int(argv[1]))
    try:
        keeper.setup()
    except OSError as exc:
        keeper.send(FAILED, exc.errno or 0)
        return 1
    return keeper.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
