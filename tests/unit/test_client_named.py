"""Named sandboxes without a sandbox: the name rule, SandboxClient(attach=...) choosing the
backend that reaches one, the local holder's records, and the Kubernetes backend's named-claim
options (the claim handling itself runs against a real API server in
tests/controlplane/test_cli_kubernetes.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from agentic_sandbox import ClaimFailedError, SandboxClient
from agentic_sandbox._backends.kubernetes import KubernetesBackend
from agentic_sandbox._backends.local.owner import owner_record
from agentic_sandbox._holder.attach import HeldBackend
from agentic_sandbox._holder.records import holder_running, named_dir, read_record
from agentic_sandbox._named import validate_name
from agentic_sandbox._options import KubernetesOptions


@pytest.mark.parametrize("name", ["a", "box", "my-box-2", "0", "a" * 63])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "Box", "-a", "a-", "a_b", "a.b", "../x", "a/b",
                                  "a" * 64, "a b", "é"])
def test_invalid_names_say_what_a_name_may_be(name):
    with pytest.raises(ValueError, match="lowercase letters"):
        validate_name(name)


def test_attach_on_the_local_backend_reaches_the_holder(tmp_path):
    client = SandboxClient("tpl", backend="local", attach="box", state_dir=tmp_path)
    assert isinstance(client.backend, HeldBackend)
    assert client.backend.directory == tmp_path.resolve() / "named" / "box"
    with pytest.raises(ValueError):
        SandboxClient("tpl", backend="local", attach="../../etc", state_dir=tmp_path)
    with pytest.raises(ValueError):
        SandboxClient("tpl", backend="local", attach="")


def test_attach_on_kubernetes_names_the_claim_and_never_owns_it():
    client = SandboxClient("tpl", "ns", backend="kubernetes", attach="box", api_url="http://r")
    backend = client.backend
    assert isinstance(backend, KubernetesBackend)
    assert (backend.claim_name, backend.attach, backend._owns_claim) == ("box", True, False)
    plain = SandboxClient("tpl", backend="kubernetes", api_url="http://r").backend
    assert (plain.claim_name, plain.attach, plain._owns_claim) == (None, False, True)
    with pytest.raises(ValueError, match="claim="):
        KubernetesBackend("tpl", attach=True)


def test_release_hands_the_claim_over(monkeypatch):
    backend = KubernetesBackend("tpl", "ns", options=KubernetesOptions(api_url="http://r"),
                                claim="box")
    deleted = []
    monkeypatch.setattr(backend, "_delete", lambda name: deleted.append(name) or True)
    backend.claim = "box"
    assert backend.release() == "box"
    backend.close()
    assert deleted == []
    owned = KubernetesBackend("tpl", "ns", options=KubernetesOptions(api_url="http://r"))
    monkeypatch.setattr(owned, "_delete", lambda name: deleted.append(name) or True)
    owned.claim = "sandbox-claim-1"
    owned.close()
    assert deleted == ["sandbox-claim-1"]


def test_attaching_to_a_missing_local_sandbox_says_how_to_make_one(tmp_path):
    with pytest.raises(ClaimFailedError, match="agentic-sandbox create box") as info:
        HeldBackend("box", state_dir=tmp_path).open()
    assert info.value.reason == "NotFound"


def test_a_record_whose_holder_is_gone_is_not_attached(tmp_path):
    directory = named_dir(tmp_path, "box")
    directory.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (directory / "holder.json").write_text(json.dumps(
        {"pid": dead.pid, "start": "1", "sandbox": "agentsbx-1"}))
    with pytest.raises(ClaimFailedError, match="delete box") as info:
        HeldBackend("box", state_dir=tmp_path).open()
    assert info.value.reason == "HolderGone"


def test_holder_records_tell_live_dead_reused_and_zombie_processes(tmp_path):
    me = owner_record()
    assert me["pid"] == os.getpid() and holder_running(me)
    assert not holder_running(me | {"start": "0"})  # the pid, reused by another process
    assert not holder_running({"pid": 2**22 + 1, "start": me["start"]})
    assert not holder_running({})
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    zombie = {"pid": child.pid, "start": None}
    while True:  # exited but not reaped yet: a zombie
        with open(f"/proc/{child.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            break
        time.sleep(0.01)
    zombie["start"] = fields[19]
    assert not holder_running(zombie)
    child.wait()
    assert read_record(tmp_path) is None
