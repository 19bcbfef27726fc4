package queue

import (
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/wharfhq/wharf/internal/sqlschema"
)

// The queue's SQL, in one place. Every statement that changes a leased
// event is fenced by (id, lease_token, state = 'running'): a worker whose
// lease was lost changes nothing. Every statement that removes or releases
// an event also removes its payload and its ordering-key lock in the same
// statement, so no path can forget one.

// insertSQL stores a batch. Ids are drawn in input order, so events of one
// ordering key keep the order they were given in. Payloads go first, sorted
// by (source, event_id): their unique key deduplicates, and concurrent
// batches lock keys in one order, so they cannot deadlock. Only events
// whose payload was new get a queue row; RETURNING names them, and the
// others were duplicates. {duplicate_if} is Config.DuplicateIf, or false.
// With a DuplicateIf, {read_committed} stores nothing unless the
// transaction is READ COMMITTED, which recheckSQL needs; each row returned
// names the isolation level, so that the caller can say why.
// The ids inserted are also left in wharf.inserted, for recheckSQL; the
// one-row join makes sure the setting is made even when nothing was
// inserted (then the statement returns one row of NULLs). queue_id_seq is
// the sequence of queue.id's identity, named by Postgres's rule in
// migration 0001; naming it as a regclass constant resolves it once per
// plan, where pg_get_serial_sequence looked it up in the catalog per row.
const insertSQL = `
WITH input AS (
    SELECT t.*, nextval('{schema}.queue_id_seq'::regclass) AS id
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::timestamptz[], $7::bytea[], $8::jsonb[], $9::text[])
        WITH ORDINALITY AS t(source, event_id, event_type, ordering_key, max_attempts, run_at, body, headers, handler, ord)
    WHERE {read_committed}
    ORDER BY t.ord
),
stored AS (
    INSERT INTO {schema}.queue_payloads (queue_id, source, event_id, body, headers)
    SELECT id, source, event_id, body, headers
    FROM input t
    WHERE NOT ({duplicate_if})
    ORDER BY source, event_id
    ON CONFLICT (source, event_id) DO NOTHING
    RETURNING queue_id
),
inserted AS (
    INSERT INTO {schema}.queue (id, source, event_id, event_type, ordering_key, handler, max_attempts, run_at)
    OVERRIDING SYSTEM VALUE
    SELECT i.id, i.source, i.event_id, i.event_type, nullif(i.ordering_key, ''), nullif(i.handler, ''), i.max_attempts, coalesce(i.run_at, now())
    FROM input i JOIN stored s ON s.queue_id = i.id
    ORDER BY i.id
    RETURNING id, source, event_id
)
SELECT i.id, i.source, i.event_id, current_setting('transaction_isolation')
FROM (SELECT set_config('wharf.inserted', (SELECT coalesce(array_agg(id), '{}')::text FROM inserted), true)) AS noted
LEFT JOIN inserted i ON true`

// recheckSQL runs after insertSQL, in the same transaction, when
// Config.DuplicateIf is set. insertSQL evaluates the condition in its own
// snapshot; if it then waited on a key whose event another transaction was
// removing (a worker completing it, a move to the dead letter queue) and
// that transaction committed, the event was inserted although the
// condition now holds: it would be both processed and queued. This
// statement starts with a fresh snapshot, which sees that commit, and
// takes such events back out. insertSQL leaves the ids it inserted in the
// transaction-local setting wharf.inserted, so this finds exactly them, by
// primary key. No condition may filter on the queue's state: one on
// state = 'available' lets the planner pick the partial fetch index and
// scan all of it, which halved ingest throughput. $1 and $2 are the keys
// insertSQL was given: they guard against a setting left by an earlier
// statement. Like the insert, it runs under indexPlans.
const recheckSQL = `
WITH dup AS (
    DELETE FROM {schema}.queue t
    USING unnest($1::text[], $2::text[]) AS k(source, event_id)
    WHERE t.id = ANY (coalesce(nullif(current_setting('wharf.inserted', true), ''), '{}')::bigint[])
      AND t.source = k.source AND t.event_id = k.event_id
      AND ({duplicate_if})
    RETURNING t.id
),
payloads AS (
    DELETE FROM {schema}.queue_payloads p WHERE p.queue_id = ANY (ARRAY(SELECT id FROM dup))
)
SELECT id FROM dup`

