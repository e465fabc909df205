"""The embedded PostgreSQL server: start/stop/status, DSN choice, and a store that outlives a
server restart. Each test here runs a server of its own (the shared one is never stopped)."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from sharding import _samples as sample
from sharding import pgserver
from sharding.pgserver import EmbeddedPostgres, PgServerError, db_command, resolve_dsn
from sharding.store import Store, StoreUnavailable

pytestmark = pytest.mark.integration


@pytest.fixture
def base_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="billing-pgserver-test-"))
    base.chmod(0o755)  # the server user must be able to reach the data directory
    try:
        yield base
    finally:
        EmbeddedPostgres(base / "pg").stop()
        shutil.rmtree(base, ignore_errors=True)


def test_start_is_idempotent_and_stop_is_clean(base_dir: Path) -> None:
    server = EmbeddedPostgres(base_dir / "pg")
    assert server.status()["running"] is False
    dsn = server.start()
    assert server.start() == dsn  # reuses the running server
    assert EmbeddedPostgres(base_dir / "pg").start() == dsn  # so does another handle on it
    info = server.status()
    assert info["running"] is True and info["dsn"] == dsn and info["version"]
    with psycopg.connect(dsn) as conn:
        settings = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN"
                " ('fsync', 'synchronous_commit', 'listen_addresses', 'unix_socket_directories')"
            ).fetchall()
        )
        user = conn.execute("SELECT current_user").fetchone()
    assert settings["fsync"] == "on" and settings["synchronous_commit"] == "on"
    assert settings["listen_addresses"] == "127.0.0.1"
    assert settings["unix_socket_directories"] == str(server.data_dir)
    assert user == ("billing",)
    server.stop()
    assert server.status()["running"] is False
    server.stop()  # stopping a stopped server is a no-op
    assert server.start() == dsn  # restart keeps the port, hence the DSN


def test_runs_as_an_unprivileged_user_when_root(base_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only meaningful as root")
    server = EmbeddedPostgres(base_dir / "pg")
    server.start()
    owner = (base_dir / "pg").stat().st_uid
    assert owner != 0
    assert server.status()["run_as"] in ("postgres", "billing")


def test_unreachable_data_dir_is_a_clear_error(base_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only meaningful as root")
    hidden = base_dir / "private"
    hidden.mkdir(mode=0o700)
    with pytest.raises(PgServerError, match=r"cannot enter .*private"):
        EmbeddedPostgres(hidden / "pg").start()


def test_non_empty_foreign_directory_is_refused(base_dir: Path) -> None:
    (base_dir / "pg").mkdir()
    (base_dir / "pg" / "notes.txt").write_text("mine")
    with pytest.raises(PgServerError, match="not empty"):
        EmbeddedPostgres(base_dir / "pg").start()


def test_missing_binaries_name_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgserver.shutil, "which", lambda name: None)
    monkeypatch.setattr(pgserver.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(pgserver.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(pgserver, "_bindir_ok", lambda path: False)
    with pytest.raises(PgServerError, match=r"embedded-pg.*BILLING_DSN"):
        pgserver.find_bindir()


def test_the_pgserver_wheel_is_a_candidate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With no system binaries, the binaries inside the `pgserver` wheel are used."""
    wheel_bin = tmp_path / "pgserver" / "pginstall" / "bin"
    wheel_bin.mkdir(parents=True)
    for name in ("initdb", "postgres", "pg_ctl"):
        (wheel_bin / name).write_text("")

    class Spec:
        origin = str(tmp_path / "pgserver" / "__init__.py")

    monkeypatch.setattr(pgserver.shutil, "which", lambda name: None)
    monkeypatch.setattr(pgserver.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(pgserver.importlib.util, "find_spec", lambda name: Spec())
    real_ok = pgserver._bindir_ok
    monkeypatch.setattr(pgserver, "_bindir_ok", lambda p: p == wheel_bin and real_ok(p))
    assert pgserver.find_bindir() == wheel_bin


def test_resolve_dsn_prefers_flag_then_env(monkeypatch: pytest.MonkeyPatch, base_dir: Path) -> None:
    monkeypatch.setenv("BILLING_DSN", "postgresql://env@db/x")
    assert resolve_dsn("postgresql://flag@db/x", base_dir) == ("postgresql://flag@db/x", None)
    assert resolve_dsn(None, base_dir) == ("postgresql://env@db/x", None)
    monkeypatch.delenv("BILLING_DSN")
    dsn, server = resolve_dsn(None, base_dir / "pg")
    assert server is not None and server.status()["dsn"] == dsn


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BILLING_HOME", "/srv/billing")
    assert pgserver.default_data_dir() == Path("/srv/billing/pg")
    monkeypatch.delenv("BILLING_HOME")
    open_dir = Path("/tmp") / f"billing-open-{os.getpid()}"
    open_dir.mkdir(mode=0o755, exist_ok=True)
    monkeypatch.chdir(open_dir)
    assert pgserver.default_data_dir() == Path("var/pg")


@pytest.mark.skipif(
    os.geteuid() != 0, reason="the fallback applies when the server runs as another user"
)
def test_default_data_dir_leaves_a_private_checkout_as_root(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("BILLING_HOME", raising=False)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    monkeypatch.chdir(private)
    chosen = pgserver.default_data_dir()
    assert chosen.parts[:3] == ("/", "var", "tmp") and chosen.name == "pg"
    monkeypatch.chdir(tmp_path)
    assert pgserver.default_data_dir() != chosen  # one data directory per checkout


def test_db_command_up_status_down(base_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = base_dir / "pg"
    assert db_command("up", data) == 0
    assert "DSN: postgresql://" in capsys.readouterr().out
    assert db_command("status", data) == 0
    assert "running      True" in capsys.readouterr().out
    assert db_command("down", data) == 0
    assert "stopped" in capsys.readouterr().out
    assert db_command("down", data) == 0
    assert "not running" in capsys.readouterr().out
    assert db_command("sideways", data) == 2
    assert "expected up, down or status" in capsys.readouterr().out


def test_store_survives_a_server_restart(base_dir: Path) -> None:
    """Server down: StoreUnavailable, nothing acknowledged. Server back: the pool recovers."""
    server = EmbeddedPostgres(base_dir / "pg")
    dsn = server.start()

    async def scenario() -> int:
        async with Store(dsn, timeout_s=2.0) as store:
            await store.migrate()
            epochs = await store.take_over([1], "owner-a")
            accounts = [sample.account(f"a{i}", 1) for i in range(3)]
            await store.commit(sample.debit_batch(accounts, 0), epochs)
            server.stop()
            with pytest.raises(StoreUnavailable):
                await store.commit(sample.debit_batch(accounts, 1), epochs)
            server.start()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while True:  # wait for the pool to reconnect, with a deadline
                try:
                    await store.commit(sample.debit_batch(accounts, 2), epochs)
                    break
                except StoreUnavailable:
                    if loop.time() > deadline:
                        raise
                    await asyncio.sleep(0.2)
            with psycopg.connect(dsn) as conn:
                row = conn.execute("SELECT count(*) FROM journal").fetchone()
            assert row is not None
            return int(row[0])

    assert asyncio.run(scenario()) == 6  # batches 0 and 2; batch 1 wrote nothing


def test_a_server_that_fails_to_start_shows_its_log(base_dir: Path) -> None:
    server = EmbeddedPostgres(base_dir / "pg")
    server.start()
    server.stop()
    with (base_dir / "pg" / "postgresql.conf").open("a") as conf:
        conf.write("shared_buffers = 'plenty'\n")
    with pytest.raises(PgServerError, match=r"did not start(.|\n)*server log tail"):
        server.start()


def test_as_root_without_a_postgres_user_a_billing_user_is_created(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The code path for machines without a `postgres` OS user (checked without touching
    the system: pwd and useradd are fakes)."""
    import pwd as real_pwd

    created: list[list[str]] = []
    entry = real_pwd.struct_passwd(("billing", "x", 990, 990, "", "/", "/usr/sbin/nologin"))

    def getpwnam(name: str) -> real_pwd.struct_passwd:
        if name == "billing" and created:
            return entry
        raise KeyError(name)

    def run(args: list[str], **kwargs: object) -> object:
        created.append(args)
        return type("Done", (), {"returncode": 0, "stderr": ""})()

    monkeypatch.setattr(pgserver.os, "geteuid", lambda: 0)
    monkeypatch.setattr(pgserver.pwd, "getpwnam", getpwnam)
    monkeypatch.setattr(pgserver.shutil, "which", lambda name: f"/usr/sbin/{name}")
    monkeypatch.setattr(pgserver.subprocess, "run", run)
    run_as = pgserver._run_as_user()
    assert run_as == pgserver._RunAs(990, 990, "billing")
    assert created and created[0][0] == "/usr/sbin/useradd" and created[0][-1] == "billing"
    assert "--system" in created[0]


def test_binaries_must_match_an_existing_data_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A data directory of PostgreSQL N needs the binaries of N: others are skipped, and when
    none matches the error names the versions found."""
    dirs = {}
    for major in ("14", "15"):
        d = tmp_path / major / "bin"
        d.mkdir(parents=True)
        for name in ("initdb", "postgres", "pg_ctl"):
            (d / name).write_text("")
        dirs[major] = d
    monkeypatch.setattr(pgserver.shutil, "which", lambda name: None)
    monkeypatch.setattr(pgserver.glob, "glob", lambda pattern: [str(p) for p in dirs.values()])
    monkeypatch.setattr(pgserver.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(pgserver, "server_major", lambda path: path.parent.name)
    assert pgserver.find_bindir() == dirs["15"]  # newest first
    assert pgserver.find_bindir("14") == dirs["14"]
    with pytest.raises(
        PgServerError,
        match=r"made by PostgreSQL 16.*\(14\).*\(15\)|made by PostgreSQL 16.*\(15\).*\(14\)",
    ):
        pgserver.find_bindir("16")
