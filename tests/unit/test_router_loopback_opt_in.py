"""The Kubernetes source refuses loopback pod IPs unless the operator opts in explicitly."""

from __future__ import annotations

from sandbox_router.app import build_source
from sandbox_router.config import load_config


def test_kubernetes_source_refuses_loopback_by_default():
    source = build_source(load_config({"source": "kubernetes"}, environ={}))
    assert source.allow_loopback is False


def test_loopback_pods_need_the_explicit_flag(caplog):
    config = load_config({"source": "kubernetes"},
                         environ={"SANDBOX_ROUTER_ALLOW_LOOPBACK_PODS": "true"})
    source = build_source(config)
    assert source.allow_loopback is True
    assert "allow_loopback_pods is on" in caplog.text
