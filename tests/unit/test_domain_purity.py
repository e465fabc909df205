"""The pure domain (billing/) imports no Ray, gRPC or psycopg and never reads the system clock.

Time is passed in (STYLE.md): a domain step must replay identically from its inputs. The scan walks
the AST of every billing/*.py, so an aliased import or a call through a module attribute is caught
too, and the scanner itself is tested on violating snippets.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BILLING = Path(__file__).resolve().parents[2] / "billing"
FORBIDDEN_MODULES = ("ray", "grpc", "psycopg", "psycopg2")
CLOCK_CALLS = {
    "datetime": {"now", "utcnow", "today"},
    "date": {"today"},
    "time": {"time", "monotonic", "perf_counter", "time_ns", "monotonic_ns", "perf_counter_ns"},
}


def violations(source: str, name: str = "<snippet>") -> list[str]:
    """Every forbidden import or clock read in ``source``."""
    found: list[str] = []
    tree = ast.parse(source, filename=name)
    clock_aliases: dict[str, str] = {}  # local name -> "time.time" etc. for from-imports
    owners: dict[str, str] = {}  # local name -> "time" / "datetime" / "date"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in FORBIDDEN_MODULES:
                    found.append(f"{name}:{node.lineno}: imports {alias.name}")
                if alias.asname and alias.name in CLOCK_CALLS:
                    owners[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            if root in FORBIDDEN_MODULES:
                found.append(f"{name}:{node.lineno}: imports from {node.module}")
            for alias in node.names:
                if alias.asname and alias.name in CLOCK_CALLS:
                    owners[alias.asname] = alias.name
                if root in CLOCK_CALLS and alias.name in CLOCK_CALLS[root]:
                    found.append(f"{name}:{node.lineno}: imports clock {node.module}.{alias.name}")
                    clock_aliases[alias.asname or alias.name] = f"{root}.{alias.name}"
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):
                owner = func.value
                owner_name = (
                    owner.id
                    if isinstance(owner, ast.Name)
                    else owner.attr
                    if isinstance(owner, ast.Attribute)
                    else None
                )
                owner_name = owners.get(owner_name or "", owner_name)
                if owner_name in CLOCK_CALLS and func.attr in CLOCK_CALLS[owner_name]:
                    found.append(
                        f"{name}:{node.lineno}: reads the clock {owner_name}.{func.attr}()"
                    )
            elif isinstance(func, ast.Name) and func.id in clock_aliases:
                found.append(f"{name}:{node.lineno}: reads the clock {clock_aliases[func.id]}()")
    return found


def domain_files() -> list[Path]:
    return sorted(BILLING.rglob("*.py"))


def test_domain_has_modules() -> None:
    names = {p.name for p in domain_files()}
    assert {"charging.py", "accounts.py", "sessions.py", "ledger.py", "state.py"} <= names


@pytest.mark.parametrize("path", domain_files(), ids=lambda p: p.name)
def test_domain_module_is_pure(path: Path) -> None:
    assert violations(path.read_text(encoding="utf-8"), path.name) == []


@pytest.mark.parametrize(
    "snippet",
    [
        "import ray",
        "import grpc.aio as g",
        "from psycopg import sql",
        "import datetime\ndatetime.datetime.now()",
        "from datetime import datetime\ndatetime.utcnow()",
        "from datetime import date\ndate.today()",
        "import time\ntime.monotonic()",
        "import time as t\nt.time()",
        "from time import perf_counter as pc\npc()",
        "from datetime import datetime as DT\nDT.now()",
    ],
)
def test_scanner_catches_violations(snippet: str) -> None:
    assert violations(snippet) != []


@pytest.mark.parametrize(
    "snippet",
    [
        "from datetime import datetime, timedelta\nx = datetime(2026, 1, 1)",
        "import raymond",
        "def now(): ...\nnow()",
    ],
)
def test_scanner_allows_pure_code(snippet: str) -> None:
    assert violations(snippet) == []
