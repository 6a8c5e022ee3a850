"""The `agentic-sandbox` command line without sandboxes: argument parsing, the NAME:path rule,
exit statuses, what each subcommand asks the client for (a fake Backend answers), rm's
confinement, and the progress line."""

from __future__ import annotations

import io
import json
import sys
import tarfile

import pytest

from agentic_sandbox import SandboxRequestError, _cli, _named, _ops
from agentic_sandbox._cli import Location, Progress, UsageError, command_line, parse_location
from tests.unit.client_fakes import FakeBackend


def stream_body(*events):
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


def final(exit_code, timed_out=False):
    return {"exit_code": exit_code, "timed_out": timed_out, "stdout_truncated": False,
            "stderr_truncated": False}


class Sandbox:
    """A fake sandbox: answers the runtime's routes from a dict and records requests."""

    def __init__(self, routes=None):
        self.routes = routes or {}
        self.backend = FakeBackend(self.answer)

    def answer(self, request):
        path = request.path_url.split("?")[0]
        found = self.routes.get((request.method, path))
        if found is None:
            return 404, {"error": f"path: {path!r} does not exist"}
        return found(request) if callable(found) else found

    def sent(self, method, path):
        return [r for r in self.backend.transport.requests
                if r.method == method and r.path_url == path]

    def main(self, *argv):
        return _cli.main(list(argv), client_options={"backend": self.backend})


# -- NAME:path and command lines ---------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("box:a/b", Location("box", "a/b")),
    ("box:", Location("box", ".")),
    ("box:/workspace/x", Location("box", "/workspace/x")),
    ("my-box-2:a:b", Location("my-box-2", "a:b")),
    ("./box:a", Location(None, "./box:a")),
    ("/tmp/box:a", Location(None, "/tmp/box:a")),
    ("Box:a", Location(None, "Box:a")),          # not a sandbox name: uppercase
    ("-box:a", Location(None, "-box:a")),        # nor one starting with '-'
    ("box-:a", Location(None, "box-:a")),        # nor one ending with '-'
    ("b" * 64 + ":a", Location(None, "b" * 64 + ":a")),  # nor longer than 63
    ("C:\\x", Location(None, "C:\\x")),
    ("plain.txt", Location(None, "plain.txt")),
    ("-", Location(None, "-")),
])
def test_name_path_rule(text, expected):
    assert parse_location(text) == expected


def test_one_word_is_a_shell_line_several_are_argv():
    assert command_line(["--", "ls | wc -l"]) == "ls | wc -l"
    assert command_line(["--", "printf", "%s\n", "a b", "$HOME"]) == \
        "printf '%s\n' 'a b' '$HOME'"
    assert command_line(["echo", "hi"]) == "echo hi"
    for empty in ([], ["--"]):
        with pytest.raises(UsageError):
            command_line(empty)


def test_options_go_before_the_double_dash_and_the_command_after_it_untouched():
    args = _cli.parse(["run", "-b", "local", "--timeout", "5", "-e", "A=1", "-w", "sub", "--",
                       "python3", "-c", "print(1)", "--timeout", "9", "--", "x"])
    assert (args.backend, args.timeout, args.env, args.workdir) == ("local", 5.0, ["A=1"],
                                                                     "sub")
    assert command_line(args.command) == "python3 -c 'print(1)' --timeout 9 -- x"
    args = _cli.parse(["exec", "box", "--timeout", "600", "-e", "B=2", "--", "ls", "-l"])
    assert (args.name, args.timeout, args.env) == ("box", 600.0, ["B=2"])
    assert command_line(args.command) == "ls -l"
    # Without options, -- may go: the words are the command.
    assert command_line(_cli.parse(["run", "echo", "hi"]).command) == "echo hi"
    args = _cli.parse(["cp", "--progress", "a.txt", "box:"])
    assert (args.source, args.target, args.progress) == ("a.txt", "box:", True)
    args = _cli.parse(["rm", "-rf", "box:a", "box:b"])
    assert args.recursive and args.force and args.targets == ["box:a", "box:b"]


