"""The holder process: reserve the name, open the sandbox, serve its socket until SIGTERM.

Run as `python -m agentic_sandbox._holder` by control.spawn(), detached in its own session.
It opens the sandbox with the local backend (isolation, runsc and stale clean-up stay that
backend's; no warm pool), serves it through proxy.HolderServer, and reports "ready" (or why
not) as one JSON line on the pipe it was given. SIGTERM or SIGINT removes the sandbox and
the name's files; a creator that went away before hearing "ready" makes it do the same.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import IO, Any

from agentic_sandbox._backends.local.owner import owner_record
from agentic_sandbox._client import SandboxClient
from agentic_sandbox._exceptions import SandboxError
from agentic_sandbox._holder.proxy import HolderServer
from agentic_sandbox._holder.records import NAMED, remove, reserve, state_dir_of, write_record
from agentic_sandbox._named import validate_name

__all__ = ["main"]

log = logging.getLogger(__name__)


class _Stop(BaseException):
    """SIGTERM or SIGINT reached the holder: remove the sandbox and exit."""


def _report(ready: IO[str], answer: dict[str, Any]) -> bool:
    """Tell the creator how the start went; False if it is no longer there to hear it."""
    try:
        ready.write(json.dumps(answer) + "\n")
        ready.flush()
        return True
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            ready.close()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)  # one clean shutdown, not a second one inside it
    raise _Stop


def main(argv: list[str] | None = None) -> int:
    """The holder process: reserve the name, open the sandbox, serve until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m agentic_sandbox._holder")
    parser.add_argument("name")
    parser.add_argument("--template", required=True)
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--state-dir")
    parser.add_argument("--ready-timeout", type=float, default=180.0)
    parser.add_argument("--ready-fd", type=int)
    parser.add_argument("--idle-timeout")
    args = parser.parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ready = os.fdopen(args.ready_fd if args.ready_fd is not None else os.dup(2), "w")
    answer: dict[str, Any] = {"ok": False, "error": "stopped before the sandbox was ready",
                              "type": "SandboxError"}
    state = state_dir_of(args.state_dir)
    directory: Path | None = None
    backend = None
    server: HolderServer | None = None
    serving = False
    status = 1
    try:
        record = owner_record(template=args.template, namespace=args.namespace, sandbox=None)
        directory = reserve(state / NAMED, validate_name(args.name), record)
        # warm_pool=0: a spare sandbox in a holder would serve nobody.
        idle = args.idle_timeout
        client = SandboxClient(args.template, args.namespace, backend="local", warm_pool=0,
                               state_dir=state, sandbox_ready_timeout=args.ready_timeout,
                               idle_timeout=int(idle) if idle and idle.isdigit() else idle)
        backend = client.backend
        endpoint = backend.open()
        server = HolderServer(directory, endpoint)
        write_record(directory, record | {"sandbox": endpoint.sandbox_name})
        threading.Thread(target=server.serve_forever, name="holder-serve", daemon=True).start()
        serving = True
        log.info("holding local sandbox %s as %r", endpoint.sandbox_name, args.name)
        answer = {"ok": True, "sandbox": endpoint.sandbox_name}
        if _report(ready, answer):
            while True:
                signal.pause()
        # The creator is gone: a create nobody saw succeed is a failed create.
    except _Stop:
        status = 0
    except Exception as exc:
        if not isinstance(exc, SandboxError | ValueError):
            log.exception("the holder failed")
        answer = {"ok": False, "error": str(exc), "type": type(exc).__name__,
                  "reason": getattr(exc, "reason", "")}
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        if not answer["ok"]:
            _report(ready, answer)
        if server is not None:
            if serving:
                server.shutdown()
            server.server_close()
        if backend is not None:
            backend.close()
        if directory is not None:
            remove(directory)
            if status == 0:
                with contextlib.suppress(OSError):
                    (state / NAMED / f"{args.name}.log").unlink()
    return status
