-- Pattern 5: the append-only event log (see eventlog/doc.go).
--
-- event_log holds every event ever appended, forever: an audit trail and the
-- source that projections are rebuilt from. Rows are only ever inserted;
-- the triggers below reject UPDATE, DELETE and TRUNCATE for every role that
-- does not first disable them (the table owner or a superuser can; give
-- applications a role that owns nothing and holds only SELECT and INSERT
-- for a guarantee against them too).
--
-- Stream and version: each stream (an entity, "order-42") numbers its
-- events 1, 2, 3, ... without gaps. event_streams holds each stream's
-- current version; an append moves it forward in the statement that
-- inserts the events, under that row's lock, so appenders to one stream are
-- serialised and a losing appender (wrong expected version) writes nothing
-- and takes no position.
--
-- Position: global, from an identity sequence. Sequences are not
-- transactional, so positions have holes (rolled-back appends) and commit
-- out of order (an append that took a lower position may commit later).
-- No reader relies on them being contiguous: ReadAll reads in
-- (tx_id, position) order below a transaction-id horizon instead.
--
-- tx_id: the appending transaction's 64-bit id (xid8 never wraps around).
-- Every transaction with an id below pg_snapshot_xmin(pg_current_snapshot())
-- has ended, so the rows below that horizon can no longer change: a reader
-- that moves its (tx_id, position) cursor only through them never skips an
-- event that commits late. The cost: any long write transaction anywhere in
-- the cluster holds the horizon, and so every tailing reader, back. The ids
-- are only meaningful in this cluster's xid sequence (and its physical
-- replicas, and pg_upgrade, which keeps it); a logical dump restored into
-- another cluster needs its next xid moved past max(tx_id) first.
--
-- stream is COLLATE "C" (byte order), whatever the database's collation,
-- so that a category read (stream LIKE 'order-%') can use the unique index
-- on (stream, version) as a range scan; equality is the same in any
-- deterministic collation.
--
-- metadata keys (all optional strings, absent when empty):
--   correlation_id   the id shared by every event of one business process
--   causation_id     the id of the message or event that caused this one
--   source_event_id  the provider's event id of the webhook it came from
--   actor            who or what did it (a user id, "stripe", a service)
--   extra            an object of further string values, for the application
CREATE TABLE {schema}.event_log (
    position    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream      text        COLLATE "C" NOT NULL,
    version     bigint      NOT NULL CONSTRAINT event_log_version_check CHECK (version >= 1),
    event_type  text        NOT NULL,
    data        jsonb       NOT NULL,
    metadata    jsonb       NOT NULL DEFAULT '{}',
    recorded_at timestamptz NOT NULL DEFAULT now(),
    tx_id       xid8        NOT NULL DEFAULT pg_current_xact_id(),
    CONSTRAINT event_log_stream_version_key UNIQUE (stream, version)
);

-- ReadAll and projections: (tx_id, position) > cursor AND tx_id < horizon,
-- in that order, is one range scan of this index.
CREATE INDEX event_log_tx_position_idx ON {schema}.event_log (tx_id, position);

-- One row per stream: its current version (the number of events in it).
-- Rewritten by every append to the stream; the version column is in no
-- index, so with free space left on each page the update stays HOT (no new
-- index entry).
CREATE TABLE {schema}.event_streams (
    stream  text   COLLATE "C" PRIMARY KEY,
    version bigint NOT NULL CONSTRAINT event_streams_version_check CHECK (version >= 1)
) WITH (fillfactor = 70);

-- A projection's checkpoint: the cursor of the last event it applied,
-- written in the transaction that holds the projection's own writes, so the
-- two commit together or not at all. (0, 0) is the start of the log.
CREATE TABLE {schema}.event_checkpoints (
    name       text        PRIMARY KEY,
    tx_id      xid8        NOT NULL DEFAULT '0',
    position   bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 70);

-- The log is append-only (invariant 5), enforced here rather than only in
-- Go: every UPDATE or DELETE of a row, and every TRUNCATE, fails with
-- SQLSTATE 23001 (restrict_violation). Row-level for UPDATE and DELETE, so
-- that INSERT ... ON CONFLICT DO UPDATE aimed at an existing row fails too;
-- statement-level for TRUNCATE, the only level Postgres offers for it.
CREATE FUNCTION {schema}.event_log_reject_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'event_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'restrict_violation',
              HINT = 'Events are facts that happened; append a correcting event instead.';
END
$$;

CREATE TRIGGER event_log_no_update_delete
    BEFORE UPDATE OR DELETE ON {schema}.event_log
    FOR EACH ROW EXECUTE FUNCTION {schema}.event_log_reject_change();

CREATE TRIGGER event_log_no_truncate
    BEFORE TRUNCATE ON {schema}.event_log
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.event_log_reject_change();
