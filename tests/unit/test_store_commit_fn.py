"""billing_commit() (migrations 0003, 0004) writes exactly what the store's per-table SQL writes.

The function's writes are static text in the migration; the store generates the same
statements from the table descriptions (sharding._rows): the INSERTs and upserts the Citus path
sends, and (since 0004) the UPDATE + upsert-of-the-missing pair the function uses for
accounts. A column added to a table without replacing the function would make the two paths
write different rows: this test fails first.
"""

from __future__ import annotations

from sharding import _sql as q
from sharding._rows import ACCOUNTS

_ARGS = {
    q.SQL_JOURNAL: "p_journal",
    q.SQL_SUBSCRIBERS: "p_subscribers",
    q.SQL_ACCOUNTS: "p_accounts",
    q.SQL_BUCKETS: "p_buckets",
    q.SQL_SESSIONS: "p_sessions",
    q.SQL_END_SESSIONS: "p_ended",
    q.SQL_ANSWERS: "p_answers",
}
# What the function runs for each argument: accounts are UPDATEd, then the rows not found are
# upserted (the Citus path's upsert, limited to them).
_WRITES = {
    **{sql: [sql] for sql in _ARGS},
    q.SQL_ACCOUNTS: [q.SQL_ACCOUNTS_UPDATE, q.SQL_ACCOUNTS_MISSING],
}


def _function_text() -> str:
    """The newest migration that (re)defines billing_commit."""
    found = [sql for _, sql in q.migrations() if "FUNCTION billing_commit" in sql]
    assert found, "no migration defines billing_commit"
    return found[-1]


def test_every_write_of_the_commit_function_is_the_generated_statement() -> None:
    text = _function_text()
    for sql, arg in _ARGS.items():
        for write in _WRITES[sql]:
            statement = write.decode().replace("%s::jsonb", arg)
            assert statement + ";" in text, f"billing_commit does not write {arg} as the store does"


def test_the_missing_rows_upsert_is_the_citus_paths_upsert() -> None:
    """The fallback after the UPDATE writes the same columns and values as the plain upsert."""
    upsert, missing = q.SQL_ACCOUNTS, q.SQL_ACCOUNTS_MISSING
    head, tail = upsert.split(b" FROM jsonb_array_elements(%s::jsonb) AS r")
    assert missing.startswith(head) and missing.endswith(tail)
    assert b" WHERE NOT EXISTS (SELECT 1 FROM accounts AS t WHERE " in missing


def test_the_update_sets_every_non_key_column_from_the_batch() -> None:
    text = q.SQL_ACCOUNTS_UPDATE.decode()
    for name in ACCOUNTS.column_names:
        if name in ACCOUNTS.key:
            assert f"t.{name} = x.{name}" in text
        else:
            assert f"{name} = x.{name}," in text or text.count(f"{name} = x.{name} FROM") == 1


def test_commit_arguments_follow_the_function_signature() -> None:
    """The store passes the batches in COMMIT_ARGS order; the function takes them in that order."""
    text = _function_text()
    signature = text[text.index("billing_commit(") : text.index(") RETURNS void")]
    positions = [signature.index(_ARGS[sql]) for sql in q.COMMIT_ARGS]
    assert positions == sorted(positions)
    assert len(q.COMMIT_ARGS) == len(_ARGS)
    assert q.SQL_COMMIT.count(b"$") == 2 + len(q.COMMIT_ARGS)


def test_the_fence_runs_before_any_write() -> None:
    text = _function_text()
    body = text[text.index("BEGIN") :]
    fence = body.index("RAISE EXCEPTION 'not the owner")
    assert all(body.index(w) > fence for w in ("INSERT INTO", "DELETE FROM"))
