"""A short chaos run (a few faults, under a minute) and proof that the harness fails when it must.

Each test runs ``python -m failover.chaos`` in its own process: the run starts its own PostgreSQL
and a multi-node Ray cluster (ray.cluster_utils.Cluster), so it must not share a Ray session
with other tests. Timings are printed by the run, never asserted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.chaos, pytest.mark.slow]


def _chaos(*args: str, timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="160")
    return subprocess.run(
        [sys.executable, "-m", "failover.chaos", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def test_short_chaos_run_keeps_every_invariant() -> None:
    """Seed 6: duplicate requests, an owner killed, a node lost, an owner frozen and resumed,
    PostgreSQL crashed and restarted -- and the journal still matches every answer."""
    run = _chaos("--seed", "6", "--faults", "5", "--interval-ms", "2500", "--subscribers", "60")
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    assert "OK: seed 6, no invariant violated" in run.stdout
    for kind in ("kill_owner", "remove_node", "freeze_owner", "restart_postgres"):
        assert kind in run.stdout
    assert "FAIL" not in run.stdout


def test_a_violation_fails_the_run_with_the_seed_to_replay() -> None:
    run = _chaos(
        "--seed",
        "42",
        "--faults",
        "0",
        "--subscribers",
        "20",
        "--settle-s",
        "2",
        "--tamper-for-test",
    )
    assert run.returncode == 1, (run.stdout + run.stderr)[-4000:]
    assert "balance_is_journal" in run.stdout and "FAIL" in run.stdout
    assert "billing chaos --seed 42" in run.stdout
