"""main(): one command line in, one exit status out.

The console script `agentic-sandbox` and `python -m agentic_sandbox` call it. It builds the
parser from the COMMANDS table (agentic_sandbox._cli.commands), keeps everything after the
first `--` as the command, untouched, and maps what a handler raises to the documented exit
statuses (agentic_sandbox._cli's docstring); SIGTERM unwinds like Ctrl-C, so `with` blocks
delete what they made.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Any, Final

from agentic_sandbox import _ops
from agentic_sandbox._cli.commands import COMMANDS
from agentic_sandbox._cli.words import PROG, UsageError
from agentic_sandbox._exceptions import SandboxError

__all__ = ["build_parser", "main", "parse"]

BACKENDS: Final = ("auto", "local", "kubernetes")


class _Terminated(BaseException):
    """SIGTERM: unwind like Ctrl-C, so `with` blocks delete what they made."""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--backend", "-b", choices=BACKENDS, default="auto",
                        help="where sandboxes come from (default: auto, as SandboxClient "
                             "chooses; $AGENTIC_SANDBOX_BACKEND)")
    common.add_argument("--namespace", "-n", default="default",
                        help="Kubernetes namespace (default: %(default)s)")
    common.add_argument("--api-url", metavar="URL",
                        help="Kubernetes: the router's or a gateway's URL (default: a "
                             "kubectl port-forward tunnel)")
    parser = argparse.ArgumentParser(
        prog=PROG, description="Run untrusted code in gVisor sandboxes, on Kubernetes or on "
                               "this machine (docs/client.md, 'Command line').")
    subparsers = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, parents=[common],
                                    description=command.help)
        command.arguments(sub)
        sub.set_defaults(handler=command.handler, parser=sub)
    return parser


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The command line, parsed: everything after the first `--` is the command, untouched;
    options go before it, also after a sandbox name (`exec box --timeout 5 -- make`)."""
    words, command = list(argv), None
    if "--" in words:
        split = words.index("--")
        words, command = words[:split], words[split + 1:]
    args = build_parser().parse_args(words)
    if command is not None:
        if not hasattr(args, "command"):
            args.parser.error("this command takes no command after --")
        if args.command:
            args.parser.error("give the command after -- only")
        args.command = command
    return args


def main(argv: Sequence[str] | None = None, *,
         client_options: dict[str, Any] | None = None) -> int:
    """Run one command line; returns the exit status.

    `client_options` go to every SandboxClient the command makes (tests and embedders:
    router_token, kubeconfig, state_dir, ...).
    """
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        with _sigterm_unwinds():
            return int(args.handler(args, dict(client_options or {})))
    except UsageError as exc:
        args.parser.error(str(exc))  # exits 2
    except SandboxError as exc:
        print(f"{PROG}: error: {_ops.describe(exc)}", file=sys.stderr)
    except BrokenPipeError:
        # `... | head`: the reader left. Quietly, as other commands do (no flush at exit).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except (ValueError, OSError) as exc:
        # Local files (cp), names and paths the client refuses before asking anything.
        print(f"{PROG}: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except _Terminated:
        return 128 + signal.SIGTERM
    return 1

