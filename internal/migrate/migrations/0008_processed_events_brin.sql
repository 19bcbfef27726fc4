-- Pattern 2: processed_events is written once per processed event, and its
-- processed_at index is read only by pruning and by the per-minute counts.
-- A B-tree there cost every claim a second index insert (about a fifth of
-- the claim's cost, measured with the idempotency benchmark). Rows arrive
-- in processed_at order, so a BRIN index over block ranges finds old and
-- recent rows as well, for almost nothing per insert: a row landing in a
-- range not yet summarized touches no index page. autosummarize asks
-- autovacuum to summarize each range once it fills.
DROP INDEX {schema}.processed_events_processed_at_idx;

CREATE INDEX processed_events_processed_at_brin ON {schema}.processed_events
    USING brin (processed_at) WITH (autosummarize = on);
