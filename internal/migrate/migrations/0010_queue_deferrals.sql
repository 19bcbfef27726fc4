-- Pattern 1: how many times an event was put back after it ran and failed
-- through no fault of its own (a downstream that failed it while its
-- circuit breaker stayed closed). Such a deferral spends no attempt, so
-- without a count of its own an event that one downstream always rejects
-- would be retried at its first backoff forever; with it, the wait grows.
ALTER TABLE {schema}.queue ADD COLUMN deferrals integer NOT NULL DEFAULT 0;
