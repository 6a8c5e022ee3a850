"""The `agentic-sandbox` command: gVisor sandboxes for people at a terminal, and the MCP server.

The console script (pyproject.toml) and `python -m agentic_sandbox` call main(). Subcommands
are one table (COMMANDS): each row names the subcommand, adds its arguments and points at a
handler that gets the parsed arguments and returns the exit status, so a later feature is a
new row. Built on SandboxClient's public API, agentic_sandbox._named for sandboxes that
outlive one call, and agentic_sandbox._ops for what the MCP server shares. It must not reach
into a backend or the runtime, and must not print anything but the command's own output on
stdout.

Exit status: 0 success; run and exec exit with the command's own status (124 when its
timeout killed it, 128+n when signal n did); 1 a sandbox error, with one line on stderr; 2 a
usage error (argparse's); 130 interrupted by Ctrl-C, 143 by SIGTERM (the sandbox of `run` is
deleted either way); 141 when stdout's reader went away (`| head`).
"""

from __future__ import annotations

import argparse
import os
import posixpath
import re
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any, Final, NamedTuple

from agentic_sandbox import _named, _ops
from agentic_sandbox._client import SandboxClient
from agentic_sandbox._exceptions import SandboxError

__all__ = ["COMMANDS", "Location", "Progress", "build_parser", "command_line", "main", "parse",
           "parse_location"]

PROG: Final = "agentic-sandbox"
BACKENDS: Final = ("auto", "local", "kubernetes")
# NAME:path, NAME a sandbox name (as _named.NAME_PATTERN). Anything else is a local path,
# so `./a:b` or `/tmp/a:b` stay local, as with kubectl cp and scp.
LOCATION: Final = re.compile(r"([a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?):(.*)", re.DOTALL)
PROGRESS_INTERVAL_S: Final = 0.25


class UsageError(Exception):
    """The command line is wrong in a way argparse cannot see; exits 2 with the usage."""


class _Terminated(BaseException):
    """SIGTERM: unwind like Ctrl-C, so `with` blocks delete what they made."""


class Location(NamedTuple):
    """One side of `cp`, or the argument of `ls`/`rm`: a sandbox path or a local one."""

    sandbox: str | None  # None: a path on this machine
    path: str


def parse_location(text: str) -> Location:
    """`NAME:path` is a path in sandbox NAME (`NAME:` is its workspace); anything else,
    including `./NAME:path`, is local."""
    found = LOCATION.fullmatch(text)
    if found is None:
        return Location(None, text)
    return Location(found.group(1), found.group(2) or ".")


def command_line(words: Sequence[str]) -> str:
    """The shell command to run: one word is a command line as typed (`'ls | wc -l'`);
    several are argv, each quoted, so nothing is split or expanded twice."""
    words = list(words)
    if words and words[0] == "--":
        words = words[1:]
    if not words:
        raise UsageError("no command given (put it after --)")
    return words[0] if len(words) == 1 else shlex.join(words)


