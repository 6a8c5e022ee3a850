"""sandbox_common.settings: the one settings loader of the router and the runtime (pure)."""

from __future__ import annotations

import pytest

from sandbox_router.config import load_config
from sandbox_runtime import config as runtime_config


def test_defaults_then_prefixed_environment_then_mapping():
    env = {"SANDBOX_RUNTIME_MAX_TIMEOUT_S": "100", "SANDBOX_RUNTIME_WORKERS": "3"}
    cfg = runtime_config.load({"workers": 2}, environ=env)
    assert (cfg.max_timeout_s, cfg.workers, cfg.default_timeout_s) == (100.0, 2, 60.0)


def test_upstream_base_dir_counts_below_the_prefixed_name(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    upstream = {"SANDBOX_BASE_DIR": str(tmp_path / "a")}
    assert runtime_config.load(environ=upstream).base_dir == str(tmp_path / "a")
    both = {**upstream, "SANDBOX_RUNTIME_BASE_DIR": str(tmp_path / "b")}
    assert runtime_config.load(environ=both).base_dir == str(tmp_path / "b")


@pytest.mark.parametrize(("overrides", "env", "named"), [
    ({"workers": "1.5"}, {}, "workers"),
    ({"max_timeout_s": True}, {}, "max_timeout_s"),
    ({}, {"SANDBOX_RUNTIME_MAX_OUTPUT_BYTES": "lots"}, "SANDBOX_RUNTIME_MAX_OUTPUT_BYTES"),
    ({"no_such_setting": 1}, {}, "no_such_setting"),
])
def test_bad_runtime_settings_name_themselves(overrides, env, named):
    with pytest.raises(ValueError, match=named):
        runtime_config.load(overrides, environ=env)


def test_the_router_keeps_unknown_keys_and_converts_the_same_way():
    cfg = load_config({"Other": 1, "port": "9000"}, environ={"SANDBOX_ROUTER_NAMESPACES": "a,b"})
    assert (cfg.port, cfg.namespaces, dict(cfg.extra)) == (9000, ("a", "b"), {"Other": 1})
    with pytest.raises(ValueError, match="port"):
        load_config({"port": 80.5}, environ={})
