"""The subcommands: one row each in COMMANDS (name, help, arguments, handler).

Called by main() (agentic_sandbox._cli.main), which parses the arguments and maps errors to
exit statuses. A handler gets the parsed arguments and the embedder's client options and
returns the exit status. Built on SandboxClient's public API, agentic_sandbox._named for
sandboxes that outlive one call, and agentic_sandbox._ops for what the MCP server shares:
it must not reach into a backend or the runtime, and prints nothing on stdout but the
command's own output.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from agentic_sandbox import _named, _ops
from agentic_sandbox._cli.progress import Progress
from agentic_sandbox._cli.words import (
    PROG,
    Location,
    UsageError,
    command_line,
    environment,
    parse_location,
)
from agentic_sandbox._client import SandboxClient
from agentic_sandbox._exceptions import SandboxError
from sandbox_common.durations import idle_timeout_seconds

__all__ = ["COMMANDS", "Command"]


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
    command, env = command_line(args.command), environment(args.env)
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
    environment(args.env)


def cmd_run(args: argparse.Namespace, extra: dict[str, Any]) -> int:
    _check_command(args)
    with _sandbox(args, extra) as sandbox:
        return _print_output(sandbox, args)


def cmd_exec(args: argparse.Namespace, extra: dict[str, Any]) -> int:
    _check_command(args)
    with _sandbox(args, extra, attach=args.name) as sandbox:
        return _print_output(sandbox, args)


def cmd_create(args: argparse.Namespace, extra: dict[str, Any]) -> int:
    idle = {"idle_timeout": args.idle_timeout} if args.idle_timeout else {}
    _named.create(args.name, template=args.template, namespace=args.namespace,
                  **idle, **_client_options(args, extra))
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


def _each_remote(args: argparse.Namespace, extra: dict[str, Any], what: str,
                 action: Callable[[SandboxClient, str], object]) -> int:
    """`action(sandbox, path)` for each NAME:path of args.targets, one client per sandbox;
    a failure is reported and the others still run (status 1)."""
    targets = [_remote(text, what) for text in args.targets]
    status = 0
    for name in dict.fromkeys(t.sandbox for t in targets):
        assert name is not None
        with _sandbox(args, extra, attach=name) as sandbox:
            for target in (t for t in targets if t.sandbox == name):
                try:
                    action(sandbox, target.path)
                except (SandboxError, ValueError) as exc:
                    print(f"{PROG}: {what}: {name}:{target.path}: {_ops.describe(exc)}",
                          file=sys.stderr)
                    status = 1
    return status


def cmd_rm(args: argparse.Namespace, extra: dict[str, Any]) -> int:
    return _each_remote(args, extra, "rm", lambda sandbox, path: _ops.remove(
        sandbox, path, recursive=args.recursive, force=args.force))


def cmd_mkdir(args: argparse.Namespace, extra: dict[str, Any]) -> int:
    return _each_remote(args, extra, "mkdir", lambda sandbox, path: sandbox.mkdir(
        path, parents=args.parents))


def _local_size(path: Path) -> int:
    """The bytes a transfer of `path` carries (a tree: its regular files'), for progress."""
    if not path.is_dir():
        return path.stat().st_size
    return sum(os.path.getsize(os.path.join(folder, name))
               for folder, _, names in os.walk(path) for name in names
               if not os.path.islink(os.path.join(folder, name)))


def _upload(sandbox: SandboxClient, source: str, target: str, args: argparse.Namespace) -> None:
    local = Path(source)
    if source != "-" and local.is_dir() and not args.recursive:
        raise UsageError(f"{source} is a directory: use cp -r to copy it and its contents")
    base = "" if source == "-" else local.resolve().name
    if target.endswith("/") or target in (".", "") or _ops.is_directory(sandbox, target):
        if not base:
            raise UsageError("copying from stdin needs a file name in the sandbox")
        target = base if target in (".", "") else posixpath.join(target, base)
    label = f"{source} -> {sandbox.sandbox_name}:{target}"
    if source == "-":
        data = sys.stdin.buffer.read()
        with Progress(label, len(data), enabled=args.progress or None) as progress:
            sandbox.write(target, data)
            progress.advance(len(data))
        return
    with Progress(label, _local_size(local), enabled=args.progress or None) as progress:
        if local.is_dir():
            sandbox.upload_dir(local, target, progress=progress.advance)
        else:
            sandbox.upload_file(local, target, progress=progress.advance)


def _download(sandbox: SandboxClient, source: str, target: str,
              args: argparse.Namespace) -> None:
    info = sandbox.stat(source)
    directory = info.type == "directory"
    if directory and not args.recursive:
        raise UsageError(f"{source} is a directory: use cp -r to copy it and its contents")
    if directory and target == "-":
        raise UsageError("a directory cannot be copied to stdout")
    if target != "-" and Path(target).is_dir():
        target = str(Path(target) / posixpath.basename(source.rstrip("/")))
    with Progress(f"{sandbox.sandbox_name}:{source} -> {target}",
                  None if directory else info.size,
                  enabled=args.progress or None) as progress:
        if directory:
            sandbox.download_dir(source, target, progress=progress.advance)
        elif target == "-":
            data = sandbox.read(source)
            progress.advance(len(data))
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:
            # Streamed to a hidden file, renamed over the target only once it is whole.
            sandbox.download_file(source, target, progress=progress.advance)


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


def _idle_timeout(value: str) -> str:
    try:
        idle_timeout_seconds(value, "--idle-timeout")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return value


def _args_create(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="1-63 lowercase letters, digits and '-'")
    _template(parser)
    parser.add_argument("--idle-timeout", type=_idle_timeout, metavar="DURATION",
                        help="pause (local) or suspend (Kubernetes) the sandbox after this long "
                             "without a request, e.g. 90s or 15m; the next request resumes it "
                             "(default: the template's idleTimeout)")


def _args_delete(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="+", metavar="NAME")


def _args_cp(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a local file, - (stdin) or NAME:path")
    parser.add_argument("target", help="a local path, - (stdout) or NAME:path; a directory "
                                       "(or a path ending in /) gets the source's name")
    parser.add_argument("--recursive", "-r", action="store_true",
                        help="copy directories and their contents (as a tar stream)")
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


def _args_mkdir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("targets", nargs="+", metavar="NAME:path")
    parser.add_argument("--parents", "-p", action="store_true",
                        help="make missing parents too; no error if it exists")


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
    Command("cp", "copy a file or (-r) a directory into or out of a named sandbox", _args_cp,
            cmd_cp),
    Command("ls", "list a directory of a named sandbox", _args_ls, cmd_ls),
    Command("rm", "remove files from a named sandbox", _args_rm, cmd_rm),
    Command("mkdir", "make directories in a named sandbox", _args_mkdir, cmd_mkdir),
    Command("delete", "delete named sandboxes", _args_delete, cmd_delete),
    Command("mcp", "serve the Model Context Protocol on stdio (one sandbox per session)",
            _args_mcp, cmd_mcp),
)
