"""Deployment settings read from environment variables, with defaults and clear errors.

Every process of a deployment (Ray head, Ray worker, front door, CLI) reads the same variables;
``deploy/env.example`` lists them all and a test keeps that file and :data:`SETTINGS` in step.

Two families of names:

- ``BILLING_*`` are read by this program (:func:`Settings.from_env`).
- ``RAY_*`` are read by Ray itself when a Ray process starts. We read and validate them too, so a
  typo or a bad value fails at start with a message naming the variable rather than being ignored
  by Ray, and so a local head started by the CLI or the chaos harness gets the same values through
  :meth:`Settings.ray_system_config`.

Node-loss detection (DESIGN.md section 7). The GCS pings every raylet every
``RAY_health_check_period_ms``; a ping unanswered within ``RAY_health_check_timeout_ms`` counts as
a failure, and ``RAY_health_check_failure_threshold`` failures in a row mark the node dead. The
worst-case detection time is therefore about ``period * threshold + timeout``. Ray's defaults
(3000 ms / 10000 ms / 5) detect a lost node in 16-18 s as measured here; our defaults
500 / 500 / 3 detect it in about 2 s and bring its vshards back in about 4 s.

The trade-off: a node declared dead is dead for good. Ray tells its raylet to exit and every
actor on it is restarted elsewhere, so a false positive costs a full takeover of that node's
vshards. Short timeouts raise that risk when a raylet answers late because its machine is
overloaded (CPU starvation, a long GC pause, swapping, a saturated network). Raise the timeout and
the threshold on busy or virtualised hosts; keep them short where a fast failover matters more than
an occasional needless takeover.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

SettingOwner = Literal["billing", "ray"]


class ConfigError(ValueError):
    """A setting has a bad value; the message names the variable, the value and what is allowed."""


@dataclass(frozen=True, slots=True)
class Setting:
    """One environment variable: its name, default (None = unset), and who reads it."""

    name: str
    default: str | None
    reader: SettingOwner
    help: str
    secret: bool = False


SETTINGS: tuple[Setting, ...] = (
    # Where the state lives and which Ray cluster to join.
    Setting("BILLING_DSN", None, "billing", "PostgreSQL / Citus coordinator DSN; unset = embedded"),
    Setting("BILLING_RAY_ADDRESS", None, "billing", "Ray GCS address host:port; unset = local"),
    Setting("BILLING_NAMESPACE", "billing", "billing", "Ray namespace of owners and manager"),
    # Sharding.
    Setting("BILLING_VSHARD_COUNT", "1024", "billing", "vshards; fixed for a deployment's life"),
    Setting("BILLING_OWNERS_PER_NODE", "2", "billing", "owner actors started per Ray node"),
    # Owners and front doors.
    Setting("BILLING_ORPHAN_SWEEP_INTERVAL_MS", "5000", "billing", "orphan session sweep period"),
    Setting("BILLING_QUEUE_LIMIT", "10000", "billing", "requests queued per owner, then busy"),
    Setting("BILLING_BATCH_MAX", "512", "billing", "requests per owner micro-batch"),
    Setting("BILLING_LISTEN", "0.0.0.0:50051", "billing", "front door gRPC listen address"),
    Setting("BILLING_TAKEOVER_TIMEOUT_MS", "30000", "billing", "give up a takeover after this"),
    # Ray: node-loss detection (GCS -> raylet health checks); read by the GCS at start.
    Setting("RAY_health_check_period_ms", "500", "ray", "GCS health-check period"),
    Setting("RAY_health_check_timeout_ms", "500", "ray", "one health check's timeout"),
    Setting("RAY_health_check_failure_threshold", "3", "ray", "failures in a row = node dead"),
    Setting("RAY_health_check_initial_delay_ms", "5000", "ray", "grace period after a node joins"),
    # Ray: token authentication (on by default for new clusters since Ray 2.60).
    Setting("RAY_AUTH_MODE", "token", "ray", "token | disabled; same on every node"),
    Setting("RAY_AUTH_TOKEN", None, "ray", "the cluster's shared token", secret=True),
    Setting("RAY_AUTH_TOKEN_PATH", None, "ray", "file holding the token (~/.ray/auth_token)"),
    # Ray: GCS fault tolerance of the head through an external Redis (head only).
    Setting("RAY_REDIS_ADDRESS", None, "ray", "external Redis host:port for GCS state"),
    Setting("RAY_REDIS_PASSWORD", None, "ray", "password of that Redis", secret=True),
    Setting("RAY_external_storage_namespace", None, "ray", "Redis key prefix per cluster"),
    Setting("RAY_gcs_rpc_server_reconnect_timeout_s", "60", "ray", "how long workers wait for GCS"),
)

SETTING_NAMES: frozenset[str] = frozenset(s.name for s in SETTINGS)
_DEFAULTS: dict[str, str | None] = {s.name: s.default for s in SETTINGS}


def _raw(env: Mapping[str, str], name: str) -> str | None:
    """The variable's value, or its default; an empty string counts as unset."""
    value = env.get(name)
    if value is None or value.strip() == "":
        return _DEFAULTS[name]
    return value.strip()


