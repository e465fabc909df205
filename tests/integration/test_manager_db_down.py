"""The shard manager when PostgreSQL goes away: a map change fails within the store's bounded wait
with an error naming the store, nothing moves, and the same change succeeds once the server is
back. The cluster runs in a namespace of its own (start_cluster must hand it to the owners, which
look the manager up by name there) against a PostgreSQL server of its own, which the test stops.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.bootstrap import start_cluster, stop_cluster
from actors.owner import OwnerConfig

pytestmark = pytest.mark.integration

NAMESPACE = "billing-db-down-test"


@pytest.fixture
def own_server() -> Iterator[Any]:
    from sharding.pgserver import EmbeddedPostgres

    base = Path(tempfile.mkdtemp(prefix="billing-test-pg-down-"))
    base.chmod(0o755)
    server = EmbeddedPostgres(base / "data")
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_map_change_fails_fast_and_cleanly_while_the_database_is_down(
    ray_cluster: Any, own_server: Any
) -> None:
    dsn = str(own_server.status()["dsn"])
    handles = start_cluster(
        dsn,
        owners=2,
        vshard_count=16,
        namespace=NAMESPACE,
        config=OwnerConfig(dsn=dsn),
        ready_timeout_s=120,
    )
    try:
        before = handles.get_map()
        other = next(o for o in before.owners if o != before.owner_of(0))
        own_server.stop()
        started = time.monotonic()
        with pytest.raises(Exception) as failed:
            ray_cluster.get(handles.manager.move.remote({0: other}), timeout=120)
        waited = time.monotonic() - started
        assert "StoreUnavailable" in repr(failed.value), failed.value
        # Bounded by the store's connection wait (10 s) plus a margin, not minutes of retries.
        assert waited < 60, waited
        assert ray_cluster.get(handles.manager.get_map.remote(), timeout=30) == before

        own_server.start()
        moved = None
        deadline = time.monotonic() + 60
        while moved is None:
            try:
                moved = ray_cluster.get(handles.manager.move.remote({0: other}), timeout=60)
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert moved.version == before.version + 1 and moved.owner_of(0) == other
    finally:
        if own_server.status().get("running") is False:
            own_server.start()
        stop_cluster(handles, namespace=NAMESPACE)
