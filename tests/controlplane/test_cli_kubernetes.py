"""The command line's named sandboxes on Kubernetes: a real kube-apiserver, router and runtime.

`create NAME` makes a SandboxClaim called NAME and leaves it; `exec`/`cp`/`ls`/`rm` attach to
it without creating or deleting anything; `delete NAME` removes it. The test plays the claim
controller (tests/controlplane/test_client_kubernetes.py's Controller and stack; no
Metacontroller here), and the CLI runs in-process with the stack's router token, kubeconfig
and runtime port. Names come from that stack's list, which its router's static file knows.
"""

from __future__ import annotations

import yaml

from agentic_sandbox import _cli
from tests.controlplane.test_client_kubernetes import (  # noqa: F401 (stack is a fixture)
    NAMES,
    TEMPLATE,
    TOKEN,
    Controller,
    claims,
    stack,
)

NAME = NAMES[-1]


def cli(stack, *argv):  # noqa: F811 (a fixture's value)
    options = {"router_token": TOKEN, "kubeconfig": stack["plane"].kubeconfig,
               "server_port": stack["runtime_port"]}
    return _cli.main([argv[0], "-b", "kubernetes", "-n", stack["namespace"], "--api-url",
                      stack["api_url"], *argv[1:]], client_options=options)


def test_create_attach_and_delete_a_named_claim(stack, capsysbinary, tmp_path):  # noqa: F811
    with Controller(stack["plane"], stack["namespace"]):
        assert cli(stack, "create", NAME) == 0
        assert capsysbinary.readouterr().out == f"{NAME}\n".encode()
        # It outlived the command that made it, under the name it was given.
        assert claims(stack) == [NAME]
        created = yaml.safe_load(stack["plane"].kubectl(
            "get", "sandboxclaim", NAME, "-n", stack["namespace"], "-o", "yaml").stdout)
        assert created["spec"] == {"sandboxTemplateRef": {"name": TEMPLATE}}

        assert cli(stack, "exec", NAME, "--", "echo routed; exit 4") == 4
        assert capsysbinary.readouterr().out == b"routed\n"
        source = tmp_path / "up.txt"
        source.write_bytes(b"through the router")
        assert cli(stack, "cp", str(source), f"{NAME}:cli/up.txt") == 0
        assert (stack["workspace"] / "cli" / "up.txt").read_bytes() == b"through the router"
        assert cli(stack, "cp", f"{NAME}:cli/up.txt", "-") == 0
        assert capsysbinary.readouterr().out == b"through the router"
        assert cli(stack, "ls", f"{NAME}:cli") == 0
        assert capsysbinary.readouterr().out == b"up.txt\n"
        # A directory, streamed as tar both ways through the router.
        (tmp_path / "tree" / "sub").mkdir(parents=True)
        (tmp_path / "tree" / "sub" / "f.bin").write_bytes(bytes(range(256)) * 4096)
        assert cli(stack, "cp", "-r", str(tmp_path / "tree"), f"{NAME}:cli/") == 0
        assert (stack["workspace"] / "cli" / "tree" / "sub" / "f.bin").read_bytes() == \
            bytes(range(256)) * 4096
        assert cli(stack, "cp", "-r", f"{NAME}:cli/tree", str(tmp_path / "back")) == 0
        assert (tmp_path / "back" / "sub" / "f.bin").read_bytes() == bytes(range(256)) * 4096
        assert cli(stack, "rm", "-r", f"{NAME}:cli") == 0
        assert not (stack["workspace"] / "cli").exists()
        assert claims(stack) == [NAME]  # attaching never deletes

        taken = cli(stack, "create", NAME)
        assert taken == 1 and b"already exists" in capsysbinary.readouterr().err
        assert claims(stack) == [NAME]  # a refused create leaves the other's claim alone

        assert cli(stack, "delete", NAME) == 0
        assert claims(stack) == []
    assert cli(stack, "delete", NAME) == 1
    assert b"no sandbox named" in capsysbinary.readouterr().err


def test_attaching_to_a_missing_claim_fails_fast_and_creates_nothing(stack,  # noqa: F811
                                                                     capsysbinary):
    assert cli(stack, "exec", NAMES[-2], "--", "true") == 1
    err = capsysbinary.readouterr().err.decode()
    assert err.startswith("agentic-sandbox: error: no sandbox named") and err.count("\n") == 1
    assert claims(stack) == []


def test_attaching_to_a_failed_claim_says_why(stack, capsysbinary):  # noqa: F811
    name, reason = NAMES[-3], "InvalidSpec"
    with Controller(stack["plane"], stack["namespace"], reason=reason):
        stack["plane"].kubectl("apply", "-f", "-", input=yaml.safe_dump({
            "apiVersion": "extensions.agents.x-k8s.io/v1alpha1", "kind": "SandboxClaim",
            "metadata": {"name": name, "namespace": stack["namespace"]},
            "spec": {"sandboxTemplateRef": {"name": TEMPLATE}}}))
        assert cli(stack, "exec", name, "--", "true") == 1
    assert reason in capsysbinary.readouterr().err.decode()
    assert claims(stack) == [name]  # not ours to delete
    assert cli(stack, "delete", name) == 0
    assert claims(stack) == []
