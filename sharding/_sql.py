"""The SQL the store sends, built once at import (and the migration files, in order).

Writes are one statement per table for a whole batch (``INSERT ... SELECT FROM
jsonb_array_elements($1)``, see :mod:`sharding._rows`); reads select one or more vshards; the
audit queries check conservation over the stored journal.
"""

from __future__ import annotations

from importlib import resources

from sharding._rows import ACCOUNTS, BUCKETS, JOURNAL, SESSIONS, SUBSCRIBERS

SQL_FENCE = b"SELECT billing_fence(%s::integer[], %s::bigint[])"
SQL_LOAD_SUBSCRIBERS = SUBSCRIBERS.select_sql().encode()
SQL_LOAD_ACCOUNTS = ACCOUNTS.select_sql().encode()
SQL_LOAD_SESSIONS = SESSIONS.select_sql().encode()
SQL_LOAD_BUCKETS = (
    BUCKETS.select_sql()
    + " AND NOT (expires_at IS NOT NULL AND expires_at <= COALESCE(%s::timestamptz, now()) AND units = 0 AND reserved_units = 0)"
).encode()
# The answers a new owner remembers: the newest ones of the horizon, at most a given number (NULL:
# all), and each open session's last answer whatever its age (its retransmission must still be
# recognised, as the owner's own pruning keeps them). Oldest first, as the answer log is kept.
SQL_LOAD_ANSWERS = (
    b"SELECT idempotency_key, kind, answer, committed_at FROM ("
    b"(SELECT idempotency_key, kind, answer, committed_at FROM answers"
    b" WHERE vshard = ANY(%s) AND committed_at >= now() - %s"
    b" ORDER BY committed_at DESC, idempotency_key DESC LIMIT %s)"
    b" UNION"
    b" (SELECT a.idempotency_key, a.kind, a.answer, a.committed_at FROM sessions s"
    b" JOIN answers a ON a.vshard = s.vshard"
    b" AND a.idempotency_key = 'cc:' || s.session_id || '#' || (s.next_request_number - 1)"
    b" WHERE s.vshard = ANY(%s))"
    b") recent ORDER BY committed_at, idempotency_key"
)
# Which of the given (vshard, idempotency key) pairs were applied already: the stored answer if
# the answers table still holds it, and whether the journal has lines for it (it never forgets).
SQL_APPLIED_KEYS = (
    b"SELECT k.vshard, k.key, a.kind, a.answer,"
    b" EXISTS (SELECT 1 FROM journal j WHERE j.vshard = k.vshard AND j.idempotency_key = k.key)"
    b" FROM unnest(%s::integer[], %s::text[]) AS k(vshard, key)"
    b" LEFT JOIN answers a ON a.vshard = k.vshard AND a.idempotency_key = k.key"
)
SQL_JOURNAL = JOURNAL.insert_sql(upsert=False).encode()
SQL_SUBSCRIBERS = SUBSCRIBERS.insert_sql(upsert=True).encode()
SQL_ACCOUNTS = ACCOUNTS.insert_sql(upsert=True).encode()
SQL_BUCKETS = BUCKETS.insert_sql(upsert=True).encode()
SQL_SESSIONS = SESSIONS.insert_sql(upsert=True).encode()
SQL_END_SESSIONS = (
    b"DELETE FROM sessions s USING jsonb_array_elements(%s::jsonb) AS d"
    b" WHERE s.vshard = (d->>0)::integer AND s.session_id = d->>1"
)
# The whole plain-PostgreSQL group commit as one statement (migrations 0003, 0004): the fence, then the
# writes; the batches in the order of COMMIT_ARGS (None: nothing of that kind). Prepared once per
# writer connection (protocol-level Parse) under COMMIT_STATEMENT; every argument travels as text.
COMMIT_STATEMENT = b"billing_commit_q"
SQL_COMMIT = (
    b"SELECT billing_commit($1::integer[], $2::bigint[], $3::jsonb, $4::jsonb, $5::jsonb,"
    b" $6::jsonb, $7::jsonb, $8::jsonb, $9::jsonb)"
)
# Each answer travels as its own compact JSON text (a JSON string in the batch) and is stored as
# is: the server unescapes a string instead of parsing an object into jsonb and printing it back.
SQL_ANSWERS = (
    b"INSERT INTO answers (vshard, idempotency_key, kind, answer)"
    b" SELECT (r->>0)::integer, r->>1, r->>2, r->>3 FROM jsonb_array_elements(%s::jsonb) AS r"
)
# billing_commit (migration 0004) writes accounts as an UPDATE of the existing rows, then an
# upsert of the rows it did not find (sharding._rows.Table.update_sql); the Citus path keeps the
# plain upsert above.
SQL_ACCOUNTS_UPDATE = ACCOUNTS.update_sql().encode()
SQL_ACCOUNTS_MISSING = ACCOUNTS.insert_missing_sql().encode()
COMMIT_ARGS = (
    SQL_JOURNAL,
    SQL_SUBSCRIBERS,
    SQL_ACCOUNTS,
    SQL_BUCKETS,
    SQL_SESSIONS,
    SQL_END_SESSIONS,
    SQL_ANSWERS,
)

