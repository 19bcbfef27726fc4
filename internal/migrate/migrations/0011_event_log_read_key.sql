-- The event log's read order keeps each stream's events in version order.
--
-- ReadAll and projections read in (tx_id, position) order, but transaction
-- ids are handed out when a transaction first writes, not when it commits:
-- a transaction that took its id early (an idempotency claim, say) and
-- appended to a stream after a newer transaction had appended to it wrote
-- version 2 with a lower tx_id than version 1, and readers saw version 2
-- first.
--
-- read_key is what readers order by now, with position: the appending
-- transaction's id, raised to the stream's previous read_key when that is
-- higher. event_streams.read_key holds each stream's last read_key; an
-- append moves it in the statement that moves the version, under the same
-- row lock. A read_key is never below its writer's transaction id, so the
-- transaction-id horizon still holds: every event that commits after a
-- read has a read_key at or above that read's horizon.
--
-- Rows appended before this migration keep read_key NULL (the log is
-- append-only: no UPDATE reaches it) and are read at coalesce(read_key,
-- tx_id), their old place, so stored cursors and checkpoints stay valid.
-- The index is built on that expression and replaces the (tx_id,
-- position) one; building it reads the whole log once.
--
-- An older release reads in tx_id order, and takes a cursor or a
-- projection checkpoint written in this order as a tx_id (and the other
-- way round): it can skip events, or apply them twice. Stop every older
-- process that reads the event log before applying this migration;
-- older processes that only append may run on.
ALTER TABLE {schema}.event_log ADD COLUMN read_key xid8;

ALTER TABLE {schema}.event_streams ADD COLUMN read_key xid8 NOT NULL DEFAULT '0';

-- A stream's next events must sort after all of its existing ones.
UPDATE {schema}.event_streams s
SET read_key = (SELECT max(e.tx_id) FROM {schema}.event_log e WHERE e.stream = s.stream);

CREATE INDEX event_log_read_key_position_idx ON {schema}.event_log ((coalesce(read_key, tx_id)), position);

DROP INDEX {schema}.event_log_tx_position_idx;
