"""`kubectl port-forward` to the router Service: the Kubernetes backend's default connection.

Used by KubernetesBackend (agentic_sandbox._backends.kubernetes) when neither api_url nor
in-cluster DNS reaches the router. Port 0 lets kubectl pick a free loopback port and print
it, so two clients never collide; close() stops kubectl. It only forwards: it must not
speak HTTP itself.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading

from agentic_sandbox._exceptions import BackendUnavailableError, SandboxConnectionError

__all__ = ["Tunnel"]


class Tunnel:
    """`kubectl port-forward svc/<router> <free port>:<router port>` on 127.0.0.1."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.process: subprocess.Popen[str] | None = None
        self.port = 0

    def open(self, timeout: float) -> int:
        kubectl = shutil.which(self.argv[0]) if not os.path.isabs(self.argv[0]) else self.argv[0]
        if not kubectl:
            raise BackendUnavailableError(
                "the tunnel mode needs kubectl on PATH; install it, or pass api_url= "
                "(a gateway or the router's URL)")
        # Port 0: kubectl picks a free local port and prints it, so clients never collide.
        self.process = subprocess.Popen(
            [kubectl, *self.argv[1:]], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True)
        found: list[int] = []
        done = threading.Event()

        def read_stdout() -> None:
            assert self.process is not None and self.process.stdout is not None
            for line in self.process.stdout:
                # "Forwarding from 127.0.0.1:43567 -> 8080"
                if line.startswith("Forwarding from 127.0.0.1:") and not found:
                    with contextlib.suppress(ValueError):
                        found.append(int(line.split(":")[1].split()[0]))
                        done.set()
            done.set()

        threading.Thread(target=read_stdout, daemon=True).start()
        if not done.wait(timeout) or not found:
            stderr = ""
            if self.process.poll() is not None and self.process.stderr is not None:
                stderr = self.process.stderr.read()[-1000:]
            self.close()
            raise SandboxConnectionError(
                f"kubectl port-forward did not start within {timeout:.0f} s: {stderr.strip()}")
        self.port = found[0]
        return self.port

    def close(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
