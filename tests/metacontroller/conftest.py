"""Fixtures of the Metacontroller tier: the whole loop on loopback, with the tests as kubelet.

`metacontroller_stack` (one per test package run) starts its own control plane
(tests/controlplane/kube.py), our hooks under gunicorn (`sandbox-hooks --bind 127.0.0.1:<port>`),
applies manifests/overlays/loopback with the hooks' port, and starts the Metacontroller binary
named by METACONTROLLER_BIN against that kubeconfig. Without the variable every test here is
skipped with the reason printed (`-ra`). The binary is built by hand from Metacontroller's
public source, outside this repository (docs/testing.md); nothing here builds or fetches it.

Helpers read like the walkthrough: `stack.wait_for("sandbox", name, ready, namespace=ns)`,
`stack.make_pod_ready(name, "127.0.0.1", namespace=ns)`. Everything listens on 127.0.0.1 and is
stopped, process group by process group, when the package's tests are done.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.controlplane import kube
from tests.metacontroller.stack import LOOPBACK_OVERLAY, MetacontrollerStack, running_stack


def metacontroller_binary() -> str:
    """METACONTROLLER_BIN, or a skip that says how to get one."""
    path = os.environ.get("METACONTROLLER_BIN", "")
    if not path:
        pytest.skip(
            "METACONTROLLER_BIN is unset: build Metacontroller from its public source "
            "outside this repo and point the variable at it (docs/testing.md)"
        )
    if not os.access(path, os.X_OK):
        pytest.skip(f"METACONTROLLER_BIN={path} is not an executable file")
    return path


@pytest.fixture(scope="package")
def metacontroller_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetacontrollerStack]:
    binary = metacontroller_binary()
    missing = kube.missing_binaries()
    if missing:
        pytest.skip(f"control plane binaries missing ({', '.join(missing)}): run `make k8s`")
    if not kube.crd_files():
        pytest.skip("no CRD manifests under manifests/crds/ yet")
    if not (LOOPBACK_OVERLAY / "kustomization.yaml").exists():
        pytest.skip("manifests/overlays/loopback not written yet")
    with running_stack(tmp_path_factory.mktemp("metacontroller"), binary) as stack:
        yield stack


@pytest.fixture
def namespace(metacontroller_stack: MetacontrollerStack) -> Iterator[str]:
    """A fresh namespace per test, with its default ServiceAccount (Pods need it)."""
    name = f"mc-{uuid.uuid4().hex[:10]}"
    metacontroller_stack.kubectl("create", "namespace", name)
    metacontroller_stack.kubectl(
        "wait", "--for=create", "--timeout=30s", "serviceaccount/default", "-n", name
    )
    try:
        yield name
    finally:
        metacontroller_stack.kubectl("delete", "namespace", name, "--wait=false", check=False)