// beginReadCommittedSQL starts the queue's own transactions once a fetch
// or an insert found the pool's default isolation level to be another
// (Queue.sendOwn): statements that must see what other transactions commit
// while they wait (the recheck after the insert, a fetch after a lock
// wait) rely on READ COMMITTED, which a role or database may have changed
// with default_transaction_isolation.
const beginReadCommittedSQL = `BEGIN ISOLATION LEVEL READ COMMITTED`

// readCommitted begins the queue's explicit transactions (a consumer's,
// Retry's, Rescue's) at READ COMMITTED, whatever the pool's default.
var readCommitted = pgx.TxOptions{IsoLevel: pgx.ReadCommitted}

// syncCommitSQL makes the surrounding transaction's commit wait for the
// WAL flush even when the server or role runs with synchronous_commit off:
// a 2xx must not leave before the event is durable.
const syncCommitSQL = `SELECT set_config('synchronous_commit', 'on', true)`

// indexPlans is set for the rest of a transaction ahead of the queue's
// own hot statements: the group-commit insert and its recheck, the fetch,
// the completion. They run on generic plans, made once per connection:
// planning them per execution cost a third of the drain's database time
// and a fifth of ingest's over HTTP. A generic plan is made for the tables
// as they are when it is made, and one made while the queue was nearly
// empty (a fresh deployment) would keep scanning whole tables as the
// queue grows; so these plans may reach rows only through indexes (no
// sequential or bitmap scans). Each statement was written for one index
// path (the fetch index in run_at order, primary keys by id, the keys the
// DuplicateIf condition looks up), which is the right plan for a queue of
// any size, and TestHotStatementPlans holds them to it. It is never
// applied to a caller's transaction or a handler's statements.
const indexPlans = `set_config('plan_cache_mode', 'force_generic_plan', true), ` +
	`set_config('enable_seqscan', 'off', true), set_config('enable_bitmapscan', 'off', true)`

// Settings sent ahead of the queue's own statements, in the same round trip.
const (
	indexPlansSQL    = `SELECT ` + indexPlans
	ownEnqueueSQL    = `SELECT set_config('synchronous_commit', 'on', true), ` + indexPlans
	fetchSettingsSQL = `SELECT current_setting('transaction_isolation'), set_config('jit', 'off', true), ` + indexPlans
)

// fetchSQL claims up to $1 due events in one statement, under lease token
// $2 for $3 milliseconds, for worker $4.
//
// {candidates} finds the due events that may be claimed, oldest first, and
// locks them: walkCandidatesSQL or byKindCandidatesSQL.
//
// Candidates are due, available, not paused (queue_pauses is tiny: each
// NOT IN is one hashed scan of it per fetch), of a kind the fetch takes,
// and, when they have an ordering key, are the head of their key (no
// older event of the key is left, other than exhausted ones) and the key
// is not locked (eligibleSQL). The
// head check alone could be passed by two fetchers at once (an older event
// that commits late), so the key is then locked by inserting it into
// queue_ordering_locks: ON CONFLICT sees keys that other fetchers have
// inserted but not yet committed, and waits for them. Keys are inserted in
// sorted order, so two fetchers cannot deadlock. Only candidates whose key
// lock was won are claimed; the rest stay available.
//
// A rescued candidate (its last lease expired unfinished) is chosen alone:
// when there is one, the fetch claims only the first rescued candidate and
// leaves the others available, so an event that kills its worker is never
// leased together with events it would make spend an attempt.
const fetchSQL = `
WITH RECURSIVE {candidates},
chosen AS (
    SELECT id, source, ordering_key FROM candidates
    WHERE NOT EXISTS (SELECT 1 FROM candidates WHERE rescued)
    UNION ALL
    (SELECT id, source, ordering_key FROM candidates WHERE rescued ORDER BY run_at, id LIMIT 1)
),
key_locks AS (
    INSERT INTO {schema}.queue_ordering_locks (source, ordering_key, queue_id)
    SELECT source, ordering_key, id FROM chosen
    WHERE ordering_key IS NOT NULL
    ORDER BY source, ordering_key
    ON CONFLICT DO NOTHING
    RETURNING queue_id
),
claimed AS (
    UPDATE {schema}.queue q
    SET state = 'running',
        attempt = q.attempt + 1,
        attempted_at = now(),
        lease_token = $2,
        lease_expires_at = now() + $3 * interval '1 millisecond',
        leased_by = $4
    WHERE q.id = ANY (ARRAY(
        SELECT id FROM chosen WHERE ordering_key IS NULL
        UNION ALL
        SELECT queue_id FROM key_locks))
    RETURNING q.id, q.source, q.event_id, q.event_type, q.ordering_key, q.handler, q.received_at,
              q.attempt, q.max_attempts, q.errors, q.lease_expires_at, q.rescued, q.deferrals
)
SELECT c.id, c.source, c.event_id, c.event_type, coalesce(c.ordering_key, ''), coalesce(c.handler, ''), c.received_at,
       c.attempt, c.max_attempts, c.errors, c.lease_expires_at, c.rescued, c.deferrals, {payload_columns}
FROM claimed c {payload_join}
ORDER BY c.id`

