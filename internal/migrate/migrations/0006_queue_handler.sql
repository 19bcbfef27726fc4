-- The queue records which handler an event is for (optional): operators see
-- it, the dead letter queue keeps it, and the Pipeline deduplicates
-- deliveries against events that handler already processed.
ALTER TABLE {schema}.queue ADD COLUMN handler text;