def _environment(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--env wants KEY=VALUE, not {pair!r}")
        env[key] = value
    return env


# -- progress ----------------------------------------------------------------------------------


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


class Progress:
    """A transfer's progress on stderr: bytes, rate and time, updated in place on a terminal.

    `advance(n)` as bytes move; `done()` prints the final line. While the client moves a
    file in one call (today's write() and read()), the live line shows the size and the
    time so far; a streamed transfer calls advance() per piece and the line follows it.
    Off unless forced or stderr is a terminal; not a terminal: only the final line.
    """

    def __init__(self, label: str, total: int | None, *, stream: IO[str] | None = None,
                 enabled: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty()
        self.enabled = self.live if enabled is None else enabled
        self.clock = clock
        self.moved = 0
        self.started = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def line(self, *, final: bool = False) -> str:
        elapsed = max(self.clock() - self.started, 1e-6)
        if final:
            return (f"{self.label}: {_size(self.moved)} in {elapsed:.1f} s "
                    f"({_size(self.moved / elapsed)}/s)")
        if self.moved == 0 and self.total is not None:
            return f"{self.label}: {_size(self.total)} ... {elapsed:.1f} s"
        of = f"/{_size(self.total)}" if self.total is not None else ""
        return (f"{self.label}: {_size(self.moved)}{of}  {_size(self.moved / elapsed)}/s  "
                f"{elapsed:.1f} s")

    def _draw(self, text: str) -> None:
        self.stream.write(f"\r{text}\x1b[K")
        self.stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(PROGRESS_INTERVAL_S):
            self._draw(self.line())

    def __enter__(self) -> Progress:
        self.started = self.clock()
        if self.enabled and self.live:
            self._draw(self.line())
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()
        return self

    def advance(self, count: int) -> None:
        self.moved += count

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.enabled:
            return
        if exc_type is None:
            text = self.line(final=True)
            self.stream.write(f"\r{text}\x1b[K\n" if self.live else text + "\n")
        elif self.live:
            self.stream.write("\r\x1b[K")
        self.stream.flush()


# -- handlers ----------------------------------------------------------------------------------


def _client_options(args: argparse.Namespace, extra: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {"backend": args.backend}
    if getattr(args, "api_url", None):
        options["api_url"] = args.api_url
    return options | extra


def _sandbox(args: argparse.Namespace, extra: dict[str, Any], *,
             attach: str | None = None) -> SandboxClient:
    """A client for the command: a fresh one-shot sandbox, or a named one (attach)."""
    timeout = getattr(args, "timeout", None)
    return SandboxClient(getattr(args, "template", _named.DEFAULT_TEMPLATE), args.namespace,
                         attach=attach, warm_pool=0,  # one sandbox per call: no spares
                         **({"run_timeout": timeout} if timeout else {}),
                         **_client_options(args, extra))


def _print_output(sandbox: SandboxClient, args: argparse.Namespace) -> int:
    """Run the command, its output going to ours as it comes; its exit status."""
    command, env = command_line(args.command), _environment(args.env)
    stdout, stderr = sys.stdout.buffer, sys.stderr.buffer
    with sandbox.stream(command, env=env or None, cwd=args.workdir) as stream:
        for chunk in stream:
            out = stdout if chunk.stream == "stdout" else stderr
            out.write(chunk.data.encode("utf-8", "surrogateescape"))
            out.flush()
    if stream.timed_out:
        print(f"{PROG}: the command ran past its timeout and was killed", file=sys.stderr)
    return _ops.exit_status(stream.exit_code, stream.timed_out)


def _check_command(args: argparse.Namespace) -> None:
    """Usage errors before a sandbox is made (or reached) for nothing."""
    command_line(args.command)
    _environment(args.env)


def cmd_run(args: argparse.Namespace, extra: dict[str, Any]) -> int:
    _check_command(args)
    with _sandbox(args, extra) as sandbox:
        return _print_output(sandbox, args)


def cmd_exec(args: argparse.Namespace, extra: dict[str, Any]) -> int:
    _check_command(args)
    with _sandbox(args, extra, attach=args.name) as sandbox:
        return _print_output(sandbox, args)


def cmd_create(args: argparse.Namespace, extra: dict[str, Any]) -> int:
    _named.create(args.name, template=args.template, namespace=args.namespace,
                  **_client_options(args, extra))
    print(args.name)
    return 0


def cmd_delete(args: argparse.Namespace, extra: dict[str, Any]) -> int:
    status = 0
    for name in args.names:
        try:
            _named.delete(name, namespace=args.namespace, **_client_options(args, extra))
        except SandboxError as exc:
            print(f"{PROG}: error: {_ops.describe(exc)}", file=sys.stderr)
            status = 1
    return status


def _remote(text: str, what: str) -> Location:
    where = parse_location(text)
    if where.sandbox is None:
        raise UsageError(f"{what} wants NAME:path (a sandbox and a path in it), not {text!r}")
    return where


def cmd_ls(args: argparse.Namespace, extra: dict[str, Any]) -> int:
    where = parse_location(args.target if ":" in args.target else args.target + ":")
    if where.sandbox is None:
        raise UsageError(f"ls wants NAME or NAME:path, not {args.target!r}")
    with _sandbox(args, extra, attach=where.sandbox) as sandbox:
        try:
            entries = sandbox.list(where.path)
        except SandboxError as exc:
            if getattr(exc, "status_code", None) != 400:
                raise
            # A file, not a directory: show it, as ls does.
            parent, name = posixpath.split(where.path.rstrip("/"))
            entries = [e for e in sandbox.list(parent or ".") if e.name == name]
            if not entries:
                raise
    for entry in entries:
        shown = entry.name + ("/" if entry.type == "directory" else "")
        print(f"{entry.type:<9} {entry.size:>12} {shown}" if args.long else shown)
    return 0


def cmd_rm(args: argparse.Namespace, extra: dict[str, Any]) -> int:
    targets = [_remote(text, "rm") for text in args.targets]
    status = 0
    for name in dict.fromkeys(t.sandbox for t in targets):
        assert name is not None
        with _sandbox(args, extra, attach=name) as sandbox:
            for target in (t for t in targets if t.sandbox == name):
                try:
                    _ops.remove(sandbox, target.path, recursive=args.recursive,
                                force=args.force)
                except (SandboxError, ValueError) as exc:
                    print(f"{PROG}: rm: {name}:{target.path}: {_ops.describe(exc)}",
                          file=sys.stderr)
                    status = 1
    return status


def _upload(sandbox: SandboxClient, source: str, target: str, args: argparse.Namespace) -> None:
    if source == "-":
        data, base = sys.stdin.buffer.read(), ""
    else:
        local = Path(source)
        if local.is_dir():
            raise UsageError(f"{source} is a directory: cp copies one file")
        data, base = local.read_bytes(), local.name
    if target.endswith("/") or target in (".", "") or _ops.is_directory(sandbox, target):
        if not base:
            raise UsageError("copying from stdin needs a file name in the sandbox")
        target = posixpath.join(target, base)
    with Progress(f"{source} -> {sandbox.sandbox_name}:{target}", len(data),
                  enabled=args.progress or None) as progress:
        sandbox.write(target, data)
        progress.advance(len(data))


def _download(sandbox: SandboxClient, source: str, target: str,
              args: argparse.Namespace) -> None:
    if target != "-" and Path(target).is_dir():
        target = str(Path(target) / posixpath.basename(source.rstrip("/")))
    with Progress(f"{sandbox.sandbox_name}:{source} -> {target}", None,
                  enabled=args.progress or None) as progress:
        data = sandbox.read(source)
        progress.advance(len(data))
    if target == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    partial = Path(target).with_name(f".{Path(target).name}.part")
    partial.write_bytes(data)
    partial.replace(target)  # a failed copy never leaves half a file under the real name


def cmd_cp(args: argparse.Namespace, extra: dict[str, Any]) -> int:
    source, target = parse_location(args.source), parse_location(args.target)
    if (source.sandbox is None) == (target.sandbox is None):
        raise UsageError("cp copies between this machine and a sandbox: exactly one side "
                         "must be NAME:path")
    name = source.sandbox or target.sandbox
    with _sandbox(args, extra, attach=name) as sandbox:
        if target.sandbox is not None:
            _upload(sandbox, source.path, target.path, args)
        else:
            _download(sandbox, source.path, target.path, args)
    return 0


def cmd_mcp(args: argparse.Namespace, extra: dict[str, Any]) -> int:
    try:
        from agentic_sandbox import _mcp
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in ("mcp", "pydantic", "anyio"):
            raise
        print(f"{PROG}: error: the MCP server needs the MCP SDK, which is not installed: "
              "pip install 'agent-sandbox[mcp]'", file=sys.stderr)
        return 1
    return _mcp.serve(template=args.template, namespace=args.namespace,
                      run_timeout=args.timeout, client_options=_client_options(args, extra))


# -- the table ---------------------------------------------------------------------------------


def _template(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--template", "-t", default=_named.DEFAULT_TEMPLATE,
                        help="SandboxTemplate to make the sandbox from (default: %(default)s)")


def _command(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, metavar="S",
                        help="seconds before the command's whole process tree is killed "
                             "(default 60, at most 600)")
    parser.add_argument("--env", "-e", action="append", default=[], metavar="KEY=VALUE",
                        help="an environment variable for the command (repeatable)")
    parser.add_argument("--workdir", "-w", metavar="DIR",
                        help="working directory, inside the workspace (default: the workspace)")
    parser.add_argument("command", nargs="*",
                        help="after --: one shell command line, or a program and its "
                             "arguments (options of this command go before --)")


def _args_run(parser: argparse.ArgumentParser) -> None:
    _template(parser)
    _command(parser)


def _args_exec(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the sandbox (see create)")
    _command(parser)


def _args_create(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="1-63 lowercase letters, digits and '-'")
    _template(parser)


def _args_delete(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="+", metavar="NAME")


def _args_cp(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a local file, - (stdin) or NAME:path")
    parser.add_argument("target", help="a local path, - (stdout) or NAME:path; a directory "
                                       "(or a path ending in /) gets the source's name")
    parser.add_argument("--progress", action="store_true",
                        help="show progress on stderr even when it is not a terminal")


def _args_ls(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="NAME[:path]")
    parser.add_argument("--long", "-l", action="store_true", help="type and size too")


def _args_rm(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("targets", nargs="+", metavar="NAME:path")
    parser.add_argument("--recursive", "-r", action="store_true",
                        help="remove directories and their contents")
    parser.add_argument("--force", "-f", action="store_true",
                        help="no error for paths that do not exist")


def _args_mcp(parser: argparse.ArgumentParser) -> None:
    _template(parser)
    parser.add_argument("--timeout", type=float, metavar="S",
                        help="default command timeout of the run_command tool (default 60)")


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace, dict[str, Any]], int]


COMMANDS: Final = (
    Command("run", "run a command in a new sandbox, then delete it", _args_run, cmd_run),
    Command("create", "make a named sandbox that stays until deleted", _args_create,
            cmd_create),
    Command("exec", "run a command in a named sandbox", _args_exec, cmd_exec),
    Command("cp", "copy a file into or out of a named sandbox", _args_cp, cmd_cp),
    Command("ls", "list a directory of a named sandbox", _args_ls, cmd_ls),
    Command("rm", "remove files from a named sandbox", _args_rm, cmd_rm),
    Command("delete", "delete named sandboxes", _args_delete, cmd_delete),
    Command("mcp", "serve the Model Context Protocol on stdio (one sandbox per session)",
            _args_mcp, cmd_mcp),
)


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


if __name__ == "__main__":
    sys.exit(main())