// walkCandidatesSQL is fetchSQL's candidates when the fetch walks every
// available event in run_at order and filters out the kinds it does not
// take ({kind_filters}: the Only and Exclude conditions it needs, or
// nothing, since an unused anti-join against an empty array still makes
// the planner expect to scan the whole table, which inflates the cost
// estimate past jit_above_cost). The cheapest fetch, unless many events
// ahead are of kinds it skips: it reads past each of them.
const walkCandidatesSQL = `candidates AS (
    SELECT q.id, q.source, q.ordering_key, q.rescued, q.run_at
    FROM {schema}.queue q
    WHERE {eligible}
      {kind_filters}
    ORDER BY q.run_at, q.id
    LIMIT $1
    FOR UPDATE OF q SKIP LOCKED
)`

// byKindCandidatesSQL is fetchSQL's candidates when the fetch walks each
// kind it takes on its own, through the kind index, oldest first: a
// backlog of kinds it skips is never read. {kinds} is the CTE "kinds",
// listed by the caller (kindsListedSQL) or read off the queue
// (kindsPresentSQL). The index orders each kind's events by handler name
// (empty for none) before their time, so "handlers" lists each kind's
// handler names, one index descent each (a skip scan), and "groups"
// leaves out the paused ones: a paused handler's events are not read
// either. "ahead" finds, without locking, the $1 oldest eligible events
// of those groups (up to $1 of each, cut to the $1 oldest of them all),
// and "quotas" how many of them each group has; each group then locks
// that many of its oldest (FOR UPDATE SKIP LOCKED: past those a
// concurrent fetch holds). Locking up to $1 of each kind and cutting
// their union would leave rows locked but unclaimed until the fetch
// commits, which a concurrent fetch skips: it could come back short, or
// empty, with events available, and its consumer wait for a poll. It can
// still come back short when a kind's quota falls on events a concurrent
// fetch holds and the kind has too few beyond them (a row's lock cannot
// be seen without taking it); a walk would take another kind's. Each
// group reads up to $1 entries, so with several kinds that have backlogs
// it costs more than a walk.
const byKindCandidatesSQL = `{kinds},
handlers AS (
    SELECT k.source, k.event_type, (
        SELECT coalesce(q.handler, '') COLLATE "C" FROM {schema}.queue q
        WHERE q.state = 'available' AND q.source COLLATE "C" = k.source AND q.event_type COLLATE "C" = k.event_type
        ORDER BY 1 LIMIT 1) AS handler
    FROM kinds k
    UNION ALL
    SELECT h.source, h.event_type, (
        SELECT coalesce(q.handler, '') COLLATE "C" FROM {schema}.queue q
        WHERE q.state = 'available' AND q.source COLLATE "C" = h.source AND q.event_type COLLATE "C" = h.event_type
          AND coalesce(q.handler, '') COLLATE "C" > h.handler
        ORDER BY 1 LIMIT 1)
    FROM handlers h WHERE h.handler IS NOT NULL
),
groups AS (
    SELECT source, event_type, handler FROM handlers
    WHERE handler IS NOT NULL
      AND handler NOT IN (SELECT handler FROM {schema}.queue_pauses WHERE source = '')
),
ahead AS (
    SELECT g.source, g.event_type, g.handler FROM groups g CROSS JOIN LATERAL (
        SELECT q.run_at, q.id
        FROM {schema}.queue q
        WHERE q.source COLLATE "C" = g.source AND q.event_type COLLATE "C" = g.event_type
          AND coalesce(q.handler, '') COLLATE "C" = g.handler
          AND {eligible}
        ORDER BY q.run_at, q.id
        LIMIT $1) a
    ORDER BY a.run_at, a.id
    LIMIT $1
),
quotas AS (
    SELECT source, event_type, handler, count(*) AS n FROM ahead GROUP BY source, event_type, handler
),
candidates AS (
    SELECT c.* FROM quotas g CROSS JOIN LATERAL (
        SELECT q.id, q.source, q.ordering_key, q.rescued, q.run_at
        FROM {schema}.queue q
        WHERE q.source COLLATE "C" = g.source AND q.event_type COLLATE "C" = g.event_type
          AND coalesce(q.handler, '') COLLATE "C" = g.handler
          AND {eligible}
        ORDER BY q.run_at, q.id
        LIMIT g.n
        FOR UPDATE OF q SKIP LOCKED) c
)`

