"""The runtime under an attacker who races the filesystem, mangles multipart and fills the disk.

Complements test_runtime_safety.py and test_runtime_api.py (timeouts, bombs, caps, plain
traversal), which tests/security_report.py counts as they are. Here: a symlink swapped in
*during* a request (deterministically, between the server opening the upload and finishing
it; and by a flipping thread against download/list/exists), malformed multipart beyond the
basic cases, a workspace on a full filesystem, and slow clients. A real `sandbox-runtime` on
127.0.0.1; every case records through `hostile`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
import urllib3

from tests.http.runtime_fixtures import runtime_server

BOUNDARY = "hostile-boundary"


def multipart_head(filename: str) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()


TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()


def port_of(server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def read_status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1])


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


@pytest.fixture(scope="module")
def roomy(tmp_path_factory):
    """A server that takes 8 MiB uploads: it reads bodies 1 MiB at a time, so the pause
    below must come after more than 1 MiB for the server to have opened the file."""
    workspace = tmp_path_factory.mktemp("roomy")
    with runtime_server(workspace, env={"SANDBOX_RUNTIME_MAX_UPLOAD_BYTES": str(8 << 20)}) as s:
        yield s


def upload_with_a_pause(server, filename: str, during) -> int:
    """Send the multipart head and 1.5 MiB of the file, run `during()` once the server has
    opened its temporary file, then send the rest. Returns the HTTP status."""
    first, second = b"A" * (3 << 19), b"B" * (1 << 20)
    body_len = len(multipart_head(filename)) + len(first) + len(second) + len(TAIL)
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=30) as sock:
        sock.sendall((f"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {body_len}\r\n"
                      f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                      "Connection: close\r\n\r\n").encode() + multipart_head(filename) + first)
        during()
        sock.sendall(second + TAIL)
        return read_status(sock)


def temp_upload_in(directory: Path) -> bool:
    return directory.is_dir() and any(".upload-" in p.name for p in directory.iterdir())


def test_directory_swapped_for_a_symlink_during_an_upload_stays_inside(hostile, roomy,
                                                                        tmp_path):
    runtime = roomy
    outside = tmp_path / "outside"
    outside.mkdir()
    target_dir = runtime.workspace / "swapdir"
    target_dir.mkdir()

    def swap() -> None:
        assert wait_for(lambda: temp_upload_in(target_dir)), "server never opened the upload"
        os.rename(target_dir, runtime.workspace / "swapdir-moved")
        os.symlink(outside, target_dir)

    with hostile("runtime", "directory swapped for a symlink to outside mid-upload"):
        status = upload_with_a_pause(runtime, "swapdir/loot.txt", swap)
        assert status in (200, 403)
        assert list(outside.iterdir()) == []
        if status == 200:  # the file landed in the directory the server opened: inside
            landed = runtime.workspace / "swapdir-moved" / "loot.txt"
            assert landed.read_bytes().startswith(b"A")
        assert runtime.alive()


def test_destination_swapped_for_a_symlink_during_an_upload_is_replaced_not_followed(
        hostile, roomy, tmp_path):
    runtime = roomy
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    directory = runtime.workspace / "dest"
    directory.mkdir()

    def swap() -> None:
        assert wait_for(lambda: temp_upload_in(directory))
        os.symlink(victim, directory / "note.txt")

    with hostile("runtime", "destination swapped for a symlink to outside mid-upload"):
        status = upload_with_a_pause(runtime, "dest/note.txt", swap)
        assert status in (200, 403)
        assert victim.read_text() == "keep"
        final = directory / "note.txt"
        if status == 200:
            assert not final.is_symlink() and final.read_bytes().startswith(b"A")


class Flipper:
    """Swaps the real directory `path` for a symlink to `outside` and back, as fast as it
    can, until stopped. `path` is what resolve() returns, so this races the step between the
    server's check of the resolved path and its use: the classic check-then-use window."""

    def __init__(self, path: Path, outside: Path) -> None:
        self.path, self.outside = path, outside
        self.stash = path.with_name(path.name + "-stash")
        self.stop = threading.Event()
        self.flips = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(OSError):
                os.rename(self.path, self.stash)
                os.symlink(self.outside, self.path)
                time.sleep(0)
                os.unlink(self.path)
                os.rename(self.stash, self.path)
                self.flips += 1
                time.sleep(0)

    def __enter__(self) -> Flipper:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        if self.path.is_symlink():
            os.unlink(self.path)
        if self.stash.exists():
            os.rename(self.stash, self.path)


