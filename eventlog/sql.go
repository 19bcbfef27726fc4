package eventlog

import (
	"strings"

	"github.com/wharfhq/wharf/internal/sqlschema"
)

// The event log's SQL, in one place. event_log is only ever inserted into
// (triggers reject anything else); event_streams holds each stream's
// current version and read key and is the lock that serialises appenders to one stream;
// event_checkpoints holds projections' cursors.

// appendSQL writes a batch of events to stream $1 in one statement, if the
// stream is at the expected version. {head} is one of the head statements
// below: it moves the stream's row forward by the number of events ($2)
// and returns the version the stream had before (base), or returns no row
// when the stream is not at the expected version. The events are then
// inserted as versions base+1 .. base+n, in the order given, so positions
// grow with versions, with the read key the head returns (see readKeySQL).
//
// A conflict is detected by the head returning no row, never by a unique
// violation: a failed statement would abort the caller's transaction, and
// an insert that fails after drawing its position would burn sequence
// values. With no head row the INSERT selects nothing: no event row, no
// position drawn.
//
// The stream's row lock, taken by the head, serialises appenders to one
// stream until commit, so a stream's events commit in version order and
// its versions stay gapless: a rolled-back append rolls back its head
// update too.
const appendSQL = `
WITH head AS (
    {head}
)
INSERT INTO {schema}.event_log (stream, version, event_type, data, metadata, read_key)
SELECT $1, head.base + e.ord, e.event_type, e.data, e.metadata, head.read_key
FROM head, unnest($3::text[], $4::jsonb[], $5::jsonb[]) WITH ORDINALITY AS e(event_type, data, metadata, ord){sync}
ORDER BY e.ord
RETURNING position, version, tx_id, read_key`

// appendOneSQL is appendSQL for a single event, with scalar parameters:
// most appends write one event, and array parameters cost more to encode,
// send and unnest than the rest of the statement.
const appendOneSQL = `
WITH head AS (
    {head}
)
INSERT INTO {schema}.event_log (stream, version, event_type, data, metadata, read_key)
SELECT $1, head.base + 1, $3, $4::jsonb, $5::jsonb, head.read_key
FROM head{sync}
RETURNING position, version, tx_id, read_key`

// headNewSQL: the stream must not exist (NoStream, or expected version 0;
// a stream row exists only once it has an event). DO NOTHING, rather than
// DO UPDATE ... WHERE false, because the latter would lock the existing
// row until the caller's transaction ends and block every other appender
// to the stream meanwhile. A concurrent creator that has not committed yet
// is waited for: if it commits this is a conflict, if it rolls back this
// insert goes ahead.
const headNewSQL = `INSERT INTO {schema}.event_streams (stream, version, read_key) VALUES ($1, $2, pg_current_xact_id())
    ON CONFLICT (stream) DO NOTHING
    RETURNING 0::bigint AS base, read_key`

// headAnySQL: AnyVersion; creates the stream or moves it forward.
const headAnySQL = `INSERT INTO {schema}.event_streams AS s (stream, version, read_key) VALUES ($1, $2, pg_current_xact_id())
    ON CONFLICT (stream) DO UPDATE SET version = s.version + excluded.version, read_key = greatest(s.read_key, excluded.read_key)
    RETURNING s.version - $2 AS base, s.read_key`

// headExpectedSQL: the stream must be at version $6 (>= 1). Under READ
// COMMITTED an UPDATE that waited for a concurrent appender re-checks its
// WHERE clause against the row that appender committed, so of many
// appenders expecting one version exactly one matches. (Under REPEATABLE
// READ or SERIALIZABLE, Postgres reports that case as a serialization
// failure instead.) A losing appender that waited keeps the row locked
// until its own transaction ends, as Postgres keeps every row lock it took.
const headExpectedSQL = `UPDATE {schema}.event_streams SET version = version + $2, read_key = greatest(read_key, pg_current_xact_id())
    WHERE stream = $1 AND version = $6
    RETURNING version - $2 AS base, read_key`

// streamVersionSQL reads a stream's version, 0 when it has no events. After
// a conflict it runs as a statement of its own, so under READ COMMITTED its
// snapshot includes the append that won.
const streamVersionSQL = `SELECT coalesce((SELECT version FROM {schema}.event_streams WHERE stream = $1), 0)`

