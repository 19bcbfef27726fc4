package breaker

import "github.com/wharfhq/wharf/internal/sqlschema"

// The shared state's SQL, in one place. None of it runs on a call's path:
// a refresh sends every statement it needs in one batch (one round trip,
// one implicit transaction, so now() is one instant for all of them), every
// RefreshInterval and at once after a local transition.

// publishOpenSQL writes that this process's breaker $1 opened, for $2
// microseconds from now by the database clock (the time left of the local
// open, so every process's clock is out of it). It writes over a closed
// row or an open one that has run out, never over an open still in force
// unless it is the open of generation $4, the one this process knew: a
// second process tripping on the same outage neither extends nor restamps
// the first one's open (it adopts it at the read that follows), but a
// failed probe reopens for everyone even if the open it ended has a
// moment left by the database clock (its end was stamped there after the
// publisher's own, by the time the publication took to arrive).
//
// The new generation comes from the breaker_generations sequence, so a
// row deleted and written again never repeats one a process remembers.
// Update and insert are apart, and the insert runs only when there is no
// row, so that a refused publication takes no number; the insert's ON
// CONFLICT leaves a row another process created meanwhile to that one.
const publishOpenSQL = `
WITH reopened AS (
    UPDATE {schema}.breakers AS b
    SET generation = greatest(b.generation + 1, nextval('{schema}.breaker_generations')),
        state      = 'open',
        open_until = now() + $2::bigint * interval '1 microsecond',
        changed_at = now(),
        changed_by = $3
    WHERE b.name = $1 AND (b.state = 'closed' OR b.open_until <= now() OR b.generation = $4)
    RETURNING b.generation
), created AS (
    INSERT INTO {schema}.breakers (name, generation, state, open_until, changed_by)
    SELECT $1, nextval('{schema}.breaker_generations'), 'open', now() + $2::bigint * interval '1 microsecond', $3
    WHERE NOT EXISTS (SELECT FROM {schema}.breakers WHERE name = $1)
    ON CONFLICT (name) DO NOTHING
    RETURNING generation
)
SELECT generation FROM reopened
UNION ALL
SELECT generation FROM created`

// publishCloseSQL writes that this process's breaker $1 closed after
// successful probes, over the open of generation $2 that it ended. If
// another process has opened it again since (a newer generation), the
// close is stale and changes nothing; the read that follows adopts the
// newer open.
const publishCloseSQL = `
UPDATE {schema}.breakers
SET generation = greatest(generation + 1, nextval('{schema}.breaker_generations')),
    state = 'closed', open_until = NULL, changed_at = now(), changed_by = $3
WHERE name = $1 AND generation = $2 AND state = 'open'
RETURNING generation`

// writeCountsSQL stores this process's ($2) counts of the breakers in $1,
// each under the generation it knows, expiring after the breaker's window.
// Only breakers whose counts changed are sent. Each owner writes only its
// own rows, so processes never wait for each other here.
const writeCountsSQL = `
INSERT INTO {schema}.breaker_counts AS c (name, owner, generation, requests, failures, expires_at)
SELECT t.name, $2, t.generation, t.requests, t.failures, now() + t.window_us * interval '1 microsecond'
FROM unnest($1::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[])
    AS t(name, generation, requests, failures, window_us)
ON CONFLICT (name, owner) DO UPDATE
SET generation = excluded.generation,
    requests   = excluded.requests,
    failures   = excluded.failures,
    expires_at = excluded.expires_at`

// readStateSQL reads every breaker's last transition. remaining_us is how
// long an open has left by the database clock, so a process far off in
// its own clock still opens for the right time.
const readStateSQL = `
SELECT name, generation, state,
       coalesce(floor(extract(epoch FROM open_until - now()) * 1e6), 0)::bigint AS remaining_us
FROM {schema}.breakers`

// readCountsSQL adds up the other processes' live counts per breaker and
// generation; the reader keeps the generation it knows.
const readCountsSQL = `
SELECT name, generation, sum(requests)::bigint, sum(failures)::bigint
FROM {schema}.breaker_counts
WHERE owner <> $1 AND expires_at > now()
GROUP BY name, generation`

// pruneCountsSQL deletes counts whose owner stopped refreshing them an
// hour ago (a process that died); live owners rewrite theirs within a
// window. It runs now and then, not on every refresh.
const pruneCountsSQL = `DELETE FROM {schema}.breaker_counts WHERE expires_at < now() - interval '1 hour'`

// deleteOwnCountsSQL removes this process's counts when its Registry
// closes, so they stop adding to the others' at once.
const deleteOwnCountsSQL = `DELETE FROM {schema}.breaker_counts WHERE owner = $1`

// statements is the SQL rendered for one schema.
type statements struct {
	publishOpen, publishClose, writeCounts, readState, readCounts, pruneCounts, deleteOwnCounts string
}

func renderSQL(schema string) statements {
	r := func(sql string) string { return sqlschema.Render(sql, schema) }
	return statements{
		publishOpen:     r(publishOpenSQL),
		publishClose:    r(publishCloseSQL),
		writeCounts:     r(writeCountsSQL),
		readState:       r(readStateSQL),
		readCounts:      r(readCountsSQL),
		pruneCounts:     r(pruneCountsSQL),
		deleteOwnCounts: r(deleteOwnCountsSQL),
	}
}