@pytest.fixture
def race(runtime, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("OUTSIDE-SECRET")
    (outside / "only-outside.txt").write_text("x")
    name = f"flip-{os.urandom(3).hex()}"
    inside = runtime.workspace / name
    inside.mkdir()
    (inside / "secret.txt").write_text("inside")
    return name, inside, outside


def hammer(runtime, path: str, seconds: float = 1.0) -> list[tuple[int, bytes]]:
    answers = []
    session = requests.Session()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        response = session.get(f"{runtime.url}{path}", timeout=10)
        answers.append((response.status_code, response.content))
    return answers


RACE_STATUSES: set[int] = set()  # every status the two races above saw


def test_download_never_serves_outside_bytes_while_a_symlink_flips(hostile, runtime, race):
    name, link, outside = race
    with Flipper(link, outside) as flipper:
        answers = hammer(runtime, f"/download/{name}/secret.txt")
    with hostile("runtime", "download raced by a flipping symlink"):
        assert flipper.flips > 10
        assert not any(b"OUTSIDE-SECRET" in body for _, body in answers)
        assert any(status == 403 for status, _ in answers), "the race was never even seen"
    RACE_STATUSES.update(status for status, _ in answers)


def test_list_never_shows_outside_entries_while_a_symlink_flips(hostile, runtime, race):
    name, link, outside = race
    with Flipper(link, outside) as flipper:
        answers = hammer(runtime, f"/list/{name}")
    with hostile("runtime", "list raced by a flipping symlink"):
        assert flipper.flips > 10
        assert not any(b"only-outside" in body for _, body in answers)
    RACE_STATUSES.update(status for status, _ in answers)


def test_races_answer_clean_statuses(hostile):
    if not RACE_STATUSES:
        pytest.skip("the race tests above did not run")
    with hostile("runtime", "download/list races answer 2xx/4xx only (no 500)"):
        assert {200, 400, 403, 404} >= RACE_STATUSES, RACE_STATUSES


def test_exists_never_reports_outside_files_while_a_symlink_flips(hostile, runtime, race):
    name, link, outside = race
    with Flipper(link, outside):
        answers = hammer(runtime, f"/exists/{name}/only-outside.txt", seconds=1.5)
    with hostile("runtime", "exists raced by a flipping symlink"):
        assert not any(b'"exists": true' in body for _, body in answers)


def head_with(filename_header: str) -> bytes:
    return (f"--{BOUNDARY}\r\n{filename_header}\r\n\r\nPAYLOAD\r\n--{BOUNDARY}--\r\n").encode(
        "utf-8", "surrogateescape")


MULTIPART = {
    "two file fields": (multipart_head("one.txt") + b"1" + f"\r\n--{BOUNDARY}\r\n".encode()
                        + b'Content-Disposition: form-data; name="file"; filename="two.txt"'
                        + b"\r\n\r\n2" + TAIL),
    "field before the file": (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"x\""
                              f"\r\n\r\nv\r\n".encode() + multipart_head("f.txt") + b"x"
                              + TAIL),
    "empty filename": multipart_head("") + b"x" + TAIL,
    "filename '.'": multipart_head(".") + b"x" + TAIL,
    "filename '..'": multipart_head("..") + b"x" + TAIL,
    "filename '/'": multipart_head("/") + b"x" + TAIL,
    "filename ending in '/'": multipart_head("dir/") + b"x" + TAIL,
    "filename with NUL": multipart_head("a\0b.txt") + b"x" + TAIL,
    "filename 5000 characters": multipart_head("n/" * 2500) + b"x" + TAIL,
    "RFC 2231 filename* traversal": head_with(
        "Content-Disposition: form-data; name=\"file\"; "
        "filename*=UTF-8''..%2F..%2F..%2Ftmp%2Fpwned.txt"),
    "filename with CR LF header injection": head_with(
        "Content-Disposition: form-data; name=\"file\"; filename=\"a.txt\r\nX-Evil: 1\""),
    "no Content-Disposition": f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nx".encode()
                              + TAIL,
    "only the closing boundary": TAIL,
    "1000 empty parts": (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"e\""
                         "\r\n\r\n\r\n" * 1000).encode() + TAIL,
}


@pytest.mark.parametrize("case", sorted(MULTIPART))
def test_malformed_multipart_is_a_clean_4xx_and_leaves_nothing(hostile, runtime, tmp_path,
                                                               case):
    before = sorted(p.relative_to(runtime.workspace).as_posix()
                    for p in runtime.workspace.rglob("*"))
    with hostile("runtime", f"multipart: {case}"):
        response = requests.post(f"{runtime.url}/upload", data=MULTIPART[case], timeout=30,
                                 headers={"Content-Type":
                                          f"multipart/form-data; boundary={BOUNDARY}"})
        assert 400 <= response.status_code < 500, (response.status_code, response.text[:200])
        assert set(response.json()) == {"error"}
        after = sorted(p.relative_to(runtime.workspace).as_posix()
                       for p in runtime.workspace.rglob("*"))
        assert after == before, set(after) ^ set(before)
        assert not Path("/tmp/pwned.txt").exists()
        assert runtime.alive()


@pytest.mark.parametrize(("case", "body"), [
    ("timeout NaN", b'{"command": "true", "timeout": NaN}'),
    ("timeout Infinity", b'{"command": "true", "timeout": Infinity}'),
    ("timeout 1e999", b'{"command": "true", "timeout": 1e999}'),
    ("timeout -0.0", b'{"command": "true", "timeout": -0.0}'),
    ("env name with a newline", b'{"command": "true", "env": {"A\\nB": "x"}}'),
    ("env value with a lone surrogate", b'{"command": "true", "env": {"A": "\\ud800"}}'),
    ("command with a lone surrogate", b'{"command": "echo \\udc80"}'),
    ("cwd with NUL", b'{"command": "true", "cwd": "a\\u0000b"}'),
    ("command a list", b'{"command": ["sh", "-c", "id"]}'),
    ("duplicate keys", b'{"command": "true", "command": 5}'),
    ("command of 300 kB", b'{"command": "' + b"x" * 300_000 + b'"}'),
])
def test_hostile_execute_bodies_are_400_or_413(hostile, runtime, case, body):
    with hostile("runtime", f"execute body: {case}"):
        response = requests.post(f"{runtime.url}/execute", data=body, timeout=30,
                                 headers={"Content-Type": "application/json"})
        assert response.status_code in (400, 413), (response.status_code, response.text[:200])
        assert set(response.json()) == {"error"}
        assert runtime.alive()


# ---- a workspace on a filesystem that fills up ---------------------------------------------


@pytest.fixture
def small_filesystem(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs to fill ({result.stderr.strip()})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_gives_clean_errors_and_leaves_no_debris(hostile, small_filesystem):
    # File-size rlimit (2 MiB in SMALL_LIMITS) is above the 1 MiB filesystem: the disk fills.
    with runtime_server(small_filesystem) as server:
        with hostile("runtime", "command fills the workspace filesystem"):
            out = server.run("head -c 3000000 /dev/zero > fill.bin; echo rc=$?")
            assert out["stdout"].strip() != "rc=0"
            assert "No space left" in out["stderr"]
            assert server.alive()
        with hostile("runtime", "upload onto a full filesystem"):
            response = requests.post(f"{server.url}/upload", timeout=30,
                                     files={"file": ("more.bin", b"m" * 300_000)})
            assert response.status_code == 413, response.text
            assert "cannot store" in response.json()["error"]
            assert sorted(os.listdir(small_filesystem)) == ["fill.bin"]
        with hostile("runtime", "full filesystem: commands and health still answer"):
            assert server.run("echo still here")["stdout"] == "still here\n"
            assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200
            server.run("rm fill.bin")
            response = requests.post(f"{server.url}/upload", timeout=30,
                                     files={"file": ("more.bin", b"m" * 300_000)})
            assert response.status_code == 200


def test_slow_header_clients_do_not_starve_the_runtime(hostile, runtime):
    held = []
    try:
        for _ in range(256):
            sock = socket.create_connection(("127.0.0.1", port_of(runtime)), timeout=5)
            sock.sendall(b"POST /execute HTTP/1.1\r\nHost: x\r\n")
            held.append(sock)
        time.sleep(0.3)
        with hostile("runtime", "256 clients sending half a header (slowloris)"):
            assert requests.get(f"{runtime.url}/healthz", timeout=3).status_code == 200
    finally:
        for sock in held:
            sock.close()
    assert wait_for(runtime.alive, timeout=30)


def ask_for_download(runtime, name: str) -> socket.socket:
    """A connection that asked for `name` with a small receive buffer and reads nothing yet."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before the window is set
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port_of(runtime)))
    sock.sendall(f"GET /download/{name} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


# The send pace (sandbox_common.serving): an answer may wait SEND_GRACE_S (5 s) for its client
# to take more, plus 1 s per SEND_MIN_RATE (32 KiB) taken. Taken counts what left the server's
# send queue: up to a few hundred KiB sit in a client's kernel buffers here (measured: a
# trickle reader cut after 14 s on loopback), hence 15 s for one answer.
SEND_BOUND_S = 15.0


def test_clients_that_never_read_their_download_do_not_starve_the_runtime(hostile, runtime):
    (runtime.workspace / "big").write_bytes(b"")
    os.truncate(runtime.workspace / "big", 64 * 1024 * 1024)  # far more than socket buffers
    held = []
    try:
        for _ in range(200):  # five times the threads of this runtime (2 workers x 20)
            held.append(ask_for_download(runtime, "big"))
        time.sleep(1)
        with hostile("runtime", "200 clients never reading a 64 MiB download (slow read)"):
            # Each thread is freed after at most SEND_BOUND_S: five rounds of them, then
            # /healthz; before, the 200 held every thread for as long as they stayed.
            assert requests.get(f"{runtime.url}/healthz",
                                timeout=5 * SEND_BOUND_S + 10).status_code == 200
    finally:
        for sock in held:
            sock.close()
        (runtime.workspace / "big").unlink()
    assert wait_for(runtime.alive, timeout=30)


def test_clients_trickle_reading_their_download_are_cut_and_free_their_threads(
        hostile, runtime):
    (runtime.workspace / "big2").write_bytes(b"")
    os.truncate(runtime.workspace / "big2", 64 * 1024 * 1024)
    held = [ask_for_download(runtime, "big2") for _ in range(50)]  # every thread, and more
    cut: dict[int, float] = {}
    taken = [0] * len(held)
    began = time.monotonic()
    try:
        with hostile("runtime", "50 clients reading 1 KiB/s of a 64 MiB download (trickle)"):
            while len(cut) < len(held) and time.monotonic() - began < 3 * SEND_BOUND_S + 30:
                for index, sock in enumerate(held):
                    if index in cut:
                        continue
                    try:
                        sock.settimeout(0.01)
                        data = sock.recv(1024)
                    except TimeoutError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        cut[index] = time.monotonic() - began
                    taken[index] += len(data)
                time.sleep(1)  # 1 KiB a second each: far below the pace's 32 KiB/s
            assert len(cut) == len(held), f"{len(held) - len(cut)} trickle readers still served"
            assert max(taken) < 4 << 20  # cut long before the end of the download
            assert requests.get(f"{runtime.url}/healthz", timeout=10).status_code == 200
    finally:
        for sock in held:
            sock.close()
        (runtime.workspace / "big2").unlink()
    assert wait_for(runtime.alive, timeout=30)


# Odd but harmless: stored as an ordinary file inside the workspace, under the given name.
STORED = {
    "part header of 100 kB": ("h.txt", head_with(
        "Content-Disposition: form-data; name=\"file\"; "
        f"filename=\"h.txt\"\r\nX-Pad: {'p' * 100_000}")),
    "nested multipart content type": ("n.txt", head_with(
        "Content-Disposition: form-data; name=\"file\"; filename=\"n.txt\"\r\n"
        f"Content-Type: multipart/mixed; boundary={BOUNDARY}")),
    "filename with a Windows traversal": ("..\\..\\w.txt", head_with(
        "Content-Disposition: form-data; name=\"file\"; filename=\"..\\..\\w.txt\"")),
}


@pytest.mark.parametrize("case", sorted(STORED))
def test_odd_but_harmless_multipart_is_stored_inside(hostile, runtime, case):
    _name, body = STORED[case]
    with hostile("runtime", f"multipart: {case}"):
        response = requests.post(f"{runtime.url}/upload", data=body, timeout=30, headers={
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
        if response.status_code == 200:
            stored = (runtime.workspace / response.json()["path"]).resolve()
            assert stored.is_relative_to(runtime.workspace.resolve())
            assert stored.read_bytes() == b"PAYLOAD"
            stored.unlink()
        else:
            assert 400 <= response.status_code < 500
        assert runtime.alive()


def test_a_filename_longer_than_name_max_is_a_400(hostile, runtime):
    with hostile("runtime", "multipart: filename of 300 characters"):
        response = requests.post(f"{runtime.url}/upload", timeout=30, files={
            "file": ("n" * 300, b"x")})
        assert response.status_code == 400, response.text


def test_deeply_nested_execute_body_is_a_400(hostile, runtime):
    with hostile("runtime", "execute body: 20k-deep nesting"):
        response = requests.post(f"{runtime.url}/execute", timeout=30,
                                 data=b'{"command": ' + b"[" * 20000 + b"]" * 20000 + b"}")
        assert response.status_code == 400


def test_a_path_component_longer_than_name_max_is_a_400_on_every_route(hostile, runtime):
    with hostile("runtime", "path component of 300 bytes on download/list/exists"):
        for route in ("download", "list", "exists"):
            response = requests.get(f"{runtime.url}/{route}/dir/{'n' * 300}", timeout=30)
            assert response.status_code == 400, (route, response.text)
            assert "longer than 255 bytes" in response.json()["error"]


def test_exists_follows_symlinks_inside_and_says_false_for_a_loop(runtime):
    (runtime.workspace / "real-target.txt").write_text("x")
    (runtime.workspace / "link-in.txt").symlink_to(runtime.workspace / "real-target.txt")
    (runtime.workspace / "loop-a").symlink_to("loop-b")
    (runtime.workspace / "loop-b").symlink_to("loop-a")
    (runtime.workspace / "dangling").symlink_to("no-such-file")
    answers = {name: runtime.get(f"/exists/{name}").json()["exists"]
               for name in ("link-in.txt", "loop-a", "dangling", "real-target.txt/x")}
    assert answers == {"link-in.txt": True, "loop-a": False, "dangling": False,
                       "real-target.txt/x": False}
    assert runtime.get("/exists/").json()["exists"] is True


def test_trees_nested_too_deep_for_copy_or_remove_get_a_400_and_no_change(hostile, runtime):
    """A command nests a directory 1,200 levels deep (finding 28). Before: `copy` and
    `remove -r` ran out of Python's recursion limit (a 500), and the failed copy left a
    980-level half-copy at its destination."""
    made = runtime.run("python3 -c \"import os\nfor _ in range(1200): os.mkdir('deep'); "
                       "os.chdir('deep')\nopen('leaf', 'w').write('x')\" && "
                       "mv deep deep-tree", timeout=30)
    assert made["exit_code"] == 0, made
    try:
        with hostile("runtime", "copy and remove -r of a tree 1,200 levels deep"):
            copied = runtime.post("/copy", json={"source": "deep-tree", "destination": "copy"})
            assert copied.status_code == 400, copied.text
            assert "levels deep" in copied.json()["error"]
            assert not (runtime.workspace / "copy").exists()
            removed = runtime.post("/remove", json={"path": "deep-tree", "recursive": True})
            assert removed.status_code == 400, removed.text
            assert (runtime.workspace / "deep-tree" / "deep").is_dir()
            # A tree within the bound copies whole.
            runtime.run("mkdir -p shallow/" + "/".join(["s"] * 200) + " && touch shallow/f")
            assert runtime.post("/copy", json={"source": "shallow",
                                               "destination": "shallow2"}).status_code == 200
            assert (runtime.workspace / "shallow2" / "f").exists()
            assert runtime.get("/healthz").status_code == 200
    finally:
        # rm(1) walks any depth; pytest's own clean-up of tmp_path would not.
        subprocess.run(["rm", "-rf", *(str(runtime.workspace / name) for name in
                                       ("deep-tree", "copy", "shallow", "shallow2"))],
                       check=True)


def test_a_deep_archive_sent_twice_is_refused_both_times(hostile, runtime):
    """Finding 28, on POST /archive: before, the first 1,200-level archive was taken in and
    the second, merged into it, answered 500 (RecursionError)."""
    import io
    import tarfile

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("d/" * 1200 + "f")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    try:
        with hostile("runtime", "an archive 1,200 levels deep, sent twice"):
            for _ in range(2):
                answer = runtime.post("/archive/deep-in", data=out.getvalue(),
                                      headers={"Content-Type": "application/x-tar"})
                assert answer.status_code == 400, answer.text
                assert "directories deep" in answer.json()["error"]
            assert not (runtime.workspace / "deep-in" / "d").exists()
            assert runtime.get("/healthz").status_code == 200
    finally:
        subprocess.run(["rm", "-rf", str(runtime.workspace / "deep-in")], check=True)


SURROGATE_BODIES = {
    "/mkdir": '{"path": "a\\ud800"}',
    "/remove": '{"path": "\\udfff"}',
    "/move": '{"source": "x", "destination": "b\\ud800"}',
    "/copy": '{"source": "\\ud800", "destination": "c"}',
    "/execute": '{"command": "echo \\ud800"}',
    "/processes": '{"command": "true", "env": {"A": "\\ud800"}}',
}


@pytest.mark.parametrize("route", sorted(SURROGATE_BODIES))
def test_an_unpaired_surrogate_escape_is_a_400(hostile, runtime, route):
    """JSON may spell a string no system call can take (finding 29): before, a 500 on every
    route that hands a string to the system."""
    with hostile("runtime", f"an unpaired \\ud800 escape in a {route} body"):
        answer = runtime.post(route, data=SURROGATE_BODIES[route],
                              headers={"Content-Type": "application/json"})
        assert answer.status_code == 400, answer.text
        assert "surrogate" in answer.json()["error"]
        # A surrogate pair is one character, and fine.
        assert runtime.run("echo \ud83d\ude00")["stdout"] == "\U0001f600\n"


def test_a_download_of_a_file_that_shrinks_ends_its_connection(hostile, runtime):
    """Finding 30: the file is truncated while it is sent. Before, sendfile stopped at the
    new end and the connection stayed open, so the client waited for the missing bytes
    until its own read timeout (20 s here). Now the connection ends at once: the client
    learns the answer is incomplete."""
    size = 50_000_000
    (runtime.workspace / "shrinks").write_bytes(b"x" * size)
    with hostile("runtime", "a download whose file is truncated mid-send"):
        answer = requests.get(runtime.url + "/download/shrinks", stream=True, timeout=20)
        assert answer.status_code == 200 and answer.headers["Content-Length"] == str(size)
        got = len(answer.raw.read(1_000_000))
        os.truncate(runtime.workspace / "shrinks", 0)
        started = time.monotonic()
        with contextlib.suppress(urllib3.exceptions.HTTPError, OSError):
            while chunk := answer.raw.read(65536):
                got += len(chunk)
        assert time.monotonic() - started < 10, "the client waited for bytes never sent"
        assert got < size
        assert runtime.get("/healthz").status_code == 200
    (runtime.workspace / "shrinks").unlink()
