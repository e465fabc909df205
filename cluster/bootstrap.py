"""Bring the online charging system up and down: Ray, PostgreSQL, owners + manager, front door.

Used by ``billing serve``, ``billing demo``, ``billing frontdoor`` and the integration tests.

- Ray: a new local cluster by default (explicit ``num_cpus`` and object store size, DESIGN.md
  section 7), or an existing one with ``address`` (``"auto"`` finds a cluster on this machine).
- PostgreSQL: ``dsn`` (or ``BILLING_DSN``) when given, else the embedded server in
  ``data_dir``, started here and stopped by :meth:`System.stop` (sharding.pgserver).
- Owners and the shard manager: engineer O's :func:`actors.bootstrap.start_cluster` (starts or
  joins the detached actors and waits until every owner has loaded its vshards).
- The front door: :func:`start_frontdoor` wires a :class:`~cluster.frontdoor.FrontDoor` to the
  Ray side through :mod:`cluster.owners`; charging batches go over each owner's direct channel
  (``transport="direct"``, the default) or as Ray calls (``"ray"``). It needs only a Ray
  connection: several front doors (in this or other processes) can run side by side on
  different ports.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors._gc import tune_gc
from cluster import telemetry
from cluster.frontdoor import Dispatcher, FrontDoor
from cluster.owners import (
    NAMESPACE,
    TRANSPORT_DEFAULT,
    RayMapSource,
    RayPlanService,
    owner_directory,
)
from cluster.telemetry import Telemetry

log = logging.getLogger(__name__)

OBJECT_STORE_MB_DEFAULT = 200
MAX_IN_FLIGHT_FRONTDOOR = 1  # batches in flight per owner (benchmarks/README.md, direct channel)


class StartupError(RuntimeError):
    """The system could not be brought up; the message says what to do."""


def init_ray(
    address: str | None,
    *,
    num_cpus: int | None = None,
    object_store_mb: int = OBJECT_STORE_MB_DEFAULT,
    namespace: str = NAMESPACE,
) -> bool:
    """Connect to Ray. Returns True when a new local cluster was started here.

    Already initialised (a test fixture, an embedding program): nothing is started.
    """
    import ray

    if ray.is_initialized():
        return False
    quiet: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    if address:
        _check_reachable(address)
        _use_auth_token_if_available()
        try:
            ray.init(address=address, namespace=namespace, **quiet)
        except ConnectionError as error:
            raise StartupError(
                f"cannot join the Ray cluster at {address!r}: {error}."
                " Start one (billing serve, or ray start --head) or check --address."
            ) from None
        return False
    mode = telemetry.mode_from_env()
    if mode != "off":  # traces cross Ray calls: each worker sets up the same exporter
        quiet["_tracing_startup_hook"] = telemetry.RAY_TRACING_HOOK
        quiet["runtime_env"] = {"env_vars": {telemetry.ENV: mode}}
    ray.init(
        address="local",  # always a new cluster here: joining one takes --address
        num_cpus=num_cpus if num_cpus is not None else max(os.cpu_count() or 2, 2),
        object_store_memory=object_store_mb * 1024 * 1024,
        namespace=namespace,
        include_dashboard=False,
        **quiet,
    )
    return True


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, naming the address, when nothing listens at a ``host:port`` address.

    ``ray.init`` keeps retrying an unreachable GCS for about five minutes before it gives up;
    an operator who mistyped ``--address`` should hear about it at once. ``auto`` and other
    forms without a port are left to Ray.
    """
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as error:
        raise StartupError(
            f"cannot join the Ray cluster at {address!r}: nothing answers at {host}:{port}"
            f" ({error}). Start one (billing serve, or ray start --head) or check --address."
        ) from None