@pytest.mark.parametrize("argv", [
    [], ["bogus"], ["run", "-b", "mars", "--", "true"], ["exec"], ["cp", "only-one"],
    ["create"], ["rm"], ["run", "ls", "-l"], ["run", "echo", "--", "hi"],
    ["cp", "a", "box:b", "--", "x"], ["create", "box", "--idle-timeout", "1s"],
    ["create", "box", "--idle-timeout", "soon"],
])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        _cli.main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["cp", "a.txt", "b.txt"],          # no sandbox side
    ["cp", "box:a", "other:b"],        # two sandbox sides
    ["rm", "not-a-location"],
    ["run", "--"],
    ["run", "-e", "NOEQUALS", "--", "true"],
])
def test_usage_errors_argparse_cannot_see_exit_2_before_any_sandbox(argv, capsys):
    fake = Sandbox()
    with pytest.raises(SystemExit) as info:
        fake.main(*argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err
    assert fake.backend.opened == 0


# -- run and exec ------------------------------------------------------------------------------


def test_run_streams_output_and_exits_with_the_commands_status(capsysbinary):
    fake = Sandbox({("POST", "/execute/stream"): (200, stream_body(
        {"stream": "stdout", "data": "out\n"}, {"stream": "stderr", "data": "err\n"},
        final(7)))})
    assert fake.main("run", "--timeout", "9", "-e", "A=1", "-w", "sub", "--", "ls", "a b") == 7
    out = capsysbinary.readouterr()
    assert (out.out, out.err) == (b"out\n", b"err\n")
    body = json.loads(fake.sent("POST", "/execute/stream")[0].body)
    assert body == {"command": "ls 'a b'", "timeout": 9.0, "env": {"A": "1"}, "cwd": "sub"}
    assert fake.backend.opened == fake.backend.closed == 1  # made, then deleted


@pytest.mark.parametrize(("event", "status"), [
    (final(0), 0), (final(3), 3), (final(-9, timed_out=True), 124), (final(-15), 143),
])
def test_exit_status_of_the_command(event, status, capsys):
    fake = Sandbox({("POST", "/execute/stream"): (200, stream_body(event))})
    assert fake.main("exec", "box", "--", "true") == status
    assert ("timeout" in capsys.readouterr().err) == (status == 124)


def test_a_sandbox_error_is_one_line_and_status_1(capsys):
    fake = Sandbox({("POST", "/execute/stream"): (400, {"error": "cwd: 'x' does not exist"})})
    assert fake.main("run", "-w", "x", "--", "true") == 1
    err = capsys.readouterr().err
    assert err == "agentic-sandbox: error: cwd: 'x' does not exist (400)\n"
    assert fake.backend.closed == 1


# -- ls, cp, rm --------------------------------------------------------------------------------


LISTING = [{"name": "d", "type": "directory", "size": 4096},
           {"name": "f.txt", "type": "file", "size": 3}]


def test_ls_short_and_long(capsys):
    fake = Sandbox({("GET", "/list/%2E"): (200, LISTING), ("GET", "/list/sub"): (200, [])})
    assert fake.main("ls", "box") == 0
    assert capsys.readouterr().out == "d/\nf.txt\n"
    assert fake.main("ls", "-l", "box:.") == 0
    assert capsys.readouterr().out.split("\n")[1].split() == ["file", "3", "f.txt"]
    assert fake.main("ls", "box:sub") == 0 and capsys.readouterr().out == ""


def test_ls_of_a_file_shows_the_file(capsys):
    fake = Sandbox({("GET", "/list/f.txt"): (400, {"error": "path: 'f.txt' is not a directory"}),
                    ("GET", "/list/%2E"): (200, LISTING)})
    assert fake.main("ls", "box:f.txt") == 0
    assert capsys.readouterr().out == "f.txt\n"


def stat_of(path, kind, size=4096):
    return {"path": path, "type": kind, "size": size, "mode": 0o755, "mtime": 1.0}


def test_cp_up_into_a_directory_and_down_to_a_file(tmp_path, capsys):
    uploads = []

    def upload(request):
        uploads.append(request.body)
        return 200, {"ok": True}

    fake = Sandbox({("GET", "/stat/d"): (200, stat_of("d", "directory")),
                    ("GET", "/stat/d/new.bin"): (404, {"error": "missing"}),
                    ("GET", "/stat/d/f.bin"): (200, stat_of("d/f.bin", "file", 9)),
                    ("POST", "/upload"): upload,
                    ("GET", "/download/d/f.bin"): (200, b"\x00\x01payload")})
    source = tmp_path / "f.bin"
    source.write_bytes(b"\xffdata")
    assert fake.main("cp", str(source), "box:d") == 0  # a directory: keeps the file name
    assert b'filename="d/f.bin"' in uploads[0] and b"\xffdata" in uploads[0]
    assert fake.main("cp", str(source), "box:d/new.bin") == 0
    assert b'filename="d/new.bin"' in uploads[1]
    target = tmp_path / "down"
    target.mkdir()
    assert fake.main("cp", "box:d/f.bin", str(target)) == 0
    assert (target / "f.bin").read_bytes() == b"\x00\x01payload"
    assert not list(target.glob(".*.part"))
    assert capsys.readouterr().err == ""  # no terminal and no --progress: quiet


def test_cp_from_stdin_and_to_stdout(monkeypatch, capsysbinary):
    fake = Sandbox({("POST", "/upload"): (200, {"ok": True}),
                    ("GET", "/stat/in.txt"): (200, stat_of("in.txt", "file", 10)),
                    ("GET", "/download/in.txt"): (200, b"round trip")})
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"from stdin")))
    assert fake.main("cp", "-", "box:in.txt") == 0
    assert b"from stdin" in fake.sent("POST", "/upload")[0].body
    assert b'filename="in.txt"' in fake.sent("POST", "/upload")[0].body
    assert fake.main("cp", "box:in.txt", "-") == 0
    assert capsysbinary.readouterr().out == b"round trip"


