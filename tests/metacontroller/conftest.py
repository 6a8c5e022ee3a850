"""Fixtures of the Metacontroller tier: the whole loop on loopback, with a kubelet stand-in.

`metacontroller_stack` (one per test package run) starts its own control plane
(testbed/kube.py), our hooks under gunicorn (`sandbox-hooks --bind 127.0.0.1:<port>`),
applies manifests/overlays/loopback with the hooks' port, and starts Metacontroller against
that kubeconfig: METACONTROLLER_BIN, else `../shared/bin/metacontroller` beside the repository
(stack.metacontroller_binary()). Without either every test here is skipped with the reason
printed (`-ra`), and in CI that skip is a failure (tests/conftest.py). Nothing here builds or
fetches Metacontroller. Missing project files (CRDs, the loopback overlay) are failures, not
skips: they are this repository's own.

`kubelet` runs the kubelet stand-in (testbed/kubelet.py, runtime mode) for the test's namespace:
every pod gets its own loopback address and a real `sandbox-runtime`. Everything listens on
127.0.0.1/8 and is stopped, process group by process group, when the tests are done.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed import kube
from testbed.kubelet import Kubelet, running_kubelet
from testbed.metacontroller import (
    LOOPBACK_OVERLAY,
    MetacontrollerStack,
    metacontroller_binary,
    running_stack,
)


@pytest.fixture(scope="package")
def metacontroller_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetacontrollerStack]:
    binary, why_not = metacontroller_binary()
    if binary is None:
        pytest.skip(why_not)
    missing = kube.missing_binaries()
    if missing:
        pytest.skip(f"control plane binaries missing ({', '.join(missing)}): run `make k8s`")
    assert kube.crd_files(), "no CRD manifests under manifests/crds/ (run `make manifests`)"
    assert (LOOPBACK_OVERLAY / "kustomization.yaml").exists(), \
        f"{LOOPBACK_OVERLAY.relative_to(kube.REPO)}/kustomization.yaml is missing"
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


@pytest.fixture
def kubelet(metacontroller_stack: MetacontrollerStack, namespace: str,
            tmp_path: Path) -> Iterator[Kubelet]:
    """The kubelet stand-in for the test's namespace (running_kubelet)."""
    with running_kubelet(metacontroller_stack, namespace, tmp_path / "kubelet") as player:
        yield player

