"""The deployment files parse, and every setting they name is one the program reads.

No container engine here: this is what can be checked of deploy/ without one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from failover.config import SETTING_NAMES, SETTINGS, Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# A setting name: BILLING_X or RAY_x; a trailing "_" is a wildcard in prose (RAY_AUTH_*), skipped.
_NAME = re.compile(r"\b(?:BILLING|RAY)_[A-Za-z0-9_]*[A-Za-z0-9]\b(?![*])")
_SUBST = re.compile(r"\$\{(?P<name>[A-Za-z0-9_]+)(?::?[-?](?P<default>[^}]*))?\}")


def _deploy_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file())


def _env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for number, line in enumerate((DEPLOY / "env.example").read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f"env.example line {number} is not NAME=value: {line!r}"
        assert name not in values, f"env.example names {name} twice"
        values[name] = value
    return values


def _load(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _substitute(value: str) -> str:
    """Compose-style ${VAR:-default} -> default (or a placeholder for required variables)."""
    return _SUBST.sub(lambda m: m.group("default") or "placeholder", value)


def test_deploy_folder_has_the_expected_files() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in _deploy_files()}
    assert {"README.md", "env.example", "kuberay/raycluster.yaml", "citus/compose.yaml"} <= names


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.yaml")), ids=lambda p: p.name)
def test_yaml_files_parse(path: Path) -> None:
    assert _load(path), f"{path} holds no YAML document"


def test_every_setting_named_in_deploy_is_read_by_the_program() -> None:
    unknown: dict[str, set[str]] = {}
    for path in _deploy_files():
        for name in _NAME.findall(path.read_text()):
            if name not in SETTING_NAMES:
                unknown.setdefault(name, set()).add(path.name)
    assert not unknown, (
        f"settings named in deploy/ that failover/config.py does not read: {unknown}"
    )


def test_env_example_lists_exactly_the_settings_read() -> None:
    listed = set(_env_example())
    assert listed == set(SETTING_NAMES), (
        f"missing from env.example: {sorted(SETTING_NAMES - listed)}; "
        f"not read by the program: {sorted(listed - SETTING_NAMES)}"
    )


def test_env_example_values_are_valid() -> None:
    settings = Settings.from_env({k: v for k, v in _env_example().items() if v})
    assert settings.ray_redis_address == "redis:6379"
    assert settings.node_loss_detection_ms == 500 * 3 + 500


def test_env_example_health_checks_are_the_program_defaults() -> None:
    example = _env_example()
    for setting in SETTINGS:
        if setting.name.startswith("RAY_health_check"):
            assert example[setting.name] == setting.default, setting.name


def _raycluster() -> dict[str, Any]:
    docs = _load(DEPLOY / "kuberay" / "raycluster.yaml")
    clusters = [d for d in docs if d.get("kind") == "RayCluster"]
    assert len(clusters) == 1
    cluster: dict[str, Any] = clusters[0]
    return cluster


def _container_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: str(e.get("value", "from-secret")) for e in container.get("env", [])}


def test_raycluster_has_auth_gcs_fault_tolerance_and_tuned_health_checks() -> None:
    spec = _raycluster()["spec"]
    assert spec["authOptions"]["mode"] == "token"
    assert spec["gcsFaultToleranceOptions"]["redisAddress"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = _container_env(head)
    assert env["RAY_health_check_period_ms"] == "500"
    assert env["RAY_health_check_timeout_ms"] == "500"
    assert env["RAY_health_check_failure_threshold"] == "3"
    assert spec["workerGroupSpecs"][0]["minReplicas"] >= 2


def test_kubernetes_env_blocks_are_valid_settings() -> None:
    for doc in _load(DEPLOY / "kuberay" / "raycluster.yaml"):
        text = yaml.safe_dump(doc)
        containers = re.findall(r"BILLING_[A-Z_]+|RAY_[A-Za-z_]+", text)
        assert set(containers) <= SETTING_NAMES
    cluster_spec = _raycluster()["spec"]
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            env = {k: v for k, v in _container_env(container).items() if v != "from-secret"}
            Settings.from_env(env)  # raises ConfigError naming a bad value


def test_compose_runs_citus_coordinator_two_workers_and_billing() -> None:
    compose = _load(DEPLOY / "citus" / "compose.yaml")[0]
    services = compose["services"]
    assert {"citus-coordinator", "citus-worker-1", "citus-worker-2"} <= set(services)
    assert {"ray-head", "ray-worker", "frontdoor", "redis"} <= set(services)
    for name, service in services.items():
        env = service.get("environment", {})
        if not isinstance(env, dict) or not any(k.startswith(("BILLING_", "RAY_")) for k in env):
            continue
        values = {k: _substitute(str(v)) for k, v in env.items() if k in SETTING_NAMES}
        values.pop("RAY_AUTH_TOKEN", None)
        values.pop("RAY_REDIS_PASSWORD", None)
        try:
            Settings.from_env(values)
        except ValueError as exc:  # pragma: no cover - the failure message is the point
            pytest.fail(f"compose service {name}: {exc}")
