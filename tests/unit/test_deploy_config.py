"""failover.config: defaults, the values it accepts, and the errors that name what is wrong."""

from __future__ import annotations

import pytest

from failover.config import ConfigError, Settings, unknown_settings


def test_defaults_are_the_tuned_health_checks() -> None:
    s = Settings.from_env({})
    assert (s.health_check_period_ms, s.health_check_timeout_ms) == (500, 500)
    assert s.health_check_failure_threshold == 3
    assert s.node_loss_detection_ms == 2000
    assert s.dsn is None and s.ray_address is None
    assert s.vshard_count == 1024 and s.owners_per_node == 2
    assert s.ray_system_config()["health_check_failure_threshold"] == 3


def test_values_are_read_from_the_environment() -> None:
    s = Settings.from_env(
        {
            "BILLING_DSN": "postgresql://billing@db:5432/billing",
            "BILLING_RAY_ADDRESS": "10.0.0.1:6379",
            "BILLING_OWNERS_PER_NODE": "4",
            "RAY_health_check_period_ms": "1000",
            "RAY_REDIS_ADDRESS": "redis://r:6379",
            "RAY_external_storage_namespace": "prod",
            "RAY_AUTH_TOKEN": "secret-token",
        }
    )
    assert s.ray_address == "10.0.0.1:6379" and s.owners_per_node == 4
    assert s.ray_env()["RAY_health_check_period_ms"] == "1000"
    assert s.ray_env()["RAY_REDIS_ADDRESS"] == "redis://r:6379"
    assert s.ray_auth_token_set
    assert "secret" not in repr(s) and "billing@db" not in repr(s)


def test_empty_value_means_default() -> None:
    assert Settings.from_env({"BILLING_VSHARD_COUNT": " "}).vshard_count == 1024


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("BILLING_VSHARD_COUNT", "many", "not an integer"),
        ("BILLING_VSHARD_COUNT", "0", "out of range"),
        ("BILLING_OWNERS_PER_NODE", "1.5", "not an integer"),
        ("RAY_health_check_period_ms", "10", "out of range"),
        ("RAY_health_check_failure_threshold", "-1", "out of range"),
        ("BILLING_RAY_ADDRESS", "ray-head", "not host:port"),
        ("BILLING_LISTEN", "0.0.0.0:99999", "not host:port"),
        ("BILLING_DSN", "mysql://x", "not a PostgreSQL DSN"),
        ("RAY_AUTH_MODE", "password", "not one of token, disabled"),
    ],
)
def test_bad_values_name_the_setting(name: str, value: str, words: str) -> None:
    with pytest.raises(ConfigError, match=name) as info:
        Settings.from_env({name: value})
    assert words in str(info.value)


def test_storage_namespace_needs_redis() -> None:
    with pytest.raises(ConfigError, match="RAY_REDIS_ADDRESS"):
        Settings.from_env({"RAY_external_storage_namespace": "prod"})


def test_unknown_billing_settings_are_reported() -> None:
    assert unknown_settings({"BILLING_VSHARDS": "8", "BILLING_DSN": "x", "PATH": "/"}) == [
        "BILLING_VSHARDS"
    ]
