-- 0004: billing_commit, cheaper for the server; same arguments, same behaviour. Never edit once
-- landed.
--
-- What changed against 0003, each measured (benchmarks/README.md, "Group commit: the server's
-- side"):
-- * Plans. The store runs this function on writer connections that plan its statements once
--   (plan_cache_mode = force_generic_plan; sharding/store.py): by default PL/pgSQL re-planned
--   several of them on every call (a custom plan per call, ~100 µs of a one-request commit's
--   ~300). A generic plan is made once, maybe while a table is still empty, so those connections
--   also rule out sequential scans, hash and merge joins: every statement here is a key lookup
--   or an insert and must stay an index lookup whatever the table sizes were when planned.
--   The fence reads the leases through `vshard = ANY(p_vshards)` (0003's join of every lease
--   would need a scan of shard_leases without a per-call plan).
-- * Accounts (rewritten by almost every charging request) are UPDATEd, then only the rows not
--   found are upserted (sharding._rows.Table.update_sql / insert_missing_sql): an upsert of an
--   existing row probes the index speculatively and locks the tuple (a WAL record of its own)
--   before updating it. Buckets keep the upsert: their second index (buckets_account) would
--   give an UPDATE's join a second, wrong, way in.
-- * Each answer arrives as its own compact JSON text (a JSON string in p_answers) and is stored
--   as sent: no parse of the answer into jsonb and print back (sharding.store.encode_writes).
--
CREATE OR REPLACE FUNCTION billing_commit(
    p_vshards integer[], p_epochs bigint[], p_journal jsonb, p_subscribers jsonb,
    p_accounts jsonb, p_buckets jsonb, p_sessions jsonb, p_ended jsonb, p_answers jsonb
) RETURNS void
LANGUAGE plpgsql AS $commit$
DECLARE
    bad record;
    found_rows bigint;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(1651076204, v) FROM unnest(p_vshards) AS v;
    SELECT w.vshard, w.epoch AS expected, l.epoch AS actual INTO bad
    FROM unnest(p_vshards, p_epochs) AS w(vshard, epoch)
    LEFT JOIN (
        SELECT s.vshard, s.epoch FROM shard_leases s WHERE s.vshard = ANY(p_vshards)
    ) l ON l.vshard = w.vshard
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
        UPDATE accounts AS t SET payment_mode = x.payment_mode, currency = x.currency, plan_id = x.plan_id, balance_micros = x.balance_micros, credit_limit_micros = x.credit_limit_micros, reserved_micros = x.reserved_micros, created_at = x.created_at, usage_counters = x.usage_counters, extra = x.extra FROM (SELECT (r->>0)::integer, r->>1, r->>2, r->>3, r->>4, (r->>5)::bigint, (r->>6)::bigint, (r->>7)::bigint, (r->>8)::timestamptz, NULLIF(r->9, 'null'::jsonb), NULLIF(r->10, 'null'::jsonb) FROM jsonb_array_elements(p_accounts) AS r) AS x (vshard, account_id, payment_mode, currency, plan_id, balance_micros, credit_limit_micros, reserved_micros, created_at, usage_counters, extra) WHERE t.vshard = x.vshard AND t.account_id = x.account_id;
        GET DIAGNOSTICS found_rows = ROW_COUNT;
        IF found_rows < jsonb_array_length(p_accounts) THEN
            INSERT INTO accounts (vshard, account_id, payment_mode, currency, plan_id, balance_micros, credit_limit_micros, reserved_micros, created_at, usage_counters, extra) SELECT (r->>0)::integer, r->>1, r->>2, r->>3, r->>4, (r->>5)::bigint, (r->>6)::bigint, (r->>7)::bigint, (r->>8)::timestamptz, NULLIF(r->9, 'null'::jsonb), NULLIF(r->10, 'null'::jsonb) FROM jsonb_array_elements(p_accounts) AS r WHERE NOT EXISTS (SELECT 1 FROM accounts AS t WHERE t.vshard = (r->>0)::integer AND t.account_id = r->>1) ON CONFLICT (vshard, account_id) DO UPDATE SET payment_mode = EXCLUDED.payment_mode, currency = EXCLUDED.currency, plan_id = EXCLUDED.plan_id, balance_micros = EXCLUDED.balance_micros, credit_limit_micros = EXCLUDED.credit_limit_micros, reserved_micros = EXCLUDED.reserved_micros, created_at = EXCLUDED.created_at, usage_counters = EXCLUDED.usage_counters, extra = EXCLUDED.extra;
        END IF;
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
        INSERT INTO answers (vshard, idempotency_key, kind, answer) SELECT (r->>0)::integer, r->>1, r->>2, r->>3 FROM jsonb_array_elements(p_answers) AS r;
    END IF;
END
$commit$;
