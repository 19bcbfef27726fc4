package main

// The CLI's own SQL, in one place: read-only views that the packages do
// not offer as Go APIs. {schema} is replaced by the quoted, validated
// schema name (sqlschema.Render).

// queueListSQL lists queued events with their payload's size, oldest id
// first, after the id $6. The state is the one Stats counts by: an
// available event is due or scheduled depending on run_at. The payload is
// joined only for its size: bodies stay out of a listing. The filters
// are optional (an empty one matches everything), which makes the query a scan of
// the queue: the table holds only live events, and this is an operator's
// occasional look, not a hot path.
const queueListSQL = `
SELECT q.id, q.source, q.event_id, q.event_type, coalesce(q.handler, ''), s.state,
       q.attempt, q.max_attempts, q.deferrals, q.received_at, q.run_at,
       coalesce(octet_length(p.body), 0), coalesce(q.errors -> -1 ->> 'error', '')
FROM {schema}.queue q
CROSS JOIN LATERAL (SELECT CASE
    WHEN q.state <> 'available' THEN q.state
    WHEN q.run_at <= now() THEN 'due'
    ELSE 'scheduled' END AS state) s
LEFT JOIN {schema}.queue_payloads p ON p.queue_id = q.id
WHERE ($1 = '' OR q.source = $1)
  AND ($2 = '' OR q.event_type = $2)
  AND ($3 = '' OR q.handler = $3)
  AND ($4 = '' OR s.state = $4)
  AND q.id > $6
ORDER BY q.id
LIMIT $5`

// auditedStreamsSQL returns which of the delivery streams $1 exist: a
// replay from the CLI records itself in a delivery's audit trail only when
// the delivery has one (its service runs with Config.Audit on).
const auditedStreamsSQL = `SELECT stream FROM {schema}.event_streams WHERE stream = ANY($1::text[])`

// missingEntriesSQL returns the ids among $1 that name no dead-letter
// entry, in $1's order, without reading any entry's body.
const missingEntriesSQL = `
SELECT u.id FROM unnest($1::bigint[]) WITH ORDINALITY AS u(id, n)
WHERE NOT EXISTS (SELECT 1 FROM {schema}.dead_letters d WHERE d.id = u.id)
ORDER BY u.n`