// syncCommitFilter, in Append's own statement, makes its transaction wait
// for its WAL flush even when the server or role runs with
// synchronous_commit off: an Append that returned has an event that
// survives a crash. It is a condition on the head's row rather than a
// statement of its own because a second statement in the round trip cost
// Append a tenth of its throughput; set_config is volatile, so it is
// evaluated (once, for the one head row) and never folded away, and with no
// head row there is nothing to make durable. The statement runs as an
// implicit transaction that commits when it ends, so the setting (local to
// the transaction) is in force at that commit. AppendTx leaves the caller's
// transaction alone.
const syncCommitFilter = `
WHERE set_config('synchronous_commit', 'on', true) = 'on'`

// readKeySQL is an event's read key, which ReadAll orders by (with
// position): the appending transaction's id, raised to the stream's
// previous read key when that is higher (event_streams.read_key), so a
// stream's events read in version order even when a transaction that got
// its id early appends after a newer one. It is never below its writer's
// id, so every event that commits after a read has a read key at or above
// that read's horizon. Rows appended before migration 11 have no read_key
// and keep their tx_id; event_log_read_key_position_idx is built on this
// expression.
const readKeySQL = `coalesce(read_key, tx_id)`

// eventColumns is what every read returns, in the order scanEvent expects.
const eventColumns = `position, stream, version, event_type, data, metadata, recorded_at, tx_id, ` + readKeySQL

// readStreamSQL reads one stream by version. A stream's events commit in
// version order (its appenders are serialised by the stream row's lock),
// so any snapshot sees a gapless prefix of it: no horizon is needed here.
const readStreamSQL = `
SELECT ` + eventColumns + `
FROM {schema}.event_log
WHERE stream = $1 AND version >= $2
ORDER BY version
LIMIT $3`

// loadSQL reads a whole stream in one statement (one snapshot), streamed
// row by row into the fold.
const loadSQL = `
SELECT ` + eventColumns + `
FROM {schema}.event_log
WHERE stream = $1
ORDER BY version`

// horizonSQL is the transaction-id horizon: every transaction with a lower
// id that could have written to this database's event_log has ended
// (committed or rolled back) as of this statement's snapshot, so the rows
// below it can no longer change, and no transaction that starts later can
// get a lower id. It is the oldest transaction in the snapshot's
// in-progress list, or the snapshot's xmax when that list is empty, but
// for transactions shown to be another database's (pg_stat_activity, or
// pg_prepared_xacts): they cannot write here. A transaction whose database
// is not shown holds the horizon, because it may have committed rows the
// snapshot does not show. So a long transaction in another database of the
// cluster does not stall this log; one in this database does, while it
// runs.
//
// Every statement that uses it runs after statusFirstSQL in the same
// transaction (see afterStatus), so pg_stat_activity shows the backends as
// they were before the snapshot: a transaction in the snapshot's
// in-progress list that had its id then is shown with its database, and
// one that got its id later is newer than every event committed before
// the read began, which it therefore never holds back. Read after the
// snapshot instead, a transaction of another database that ended in
// between was not shown, and held back, for one read, events that were
// already final. pg_prepared_xacts is read at the statement's time, so a
// prepared transaction of another database that is committed in that
// moment can still hold one read back.
// (pg_stat_activity shows backend_xid as 32 bits; the in-progress ids are
// 64-bit xid8, compared modulo 2^32, which is exact while both are live.)
//
// The horizon is capped at the reader's own transaction id, if it has one
// (a projection's batch does: it locks its checkpoint row). Postgres never
// lists a transaction's own id among its snapshot's running ones, yet the
// batch is still running and its function may append events with that id:
// a horizon above it would let the batch read events of newer transactions
// and move its checkpoint past its own appends, which it would then never
// read. (least ignores the NULL of a reader without an id.)
//
// On a physical replica (pg_is_in_recovery) the horizon is the snapshot's
// xmin: during recovery Postgres lists every running transaction in the
// snapshot's subtransaction list, not pg_snapshot_xip, and the primary's
// backends are not in pg_stat_activity, so the list would come back empty
// and the horizon would pass transactions still running on the primary.
// There, transactions of every database of the cluster hold the tail.
const horizonSQL = `(
    SELECT CASE WHEN pg_is_in_recovery() THEN pg_snapshot_xmin(pg_current_snapshot())
           ELSE least(coalesce(min(x), pg_snapshot_xmax(pg_current_snapshot())), pg_current_xact_id_if_assigned()) END
    FROM pg_snapshot_xip(pg_current_snapshot()) AS x
    WHERE NOT EXISTS (
            SELECT 1 FROM pg_stat_activity a
            WHERE a.backend_xid = ((x::text::numeric % 4294967296)::text)::xid
              AND a.datname <> current_database())
      AND NOT EXISTS (
            SELECT 1 FROM pg_prepared_xacts p
            WHERE p.transaction = ((x::text::numeric % 4294967296)::text)::xid
              AND p.database <> current_database()))`