// eligibleSQL is what fetchSQL requires of a candidate q, whatever its kind.
const eligibleSQL = `q.state = 'available'
          AND q.run_at <= now()
          AND q.source NOT IN (SELECT source FROM {schema}.queue_pauses WHERE handler = '')
          AND coalesce(q.handler, '') NOT IN (SELECT handler FROM {schema}.queue_pauses WHERE source = '')
          AND (q.ordering_key IS NULL OR (
                NOT EXISTS (
                    SELECT 1 FROM {schema}.queue_ordering_locks l
                    WHERE l.source = q.source AND l.ordering_key = q.ordering_key)
                AND NOT EXISTS (
                    SELECT 1 FROM {schema}.queue h
                    WHERE h.source = q.source AND h.ordering_key = q.ordering_key
                      AND h.id < q.id AND h.state <> 'exhausted')))`

// The payload parts of fetchSQL: Fetch returns each event's body and
// headers; a Consumer's fetch leaves them to its workers (payloadsSQL), so
// that its fetcher's statement, which every worker waits on, does less.
const (
	fetchPayloadColumns = `p.body, p.headers`
	fetchPayloadJoin    = `JOIN {schema}.queue_payloads p ON p.queue_id = c.id`
	fetchNoPayload      = `NULL::bytea, NULL::jsonb`
)

// payloadsSQL reads the bodies and headers of leased events $1, for a
// Consumer's worker whose events were fetched a moment ago. Payloads are
// removed only with their events, so a missing one means the event was
// removed.
const payloadsSQL = `SELECT queue_id, body, headers FROM {schema}.queue_payloads WHERE queue_id = ANY ($1::bigint[])`

// heldPayloadsSQL is payloadsSQL for events that waited long enough for a
// lease to lapse: it returns only those still held under leases $2. One
// it does not return lost its lease while it waited for its worker
// (rescued, and perhaps leased again to another worker since), and must
// not run. The join costs the drain about a twentieth, so fresh chunks
// do without it.
var heldPayloadsSQL = `SELECT q.id, p.body, p.headers FROM {schema}.queue q
JOIN {schema}.queue_payloads p ON p.queue_id = q.id
WHERE ` + heldSQL

// Lease statements take the leases as two parallel arrays, $1 ids and $2
// tokens, plus more parallel arrays of per-event values. They match rows
// with id = ANY($1) and look a row's own values up by its position in $1,
// rather than joining the arrays in: a relation joined into an UPDATE or
// DELETE makes Postgres build a whole-row copy of each joined row for
// re-checks, which cost a third of the drain's time.

// heldSQL matches a queue row q that is still held under its lease. It
// sits in the WHERE clause of each statement that changes the row, never in
// a CTE: under READ COMMITTED a statement that waited for a concurrent
// update (the rescuer's, say) re-checks its own WHERE clause against the
// new row version, so a stale lease changes nothing, where a condition
// checked in a CTE would not be checked again. A row has a lease token
// exactly while it is running (a CHECK constraint says so), so the token
// alone proves the lease; a state condition here would also lead the
// planner to the small partial index of running rows, walking every running
// row instead of looking up a few ids.
var heldSQL = `q.id = ANY ($1::bigint[]) AND q.lease_token = ` + at("2::bigint[]")

