"""Fixtures of the control-plane tier: one loopback cluster per test run, namespaces per test.

`control_plane` (session) starts etcd + kube-apiserver + kube-controller-manager through
testbed/kube.py, installs manifests/crds/*.yaml and yields a kube.ControlPlane
(.kubeconfig, .server, .kubectl(...), .api_client()). It skips, with the command to run,
when the binaries are missing (the only skip here; in CI it fails, tests/conftest.py).
`crds` fails when no CRD manifest exists: those are this repository's own files.
Nothing here may listen beyond 127.0.0.1 or outlive the session.
"""

from __future__ import annotations

import contextlib
import json
import sys
import uuid
from collections.abc import Iterator

import pytest

from testbed import kube


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kube.ControlPlane]:
    missing = kube.missing_binaries()
    if missing:
        pytest.skip(f"control plane binaries missing ({', '.join(missing)}): "
                    f"run `make k8s` (builds into {kube.BIN_DIR}) and `make system` (etcd)")
    plane = kube.start(tmp_path_factory.mktemp("control-plane"), crds=kube.crd_files())
    print(f"\ncontrol plane {plane.server} up in {plane.startup_seconds:.1f}s "
          f"(logs in {plane.workdir})", file=sys.stderr)
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def crds(control_plane: kube.ControlPlane) -> list[str]:
    """Names of the installed project CRDs; fails when manifests/crds/ has none."""
    assert control_plane.crds, (f"no CRD manifests under {kube.CRD_DIR.relative_to(kube.REPO)} "
                                "(run `make manifests`)")
    return control_plane.crds


@contextlib.contextmanager
def fresh_namespace(plane: kube.ControlPlane, prefix: str = "t",
                    labels: dict[str, str] | None = None) -> Iterator[str]:
    """A new namespace (with `labels`) and its default ServiceAccount; deleted afterwards."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    plane.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": labels or {}}}))
    plane.kubectl("wait", "--for=create", "--timeout=30s", "serviceaccount/default", "-n", name)
    try:
        yield name
    finally:
        plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def namespace(control_plane: kube.ControlPlane) -> Iterator[str]:
    """A fresh namespace for one test; deleted (by the namespace controller) afterwards."""
    with fresh_namespace(control_plane) as name:
        yield name
