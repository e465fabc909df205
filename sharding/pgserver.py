"""A private PostgreSQL server in a local data directory, and the choice between it and a DSN.

With no DSN configured (``BILLING_DSN`` or a flag), the CLI and the test fixtures start a
PostgreSQL server of their own with :class:`EmbeddedPostgres`: system binaries when present
(``PATH``, ``pg_config --bindir``, ``/usr/lib/postgresql/*/bin``, ``/usr/local/pgsql/bin``), else
the server shipped inside the optional ``pgserver`` wheel (``pip install
'integrated-billing[embedded-pg]'``). It listens on 127.0.0.1 on a free port (remembered in the
data directory, so a restart keeps the same DSN) and on a socket inside the data directory.

``initdb`` and ``postgres`` refuse to run as root: as root they run as the ``postgres`` OS user,
or as a ``billing`` system user created for the purpose, and the data directory is theirs.
Durability is never traded for speed here: ``fsync`` and ``synchronous_commit`` stay on
(DESIGN.md invariant 2: an answer leaves only after its journal entry is durable).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib.util
import os
import pwd
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_DATABASE",
    "DEFAULT_USER",
    "EmbeddedPostgres",
    "PgServerError",
    "db_command",
    "default_data_dir",
    "find_bindir",
    "resolve_dsn",
    "server_major",
]

DEFAULT_USER = "billing"
DEFAULT_DATABASE = "billing"
START_TIMEOUT_S = 60.0
_PORT_FILE = "billing_port"
_LOG_FILE = "server.log"
_UNIX_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; ".s.PGSQL.NNNNN" needs the rest
_INSTALL_HINT = (
    "no PostgreSQL server binaries found (looked in PATH, `pg_config --bindir`, "
    "/usr/lib/postgresql/*/bin, /usr/local/pgsql/bin, and the `pgserver` wheel). Install one: "
    "`apt-get install postgresql` (Debian/Ubuntu), or `pip install 'integrated-billing[embedded-pg]'` "
    "(a PostgreSQL server inside a wheel), or point BILLING_DSN at an existing server."
)


class PgServerError(RuntimeError):
    """The embedded server could not be found, initialised, started or stopped."""


def default_data_dir() -> Path:
    """``$BILLING_HOME/pg`` if ``BILLING_HOME`` is set, else ``./var/pg``.

    As root the server runs as an unprivileged user, which must be able to traverse every
    ancestor of its data directory. A checkout under a private home (``/root`` is 0700) would
    make ``./var/pg`` unreachable for it, so there the default moves to
    ``/var/tmp/billing-<hash of the checkout path>/pg``: the same checkout always finds its data.
    """
    home = os.environ.get("BILLING_HOME")
    if home:
        return Path(home) / "pg"
    local = Path("var") / "pg"
    if os.geteuid() == 0 and not _others_may_traverse(local.absolute()):
        digest = hashlib.sha256(str(Path.cwd()).encode()).hexdigest()[:12]
        return Path("/var/tmp") / f"billing-{digest}" / "pg"
    return local


def _others_may_traverse(path: Path) -> bool:
    """True when every existing ancestor of ``path`` lets any user pass (mode o+x)."""
    for parent in path.parents:
        with contextlib.suppress(FileNotFoundError):
            if not parent.stat().st_mode & 0o001:
                return False
    return True


def _bindir_ok(path: Path) -> bool:
    return (
        (path / "initdb").is_file()
        and (path / "postgres").is_file()
        and (path / "pg_ctl").is_file()
    )


def server_major(bindir: Path) -> str | None:
    """The major version of the server in ``bindir`` ("15"), from ``postgres --version``."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"], capture_output=True, text=True, timeout=10
        )
        found = re.search(r"\(PostgreSQL\)\s+(\d+)", out.stdout)
        return found.group(1) if found else None
    return None