// at returns the SQL for row q's element of array parameter param (as
// "3::bigint[]"), found by q.id's position in $1.
func at(param string) string {
	return `($` + param + `)[array_position($1::bigint[], q.id)]`
}

// unlockCTE drops the ordering-key locks of the rows in "changed".
const unlockCTE = `
unlocked AS (
    DELETE FROM {schema}.queue_ordering_locks k
    USING changed c
    WHERE k.source = c.source AND k.ordering_key = c.ordering_key AND k.queue_id = c.id
)`

// completeSQL removes held events with their payloads and key locks.
var completeSQL = `
WITH changed AS (
    DELETE FROM {schema}.queue q
    WHERE ` + heldSQL + `
    RETURNING q.id, q.source, q.ordering_key
),
payloads AS (
    DELETE FROM {schema}.queue_payloads p USING changed c WHERE p.queue_id = c.id
),` + unlockCTE + `
SELECT id FROM changed`

// errorEntrySQL is one error-history entry for a row q that failed with
// message error ($3 or $4): attempt and worker come from the row itself.
func errorEntrySQL(param string) string {
	return `jsonb_build_array(jsonb_build_object(
            'attempt', q.attempt, 'error', ` + at(param) + `, 'at', now(), 'worker', coalesce(q.leased_by, '')))`
}

// retrySQL puts held events back, due after $3 milliseconds each, with
// error $4 appended to their history and marked rescued or not by $5 (by
// the rescuer, or by a worker); the attempt they ran stays counted.
var retrySQL = `
WITH changed AS (
    UPDATE {schema}.queue q
    SET state = 'available',
        run_at = now() + ` + at("3::bigint[]") + ` * interval '1 millisecond',
        rescued = ` + at("5::boolean[]") + `,
        lease_token = NULL, lease_expires_at = NULL, leased_by = NULL,
        errors = q.errors || ` + errorEntrySQL("4::text[]") + `
    WHERE ` + heldSQL + `
    RETURNING q.id, q.source, q.ordering_key
),` + unlockCTE + `
SELECT id FROM changed`

// deferSQL puts held events back, due at $3 each (now when null), and gives
// back the attempt the fetch counted: they did not run, or ran for nothing
// that was their fault. Those marked in $4 count one more deferral.
var deferSQL = `
WITH changed AS (
    UPDATE {schema}.queue q
    SET state = 'available',
        run_at = coalesce(` + at("3::timestamptz[]") + `, now()),
        attempt = greatest(q.attempt - 1, 0),
        deferrals = q.deferrals + ` + at("4::int[]") + `,
        lease_token = NULL, lease_expires_at = NULL, leased_by = NULL
    WHERE ` + heldSQL + `
    RETURNING q.id, q.source, q.ordering_key
),` + unlockCTE + `
SELECT id FROM changed`

// exhaustKeepSQL parks held events as exhausted, with error $3 appended to
// their history, when no OnExhausted hook takes them.
var exhaustKeepSQL = `
WITH changed AS (
    UPDATE {schema}.queue q
    SET state = 'exhausted',
        lease_token = NULL, lease_expires_at = NULL, leased_by = NULL,
        errors = q.errors || ` + errorEntrySQL("3::text[]") + `
    WHERE ` + heldSQL + `
    RETURNING q.id, q.source, q.ordering_key
),` + unlockCTE + `
SELECT id FROM changed`

// exhaustRemoveSQL removes held events for the OnExhausted hook and returns
// them whole, with error $3 appended to their history.
var exhaustRemoveSQL = `
WITH changed AS (
    DELETE FROM {schema}.queue q
    WHERE ` + heldSQL + `
    RETURNING q.id, q.source, q.event_id, q.event_type, q.ordering_key, q.handler, q.received_at,
              q.attempt, q.max_attempts, q.errors || ` + errorEntrySQL("3::text[]") + ` AS errors
),
payloads AS (
    DELETE FROM {schema}.queue_payloads p USING changed c WHERE p.queue_id = c.id
    RETURNING p.queue_id, p.body, p.headers
),` + unlockCTE + `
SELECT c.id, c.source, c.event_id, c.event_type, coalesce(c.ordering_key, ''), coalesce(c.handler, ''), c.received_at,
       c.attempt, c.max_attempts, c.errors, p.body, p.headers
FROM changed c JOIN payloads p ON p.queue_id = c.id
ORDER BY c.id`