// statusFirstSQL reads pg_stat_activity, which Postgres then keeps, as it
// was at this first use, until the transaction ends; see horizonSQL.
const statusFirstSQL = `SELECT count(*) FROM pg_stat_activity`

// readAllSQL reads the log in (read key, position) order after a cursor
// and below the horizon: one range scan of event_log_read_key_position_idx (the row
// comparison and the horizon are both index conditions). Ordering by
// position alone would skip events whose transaction drew a lower position
// but committed after the reader had passed it. {filter} is empty, or the
// category condition.
const readAllSQL = `
SELECT ` + eventColumns + `
FROM {schema}.event_log
WHERE (` + readKeySQL + `, position) > ($1::xid8, $2::bigint)
  AND ` + readKeySQL + ` < ` + horizonSQL + `{filter}
ORDER BY ` + readKeySQL + `, position
LIMIT $3`

// headSQL is the cursor of the last event ReadAll can return now: the
// greatest (read key, position) below the horizon, one backward step of
// event_log_read_key_position_idx. Every event committed later sorts after
// it: below the horizon, every transaction had ended when the snapshot was
// taken, so its events are all in the snapshot.
const headSQL = `
SELECT ` + readKeySQL + `, position
FROM {schema}.event_log
WHERE ` + readKeySQL + ` < ` + horizonSQL + `
ORDER BY ` + readKeySQL + ` DESC, position DESC
LIMIT 1`

// categoryFilter restricts a read to streams whose name starts with a
// prefix: $4 is the prefix with LIKE's metacharacters escaped, then '%'.
// The planner scans the (read key, position) index and filters, or, for a
// rare category, scans the prefix's range of the (stream, version) index
// (stream is COLLATE "C", so LIKE 'prefix%' is a range) and sorts.
const categoryFilter = `
  AND stream LIKE $4 ESCAPE '\'`

// tailLagSQL measures how far the horizon holds the tail back: the
// committed events at or above it (which ReadAll cannot return yet), and
// the oldest transaction with an id, among backends and prepared
// transactions: the one that defines the horizon. Describing other roles'
// backends needs pg_read_all_stats; without it their age and query read
// as unknown.
const tailLagSQL = `
WITH h AS (SELECT ` + horizonSQL + ` AS xmin),
holder AS (
    SELECT pid, extract(epoch FROM now() - xact_start)::float8 AS age_s, coalesce(left(query, 200), '') AS query,
           '' AS gid, age(backend_xid) AS xid_age
    FROM pg_stat_activity
    WHERE backend_xid IS NOT NULL AND datname IS NOT DISTINCT FROM current_database()
    UNION ALL
    SELECT 0, extract(epoch FROM now() - prepared)::float8, '', gid, age(transaction)
    FROM pg_prepared_xacts
    WHERE database = current_database()
    ORDER BY xid_age DESC
    LIMIT 1
)
SELECT h.xmin,
       (SELECT count(*) FROM {schema}.event_log e WHERE ` + readKeySQL + ` >= h.xmin),
       coalesce(holder.pid, 0), coalesce(holder.age_s, 0), coalesce(holder.query, ''), coalesce(holder.gid, '')
FROM h LEFT JOIN holder ON true`

// Projections.

// ensureCheckpointSQL creates a projection's checkpoint at the start of the
// log unless it exists.
const ensureCheckpointSQL = `
INSERT INTO {schema}.event_checkpoints (name) VALUES ($1)
ON CONFLICT (name) DO NOTHING`

// pendingSQL tells a batch that reached the horizon (it read fewer events
// than it could) whether committed events wait after its new cursor beyond
// the horizon: the tail is held back by an older transaction, and the
// projection retries soon rather than sleeping until the next wake-up
// (the NOTIFY for those events may already have come and gone, before
// this batch). {filter} is empty, or the category condition on $3.
const pendingSQL = `
SELECT EXISTS (
    SELECT 1 FROM {schema}.event_log
    WHERE (` + readKeySQL + `, position) > ($1::xid8, $2::bigint){filter})`

// holdSQL takes the projection's lock shared, for the running projection's
// batch transaction; a Rebuild holds it exclusively for its whole run.
// try, not wait: a projection held off by a rebuild gives its connection
// back and tries again after its poll interval, rather than holding a
// connection and a transaction open for the whole rebuild.
const holdSQL = `SELECT pg_try_advisory_xact_lock_shared($1)`