def find_bindir(major: str | None = None) -> Path:
    """Return the directory holding ``initdb``, ``postgres`` and ``pg_ctl``, or raise.

    Order: ``PATH``, ``pg_config --bindir``, ``/usr/lib/postgresql/<newest>/bin``,
    ``/usr/local/pgsql/bin``, then the ``pgserver`` wheel (optional extra ``embedded-pg``).
    With ``major`` (the version of an existing data directory), only binaries of that major
    version will do: a server cannot open another major version's files.
    """
    candidates: list[Path] = []
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(out.stdout.strip()))

    def version_key(p: str) -> float:
        name = Path(p).parent.name
        try:
            return float(name)
        except ValueError:
            return 0.0

    candidates += [
        Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key)[::-1]
    ]
    candidates.append(Path("/usr/local/pgsql/bin"))
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin is not None:
        candidates.append(Path(spec.origin).parent / "pginstall" / "bin")
    usable = [path for path in candidates if _bindir_ok(path)]
    if not usable:
        raise PgServerError(_INSTALL_HINT)
    if major is None:
        return usable[0]
    found: dict[Path, str | None] = {}
    for path in usable:
        found[path] = server_major(path)
        if found[path] == major:
            return path
    versions = ", ".join(f"{p} ({v or '?'})" for p, v in found.items())
    raise PgServerError(
        f"the data directory was made by PostgreSQL {major}, but the server binaries found are "
        f"of other versions: {versions}. Install PostgreSQL {major}, or use a new data directory"
    )


@dataclass(frozen=True, slots=True)
class _RunAs:
    """The unprivileged OS user the server runs as when we are root (None: run as ourselves)."""

    uid: int
    gid: int
    name: str


