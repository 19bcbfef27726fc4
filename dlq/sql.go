package dlq

import (
	"strings"

	"github.com/wharfhq/wharf/internal/sqlschema"
)

// moveSQL records exhausted events, one row per element of the parallel
// arrays. If the event is already dead (a second copy of it was queued by a
// redelivery and exhausted too), the histories are merged into the one dead
// entry: an event is dead at most once at a time.
const moveSQL = `
INSERT INTO {schema}.dead_letters AS d (source, event_id, event_type, ordering_key, body, headers,
    received_at, attempts, max_attempts, errors, last_error, handler)
SELECT source, event_id, event_type, nullif(ordering_key, ''), body, headers,
    received_at, attempts, max_attempts, errors, last_error, handler
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::jsonb[],
    $7::timestamptz[], $8::int[], $9::int[], $10::jsonb[], $11::text[], $12::text[])
    AS t(source, event_id, event_type, ordering_key, body, headers,
         received_at, attempts, max_attempts, errors, last_error, handler)
ORDER BY source, event_id
ON CONFLICT (source, event_id) WHERE status = 'dead' DO UPDATE
SET event_type = excluded.event_type,
    ordering_key = excluded.ordering_key,
    body = excluded.body,
    headers = excluded.headers,
    attempts = d.attempts + excluded.attempts,
    max_attempts = excluded.max_attempts,
    errors = d.errors || excluded.errors,
    last_error = excluded.last_error,
    handler = excluded.handler,
    dead_at = now()`

// entryColumns is what List and Get read, in Entry's scan order. {body} is
// the body column, or NULL for a listing without bodies (Page.OmitBody):
// the body is not even read from its TOAST storage then.
const entryColumns = `id, source, event_id, event_type, coalesce(ordering_key, ''), {body}, headers,
    received_at, attempts, max_attempts, errors, handler, dead_at, status, replay_count,
    last_replayed_at, discarded_at`

// filterSQL is the WHERE clause shared by List, Count and replay by filter:
// $1 status, then optional filters that are NULL when unset. The error
// filter matches any attempt's error, not only the last one.
const filterSQL = `
WHERE status = $1
  AND ($2::text IS NULL OR source = $2)
  AND ($3::text IS NULL OR event_type = $3)
  AND ($4::text IS NULL OR handler = $4)
  AND ($5::text IS NULL OR EXISTS (
        SELECT 1 FROM jsonb_array_elements(errors) AS e
        WHERE e->>'error' ILIKE $5 ESCAPE '\'))
  AND ($6::timestamptz IS NULL OR dead_at >= $6)
  AND ($7::timestamptz IS NULL OR dead_at < $7)
  AND ($8::timestamptz IS NULL OR (dead_at, id) <= ($8, $9::bigint))`

// listSQL pages newest first, by keyset on (dead_at, id) after $10, $11.
const listSQL = `SELECT ` + entryColumns + ` FROM {schema}.dead_letters` + filterSQL + `
  AND ($10::timestamptz IS NULL OR (dead_at, id) < ($10, $11))
ORDER BY dead_at DESC, id DESC
LIMIT $12`

// replayPageSQL pages the entries a bulk replay sends back, oldest first,
// by keyset on (dead_at, id) after $10, $11: the events of one ordering key
// die in the order they were stored (only a key's oldest runs), and go
// back in that order, so they run in it again.
const replayPageSQL = `SELECT id, dead_at FROM {schema}.dead_letters` + filterSQL + `
  AND ($10::timestamptz IS NULL OR (dead_at, id) > ($10, $11))
ORDER BY dead_at, id
LIMIT $12`

const countSQL = `SELECT count(*) FROM {schema}.dead_letters` + filterSQL

const getSQL = `SELECT ` + entryColumns + ` FROM {schema}.dead_letters WHERE id = $1`

// withBody and withoutBody fill entryColumns' {body}.
var (
	withBody    = strings.NewReplacer("{body}", "body")
	withoutBody = strings.NewReplacer("{body}", "NULL::bytea")
)

// lockDeadSQL locks the still-dead entries among $1 for replay. A
// concurrent replay of the same entry waits here, then finds it no longer
// dead and skips it: replaying twice makes one queue row.
const lockDeadSQL = `
SELECT id, source, event_id, event_type, coalesce(ordering_key, ''), handler, body, headers, max_attempts
FROM {schema}.dead_letters
WHERE id = ANY ($1::bigint[]) AND status = 'dead'
ORDER BY id
FOR UPDATE`

const markReplayedSQL = `
UPDATE {schema}.dead_letters
SET status = 'replayed', replay_count = replay_count + 1, last_replayed_at = now()
WHERE id = ANY ($1::bigint[])`

const discardSQL = `
UPDATE {schema}.dead_letters
SET status = 'discarded', discarded_at = now()
WHERE id = ANY ($1::bigint[]) AND status = 'dead'`

// purgeCutoffSQL is the time before which a replay or a discard makes an
// entry purgeable, for Purge's olderThan of $1 milliseconds: by the
// database's clock, which also stamped the replays and discards.
const purgeCutoffSQL = `SELECT now() - $1 * interval '1 millisecond'`

// purgeableSQL is the FROM and WHERE of the entries replayed or discarded
// before $1: those a purge with that cutoff deletes.
const purgeableSQL = `
FROM {schema}.dead_letters
WHERE status IN ('replayed', 'discarded') AND coalesce(discarded_at, last_replayed_at) < $1`

const countPurgeableSQL = `SELECT count(*)` + purgeableSQL

// purgeSQL deletes up to $2 purgeable entries; PurgeBefore repeats it until
// none are left, so no single statement holds many row locks for long.
const purgeSQL = `DELETE FROM {schema}.dead_letters WHERE id = ANY (ARRAY(SELECT id` + purgeableSQL + ` LIMIT $2))`

type statements struct {
	move, list, listWithoutBodies, replayPage, count, get, lockDead, markReplayed, discard string
	purgeCutoff, countPurgeable, purge                                                     string
}

func render(schema string) statements {
	r := func(sql string) string { return sqlschema.Render(sql, schema) }
	return statements{
		move:              r(moveSQL),
		list:              r(withBody.Replace(listSQL)),
		listWithoutBodies: r(withoutBody.Replace(listSQL)),
		replayPage:        r(replayPageSQL),
		count:             r(countSQL),
		get:               r(withBody.Replace(getSQL)),
		lockDead:          r(lockDeadSQL),
		markReplayed:      r(markReplayedSQL),
		discard:           r(discardSQL),
		purgeCutoff:       r(purgeCutoffSQL),
		countPurgeable:    r(countPurgeableSQL),
		purge:             r(purgeSQL),
	}
}
