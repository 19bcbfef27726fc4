-- Paused sources and handlers: workers on every replica leave their events
-- in the queue (ingestion keeps storing them) until they are resumed. A row
-- names a source or a handler, never both; '' stands for "not this kind".
-- The table is tiny, and every fetch reads it, so a pause takes effect at
-- the next fetch of every worker.
CREATE TABLE {schema}.queue_pauses (
    source    text        NOT NULL DEFAULT '',
    handler   text        NOT NULL DEFAULT '',
    reason    text        NOT NULL DEFAULT '',
    paused_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, handler),
    CONSTRAINT queue_pauses_one_target_check CHECK ((source = '') <> (handler = ''))
);
