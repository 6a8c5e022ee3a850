"""Reaching a sandbox through the sandbox router: the Kubernetes backend's way in.

Used by KubernetesBackend (agentic_sandbox._backends.kubernetes) once its claim is Ready.
Tunnel is `kubectl port-forward` to the router Service, the default connection when neither
api_url nor in-cluster DNS reaches the router: port 0 lets kubectl pick a free loopback port
and print it, so two clients never collide; close() stops kubectl. router_transport() is the
TCP transport every request then takes (no retries: replays are the client's), and
wait_routable() asks `GET /` through the router until the runtime answers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Mapping
from typing import Final

import httpx2

from agentic_sandbox._backends.base import request_once
from agentic_sandbox._exceptions import (
    BackendUnavailableError,
    ClaimFailedError,
    SandboxConnectionError,
    SandboxTimeoutError,
)
from agentic_sandbox._options import KubernetesOptions
from sandbox_common import contract

__all__ = ["TOKEN_ENV", "Tunnel", "router_async_transport", "router_transport", "tls_context",
           "tunnel_argv", "wait_routable"]

TOKEN_ENV: Final = "AGENTIC_SANDBOX_ROUTER_TOKEN"


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


def tunnel_argv(options: KubernetesOptions) -> list[str]:
    """`kubectl port-forward` to the router Service on a free loopback port."""
    argv = ["kubectl", "port-forward", f"svc/{options.router_service}",
            f"0:{options.router_port}", "-n", str(options.router_namespace),
            "--address", "127.0.0.1"]
    if options.kubeconfig:
        argv += ["--kubeconfig", str(options.kubeconfig)]
    if options.context:
        argv += ["--context", options.context]
    return argv


def tls_context(base_url: str) -> ssl.SSLContext:
    """The system's CA certificates (~80 ms to load) only for an https URL (a gateway); a
    plain http URL gets a TLS context that would refuse any server, and is never used.
    Made once per sandbox and shared by its sync and async transports."""
    if base_url.startswith("https://"):
        return httpx2.create_ssl_context()
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def router_transport(base_url: str,
                     context: ssl.SSLContext | None = None) -> httpx2.HTTPTransport:
    """httpx's TCP transport, with no retries of its own (replays are the client's)."""
    return httpx2.HTTPTransport(retries=0, verify=context or tls_context(base_url))


def router_async_transport(base_url: str, context: ssl.SSLContext | None = None
                           ) -> httpx2.AsyncHTTPTransport:
    """The same for AsyncSandboxClient."""
    return httpx2.AsyncHTTPTransport(retries=0, verify=context or tls_context(base_url))


def wait_routable(transport: httpx2.BaseTransport, base_url: str, headers: Mapping[str, str],
                  deadline: float, sandbox: str, claim: str = "") -> None:
    """GET / through the router until the runtime answers: the router's view of new
    Sandboxes (a watch cache) and the pod's readiness may trail the claim's Ready. A 409
    means the name now belongs to another Sandbox uid: the claim's Sandbox was replaced."""
    last = ""
    delay = 0.05
    while True:
        try:
            limit = httpx2.Timeout(max(1.0, deadline - time.monotonic()), connect=5)
            response = request_once(transport, "GET", base_url + "/", headers=headers,
                                    timeout=limit)
            if response.status_code == 200:
                return
            if response.status_code in (401, 403):
                raise SandboxConnectionError(
                    f"the router refused the request ({response.status_code}): set "
                    f"router_token= or ${TOKEN_ENV}")
            if response.status_code == 409:
                raise ClaimFailedError(
                    f"sandbox {sandbox} was replaced: {response.text[:200]}",
                    reason=contract.SANDBOX_REPLACED, claim=claim)
            last = f"{response.status_code} {response.text[:200]}"
        except httpx2.TransportError as exc:
            last = str(exc) or type(exc).__name__
        if time.monotonic() + delay >= deadline:
            raise SandboxTimeoutError(
                f"sandbox {sandbox} is Ready but its runtime did not answer through the "
                f"router at {base_url} in time (last: {last})")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
