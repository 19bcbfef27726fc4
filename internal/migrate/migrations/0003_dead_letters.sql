-- Pattern 3: the dead letter queue. An event that used its last attempt
-- moves here from the queue, whole, in the transaction that removes it from
-- the queue: it is never in both and never in neither. Entries are kept for
-- inspection and replay; replayed and discarded entries stay for audit until
-- purged.

CREATE TABLE {schema}.dead_letters (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source           text        NOT NULL,
    event_id         text        NOT NULL,
    event_type       text        NOT NULL,
    ordering_key     text,
    body             bytea       NOT NULL,
    headers          jsonb,
    received_at      timestamptz NOT NULL,
    attempts         integer     NOT NULL,
    max_attempts     integer     NOT NULL,
    -- Every failed attempt, oldest first: {"attempt", "error", "at", "worker"}.
    errors           jsonb       NOT NULL,
    -- The last attempt's error, for filtering without unpacking the history.
    last_error       text        NOT NULL,
    handler          text        NOT NULL,
    dead_at          timestamptz NOT NULL DEFAULT now(),
    status           text        NOT NULL DEFAULT 'dead'
                     CONSTRAINT dead_letters_status_check CHECK (status IN ('dead', 'replayed', 'discarded')),
    replay_count     integer     NOT NULL DEFAULT 0,
    last_replayed_at timestamptz,
    discarded_at     timestamptz
);

-- An event is dead at most once at a time. A second death of the same event
-- (replayed, failed again) is a new row once the first is no longer dead.
CREATE UNIQUE INDEX dead_letters_dead_event_idx ON {schema}.dead_letters (source, event_id) WHERE status = 'dead';

-- Listing, newest first, by status; keyset pagination on (dead_at, id).
CREATE INDEX dead_letters_list_idx ON {schema}.dead_letters (status, dead_at DESC, id DESC);
