-- 0001: the Citus-ready schema (DESIGN.md section 6). Never edit once landed: add 0002_*.sql.
--
-- Subscriber-owned tables carry `vshard` (the distribution column) and it leads every primary
-- key and unique constraint, so that one owner's group commit touches one Citus shard group.
-- No foreign keys between them (Citus allows only colocated ones; the owner keeps integrity).
-- Money is bigint micros. `extra` holds fields added to the domain records after this
-- migration (encoded by sharding._codec), until a later migration gives them a column.

CREATE TABLE shard_leases (
    vshard      integer     NOT NULL,
    epoch       bigint      NOT NULL,
    owner       text        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (vshard)
);

CREATE TABLE subscribers (
    vshard          integer     NOT NULL,
    subscriber_id   text        NOT NULL,
    account_id      text        NOT NULL,
    account_vshard  integer     NOT NULL,
    plan_id         text        NOT NULL,
    created_at      timestamptz NOT NULL,
    extra           jsonb,
    PRIMARY KEY (vshard, subscriber_id)
);

CREATE TABLE accounts (
    vshard               integer     NOT NULL,
    account_id           text        NOT NULL,
    payment_mode         text        NOT NULL,
    currency             text        NOT NULL,
    plan_id              text        NOT NULL,
    balance_micros       bigint      NOT NULL,
    credit_limit_micros  bigint      NOT NULL,
    reserved_micros      bigint      NOT NULL,
    created_at           timestamptz NOT NULL,
    usage_counters       jsonb       NOT NULL DEFAULT '{}',
    extra                jsonb,
    PRIMARY KEY (vshard, account_id)
);

CREATE TABLE buckets (
    vshard              integer     NOT NULL,
    bucket_id           text        NOT NULL,
    account_id          text        NOT NULL,
    bundle_id           text        NOT NULL,
    service             text        NOT NULL,
    destination_groups  text[]      NOT NULL,
    rating_groups       integer[]   NOT NULL,
    units               bigint      NOT NULL,
    reserved_units      bigint      NOT NULL,
    priority            integer     NOT NULL,
    valid_from          timestamptz NOT NULL,
    expires_at          timestamptz,
    extra               jsonb,
    PRIMARY KEY (vshard, bucket_id)
);
CREATE INDEX buckets_account ON buckets (vshard, account_id);

-- Open sessions only (an ended session is deleted); its reservations, keyed by rating group,
-- are a jsonb object written with the session in the same statement.
CREATE TABLE sessions (
    vshard               integer     NOT NULL,
    session_id           text        NOT NULL,
    subscriber_id        text        NOT NULL,
    account_id           text        NOT NULL,
    plan_id              text        NOT NULL,
    destination          text,
    visited_plmn         text,
    started_at           timestamptz NOT NULL,
    last_seen_at         timestamptz NOT NULL,
    expires_at           timestamptz NOT NULL,
    next_request_number  integer     NOT NULL,
    reservations         jsonb       NOT NULL DEFAULT '{}',
    extra                jsonb,
    PRIMARY KEY (vshard, session_id)
);

-- The journal: append-only; alone it reproduces every balance and bucket (invariant 4).
-- (vshard, idempotency_key, line) is the primary key: the database itself refuses a second
-- application of one idempotency key (invariant 3).
CREATE TABLE journal (
    vshard           integer     NOT NULL,
    idempotency_key  text        NOT NULL,
    line             integer     NOT NULL,
    account_id       text        NOT NULL,
    kind             text        NOT NULL,
    amount_micros    bigint      NOT NULL,
    bucket_id        text,
    units            bigint      NOT NULL,
    at               timestamptz NOT NULL,
    session_id       text,
    request_number   integer,
    rating_group     integer,
    record_id        text,
    note             text        NOT NULL DEFAULT '',
    committed_at     timestamptz NOT NULL DEFAULT now(),
    extra            jsonb,
    PRIMARY KEY (vshard, idempotency_key, line)
);
CREATE INDEX journal_account ON journal (vshard, account_id);

-- The answer sent for each idempotency key, returned again for a repeated request: a
-- credit-control answer (kind 'cc') or a back-office balance result (kind 'balance'), as
-- compact JSON (sharding._codec). One key space for both, unique per vshard.
CREATE TABLE answers (
    vshard           integer     NOT NULL,
    idempotency_key  text        NOT NULL,
    kind             text        NOT NULL CHECK (kind IN ('cc', 'balance')),
    answer           text        NOT NULL,
    committed_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (vshard, idempotency_key)
);
CREATE INDEX answers_recent ON answers (vshard, committed_at);

-- Reference tables (replicated to every Citus worker): shared configuration.
CREATE TABLE plans (
    plan_id     text        NOT NULL,
    version     integer     NOT NULL,
    body        text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (plan_id, version)
);

-- The shard map: one row, replaced by compare-and-set on `version`.
CREATE TABLE shard_map (
    singleton     boolean     NOT NULL DEFAULT true CHECK (singleton),
    version       bigint      NOT NULL,
    vshard_count  integer     NOT NULL CHECK (vshard_count > 0),
    assignments   jsonb       NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (singleton)
);

-- On a Citus coordinator: distribute the subscriber-owned tables by vshard, all colocated with
-- shard_leases (so the lease check and the writes of one commit share a shard group), and
-- replicate the configuration. On plain PostgreSQL this block does nothing.
DO $citus$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        PERFORM create_distributed_table('shard_leases', 'vshard');
        PERFORM create_distributed_table('subscribers', 'vshard', colocate_with => 'shard_leases');
        PERFORM create_distributed_table('accounts', 'vshard', colocate_with => 'shard_leases');
        PERFORM create_distributed_table('buckets', 'vshard', colocate_with => 'shard_leases');
        PERFORM create_distributed_table('sessions', 'vshard', colocate_with => 'shard_leases');
        PERFORM create_distributed_table('journal', 'vshard', colocate_with => 'shard_leases');
        PERFORM create_distributed_table('answers', 'vshard', colocate_with => 'shard_leases');
        PERFORM create_reference_table('plans');
        PERFORM create_reference_table('shard_map');
    END IF;
END
$citus$;