// heartbeatSQL extends the leases it can. Rows locked by an open processing
// transaction are skipped rather than waited for: that transaction is about
// to complete or retry them, and waiting would let every other lease of
// this worker lapse meanwhile. A locked row cannot be rescued either (the
// rescuer skips locked rows too), so skipping it is safe.
var heartbeatSQL = `
WITH lockable AS (
    SELECT q.id
    FROM {schema}.queue q
    WHERE ` + heldSQL + `
    FOR UPDATE OF q SKIP LOCKED
)
UPDATE {schema}.queue q
SET lease_expires_at = now() + $3 * interval '1 millisecond'
WHERE q.id = ANY (ARRAY(SELECT id FROM lockable))
RETURNING q.id, q.lease_expires_at`

// expiredSQL picks running events whose lease lapsed, for the rescuer,
// other than those in $2 (which a rescue found waiting on a lock).
const expiredSQL = `
SELECT q.id, q.lease_token, q.attempt, q.max_attempts, coalesce(q.leased_by, '')
FROM {schema}.queue q
WHERE q.state = 'running' AND q.lease_expires_at < now()
  AND q.id <> ALL (coalesce($2::bigint[], '{}'))
ORDER BY q.lease_expires_at
LIMIT $1
FOR UPDATE OF q SKIP LOCKED`

// statsSQL counts events by source, type and state. It reads the whole
// table; the table holds only live events, so this stays cheap.
const statsSQL = `
SELECT source, event_type,
       count(*) FILTER (WHERE state = 'available' AND run_at <= now()),
       count(*) FILTER (WHERE state = 'available' AND run_at > now()),
       count(*) FILTER (WHERE state = 'running'),
       count(*) FILTER (WHERE state = 'exhausted'),
       count(*) FILTER (WHERE state = 'available' AND handler IS NULL),
       min(run_at) FILTER (WHERE state = 'available' AND run_at <= now()),
       now()
FROM {schema}.queue
GROUP BY source, event_type
ORDER BY source, event_type`

// pauseSQL pauses a source or a handler ($1 or $2, the other empty), keeping
// the time of a pause already in place.
const pauseSQL = `
INSERT INTO {schema}.queue_pauses (source, handler, reason) VALUES ($1, $2, $3)
ON CONFLICT (source, handler) DO UPDATE SET reason = excluded.reason`

const resumeSQL = `DELETE FROM {schema}.queue_pauses WHERE source = $1 AND handler = $2`

// pausedHandlersSQL returns which of the handler names $1 are paused.
const pausedHandlersSQL = `SELECT handler FROM {schema}.queue_pauses WHERE source = '' AND handler = ANY ($1::text[])`

const pausesSQL = `
SELECT source, handler, reason, paused_at FROM {schema}.queue_pauses ORDER BY paused_at, source, handler`

// sourceInUseSQL says whether any queued event, dead letter or processed
// event has the source $1 (InUse). A processed event's source is in its
// idempotency key, "<length>:<source>:<event id>" (idempotency.Key): the
// keys with the prefix $2 are those from $2 up to $3, the prefix with its
// final ':' raised to ';'. That range is looked up in the primary key
// (consumer, key) for each consumer in turn, found by a loose index scan,
// instead of scanning the whole table.
const sourceInUseSQL = `
WITH RECURSIVE consumers (consumer) AS (
    (SELECT consumer FROM {schema}.processed_events ORDER BY consumer LIMIT 1)
    UNION ALL
    SELECT (SELECT p.consumer FROM {schema}.processed_events p WHERE p.consumer > c.consumer ORDER BY p.consumer LIMIT 1)
    FROM consumers c WHERE c.consumer IS NOT NULL
)
SELECT EXISTS (SELECT 1 FROM {schema}.queue WHERE source = $1)
    OR EXISTS (SELECT 1 FROM {schema}.dead_letters WHERE source = $1)
    OR EXISTS (SELECT 1 FROM consumers c JOIN {schema}.processed_events p ON p.consumer = c.consumer
               WHERE p.key >= $2 COLLATE "C" AND p.key < $3 COLLATE "C")`

