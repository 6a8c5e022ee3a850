"""choose_backend: explicit argument, then $AGENTIC_SANDBOX_BACKEND, cluster hints, local."""

from __future__ import annotations

import pytest

from agentic_sandbox import choose_backend


def test_explicit_argument_wins(tmp_path):
    env = {"AGENTIC_SANDBOX_BACKEND": "local", "KUBECONFIG": "/x"}
    assert choose_backend("kubernetes", environ=env, home=tmp_path) == "kubernetes"
    assert choose_backend("local", api_url="http://r", environ=env, home=tmp_path) == "local"


def test_environment_variable_comes_next(tmp_path):
    assert choose_backend(None, environ={"AGENTIC_SANDBOX_BACKEND": "local",
                                         "KUBECONFIG": "/x"}, home=tmp_path) == "local"
    assert choose_backend("auto", environ={"AGENTIC_SANDBOX_BACKEND": "kubernetes"},
                          home=tmp_path) == "kubernetes"


def test_cluster_hints_choose_kubernetes(tmp_path):
    assert choose_backend(environ={"KUBECONFIG": "/k"}, home=tmp_path) == "kubernetes"
    assert choose_backend(environ={"KUBERNETES_SERVICE_HOST": "10.0.0.1"},
                          home=tmp_path) == "kubernetes"
    assert choose_backend(api_url="http://gw", environ={}, home=tmp_path) == "kubernetes"
    (tmp_path / ".kube").mkdir()
    (tmp_path / ".kube" / "config").write_text("apiVersion: v1\n")
    assert choose_backend(environ={}, home=tmp_path) == "kubernetes"


def test_no_cluster_means_local(tmp_path):
    assert choose_backend(environ={}, home=tmp_path) == "local"


def test_unknown_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="backend="):
        choose_backend("docker", environ={}, home=tmp_path)
    with pytest.raises(ValueError, match="AGENTIC_SANDBOX_BACKEND"):
        choose_backend(environ={"AGENTIC_SANDBOX_BACKEND": "nope"}, home=tmp_path)
