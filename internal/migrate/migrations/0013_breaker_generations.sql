-- Pattern 4: breaker generations that never repeat. A breakers row's
-- generation used to count from 1 per row, so deleting a row (an operator
-- resetting a breaker, a cleanup) started it again at 1: a process that
-- remembered generation 1 took the next open for one it had seen and
-- ignored it, and its close over the old open could end the new one.
-- Every transition now takes its generation from this sequence (an update
-- never below the row's generation + 1, for rows written by hand), so a
-- generation names one transition for good, deleted rows included. It
-- starts above every generation already in the table.
CREATE SEQUENCE {schema}.breaker_generations AS bigint;

SELECT setval('{schema}.breaker_generations', g)
FROM (SELECT max(generation) AS g FROM {schema}.breakers) AS m
WHERE g IS NOT NULL;
