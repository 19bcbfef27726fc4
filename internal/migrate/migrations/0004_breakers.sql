-- Pattern 4: circuit breakers, shared state (optional; see breaker/doc.go).
-- Each process keeps its own breaker per downstream and calls through it
-- without touching these tables: no lock is held around a call. A process
-- writes here only when its breaker changes state (open, or closed after
-- probes) and, once per refresh interval, its counts; every process reads
-- both once per refresh interval and adopts the others' transitions.

-- One row per downstream: the last transition a process published.
-- generation grows by one per transition, so a process can tell a
-- transition it has seen from a new one, and a close is only written over
-- the open it ends (UPDATE ... WHERE generation = the one the closer knew).
CREATE TABLE {schema}.breakers (
    name       text        PRIMARY KEY,
    generation bigint      NOT NULL CONSTRAINT breakers_generation_check CHECK (generation > 0),
    state      text        NOT NULL CONSTRAINT breakers_state_check CHECK (state IN ('open', 'closed')),
    -- While open: when the next probe is allowed, by the database clock.
    open_until timestamptz,
    changed_at timestamptz NOT NULL DEFAULT now(),
    changed_by text        NOT NULL,
    CONSTRAINT breakers_open_until_check CHECK ((state = 'open') = (open_until IS NOT NULL))
);

-- Each process's counts over its rolling window, per breaker, so that the
-- failure rate that trips a breaker is the whole fleet's: N replicas each
-- seeing a few failures trip once together instead of never. generation
-- is the breakers row the counts were taken under; readers add up only
-- counts of the current generation, and only rows not yet expired (a
-- process that died stops counting after one window).
-- Rewritten every refresh interval by their owner, so small and
-- unindexed beyond the key: updates stay HOT with room left on each page.
CREATE TABLE {schema}.breaker_counts (
    name       text        NOT NULL,
    owner      text        NOT NULL,
    generation bigint      NOT NULL,
    requests   bigint      NOT NULL CONSTRAINT breaker_counts_requests_check CHECK (requests >= 0),
    failures   bigint      NOT NULL CONSTRAINT breaker_counts_failures_check CHECK (failures >= 0 AND failures <= requests),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (name, owner)
) WITH (
    fillfactor = 50,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0
);
