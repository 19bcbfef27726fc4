-- Pattern 2: idempotent consumers. One row per (consumer, key) that a
-- consumer has processed, in one of two modes (see idempotency/doc.go):
--
--   tx        claimed by INSERT ... ON CONFLICT DO NOTHING inside the
--             transaction that also does the consumer's database work; the
--             row commits or rolls back with that work. Only consumer, key,
--             mode and processed_at are set.
--   external  for side effects outside the database (a payment API, an
--             email): 'in_progress' under a lock that lasts until
--             locked_until and is fenced by token, then 'finished' with the
--             stored outcome in result.
--
-- Both modes share the table so that the primary key makes a key one thing:
-- a key claimed in one mode cannot be claimed in the other (the idempotency
-- package reads mode on a conflict and refuses), and one prune covers both.
--
-- No fillfactor: tx-mode rows, nearly all of them, are written once and
-- deleted by the pruner, never updated, so free space kept for updates would
-- only make the table and every scan of it larger. Only the few external-mode
-- rows are updated (finish, takeover). No autovacuum settings either: rows
-- are deleted in batches by age, and the defaults (including the
-- insert-triggered vacuum of PostgreSQL 13+) keep up with that; the queue's
-- aggressive settings exist for rows that live seconds.
CREATE TABLE {schema}.processed_events (
    -- Keys are opaque byte strings: COLLATE "C" compares them bytewise,
    -- which is cheaper than a linguistic collation and never changes with
    -- the operating system's locale data, so the primary key never needs a
    -- REINDEX after an upgrade. Equality is the same under any collation.
    consumer     text COLLATE "C" NOT NULL,
    key          text COLLATE "C" NOT NULL,
    mode         text        NOT NULL
                 CONSTRAINT processed_events_mode_check CHECK (mode IN ('tx', 'external')),
    -- tx: when the claim was made. external: when the key was last taken
    -- (begin or takeover), then when it finished. Retention counts from it.
    processed_at timestamptz NOT NULL DEFAULT now(),
    -- external mode only, NULL in tx mode:
    state        text
                 CONSTRAINT processed_events_state_check CHECK (state IN ('in_progress', 'finished')),
    token        bigint,      -- the fence: the current (or finishing) holder's random token
    locked_until timestamptz, -- in_progress only
    attempts     integer,     -- 1 at the first begin, +1 per takeover
    result       bytea,       -- finished only, optional
    CONSTRAINT processed_events_pkey PRIMARY KEY (consumer, key)
);
-- Which columns each mode and state sets is kept by the idempotency
-- package, whose statements are the only writers (all in its sql.go), not
-- by a CHECK across columns: PostgreSQL rebuilds every CHECK expression at
-- each INSERT statement, and such a constraint made a claim, a one-row
-- INSERT, 15-35 microseconds slower (up to a fifth of its cost) in our
-- measurements. The per-column checks above cost next to nothing.

-- Pruning walks keys oldest first, in small batches, so each batch reads
-- only the rows it deletes. Without this index every batch would scan the
-- table (tens of millions of rows at a week's retention). It costs one
-- more index entry per claim; the benchmark in idempotency/bench_test.go
-- includes it.
CREATE INDEX processed_events_processed_at_idx ON {schema}.processed_events (processed_at);