// lockCheckpointSQL takes the projection's checkpoint row for the batch
// transaction. A replica running the same projection holds it while its
// batch runs: SKIP LOCKED lets this one go back to waiting instead of
// holding a connection idle; the replica that has it is doing the work.
const lockCheckpointSQL = `
SELECT tx_id, position FROM {schema}.event_checkpoints
WHERE name = $1
FOR UPDATE SKIP LOCKED`

// lockCheckpointWaitSQL is lockCheckpointSQL for a Rebuild's batches,
// which wait for the row: while a rebuild holds the projection's lock the
// only other holder can be a live batch about to find itself held off and
// roll back.
const lockCheckpointWaitSQL = `
SELECT tx_id, position FROM {schema}.event_checkpoints
WHERE name = $1
FOR UPDATE`

// saveCheckpointSQL moves the checkpoint in the batch's transaction, which
// holds the projection's writes: both commit, or neither.
const saveCheckpointSQL = `
UPDATE {schema}.event_checkpoints SET tx_id = $2, position = $3, updated_at = now()
WHERE name = $1`

// resetCheckpointSQL puts the checkpoint back at the start of the log, in
// the transaction that holds the user's reset of the projection's tables.
const resetCheckpointSQL = `
INSERT INTO {schema}.event_checkpoints AS c (name) VALUES ($1)
ON CONFLICT (name) DO UPDATE SET tx_id = '0', position = 0, updated_at = now()`

// readCheckpointSQL reads a checkpoint without locking it.
const readCheckpointSQL = `SELECT tx_id, position FROM {schema}.event_checkpoints WHERE name = $1`

// countSQL counts the events below the horizon, for Rebuild's progress.
const countSQL = `SELECT count(*) FROM {schema}.event_log WHERE ` + readKeySQL + ` < ` + horizonSQL + `{filter}`

// Rebuild's session lock, held exclusively on the rebuild's own connection;
// its batches run on that same connection, where it does not block them.
const (
	rebuildLockSQL   = `SELECT pg_advisory_lock($1)`
	rebuildUnlockSQL = `SELECT pg_advisory_unlock($1)`
)

// statements holds the SQL rendered for one schema.
type statements struct {
	// append and appendOne are indexed by [own transaction][head], head
	// being headNew, headAny or headExpected.
	append, appendOne [2][3]string
	// readAll, count and pending are indexed by [category used].
	readAll, count, pending [2]string
	streamVersion, readStream, load, tailLag, head,
	ensureCheckpoint, lockCheckpoint, lockCheckpointWait, saveCheckpoint, resetCheckpoint, readCheckpoint string
}

// Indexes into statements.append.
const (
	headNew = iota
	headAny
	headExpected
)

func render(schema string) statements {
	r := func(sql string) string { return sqlschema.Render(sql, schema) }
	var s statements
	for own, sync := range [2]string{"", syncCommitFilter} {
		for i, head := range [3]string{headNewSQL, headAnySQL, headExpectedSQL} {
			rr := func(sql string) string {
				return r(strings.NewReplacer("{head}", head, "{sync}", sync).Replace(sql))
			}
			s.append[own][i] = rr(appendSQL)
			s.appendOne[own][i] = rr(appendOneSQL)
		}
	}
	for i, filter := range [2]string{"", categoryFilter} {
		s.readAll[i] = r(strings.Replace(readAllSQL, "{filter}", filter, 1))
		s.count[i] = r(strings.Replace(countSQL, "{filter}", strings.ReplaceAll(filter, "$4", "$1"), 1))
		s.pending[i] = r(strings.Replace(pendingSQL, "{filter}", strings.ReplaceAll(filter, "$4", "$3"), 1))
	}
	s.streamVersion = r(streamVersionSQL)
	s.readStream = r(readStreamSQL)
	s.load = r(loadSQL)
	s.tailLag = r(tailLagSQL)
	s.head = r(headSQL)
	s.ensureCheckpoint = r(ensureCheckpointSQL)
	s.lockCheckpoint = r(lockCheckpointSQL)
	s.lockCheckpointWait = r(lockCheckpointWaitSQL)
	s.saveCheckpoint = r(saveCheckpointSQL)
	s.resetCheckpoint = r(resetCheckpointSQL)
	s.readCheckpoint = r(readCheckpointSQL)
	return s
}

// likePrefix returns a LIKE pattern matching every string that starts with
// prefix: LIKE's metacharacters (% _ and the escape character \) in prefix
// are escaped, so "order_" matches "order_1" but not "orderX1".
func likePrefix(prefix string) string {
	var b strings.Builder
	b.Grow(len(prefix) + 8)
	for _, r := range prefix {
		switch r {
		case '\\', '%', '_':
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	b.WriteByte('%')
	return b.String()
}
