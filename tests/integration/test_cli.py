"""The ``billing`` command as a person runs it: in a subprocess, checking exit codes and output.

The demo brings up its own Ray cluster, embedded PostgreSQL, owners and front door, drives load
over gRPC and audits conservation; it must exit 0. Expected failures print one clear line, never
a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BILLING = [sys.executable, "-m", "cluster.cli"]


def run(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    merged = {**os.environ, "COLUMNS": "120", **(env or {})}
    merged.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [*BILLING, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=merged,
        check=False,
    )


@pytest.mark.integration
@pytest.mark.slow
def test_demo_runs_end_to_end_and_exits_zero(tmp_path: Path) -> None:
    result = run(
        "demo",
        "--subscribers",
        "2000",
        "--duration",
        "5",
        "--num-cpus",
        "2",
        "--object-store-mb",
        "100",
        timeout=600,
        env={"BILLING_HOME": str(tmp_path)},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "provisioned 2,000 subscribers" in output
    assert "req/s" in output and "p99" in output
    assert "SUCCESS" in output
    assert "conservation check OK" in output
    assert "Traceback" not in output


def test_plans_list_show_copy(tmp_path: Path) -> None:
    listed = run("plans", "list")
    assert listed.returncode == 0, listed.stderr
    for name in ("payg", "postpaid-monthly", "hybrid", "iot-pool"):
        assert name in listed.stdout
    shown = run("plans", "show", "payg")
    assert shown.returncode == 0 and "payg" in shown.stdout
    dest = tmp_path / "my-plan.yaml"
    copied = run("plans", "copy", "hybrid", str(dest))
    assert copied.returncode == 0, copied.stderr
    assert "plan_id: hybrid" in dest.read_text()
    again = run("plans", "copy", "hybrid", str(dest))
    assert again.returncode == 2 and "--force" in again.stderr
    unknown = run("plans", "show", "nope")
    assert unknown.returncode == 2
    assert "unknown plan 'nope'" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_expected_failures_are_one_clear_line() -> None:
    nobody = run("load", "--target", "127.0.0.1:1", "--duration", "1", timeout=60)
    assert nobody.returncode == 1
    assert "no gRPC server answers at 127.0.0.1:1" in nobody.stderr
    assert "Traceback" not in nobody.stdout + nobody.stderr
    bad_mix = run("load", "--mix", "voice=x", "--duration", "1")
    assert bad_mix.returncode == 2 and "mix: weight of 'voice'" in bad_mix.stderr
    bad_otel = run("plans", "list", env={"BILLING_OTEL": "loud"})
    assert bad_otel.returncode == 2 and "BILLING_OTEL" in bad_otel.stderr


def test_db_status_of_an_unused_data_dir(tmp_path: Path) -> None:
    status = run("db", "status", "--data-dir", str(tmp_path / "pg"))
    assert status.returncode == 0, status.stderr
    assert "running" in status.stdout


@pytest.mark.integration
@pytest.mark.slow
def test_serve_then_load_over_a_stream_then_stop_cleanly() -> None:
    import shutil
    import signal
    import socket
    import tempfile
    import time

    # Not pytest's tmp_path: the embedded server's unprivileged user must be able to enter it.
    tmp_path = Path(tempfile.mkdtemp(prefix="billing-cli-serve-"))
    tmp_path.chmod(0o755)

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "COLUMNS": "120", "BILLING_HOME": str(tmp_path)}
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        serve = subprocess.Popen(
            [*BILLING, "serve", "--port", str(port), "--num-cpus", "2", "--object-store-mb", "100"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
    try:
        deadline = time.monotonic() + 300
        while "listening" not in log.read_text():
            assert serve.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        assert (tmp_path / "ray-address").exists()
        load = run(
            "load",
            "--target",
            f"127.0.0.1:{port}",
            "--create-subscribers",
            "--subscribers",
            "200",
            "--transport",
            "stream",
            "--duration",
            "2",
            timeout=300,
        )
        output = load.stdout + load.stderr
        assert load.returncode == 0, output
        assert "created 200 subscribers" in output and "SUCCESS" in output
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(timeout=120)
        text = log.read_text()
        assert code == 0, text
        assert "stopped" in text and "Traceback" not in text
        assert not (tmp_path / "ray-address").exists()
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait(timeout=30)
        from sharding.pgserver import EmbeddedPostgres

        if (tmp_path / "pg").exists():  # after a failure: never leave a server running
            EmbeddedPostgres(tmp_path / "pg").stop()
        shutil.rmtree(tmp_path, ignore_errors=True)