AUDIT_QUERIES: list[tuple[str, str]] = [
    (
        "SELECT a.vshard, a.account_id, a.balance_micros, COALESCE(j.total, 0)"
        " FROM accounts a LEFT JOIN (SELECT vshard, account_id, sum(amount_micros) AS total"
        "  FROM journal GROUP BY vshard, account_id) j"
        "  ON j.vshard = a.vshard AND j.account_id = a.account_id"
        " WHERE a.balance_micros <> COALESCE(j.total, 0) ORDER BY 1, 2",
        "vshard {0} account {1}: balance {2} but the journal sums to {3}",
    ),
    (
        "SELECT b.vshard, b.bucket_id, b.units, COALESCE(j.total, 0)"
        " FROM buckets b LEFT JOIN (SELECT vshard, bucket_id, sum(units) AS total"
        "  FROM journal WHERE bucket_id IS NOT NULL GROUP BY vshard, bucket_id) j"
        "  ON j.vshard = b.vshard AND j.bucket_id = b.bucket_id"
        " WHERE b.units <> COALESCE(j.total, 0) ORDER BY 1, 2",
        "vshard {0} bucket {1}: {2} units but the journal sums to {3}",
    ),
    (
        "SELECT a.vshard, a.account_id, a.reserved_micros, COALESCE(r.total, 0)"
        " FROM accounts a LEFT JOIN (SELECT s.vshard, s.account_id,"
        "  sum(COALESCE((x.value->>'money_micros')::bigint, 0)) AS total"
        "  FROM sessions s, jsonb_each(s.reservations) x GROUP BY s.vshard, s.account_id) r"
        "  ON r.vshard = a.vshard AND r.account_id = a.account_id"
        " WHERE a.reserved_micros <> COALESCE(r.total, 0) OR a.reserved_micros < 0"
        " ORDER BY 1, 2",
        "vshard {0} account {1}: reserved {2} but open reservations hold {3}",
    ),
    (
        "SELECT b.vshard, b.bucket_id, b.reserved_units, COALESCE(r.total, 0)"
        " FROM buckets b LEFT JOIN (SELECT s.vshard, u.key AS bucket_id,"
        "  sum(u.value::bigint) AS total FROM sessions s, jsonb_each(s.reservations) x,"
        "  jsonb_each_text(COALESCE(x.value->'bucket_units', '{}')) u"
        "  GROUP BY s.vshard, u.key) r ON r.vshard = b.vshard AND r.bucket_id = b.bucket_id"
        " WHERE b.reserved_units <> COALESCE(r.total, 0) OR b.reserved_units < 0 ORDER BY 1, 2",
        "vshard {0} bucket {1}: {2} units reserved but open reservations hold {3}",
    ),
    (
        "SELECT j.vshard, j.idempotency_key, j.line, j.account_id FROM journal j"
        " WHERE NOT EXISTS (SELECT 1 FROM accounts a"
        "  WHERE a.vshard = j.vshard AND a.account_id = j.account_id) ORDER BY 1, 2, 3",
        "vshard {0} journal {1}#{2}: account {3} does not exist on that vshard",
    ),
]


def migrations() -> list[tuple[str, str]]:
    """(version, sql) of every ``sharding/migrations/NNNN_*.sql``, in order."""
    found = []
    for entry in resources.files("sharding").joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            found.append((entry.name.removesuffix(".sql"), entry.read_text()))
    return sorted(found)