def _use_auth_token_if_available() -> None:
    """Send this machine's Ray token when joining (Ray 2.60 local clusters require it).

    A new local cluster turns token authentication on and keeps the token in
    ``~/.ray/auth_token``; a driver joining it by address does not turn it on by itself, and the
    cluster then refuses it. An explicit ``RAY_AUTH_MODE`` is respected.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return
    try:  # Ray's own switch: sets the variable and refreshes Ray's already-loaded config
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # another Ray version: no token authentication to enable
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


@dataclass
class System:
    """What :func:`bring_up` started (so :meth:`stop` stops exactly that)."""

    dsn: str
    embedded: Any  # sharding.pgserver.EmbeddedPostgres | None
    ray_started: bool
    handles: Any  # actors.bootstrap.ClusterHandles

    def stop(self, *, stop_actors: bool = True) -> None:
        """Stop the owners and manager (when asked), the local Ray cluster and PostgreSQL."""
        import ray

        from actors.bootstrap import stop_cluster

        if stop_actors:
            with contextlib.suppress(Exception):
                stop_cluster(self.handles)
        if self.ray_started:
            with contextlib.suppress(Exception):
                ray.shutdown()
        if self.embedded is not None:
            with contextlib.suppress(Exception):
                self.embedded.stop()


def default_data_dir() -> Path:
    from sharding.pgserver import default_data_dir as pg_default

    return pg_default()


def bring_up(
    *,
    address: str | None = None,
    dsn: str | None = None,
    data_dir: Path | None = None,
    owners: int = 2,
    vshard_count: int | None = None,
    num_cpus: int | None = None,
    object_store_mb: int = OBJECT_STORE_MB_DEFAULT,
    ready_timeout_s: float = 300.0,
) -> System:
    """Start (or join) Ray, PostgreSQL, and the owners + manager; return what was started."""
    from actors.bootstrap import start_cluster
    from sharding.pgserver import PgServerError, resolve_dsn
    from sharding.vshard import VSHARD_COUNT_DEFAULT

    try:
        chosen_dsn, embedded = resolve_dsn(dsn, data_dir or default_data_dir())
    except PgServerError as error:
        raise StartupError(f"PostgreSQL: {error}") from None
    try:
        ray_started = init_ray(address, num_cpus=num_cpus, object_store_mb=object_store_mb)
    except BaseException:
        if embedded is not None:
            embedded.stop()
        raise
    try:
        handles = start_cluster(
            chosen_dsn,
            owners=owners,
            vshard_count=vshard_count or VSHARD_COUNT_DEFAULT,
            ready_timeout_s=ready_timeout_s,
        )
    except BaseException as error:
        System(chosen_dsn, embedded, ray_started, None).stop(stop_actors=False)
        if isinstance(error, RuntimeError):
            raise StartupError(str(error)) from None
        raise
    return System(chosen_dsn, embedded, ray_started, handles)


async def start_frontdoor(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    queue_max: int | None = None,
    batch_max: int | None = None,
    request_timeout_s: float | None = None,
    telemetry: Telemetry | None = None,
    namespace: str = NAMESPACE,
    transport: str = TRANSPORT_DEFAULT,
    max_in_flight: int = MAX_IN_FLIGHT_FRONTDOOR,
    batch_hold_s: float | None = None,
) -> FrontDoor:
    """A started front door on ``host:port`` (0 = any free port) against the running cluster.

    ``transport``: how charging batches reach the owners, ``"direct"`` (each owner's channel,
    actors/channel.py) or ``"ray"`` (a Ray actor call per batch). ``max_in_flight``: batches in
    flight per owner (cluster/batching.py). ``batch_hold_s``: how long a batch may wait for more
    requests when its owner is under sustained load (fill mode, cluster/batching.py; None = the
    default, 3 ms; 0 = off: every batch leaves as soon as the previous one returned).

    Also raises this process's collector thresholds (actors/_gc.py, as the owners do): a front
    door allocates a future, a request and an answer per message over a large long-lived heap
    (Ray driver, gRPC, protobuf); with CPython's defaults the young collections took ~17 % of its
    CPU under streaming load (measured: 38 -> 31 µs per request in the front door).
    """
    from cluster.batching import HOLD_S_LIMIT, MAX_IN_FLIGHT_LIMIT

    if not 1 <= max_in_flight <= MAX_IN_FLIGHT_LIMIT:  # fail before anything starts
        raise StartupError(
            f"max_in_flight must be in 1..{MAX_IN_FLIGHT_LIMIT}, got {max_in_flight}"
        )
    if batch_hold_s is not None and not 0.0 <= batch_hold_s <= HOLD_S_LIMIT:
        raise StartupError(f"batch_hold_s must be in 0..{HOLD_S_LIMIT} seconds, got {batch_hold_s}")
    try:
        owners = owner_directory(transport, namespace)
    except ValueError as error:
        raise StartupError(str(error)) from None
    tune_gc()
    maps = RayMapSource(namespace=namespace)
    options: dict[str, Any] = {"max_in_flight": max_in_flight}
    if queue_max is not None:
        options["queue_max"] = queue_max
    if batch_max is not None:
        options["batch_max"] = batch_max
    if request_timeout_s is not None:
        options["request_timeout_s"] = request_timeout_s
    if batch_hold_s is not None:
        options["hold_s"] = batch_hold_s
    dispatcher = Dispatcher(maps, owners, telemetry=telemetry, **options)
    door = FrontDoor(dispatcher, RayPlanService(maps), host=host, port=port, telemetry=telemetry)
    try:
        await door.start()
    except ValueError as error:  # the manager is not running
        raise StartupError(
            f"no billing cluster found in Ray namespace {namespace!r} ({error}):"
            " start one with `billing serve`"
        ) from None
    except OSError as error:
        raise StartupError(f"cannot listen on {host}:{port}: {error}") from None
    return door
