-- 0003: the whole group commit as one statement (plain PostgreSQL). Never edit once landed.
--
-- billing_commit(vshards, epochs, journal, subscribers, accounts, buckets, sessions, ended,
-- answers) runs the epoch fence FIRST, then the writes of one batch, each an INSERT ... SELECT
-- FROM jsonb_array_elements of its argument (NULL: nothing of that kind).
--
-- The fence: hold each touched vshard's commit lock SHARED (a transaction-scoped advisory lock,
-- key (1651076204 = 'bill', vshard)), then compare the stored epochs with the caller's and raise
-- SQLSTATE 'BF001' (detail "vshard expected actual", as billing_fence) on the first mismatch.
-- Store.take_over holds the same locks EXCLUSIVELY while it bumps the epochs, so a takeover
-- waits for every commit in flight and a commit that starts meanwhile waits for the takeover,
-- then (its next statement takes a fresh snapshot) reads the new epoch and writes nothing. Unlike
-- billing_fence's FOR SHARE this writes nothing to the lease rows (no WAL record, no multixact
-- when an owner's concurrent commits share a vshard). Callers pass the vshards sorted, as
-- take_over locks them, so the two never deadlock.
-- Sent as ONE statement on an autocommit connection it is its own transaction: a stale epoch
-- (SQLSTATE BF001) or a repeated idempotency key (unique_violation, with its table and detail)
-- aborts it and NOTHING is written. One round trip, one Parse/Bind/Execute (prepared once per
-- connection); the statements inside are planned once per connection by PL/pgSQL.
--
-- Each INSERT is the one sharding._rows generates for its table (Table.insert_sql) with the
-- argument in place of the parameter; tests/integration/test_store_commit_fn.py keeps them
-- equal. A migration that adds a column must CREATE OR REPLACE this function to match.
-- On Citus the store does not call it (its fence needs one router query per vshard).
CREATE FUNCTION billing_commit(
    p_vshards integer[], p_epochs bigint[], p_journal jsonb, p_subscribers jsonb,
    p_accounts jsonb, p_buckets jsonb, p_sessions jsonb, p_ended jsonb, p_answers jsonb
) RETURNS void
LANGUAGE plpgsql AS $commit$
DECLARE
    bad record;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(1651076204, v) FROM unnest(p_vshards) AS v;
    SELECT w.vshard, w.epoch AS expected, l.epoch AS actual INTO bad
    FROM unnest(p_vshards, p_epochs) AS w(vshard, epoch)
    LEFT JOIN shard_leases l ON l.vshard = w.vshard
    WHERE l.epoch IS DISTINCT FROM w.epoch
    ORDER BY w.vshard
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'not the owner of vshard %', bad.vshard
            USING ERRCODE = 'BF001',
                  DETAIL = format('%s %s %s', bad.vshard, bad.expected, coalesce(bad.actual::text, '-'));
    END IF;
    IF p_journal IS NOT NULL THEN
        INSERT INTO journal (vshard, idempotency_key, line, account_id, kind, amount_micros, bucket_id, units, at, session_id, request_number, rating_group, record_id, note, extra) SELECT (r->>0)::integer, r->>1, (r->>2)::integer, r->>3, r->>4, (r->>5)::bigint, r->>6, (r->>7)::bigint, (r->>8)::timestamptz, r->>9, (r->>10)::integer, (r->>11)::integer, r->>12, r->>13, NULLIF(r->14, 'null'::jsonb) FROM jsonb_array_elements(p_journal) AS r;
    END IF;
    IF p_subscribers IS NOT NULL THEN
        INSERT INTO subscribers (vshard, subscriber_id, account_id, account_vshard, plan_id, created_at, extra) SELECT (r->>0)::integer, r->>1, r->>2, (r->>3)::integer, r->>4, (r->>5)::timestamptz, NULLIF(r->6, 'null'::jsonb) FROM jsonb_array_elements(p_subscribers) AS r ON CONFLICT (vshard, subscriber_id) DO UPDATE SET account_id = EXCLUDED.account_id, account_vshard = EXCLUDED.account_vshard, plan_id = EXCLUDED.plan_id, created_at = EXCLUDED.created_at, extra = EXCLUDED.extra;
    END IF;
    IF p_accounts IS NOT NULL THEN
        INSERT INTO accounts (vshard, account_id, payment_mode, currency, plan_id, balance_micros, credit_limit_micros, reserved_micros, created_at, usage_counters, extra) SELECT (r->>0)::integer, r->>1, r->>2, r->>3, r->>4, (r->>5)::bigint, (r->>6)::bigint, (r->>7)::bigint, (r->>8)::timestamptz, NULLIF(r->9, 'null'::jsonb), NULLIF(r->10, 'null'::jsonb) FROM jsonb_array_elements(p_accounts) AS r ON CONFLICT (vshard, account_id) DO UPDATE SET payment_mode = EXCLUDED.payment_mode, currency = EXCLUDED.currency, plan_id = EXCLUDED.plan_id, balance_micros = EXCLUDED.balance_micros, credit_limit_micros = EXCLUDED.credit_limit_micros, reserved_micros = EXCLUDED.reserved_micros, created_at = EXCLUDED.created_at, usage_counters = EXCLUDED.usage_counters, extra = EXCLUDED.extra;
    END IF;
    IF p_buckets IS NOT NULL THEN
        INSERT INTO buckets (vshard, bucket_id, account_id, bundle_id, service, destination_groups, rating_groups, units, reserved_units, priority, valid_from, expires_at, extra) SELECT (r->>0)::integer, r->>1, r->>2, r->>3, r->>4, ARRAY(SELECT jsonb_array_elements_text(r->5)), ARRAY(SELECT jsonb_array_elements_text(r->6)::integer), (r->>7)::bigint, (r->>8)::bigint, (r->>9)::integer, (r->>10)::timestamptz, (r->>11)::timestamptz, NULLIF(r->12, 'null'::jsonb) FROM jsonb_array_elements(p_buckets) AS r ON CONFLICT (vshard, bucket_id) DO UPDATE SET account_id = EXCLUDED.account_id, bundle_id = EXCLUDED.bundle_id, service = EXCLUDED.service, destination_groups = EXCLUDED.destination_groups, rating_groups = EXCLUDED.rating_groups, units = EXCLUDED.units, reserved_units = EXCLUDED.reserved_units, priority = EXCLUDED.priority, valid_from = EXCLUDED.valid_from, expires_at = EXCLUDED.expires_at, extra = EXCLUDED.extra;
    END IF;
    IF p_sessions IS NOT NULL THEN
        INSERT INTO sessions (vshard, session_id, subscriber_id, account_id, plan_id, destination, visited_plmn, started_at, last_seen_at, expires_at, next_request_number, reservations, extra) SELECT (r->>0)::integer, r->>1, r->>2, r->>3, r->>4, r->>5, r->>6, (r->>7)::timestamptz, (r->>8)::timestamptz, (r->>9)::timestamptz, (r->>10)::integer, NULLIF(r->11, 'null'::jsonb), NULLIF(r->12, 'null'::jsonb) FROM jsonb_array_elements(p_sessions) AS r ON CONFLICT (vshard, session_id) DO UPDATE SET subscriber_id = EXCLUDED.subscriber_id, account_id = EXCLUDED.account_id, plan_id = EXCLUDED.plan_id, destination = EXCLUDED.destination, visited_plmn = EXCLUDED.visited_plmn, started_at = EXCLUDED.started_at, last_seen_at = EXCLUDED.last_seen_at, expires_at = EXCLUDED.expires_at, next_request_number = EXCLUDED.next_request_number, reservations = EXCLUDED.reservations, extra = EXCLUDED.extra;
    END IF;
    IF p_ended IS NOT NULL THEN
        DELETE FROM sessions s USING jsonb_array_elements(p_ended) AS d WHERE s.vshard = (d->>0)::integer AND s.session_id = d->>1;
    END IF;
    IF p_answers IS NOT NULL THEN
        INSERT INTO answers (vshard, idempotency_key, kind, answer) SELECT (r->>0)::integer, r->>1, r->>2, (r->3)::text FROM jsonb_array_elements(p_answers) AS r;
    END IF;
END
$commit$;