// handlerInUseSQL says whether any queued event, dead letter or processed
// event (whose consumer is the handler's name) has the handler $1 (InUse).
const handlerInUseSQL = `
SELECT EXISTS (SELECT 1 FROM {schema}.queue WHERE handler = $1)
    OR EXISTS (SELECT 1 FROM {schema}.dead_letters WHERE handler = $1)
    OR EXISTS (SELECT 1 FROM {schema}.processed_events WHERE consumer = $1)`

// kindFilterSQL is a fetch's Only (match) or Exclude (not match) filter,
// with kinds as two array parameters, sources then types, numbered from
// first.
func kindFilterSQL(match bool, first int) string {
	not := "NOT "
	if match {
		not = ""
	}
	return fmt.Sprintf(`AND %sEXISTS (
            SELECT 1 FROM unnest($%d::text[], $%d::text[]) AS k(source, event_type)
            WHERE k.source = q.source AND (k.event_type = '*' OR k.event_type = q.event_type))`, not, first, first+1)
}

// kindsListedSQL is fetchSQL's kinds when the caller lists them, as two
// arrays $5 (sources) and $6 (types), less the paused sources.
const kindsListedSQL = `kinds AS (
    SELECT k.source COLLATE "C" AS source, k.event_type COLLATE "C" AS event_type
    FROM unnest($5::text[], $6::text[]) AS k(source, event_type)
    WHERE k.source NOT IN (SELECT source FROM {schema}.queue_pauses WHERE handler = '')
)`

// kindsPresentSQL is fetchSQL's kinds when they must be read off the
// queue: a fetch of every kind, or of every type of a source. "present"
// lists the kinds of the available events, one index descent per kind (a
// skip scan: each step seeks the first entry past the kind before), so
// its cost grows with the number of kinds, not of events. Of those, kinds
// takes the ones that match Only ($5 sources, $6 types; AnyType matches
// every type; empty arrays match every kind), match no Exclude ($7, $8)
// and whose source is not paused.
const kindsPresentSQL = `present AS (
    (SELECT q.source COLLATE "C" AS source, q.event_type COLLATE "C" AS event_type
     FROM {schema}.queue q WHERE q.state = 'available'
     ORDER BY 1, 2 LIMIT 1)
    UNION ALL
    SELECT n.source, n.event_type FROM present p CROSS JOIN LATERAL (
        SELECT q.source COLLATE "C" AS source, q.event_type COLLATE "C" AS event_type
        FROM {schema}.queue q
        WHERE q.state = 'available'
          AND (q.source COLLATE "C", q.event_type COLLATE "C") > (p.source, p.event_type)
        ORDER BY 1, 2 LIMIT 1) n
),
kinds AS (
    SELECT p.source, p.event_type FROM present p
    WHERE p.source NOT IN (SELECT source FROM {schema}.queue_pauses WHERE handler = '')
      AND (cardinality($5::text[]) = 0 OR EXISTS (
            SELECT 1 FROM unnest($5::text[], $6::text[]) AS k(source, event_type)
            WHERE k.source = p.source AND (k.event_type = '*' OR k.event_type = p.event_type)))
      AND NOT EXISTS (
            SELECT 1 FROM unnest($7::text[], $8::text[]) AS k(source, event_type)
            WHERE k.source = p.source AND (k.event_type = '*' OR k.event_type = p.event_type))
)`

// fetchSettingsSQL (above) also turns JIT compilation off for the fetch: its
// cost estimate can pass jit_above_cost when the planner cannot see how
// selective the filters are, and compiling then costs hundreds of
// milliseconds for a statement that runs in one.

// fetchStatements are the renderings of fetchSQL: walk, indexed by kind
// filters [Only used][Exclude used], and byKind, by how its kinds are
// known [kindsListed, kindsPresent].
type fetchStatements struct {
	walk   [2][2]string
	byKind [2]string
}

