"""One local sandbox: its bundle, `runsc run`, its runtime channels, and its removal.

Made and destroyed by the manager (agentic_sandbox._backends.local.manager). start() writes
the bundle (the OCI spec, agentic_sandbox._backends.local.spec) and the owner record, mounts
the bounded workspace, and starts `runsc run` in the foreground as our child, with one end of
a socketpair as the first runtime's stdin and stdout. Requests reach the runtime through
`transport` or `async_transport` (agentic_sandbox._backends.channel): the first connection
is that socketpair, later ones (after a broken channel, or a second concurrent call) a fresh
runtime from `runsc exec` on a new socketpair, in the same sandbox. wait_ready() checks the
first channel on a transport of its own that leaves it open, and puts it back: whichever
client comes (sync or async) gets the first runtime, not a `runsc exec`. Both transports
count requests on `activity` (agentic_sandbox._backends.local.idle), which pauses an idle
sandbox (pause(), resume()) and later stops it (stop(): the gVisor sandbox ends, workspace,
bundle and id are kept; restart(): `runsc run` again on them). destroy() removes everything,
a paused or stopped sandbox too. Nothing here runs a command outside gVisor.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import subprocess
import threading
from pathlib import Path

import httpx2

from agentic_sandbox._backends.base import request_once
from agentic_sandbox._backends.channel import CHANNEL_URL, ChannelTransport
from agentic_sandbox._backends.local.idle import Activity, AsyncTrackedTransport, TrackedTransport
from agentic_sandbox._backends.local.owner import owner_record
from agentic_sandbox._backends.local.runsc import (
    ID_PREFIX,
    RUNSC_TIMEOUT_S,
    delete_container,
    runsc_argv,
)
from agentic_sandbox._backends.local.spec import (
    cpu_limit_millis,
    exec_process,
    oci_spec,
    set_cpu_quota,
)
from agentic_sandbox._backends.local.workspace import (
    WORKSPACE_IMAGE,
    mount_workspace,
    release_workspace,
    remove_files,
    workspace_bytes,
)
from agentic_sandbox._exceptions import (
    BackendUnavailableError,
    SandboxConnectionError,
    SandboxTimeoutError,
)
from agentic_sandbox._templates import LocalTemplate

__all__ = ["LocalSandbox"]

log = logging.getLogger(__name__)


class LocalSandbox:
    """One runsc sandbox with its workspace, runtime channel(s) and owner record."""

    def __init__(self, template: LocalTemplate, state_dir: Path, runsc: str,
                 platform: str) -> None:
        self.template = template
        self.id = f"{ID_PREFIX}-{os.getpid()}-{secrets.token_hex(4)}"
        self.state_dir = state_dir
        self.runsc = runsc
        self.platform = platform
        self.dir = state_dir / "sandboxes" / self.id
        self.workspace = state_dir / "workspaces" / self.id
        self.workspace_kind = ""  # "ext4 image" or "tmpfs", once mounted
        self.log_path = self.dir / "runtime.log"
        self._first_channel: socket.socket | None = None
        self._execs: list[subprocess.Popen[bytes]] = []
        self._run: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._destroyed = False
        self.cgroups = True  # as start() was told; a restart starts the same way
        self.ready_timeout = 180.0  # for a restart: the manager sets its own
        # Every request is counted (idle timeout) and wakes the sandbox if it is paused or
        # stopped.
        self.activity = Activity(self.id, self.pause, self.resume, self.stop, self.restart)
        self.transport = TrackedTransport(self._new_channel, self.activity)
        self.async_transport = AsyncTrackedTransport(self._new_channel, self.activity)

    def _runsc(self, *args: str) -> list[str]:
        return runsc_argv(self.runsc, self.state_dir, *args)

    def start(self, *, cgroups: bool = True) -> None:
        """Write the bundle and owner record, then start the sandbox with `runsc run`.

        `runsc run` stays in the foreground as our child: the sandbox process is then its
        child and is reaped at once when it dies, so removal takes milliseconds (a detached
        sandbox is reparented to init, and `runsc delete` waits a second or more for it).
        """
        self.dir.mkdir(parents=True, mode=0o700)
        (self.dir / "owner.json").write_text(json.dumps(
            owner_record(workspace=str(self.workspace))))
        self.workspace.mkdir(parents=True, mode=0o700)
        self.workspace_kind = mount_workspace(self.workspace, self.dir / WORKSPACE_IMAGE,
                                              workspace_bytes(self.template))
        spec = oci_spec(self.template, self.workspace, self.state_dir, self.id, cgroups=cgroups)
        (self.dir / "config.json").write_text(json.dumps(spec, indent=1))
        (self.dir / "process.json").write_text(json.dumps(exec_process(spec)))
        self.cgroups = cgroups
        self._launch()

    def _launch(self) -> None:
        """`runsc run` of the bundle, its first runtime on a new socketpair (start() and
        restart())."""
        flags = [f"--platform={self.platform}", "--network=none"]
        if not self.cgroups:
            flags.append("--ignore-cgroups")
        # The first runtime is the sandbox's first process, on one end of a socketpair
        # given to `runsc run` as stdin and stdout. Requests wait in the socket buffer
        # until it reads them, so nothing polls for the container to be running.
        ours, theirs = socket.socketpair()
        try:
            with open(self.log_path, "ab") as logfile:
                self._run = subprocess.Popen(
                    self._runsc(*flags, "run", "--bundle", str(self.dir), self.id),
                    stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=logfile,
                    start_new_session=True)  # a Ctrl-C in the terminal must not kill it
        except OSError as exc:
            ours.close()
            raise BackendUnavailableError(f"cannot start runsc: {exc}") from exc
        finally:
            theirs.close()
        with self._lock:
            self._first_channel = ours
        # `runsc run` keeps its own copy of the channel's other end for the sandbox's life,
        # so a sandbox that ends (its first process crashed, runsc failed to start it) is
        # made visible here: when runsc run exits, our end is shut down, and whatever
        # waits on it sees end-of-file at once.
        threading.Thread(target=self._watch_run, args=(self._run, ours),
                         name=f"sandbox-watch-{self.id}", daemon=True).start()

    @staticmethod
    def _watch_run(run: subprocess.Popen[bytes], channel: socket.socket) -> None:
        run.wait()
        with contextlib.suppress(OSError):
            channel.shutdown(socket.SHUT_RDWR)

    def start_failed(self, grace: float = 2.0) -> bool:
        """Whether `runsc run` exits within `grace` seconds (the sandbox could not start or
        ended): called when the channel broke, which can be noticed a moment before the
        watcher has reaped runsc run."""
        if self._run is None:
            return False
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._run.wait(grace)
        return self._run.returncode is not None

    def log_tail(self, limit: int = 1500) -> str:
        try:
            return self.log_path.read_bytes()[-limit:].decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def _new_channel(self) -> socket.socket:
        """The first call gets the sandbox's first process; later ones a fresh runtime."""
        with self._lock:
            if self._destroyed:
                raise SandboxConnectionError(f"sandbox {self.id} was removed")
            if self._first_channel is not None:
                channel, self._first_channel = self._first_channel, None
                return channel
            return self._exec_runtime()

    def _exec_runtime(self) -> socket.socket:
        """Start a runtime in the sandbox with `runsc exec`, speaking over a new socketpair.

        runsc exec stays our child for the runtime's life and exits with it, so the channel
        reaches end-of-file when the runtime ends.
        """
        ours, theirs = socket.socketpair()
        try:
            with open(self.log_path, "ab") as logfile:
                proc = subprocess.Popen(
                    self._runsc("exec", "--process", str(self.dir / "process.json"), self.id),
                    stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=logfile,
                    start_new_session=True)
        except OSError as exc:
            ours.close()
            raise SandboxConnectionError(f"cannot start a runtime in {self.id}: {exc}") \
                from exc
        finally:
            theirs.close()
        self._execs = [p for p in self._execs if p.poll() is None] + [proc]
        return ours

    def wait_ready(self, timeout: float, *, warm_up: bool = False) -> None:
        """Block until the runtime answers GET / (the request waits in the socket buffer);
        with `warm_up`, also until it has run one command (for warm-pool spares)."""
        limit = httpx2.Timeout(timeout)
        first = self._new_channel()
        channel: socket.socket | None = first  # None once handed back
        # The check's own transport leaves the channel open: after a complete answer it is
        # clean between two requests, and goes back for the client's first request.
        probe = ChannelTransport(lambda: first, owns_channels=False)
        try:
            response = request_once(probe, "GET", CHANNEL_URL + "/", timeout=limit)
            if response.status_code != 200:
                raise SandboxConnectionError(f"runtime answered {response.status_code}")
            # The runtime's first command pays a one-time set-up (~10 ms under gVisor):
            # a spare pays it in advance; a cold start would only add a round trip.
            if warm_up:
                response = request_once(probe, "POST", CHANNEL_URL + "/execute",
                                        json={"command": "true"}, timeout=limit)
                if response.status_code != 200:
                    raise SandboxConnectionError(
                        f"runtime answered {response.status_code} to its first command")
            with self._lock:
                if not self._destroyed and self._first_channel is None:
                    self._first_channel, channel = first, None
        except httpx2.TimeoutException as exc:
            raise SandboxTimeoutError(
                f"the runtime in sandbox {self.id} did not answer within {timeout:.0f} s; "
                f"log: {self.log_tail()}") from exc
        except httpx2.TransportError as exc:
            if self.start_failed():
                assert self._run is not None
                raise BackendUnavailableError(
                    f"runsc could not start a gVisor sandbox (exit {self._run.returncode}, "
                    f"platform {self.platform}): {self.log_tail()}") from exc
            raise SandboxConnectionError(
                f"the runtime in sandbox {self.id} did not start: {exc}; "
                f"log: {self.log_tail()}") from exc
        finally:
            probe.close()
            if channel is not None:
                channel.close()

    def _runsc_call(self, *args: str) -> None:
        done = subprocess.run(self._runsc(*args), stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=RUNSC_TIMEOUT_S, check=False)
        if done.returncode != 0:
            raise SandboxConnectionError(f"runsc {args[0]} {self.id}: "
                                         f"{done.stderr.strip()[-500:]}")

    def pause(self) -> None:
        """`runsc pause`: every task in the sandbox stops (its CPU use falls to ~0); memory,
        processes and the workspace are kept. Called by the idle watcher (`activity`)."""
        self._runsc_call("pause", self.id)

    def resume(self) -> None:
        """`runsc resume`: the paused sandbox runs on from where it stopped."""
        self._runsc_call("resume", self.id)

    def bound_cpu(self) -> None:
        """Without a CPU limit in the template, bound the sandbox's CPU use anyway (once it
        runs: its cgroup exists then)."""
        if self.cgroups and not self.template.cpu_limit_millis and \
                not set_cpu_quota(self.id, cpu_limit_millis(self.template)):
            log.warning("sandbox %s runs without a CPU bound", self.id)

    def stop(self) -> None:
        """Stop a paused sandbox and keep what starts it again: its gVisor sandbox ends (its
        processes and memory go), its workspace (still mounted), bundle, owner record and id
        stay. Called by the idle watcher (`activity`); never raises."""
        try:
            self.resume()  # a paused gVisor kernel would not act on the kill
        except (SandboxConnectionError, subprocess.TimeoutExpired, OSError) as exc:
            log.warning("could not resume sandbox %s before stopping it: %s", self.id, exc)
        self._close_first_channel()
        self._end_container()

    def restart(self) -> None:
        """Start the stopped sandbox again on its kept bundle and workspace, and wait for its
        runtime (the first request's wake). Raises as start() and wait_ready() do, after
        ending what was started."""
        with self._lock:
            if self._destroyed:
                raise SandboxConnectionError(f"sandbox {self.id} was removed")
        try:
            self._launch()
            self.wait_ready(self.ready_timeout)
        except BaseException:
            self._close_first_channel()
            self._end_container()
            raise
        self.bound_cpu()

    def _close_first_channel(self) -> None:
        with self._lock:
            if self._first_channel is not None:
                self._first_channel.close()
                self._first_channel = None

    def destroy(self) -> None:
        """runsc delete --force, close the channels, remove bundle and workspace. Idempotent."""
        with self._lock:
            if self._destroyed:
                return
            self._destroyed = True
        self._close_first_channel()
        self.activity.close()  # a paused sandbox is resumed first, or the kill would wait
        self.transport.close()
        self._end_container()
        release_workspace(self.workspace)
        remove_files(self.dir)

    def _end_container(self) -> None:
        """Kill the container, reap `runsc run` and the `runsc exec`s, `runsc delete` it."""
        run = self._run
        if run is not None and run.poll() is None:
            # Kill the container and let our `runsc run` child reap it, then delete.
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                subprocess.run(self._runsc("kill", self.id, "KILL"), stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=RUNSC_TIMEOUT_S, check=False)
            try:
                run.wait(RUNSC_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                run.kill()
                run.wait()
        delete_container(self.runsc, self.state_dir, self.id)
        for proc in self._execs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self._execs = []