def _run_as_user() -> _RunAs | None:
    """As root, pick (or create) the unprivileged user that initdb/postgres will run as."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", DEFAULT_USER):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return _RunAs(entry.pw_uid, entry.pw_gid, name)
    useradd = shutil.which("useradd")
    if useradd is None:
        raise PgServerError(
            "running as root, and neither a `postgres` nor a `billing` OS user exists, and "
            "`useradd` is missing: create an unprivileged user for the server"
        )
    done = subprocess.run(
        [
            useradd,
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            DEFAULT_USER,
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0 and "already exists" not in done.stderr:
        raise PgServerError(f"useradd {DEFAULT_USER} failed: {done.stderr.strip()}")
    entry = pwd.getpwnam(DEFAULT_USER)
    return _RunAs(entry.pw_uid, entry.pw_gid, DEFAULT_USER)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    """Whether a server could listen on ``port``. SO_REUSEADDR as PostgreSQL sets it: the
    TIME_WAIT connections a stopped server leaves behind do not make its port look taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EmbeddedPostgres:
    """A PostgreSQL server of our own in ``data_dir``: initialised on first start, reused after.

    ``start()`` is idempotent: if the server of this data directory is already running (in this
    or another process) it returns that server's DSN. ``stop()`` shuts it down cleanly (fast
    mode: open transactions roll back, nothing committed is lost).
    """

    def __init__(self, data_dir: Path, *, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).absolute()
        self._port_wanted = port
        self._bindir: Path | None = None
        self._run_as = _run_as_user()

    # -- paths and facts -------------------------------------------------------------------

    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            major: str | None = None
            with contextlib.suppress(OSError):
                major = (self.data_dir / "PG_VERSION").read_text().strip()
            self._bindir = find_bindir(major)
        return self._bindir

    @property
    def log_path(self) -> Path:
        return self.data_dir / _LOG_FILE

    def dsn(self, port: int, database: str = DEFAULT_DATABASE) -> str:
        return f"postgresql://{DEFAULT_USER}@127.0.0.1:{port}/{database}"

    def _initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def _running_pid_port(self) -> tuple[int, int] | None:
        """(pid, port) from postmaster.pid if that process is alive, else None."""
        pidfile = self.data_dir / "postmaster.pid"
        try:
            lines = pidfile.read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        return (pid, port) if _pid_alive(pid) else None

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        return "\n".join(text[-lines:])

    # -- running the binaries -----------------------------------------------------------------

    def _run(self, args: list[str], *, timeout_s: float) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        env = dict(os.environ)
        env.pop("PGDATA", None)
        if self._run_as is not None:
            kwargs.update(user=self._run_as.uid, group=self._run_as.gid, extra_groups=[])
            env["HOME"] = str(self.data_dir)
            env["USER"] = env["LOGNAME"] = self._run_as.name
        try:
            return subprocess.run(
                args,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                env=env,
                cwd=str(self.data_dir if self.data_dir.is_dir() else "/"),
                **kwargs,
            )
        except subprocess.TimeoutExpired as e:
            raise PgServerError(
                f"{Path(args[0]).name} did not finish within {timeout_s:.0f} s\n"
                f"server log tail:\n{self._log_tail()}"
            ) from e

    def _check_traversable(self) -> None:
        """The server user must reach the data directory: every ancestor must let it pass."""
        if self._run_as is None:
            return
        for parent in self.data_dir.parents:
            st = parent.stat()
            if st.st_mode & 0o001:
                continue
            if st.st_uid == self._run_as.uid and st.st_mode & 0o100:
                continue
            if st.st_gid == self._run_as.gid and st.st_mode & 0o010:
                continue
            raise PgServerError(
                f"the server runs as OS user {self._run_as.name!r} (initdb/postgres refuse "
                f"root), which cannot enter {parent} (mode {oct(st.st_mode & 0o777)}): choose a "
                f"data directory under a path others may traverse, or `chmod o+x {parent}`"
            )

    def _initdb(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._check_traversable()
        if any(self.data_dir.iterdir()):
            raise PgServerError(
                f"{self.data_dir} exists, is not empty and holds no PostgreSQL cluster "
                "(no PG_VERSION): refusing to initialise over it"
            )
        if self._run_as is not None:
            os.chown(self.data_dir, self._run_as.uid, self._run_as.gid)
        self.data_dir.chmod(0o700)
        done = self._run(
            [
                str(self.bindir / "initdb"),
                "-D", str(self.data_dir),
                "-U", DEFAULT_USER,
                "-A", "trust",
                "-E", "UTF8",
                "--locale", "C",
            ],
            timeout_s=120,
        )  # fmt: skip
        if done.returncode != 0:
            raise PgServerError(
                f"initdb failed (exit {done.returncode}):\n{done.stderr.strip()[-2000:]}"
            )
        socket_dir = str(self.data_dir)
        if len(socket_dir) > _UNIX_SOCKET_PATH_MAX:
            socket_dir = ""  # path too long for a unix socket: TCP only
        conf = (
            "\n# --- integrated-billing embedded server ---\n"
            "listen_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{socket_dir}'\n"
            "fsync = on\n"
            "synchronous_commit = on\n"
            "full_page_writes = on\n"
            "max_connections = 200\n"
            "shared_buffers = 128MB\n"
            "timezone = 'UTC'\n"
            "log_timezone = 'UTC'\n"
            "logging_collector = off\n"
        )
        with (self.data_dir / "postgresql.conf").open("a") as f:
            f.write(conf)

    def _choose_port(self) -> int:
        port_file = self.data_dir / _PORT_FILE
        if self._port_wanted is not None:
            port = self._port_wanted
        else:
            try:
                port = int(port_file.read_text().strip())
            except (OSError, ValueError):
                port = _free_port()
            if not _port_free(port):
                port = _free_port()
        port_file.write_text(f"{port}\n")
        return port

    # -- public API ----------------------------------------------------------------------------

    def start(self) -> str:
        """Start the server (initialising the data directory on first use); return its DSN."""
        running = self._running_pid_port()
        if running is not None:
            self._ensure_database(running[1])
            return self.dsn(running[1])
        if not self._initialised():
            self._initdb()
        self._check_traversable()
        port = self._choose_port()
        if not _port_free(port):
            raise PgServerError(f"port {port} on 127.0.0.1 is in use: choose another port")
        done = self._run(
            [
                str(self.bindir / "pg_ctl"),
                "-D", str(self.data_dir),
                "-l", str(self.log_path),
                "-o", f"-p {port}",
                "-w", "-t", str(int(START_TIMEOUT_S)),
                "start",
            ],
            timeout_s=START_TIMEOUT_S + 10,
        )  # fmt: skip
        if done.returncode != 0:
            raise PgServerError(
                f"PostgreSQL in {self.data_dir} did not start (pg_ctl exit {done.returncode}): "
                f"{done.stderr.strip()[-1000:]}\nserver log tail:\n{self._log_tail()}"
            )
        self._wait_ready(port, deadline=time.monotonic() + START_TIMEOUT_S)
        self._ensure_database(port)
        return self.dsn(port)

    def _wait_ready(self, port: int, *, deadline: float) -> None:
        import psycopg

        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self.dsn(port, "postgres"), connect_timeout=5) as conn:
                    conn.execute("SELECT 1")
                    return
            except psycopg.Error as e:
                last = e
                time.sleep(0.1)
        raise PgServerError(
            f"PostgreSQL on port {port} not ready within {START_TIMEOUT_S:.0f} s: {last}\n"
            f"server log tail:\n{self._log_tail()}"
        )

    def _ensure_database(self, port: int) -> None:
        import psycopg

        with psycopg.connect(self.dsn(port, "postgres"), autocommit=True) as conn:
            found = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DEFAULT_DATABASE,)
            ).fetchone()
            if found is None:
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                    conn.execute(f'CREATE DATABASE "{DEFAULT_DATABASE}"')

    def stop(self) -> None:
        """Shut the server down (fast mode) and wait for it; a no-op if it is not running."""
        if self._running_pid_port() is None:
            return
        done = self._run(
            [str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w",
             "-t", str(int(START_TIMEOUT_S)), "stop"],
            timeout_s=START_TIMEOUT_S + 10,
        )  # fmt: skip
        if done.returncode != 0 and self._running_pid_port() is not None:
            raise PgServerError(
                f"PostgreSQL in {self.data_dir} did not stop (pg_ctl exit {done.returncode}): "
                f"{done.stderr.strip()[-1000:]}\nserver log tail:\n{self._log_tail()}"
            )

    def status(self) -> dict[str, Any]:
        """What a person (or `billing db status`) wants to know about this server."""
        running = self._running_pid_port()
        version: str | None = None
        with contextlib.suppress(OSError):
            version = (self.data_dir / "PG_VERSION").read_text().strip()
        return {
            "running": running is not None,
            "pid": running[0] if running else None,
            "port": running[1] if running else None,
            "dsn": self.dsn(running[1]) if running else None,
            "data_dir": str(self.data_dir),
            "initialised": self._initialised(),
            "version": version,
            "run_as": self._run_as.name if self._run_as else None,
            "log": str(self.log_path),
        }


