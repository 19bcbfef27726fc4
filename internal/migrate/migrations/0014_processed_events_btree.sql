-- Pattern 2: processed_at gets a B-tree again, in place of migration 8's
-- BRIN index. The BRIN assumed rows arrive in processed_at order, which
-- holds only until the first prune: vacuum hands the pages that old rows
-- left to new claims, a BRIN summary only widens, and within a retention
-- every block range spans the whole retention. Each prune batch then read
-- the table from its first page until it had found a batch of old rows
-- (and the per-minute counts read most of it), so pruning a busy table
-- cost its size again for every batch. A B-tree finds old and recent rows
-- whatever the page they sit on, for a second index insert per claim.
-- Building it blocks claims for as long as it takes.
CREATE INDEX processed_events_processed_at_idx ON {schema}.processed_events (processed_at);

DROP INDEX {schema}.processed_events_processed_at_brin;