def _int(env: Mapping[str, str], name: str, lo: int, hi: int) -> int:
    raw = _raw(env, name)
    if raw is None:  # pragma: no cover - every int setting has a default
        raise ConfigError(f"{name} is required (an integer in [{lo}, {hi}])")
    try:
        value = int(raw, 10)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer (allowed: {lo}..{hi})") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value} is out of range (allowed: {lo}..{hi})")
    return value


def _address(env: Mapping[str, str], name: str) -> str | None:
    """A ``host:port`` (``redis://`` / ``rediss://`` prefixes allowed), or None when unset."""
    raw = _raw(env, name)
    if raw is None:
        return None
    body = raw.split("://", 1)[1] if "://" in raw else raw
    host, sep, port = body.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{name}={raw!r} is not host:port (e.g. 10.0.0.5:6379)")
    return raw


def _choice(env: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str:
    raw = _raw(env, name)
    if raw is None or raw.lower() not in allowed:
        raise ConfigError(f"{name}={raw!r} is not one of {', '.join(allowed)}")
    return raw.lower()


def _dsn(env: Mapping[str, str], name: str) -> str | None:
    raw = _raw(env, name)
    if raw is None:
        return None
    if not (raw.startswith(("postgresql://", "postgres://")) or "=" in raw):
        raise ConfigError(
            f"{name} is not a PostgreSQL DSN (postgresql://user@host:5432/db or key=value pairs)"
        )
    return raw


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of one process, validated. Build it with :meth:`from_env`."""

    dsn: str | None = field(default=None, repr=False)  # may carry a password
    ray_address: str | None = None
    namespace: str = "billing"
    vshard_count: int = 1024
    owners_per_node: int = 2
    orphan_sweep_interval_ms: int = 5000
    queue_limit: int = 10_000
    batch_max: int = 512
    listen: str = "0.0.0.0:50051"
    takeover_timeout_ms: int = 30_000
    health_check_period_ms: int = 500
    health_check_timeout_ms: int = 500
    health_check_failure_threshold: int = 3
    health_check_initial_delay_ms: int = 5000
    ray_auth_mode: str = "token"
    ray_auth_token_set: bool = False
    ray_redis_address: str | None = None
    ray_external_storage_namespace: str | None = None
    gcs_reconnect_timeout_s: int = 60

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every setting; raise :class:`ConfigError` naming the first bad one."""
        e: Mapping[str, str] = os.environ if env is None else env
        namespace = _raw(e, "BILLING_NAMESPACE") or "billing"
        if not namespace.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"BILLING_NAMESPACE={namespace!r} must be letters, digits, - or _")
        listen = _address(e, "BILLING_LISTEN")
        assert listen is not None  # it has a default
        redis = _address(e, "RAY_REDIS_ADDRESS")
        storage_ns = _raw(e, "RAY_external_storage_namespace")
        if storage_ns is not None and redis is None:
            raise ConfigError(
                "RAY_external_storage_namespace is set but RAY_REDIS_ADDRESS is not: the "
                "namespace only applies to GCS fault tolerance through an external Redis"
            )
        period = _int(e, "RAY_health_check_period_ms", 50, 600_000)
        timeout = _int(e, "RAY_health_check_timeout_ms", 50, 600_000)
        return cls(
            dsn=_dsn(e, "BILLING_DSN"),
            ray_address=_address(e, "BILLING_RAY_ADDRESS"),
            namespace=namespace,
            vshard_count=_int(e, "BILLING_VSHARD_COUNT", 1, 65_536),
            owners_per_node=_int(e, "BILLING_OWNERS_PER_NODE", 1, 64),
            orphan_sweep_interval_ms=_int(e, "BILLING_ORPHAN_SWEEP_INTERVAL_MS", 100, 3_600_000),
            queue_limit=_int(e, "BILLING_QUEUE_LIMIT", 1, 10_000_000),
            batch_max=_int(e, "BILLING_BATCH_MAX", 1, 100_000),
            listen=listen,
            takeover_timeout_ms=_int(e, "BILLING_TAKEOVER_TIMEOUT_MS", 100, 3_600_000),
            health_check_period_ms=period,
            health_check_timeout_ms=timeout,
            health_check_failure_threshold=_int(e, "RAY_health_check_failure_threshold", 1, 100),
            health_check_initial_delay_ms=_int(e, "RAY_health_check_initial_delay_ms", 0, 600_000),
            ray_auth_mode=_choice(e, "RAY_AUTH_MODE", ("token", "disabled")),
            ray_auth_token_set=_raw(e, "RAY_AUTH_TOKEN") is not None
            or _raw(e, "RAY_AUTH_TOKEN_PATH") is not None,
            ray_redis_address=redis,
            ray_external_storage_namespace=storage_ns,
            gcs_reconnect_timeout_s=_int(e, "RAY_gcs_rpc_server_reconnect_timeout_s", 1, 86_400),
        )

    @property
    def node_loss_detection_ms(self) -> int:
        """Worst-case time for the GCS to declare a silent node dead."""
        return (
            self.health_check_period_ms * self.health_check_failure_threshold
            + self.health_check_timeout_ms
        )

    def ray_system_config(self) -> dict[str, int]:
        """``_system_config`` for a head this process starts itself (``ray.init`` or
        ``ray.cluster_utils.Cluster(head_node_args=...)``); ``ray start`` reads the env instead."""
        return {
            "health_check_period_ms": self.health_check_period_ms,
            "health_check_timeout_ms": self.health_check_timeout_ms,
            "health_check_failure_threshold": self.health_check_failure_threshold,
            "health_check_initial_delay_ms": self.health_check_initial_delay_ms,
        }

    def ray_env(self) -> dict[str, str]:
        """The ``RAY_*`` variables to export before ``ray start`` so the GCS uses these values."""
        env = {
            "RAY_health_check_period_ms": str(self.health_check_period_ms),
            "RAY_health_check_timeout_ms": str(self.health_check_timeout_ms),
            "RAY_health_check_failure_threshold": str(self.health_check_failure_threshold),
            "RAY_health_check_initial_delay_ms": str(self.health_check_initial_delay_ms),
            "RAY_AUTH_MODE": self.ray_auth_mode,
            "RAY_gcs_rpc_server_reconnect_timeout_s": str(self.gcs_reconnect_timeout_s),
        }
        if self.ray_redis_address is not None:
            env["RAY_REDIS_ADDRESS"] = self.ray_redis_address
        if self.ray_external_storage_namespace is not None:
            env["RAY_external_storage_namespace"] = self.ray_external_storage_namespace
        return env


def unknown_settings(env: Mapping[str, str] | None = None) -> list[str]:
    """``BILLING_*`` variables set in ``env`` that no setting has: most likely typos.

    Reported (by :func:`describe`), not rejected: other modules may add their own settings.
    """
    e: Mapping[str, str] = os.environ if env is None else env
    return sorted(k for k in e if k.startswith("BILLING_") and k not in SETTING_NAMES)


def describe(settings: Settings, *, show: Callable[[str], None] = print) -> None:
    """Print every setting's effective value for a person (secrets shown only as set/unset)."""
    for s in SETTINGS:
        value = os.environ.get(s.name) or s.default
        shown = ("<set>" if value else "<unset>") if s.secret else (value or "<unset>")
        show(f"{s.name:40} {shown:24} {s.help}")
    show(f"{'node loss detected within':40} ~{settings.node_loss_detection_ms} ms")
    for name in unknown_settings():
        show(f"{name:40} (not a known setting: a typo?)")