def test_cp_of_a_directory_wants_r_and_then_sends_a_tar_stream(tmp_path, capsys):
    fake = Sandbox({("GET", "/stat/up"): (404, {"error": "missing"}),
                    ("GET", "/stat/d"): (200, stat_of("d", "directory")),
                    ("POST", "/archive/up"): (200, {"files": 1, "directories": 1,
                                                    "symlinks": 0, "bytes": 2})})
    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "src" / "sub" / "f").write_text("hi")
    for argv in (["cp", str(tmp_path / "src"), "box:up"], ["cp", "box:d", str(tmp_path)]):
        with pytest.raises(SystemExit) as info:
            fake.main(*argv)
        assert info.value.code == 2
        assert "is a directory: use cp -r" in capsys.readouterr().err
    assert fake.sent("POST", "/archive/up") == []
    assert fake.main("cp", "-r", "--progress", str(tmp_path / "src"), "box:up") == 0
    body = fake.sent("POST", "/archive/up")[0].body
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        assert tar.getnames() == ["sub", "sub/f"]
    assert "src -> fake-1:up: 2.5 KiB in" in capsys.readouterr().err  # the tar stream


def test_cp_of_a_missing_local_file_is_status_1(tmp_path, capsys):
    fake = Sandbox()
    assert fake.main("cp", str(tmp_path / "missing"), "box:x") == 1
    assert "No such file" in capsys.readouterr().err


def remove_calls(fake):
    return [json.loads(r.body) for r in fake.sent("POST", "/remove")]


def test_rm_asks_the_runtime_to_remove_each_path():
    fake = Sandbox({("POST", "/remove"): (200, {"path": "x", "type": "file"})})
    assert fake.main("rm", "box:a/b c/it's", "box:top/", "box:/workspace/x") == 0
    assert remove_calls(fake) == [
        {"path": "a/b c/it's", "recursive": False},
        {"path": "top", "recursive": False},  # the trailing / is dropped: no following
        {"path": "/workspace/x", "recursive": False}]
    assert fake.main("rm", "-r", "box:d") == 0
    assert remove_calls(fake)[-1] == {"path": "d", "recursive": True}


@pytest.mark.parametrize("path", ["", ".", "..", "/", "a/..", "a/.", "//"])
def test_rm_refuses_the_workspace_itself_and_dot_names(path, capsys):
    fake = Sandbox()
    assert fake.main("rm", f"box:{path}") == 1
    assert "refusing to remove" in capsys.readouterr().err
    assert remove_calls(fake) == []


def test_rm_reports_the_runtimes_refusals_and_force_ignores_missing(capsys):
    def remove(request):
        path = json.loads(request.body)["path"]
        if path == "dir":
            return 400, {"error": "path: 'dir' is a directory (remove it recursively)"}
        if path == "../etc/passwd":
            return 403, {"error": "path: '..' is outside the workspace"}
        return 404, {"error": f"path: {path!r} does not exist"}

    fake = Sandbox({("POST", "/remove"): remove})
    assert fake.main("rm", "box:gone", "box:dir", "box:../etc/passwd") == 1
    err = capsys.readouterr().err
    assert "rm: box:gone: path: 'gone' does not exist (404)" in err
    assert "box:dir: path: 'dir' is a directory (remove it recursively) (400)" in err
    assert "outside the workspace (403)" in err
    assert fake.main("rm", "-f", "box:gone", "box:no/x") == 0
    assert fake.main("rm", "-f", "box:../etc/passwd") == 1


