-- Pattern 1: the queue. One event in two tables: the hot row that every
-- fetch, heartbeat and retry rewrites, and the payload (the event as
-- received: key, raw body, headers), written once at enqueue and deleted
-- with the row. Postgres rewrites the whole row on UPDATE and adds an entry
-- to every index of a row it cannot update in place, so the hot row stays
-- narrow and lightly indexed: the body and the deduplication key live in
-- the payload table (see queue/doc.go).

CREATE TABLE {schema}.queue (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source           text        NOT NULL,
    event_id         text        NOT NULL,
    event_type       text        NOT NULL,
    ordering_key     text,
    state            text        NOT NULL DEFAULT 'available'
                     CONSTRAINT queue_state_check CHECK (state IN ('available', 'running', 'exhausted')),
    attempt          integer     NOT NULL DEFAULT 0 CONSTRAINT queue_attempt_check CHECK (attempt >= 0),
    max_attempts     integer     NOT NULL CONSTRAINT queue_max_attempts_check CHECK (max_attempts > 0),
    received_at      timestamptz NOT NULL DEFAULT now(),
    run_at           timestamptz NOT NULL DEFAULT now(),
    attempted_at     timestamptz,
    lease_token      bigint,
    lease_expires_at timestamptz,
    leased_by        text,
    -- One object per failed attempt: {"attempt", "error", "at", "worker"}.
    errors           jsonb       NOT NULL DEFAULT '[]',
    -- A lease token exactly while running: the lease statements match on
    -- the token alone.
    CONSTRAINT queue_lease_check CHECK ((state = 'running') = (lease_token IS NOT NULL AND lease_expires_at IS NOT NULL))
) WITH (
    -- Rows live seconds and die by DELETE: vacuum early and without
    -- throttling, so dead tuples never dominate the fetch index.
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0.05
);

-- Fetch: due events in run_at order. Partial, so running and exhausted rows
-- are not scanned past.
CREATE INDEX queue_fetch_idx ON {schema}.queue (run_at, id) WHERE state = 'available';

-- Rescue: running events whose lease has expired.
CREATE INDEX queue_lease_expiry_idx ON {schema}.queue (lease_expires_at) WHERE state = 'running';

-- Ordering keys: the head of each key (lowest id) is the only one eligible.
CREATE INDEX queue_ordering_idx ON {schema}.queue (source, ordering_key, id) WHERE ordering_key IS NOT NULL;

-- The unique key on (source, event_id) deduplicates deliveries; it lives
-- here, in a row written once, so a fetch does not add an entry to it.
-- No foreign key to queue: the queue package inserts and deletes a payload
-- in the same statement as its row, and a foreign key would add a trigger
-- call per row on the hot path.
CREATE TABLE {schema}.queue_payloads (
    queue_id bigint PRIMARY KEY,
    source   text  NOT NULL,
    event_id text  NOT NULL,
    body     bytea NOT NULL,
    headers  jsonb,
    CONSTRAINT queue_payloads_source_event_id_key UNIQUE (source, event_id)
) WITH (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0
);

-- One row per ordering key whose head event is running: the primary key is
-- the lock that keeps two fetchers, on any replica, from running two events
-- of one key at once. A fetch takes it with INSERT ... ON CONFLICT DO
-- NOTHING, which sees rows that other fetchers have not yet committed.
CREATE TABLE {schema}.queue_ordering_locks (
    source       text   NOT NULL,
    ordering_key text   NOT NULL,
    queue_id     bigint NOT NULL,
    PRIMARY KEY (source, ordering_key)
) WITH (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0
);