def resolve_dsn(dsn: str | None, data_dir: Path) -> tuple[str, EmbeddedPostgres | None]:
    """The DSN to use: ``dsn`` if given, else ``BILLING_DSN``, else an embedded server (started).

    Returns the DSN and the embedded server when one was started (the caller stops it), or None
    when an external server (plain PostgreSQL or a Citus coordinator) was chosen.
    """
    chosen = dsn or os.environ.get("BILLING_DSN") or None
    if chosen:
        return chosen, None
    server = EmbeddedPostgres(data_dir)
    return server.start(), server


def db_command(action: str, data_dir: Path | None = None) -> int:
    """``billing db up|down|status``: start, stop or describe the embedded server. Prints; returns
    the process exit code (0 ok, 1 failure, 2 bad action)."""
    from rich.console import Console

    console = Console()
    server_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    if action not in ("up", "down", "status"):
        console.print(f"[red]unknown db action {action!r}: expected up, down or status[/red]")
        return 2
    try:
        server = EmbeddedPostgres(server_dir)
        if action == "up":
            dsn = server.start()
            console.print(f"PostgreSQL running in {server.data_dir}\nDSN: {dsn}")
            console.print(f"(export BILLING_DSN={dsn} to use it from other processes)")
        elif action == "down":
            was = server.status()["running"]
            server.stop()
            console.print(
                f"PostgreSQL in {server.data_dir} stopped" if was else "not running: nothing to do"
            )
        else:
            info = server.status()
            for key, value in info.items():
                console.print(f"{key:12} {value}")
            return 0
    except PgServerError as e:
        console.print(f"[red]{e}[/red]")
        return 1
    return 0
