"""Router settings: defaults, SANDBOX_ROUTER_* environment, explicit overrides (pure)."""

from __future__ import annotations

import pytest

from sandbox_router.config import Config, load_config


def test_defaults_are_secure():
    config = load_config(environ={})
    assert config == Config()
    assert config.auth_required
    assert config.port == 8080
    assert config.default_port == 8888
    assert config.default_namespace == "default"
    # A name-only request is confirmed with the API server by a read of its own by default
    # (security finding 20: not once per connection, which a re-used connection outlives).
    assert config.name_confirmation == "request"
    assert config.test_watch_hold_file == ""
    # Client connections are bounded, and one that sends no whole head is closed well
    # before aiohttp's own 75 s (security finding 25).
    assert config.max_client_connections == 4096
    assert config.client_idle_timeout <= 15


def test_environment_then_overrides():
    env = {"SANDBOX_ROUTER_PORT": "9000", "SANDBOX_ROUTER_NAMESPACES": "a, b",
           "SANDBOX_ROUTER_INSECURE_NO_AUTH": "true", "SANDBOX_ROUTER_MAX_TIMEOUT": "30",
           "SANDBOX_ROUTER_DEFAULT_TIMEOUT": "5"}
    config = load_config({"port": 9100}, environ=env)
    assert config.port == 9100
    assert config.namespaces == ("a", "b")
    assert config.insecure_no_auth and not config.auth_required
    assert (config.default_timeout, config.max_timeout) == (5.0, 30.0)


@pytest.mark.parametrize("overrides", [
    {"source": "dns"}, {"source": "static"}, {"default_timeout": 0},
    {"default_timeout": 100, "max_timeout": 10}, {"port": 0}, {"default_port": 70000},
    {"insecure_no_auth": "maybe"}, {"max_connections": 0}, {"name_confirmation": "never"},
    {"name_confirmation": ""}, {"api_timeout": 0}, {"api_concurrency": 0},
    {"max_client_connections": 0}, {"client_idle_timeout": 0},
])
def test_nonsense_fails_at_start(overrides):
    with pytest.raises(ValueError):
        load_config(overrides, environ={})


def test_unknown_keys_are_kept_aside():
    assert load_config({"SOMETHING": 1}, environ={}).extra == {"SOMETHING": 1}