def test_mkdir_asks_for_each_directory():
    fake = Sandbox({("POST", "/mkdir"): (200, {"path": "a"})})
    assert fake.main("mkdir", "-p", "box:a/b", "box:c") == 0
    assert [json.loads(r.body) for r in fake.sent("POST", "/mkdir")] == [
        {"path": "a/b", "parents": True}, {"path": "c", "parents": True}]
    assert fake.main("mkdir", "box:d") == 0
    assert json.loads(fake.sent("POST", "/mkdir")[-1].body) == {"path": "d", "parents": False}


def test_describe_uses_the_runtimes_message_on_one_line():
    error = SandboxRequestError("GET /x: 403 ...", status_code=403,
                                body=b'{"error": "path: \'..\' is outside the workspace"}')
    assert _ops.describe(error) == "path: '..' is outside the workspace (403)"
    assert _ops.describe(ValueError("a\n  b")) == "a b"


# -- create / delete wiring --------------------------------------------------------------------


def test_create_and_delete_pass_name_template_and_options(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(_named, "create", lambda name, **kw: calls.append(
        ("create", name, kw)))
    monkeypatch.setattr(_named, "delete", lambda name, **kw: calls.append(
        ("delete", name, kw)))
    assert _cli.main(["create", "-b", "local", "-t", "tpl", "box"],
                     client_options={"state_dir": "/s"}) == 0
    assert capsys.readouterr().out == "box\n"
    assert _cli.main(["delete", "-n", "ns", "a", "b"]) == 0
    assert calls == [
        ("create", "box", {"template": "tpl", "namespace": "default", "backend": "local",
                           "state_dir": "/s"}),
        ("delete", "a", {"namespace": "ns", "backend": "auto"}),
        ("delete", "b", {"namespace": "ns", "backend": "auto"})]
    calls.clear()
    assert _cli.main(["create", "box", "--idle-timeout", "90s"]) == 0
    assert calls[0][2]["idle_timeout"] == "90s"


def test_mcp_without_the_sdk_names_the_extra(monkeypatch, capsys):
    import agentic_sandbox
    monkeypatch.delitem(sys.modules, "agentic_sandbox._mcp", raising=False)
    monkeypatch.delattr(agentic_sandbox, "_mcp", raising=False)
    for name in [n for n in sys.modules if n == "mcp" or n.startswith("mcp.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mcp", None)  # import mcp -> ImportError
    assert _cli.main(["mcp", "-b", "local"]) == 1
    assert "pip install 'agent-sandbox[mcp]'" in capsys.readouterr().err


# -- progress ----------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self):
        return True


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_on_a_terminal_updates_in_place_with_bytes_and_rate():
    screen, clock = Terminal(), Clock()
    with Progress("f -> box:f", 4 * 2**20, stream=screen, clock=clock) as progress:
        clock.now += 2
        assert progress.line() == "f -> box:f: 4.0 MiB ... 2.0 s"   # one call, under way
        progress.advance(2**20)
        assert progress.line() == "f -> box:f: 1.0 MiB/4.0 MiB  512.0 KiB/s  2.0 s"
        progress.advance(3 * 2**20)
    text = screen.getvalue()
    assert text.startswith("\r") and text.endswith("\n")
    assert text.rstrip("\n").rsplit("\r", 1)[1] == "f -> box:f: 4.0 MiB in 2.0 s (2.0 MiB/s)\x1b[K"


def test_progress_off_the_terminal_only_when_asked_and_without_redraws():
    quiet, forced = io.StringIO(), io.StringIO()
    with Progress("x", 10, stream=quiet) as progress:
        progress.advance(10)
    with Progress("x", 10, stream=forced, enabled=True) as progress:
        progress.advance(10)
    assert quiet.getvalue() == ""
    assert "\r" not in forced.getvalue() and forced.getvalue().startswith("x: 10 B in ")


def test_progress_line_is_cleared_when_the_transfer_fails():
    screen = Terminal()
    with pytest.raises(RuntimeError), Progress("x", 10, stream=screen):
        raise RuntimeError("boom")
    assert screen.getvalue().endswith("\r\x1b[K")
