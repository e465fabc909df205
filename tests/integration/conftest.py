"""Integration fixtures: one local Ray cluster for the whole test session.

``ray_cluster`` starts Ray once (``ray.init`` costs ~3 s: DESIGN.md section 7) with explicit,
small resources for these 2-core machines, in the ``billing`` namespace the owners and the shard
manager use. Tests that need their own multi-node cluster (chaos) start one themselves.
Detached actors a test creates must be killed by that test (or its fixture) so the next test
starts clean.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

RAY_NAMESPACE = "billing"


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """The ``ray`` module, initialised against a local single-node cluster for the session."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(
            address="local",  # always a new cluster: never join one another process started
            num_cpus=2,
            object_store_memory=100 * 1024 * 1024,
            namespace=RAY_NAMESPACE,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    try:
        yield ray
    finally:
        ray.shutdown()