// skippedSQL counts, of the first $1 due available events in run_at order
// (the ones a walking fetch reads first), those it would skip: paused, or
// of a kind it does not take ({kind_filters}, from $2, as in fetchSQL). A
// Consumer fetches by kind while they are many. It reads at most $1 index
// entries, and rows for their visibility, without locking any.
const skippedSQL = `
SELECT count(*) FILTER (WHERE NOT (
           q.source NOT IN (SELECT source FROM {schema}.queue_pauses WHERE handler = '')
           AND coalesce(q.handler, '') NOT IN (SELECT handler FROM {schema}.queue_pauses WHERE source = '')
           {kind_filters}))
FROM (SELECT q.source, q.event_type, q.handler
      FROM {schema}.queue q
      WHERE q.state = 'available' AND q.run_at <= now()
      ORDER BY q.run_at, q.id
      LIMIT $1) q`

// statements holds the SQL rendered for one schema.
type statements struct {
	fetch          fetchStatements // with payloads
	fetchNoPayload fetchStatements // the same, leaving payloads to payloads
	skipped        [2][2]string    // skippedSQL, by Only and Exclude given
	payloads       string
	heldPayloads   string
	insert, recheck, complete, retry, deferEvents, exhaustKeep, exhaustRemove,
	heartbeat, expired, stats, pause, resume, pauses, pausedHandlers,
	sourceInUse, handlerInUse string
}

func render(schema, duplicateIf string) statements {
	readCommitted := "current_setting('transaction_isolation') IN ('read committed', 'read uncommitted')"
	if duplicateIf == "" {
		duplicateIf, readCommitted = "false", "true"
	}
	r := func(sql string) string {
		sql = strings.NewReplacer("{duplicate_if}", duplicateIf, "{read_committed}", readCommitted).Replace(sql)
		return sqlschema.Render(sql, schema)
	}
	filters := func(first int) [2][2]string {
		only, exclude := kindFilterSQL(true, first), kindFilterSQL(false, first)
		return [2][2]string{{"", exclude}, {only, only + "\n      " + kindFilterSQL(false, first+2)}}
	}
	fetches := func(columns, join string) fetchStatements {
		sql := strings.NewReplacer("{payload_columns}", columns, "{payload_join}", join).Replace(fetchSQL)
		with := func(candidates, kinds, kindFilters string) string {
			candidates = strings.NewReplacer("{kinds}", kinds, "{kind_filters}", kindFilters, "{eligible}", eligibleSQL).Replace(candidates)
			return r(strings.Replace(sql, "{candidates}", candidates, 1))
		}
		var f fetchStatements
		for only, byExclude := range filters(5) {
			for exclude, kindFilters := range byExclude {
				f.walk[only][exclude] = with(walkCandidatesSQL, "", kindFilters)
			}
		}
		f.byKind = [2]string{kindsListed: with(byKindCandidatesSQL, kindsListedSQL, ""), kindsPresent: with(byKindCandidatesSQL, kindsPresentSQL, "")}
		return f
	}
	var skipped [2][2]string
	for only, byExclude := range filters(2) {
		for exclude, kindFilters := range byExclude {
			skipped[only][exclude] = r(strings.Replace(skippedSQL, "{kind_filters}", kindFilters, 1))
		}
	}
	return statements{
		fetch:          fetches(fetchPayloadColumns, fetchPayloadJoin),
		fetchNoPayload: fetches(fetchNoPayload, ""),
		skipped:        skipped,
		payloads:       r(payloadsSQL),
		heldPayloads:   r(heldPayloadsSQL),
		insert:         r(insertSQL),
		recheck:        r(recheckSQL),
		complete:       r(completeSQL),
		retry:          r(retrySQL),
		deferEvents:    r(deferSQL),
		exhaustKeep:    r(exhaustKeepSQL),
		exhaustRemove:  r(exhaustRemoveSQL),
		heartbeat:      r(heartbeatSQL),
		expired:        r(expiredSQL),
		stats:          r(statsSQL),
		pause:          r(pauseSQL),
		resume:         r(resumeSQL),
		pauses:         r(pausesSQL),
		pausedHandlers: r(pausedHandlersSQL),
		sourceInUse:    r(sourceInUseSQL),
		handlerInUse:   r(handlerInUseSQL),
	}
}
