"""The `agentic-sandbox` command: gVisor sandboxes for people at a terminal, and the MCP server.

The console script (pyproject.toml) and `python -m agentic_sandbox` call main(). Subcommands
are one table (commands.COMMANDS): each row names the subcommand, adds its arguments and points at a
handler that gets the parsed arguments and returns the exit status, so a later feature is a
new row. Built on SandboxClient's public API, agentic_sandbox._named for sandboxes that
outlive one call, and agentic_sandbox._ops for what the MCP server shares. It must not reach
into a backend or the runtime, and must not print anything but the command's own output on
stdout.

Exit status: 0 success; run and exec exit with the command's own status (124 when its
timeout killed it, 128+n when signal n did); 1 a sandbox error, with one line on stderr; 2 a
usage error (argparse's); 130 interrupted by Ctrl-C, 143 by SIGTERM (the sandbox of `run` is
deleted either way); 141 when stdout's reader went away (`| head`).

Rooms:

    main.py      main(): the parser, the exit statuses, SIGTERM
    commands.py  the subcommands: handlers, their arguments, the COMMANDS table
    words.py     the command line's words: NAME:path, the command after --, KEY=VALUE
    progress.py  a transfer's progress line on stderr
"""

from agentic_sandbox._cli.commands import COMMANDS
from agentic_sandbox._cli.main import build_parser, main, parse
from agentic_sandbox._cli.progress import Progress
from agentic_sandbox._cli.words import Location, UsageError, command_line, parse_location

__all__ = ["COMMANDS", "Location", "Progress", "UsageError", "build_parser", "command_line",
           "main", "parse", "parse_location"]
