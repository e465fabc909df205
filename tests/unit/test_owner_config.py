"""OwnerConfig: every bound is checked, and the database remembers answers longer than memory."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from actors.owner import OwnerConfig


def test_defaults_are_valid() -> None:
    config = OwnerConfig(dsn="postgresql://x")
    assert config.answer_db_retention_s >= config.answer_retention_s


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("batch_max", 0),
        ("queue_max", 0),
        ("answer_db_retention_s", 0),
        ("answer_db_prune_interval_s", -1),
    ],
)
def test_bad_bounds_name_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        OwnerConfig(dsn="postgresql://x", **{field: value})


def test_stored_answers_must_outlive_remembered_ones() -> None:
    with pytest.raises(ValueError, match="answer_db_retention_s must be >= answer_retention_s"):
        OwnerConfig(dsn="postgresql://x", answer_retention_s=600, answer_db_retention_s=60)


@pytest.mark.parametrize(
    ("field", "value"), [("warm_max", -1), ("warm_idle_s", 0), ("niceness", 20)]
)
def test_hot_path_bounds_name_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        OwnerConfig(dsn="postgresql://x", **{field: value})


def test_the_owner_sets_the_niceness_of_every_thread_of_its_process() -> None:
    """Ray starts workers at nice 15; the owner sets its own (here one step up from the
    current, which needs no privilege), in a child process so pytest keeps its own."""
    script = textwrap.dedent(
        """
        import os, threading
        from actors.owner import _set_niceness
        started = threading.Event(); stop = threading.Event()
        def idle():
            started.set(); stop.wait()
        thread = threading.Thread(target=idle); thread.start(); started.wait()
        target = os.getpriority(os.PRIO_PROCESS, 0) + 1
        _set_niceness(target)
        threads = [int(t) for t in os.listdir("/proc/self/task")]
        print(target, sorted({os.getpriority(os.PRIO_PROCESS, t) for t in threads}), len(threads))
        stop.set(); thread.join()
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out[1] == f"[{out[0]}]"  # every thread at the target niceness
    assert int(out[2]) >= 2  # the helper thread was there too
