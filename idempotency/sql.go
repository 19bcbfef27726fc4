package idempotency

import "github.com/wharfhq/wharf/internal/sqlschema"

// The package's SQL, in one place. Every time a lock is compared with the
// clock, the clock is the database's (now()), never a replica's, so
// replicas with skewed clocks agree on when a lock expires.

// claimSQL is the whole of Claim when the key is new: one INSERT in the
// caller's transaction. ON CONFLICT DO NOTHING sees keys that concurrent
// transactions have inserted but not yet committed and waits for them:
// if that transaction commits, this one does nothing (the key was taken);
// if it rolls back, this one inserts. Nothing is read first, so there is no
// window between a check and a write. Rows affected say which happened.
const claimSQL = `
INSERT INTO {schema}.processed_events (consumer, key, mode)
VALUES ($1, $2, 'tx')
ON CONFLICT (consumer, key) DO NOTHING`

// modeSQL runs only after a Claim lost, to tell a duplicate from a key
// taken in the external mode. It is a separate statement rather than part
// of claimSQL because a statement cannot see a row committed after it
// started, which is exactly the row a waiting claim conflicts with; the
// next statement of a read-committed transaction can.
const modeSQL = `SELECT mode FROM {schema}.processed_events WHERE consumer = $1 AND key = $2`

// claimAllSQL is claimSQL for many pairs ($1 consumers, $2 keys, sorted by
// the caller so that overlapping batches lock keys in one order); it
// returns the pairs it inserted, which are the first claims.
const claimAllSQL = `
INSERT INTO {schema}.processed_events (consumer, key, mode)
SELECT c, k, 'tx' FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(c, k, n)
ORDER BY n
ON CONFLICT (consumer, key) DO NOTHING
RETURNING consumer, key`

// modesSQL is modeSQL for many pairs, after a ClaimAll.
const modesSQL = `
SELECT p.consumer, p.key, p.mode
FROM {schema}.processed_events p JOIN unnest($1::text[], $2::text[]) AS t(c, k) ON p.consumer = t.c AND p.key = t.k`

// unclaimSQL removes tx-mode claims, for work that failed after them.
const unclaimSQL = `
DELETE FROM {schema}.processed_events p
USING unnest($1::text[], $2::text[]) AS t(c, k)
WHERE p.consumer = t.c AND p.key = t.k AND p.mode = 'tx'`

// syncCommitSQL makes the commit of Begin and Finish wait for the WAL
// flush even when the server or role runs with synchronous_commit off: a
// lost "finished" would let a retry repeat the side effect. It is sent in
// the same round trip as the statement and applies to that implicit
// transaction only.
const syncCommitSQL = `SELECT set_config('synchronous_commit', 'on', true)`

// beginSQL takes a key in the external mode, in one atomic statement: it
// inserts a new key in progress, or takes over a key whose holder's lock
// has expired, with a new random token ($3) as the fence. ON CONFLICT DO
// UPDATE locks the existing row before evaluating its WHERE, so of two
// callers racing to take over one expired lock, the second waits for the
// first, then re-evaluates the WHERE against the row the first wrote,
// finds a live lock, and takes nothing: exactly one wins. It returns no row
// when the key is held, finished or in the other mode; readSQL then says
// which.
const beginSQL = `
INSERT INTO {schema}.processed_events AS p (consumer, key, mode, state, token, locked_until, attempts)
VALUES ($1, $2, 'external', 'in_progress', $3, now() + $4 * interval '1 millisecond', 1)
ON CONFLICT (consumer, key) DO UPDATE
SET token = excluded.token,
    locked_until = excluded.locked_until,
    attempts = p.attempts + 1,
    processed_at = now()
WHERE p.mode = 'external' AND p.state = 'in_progress' AND p.locked_until <= now()
RETURNING p.locked_until, p.attempts`

// readSQL reads a key that Begin could not take, with whether its lock is
// live by the database's clock.
const readSQL = `
SELECT mode, state, locked_until, locked_until > now(), result, processed_at
FROM {schema}.processed_events
WHERE consumer = $1 AND key = $2`

// heldSQL matches the row of (consumer $1, key $2) only while token $3
// still holds it in progress. It sits in the WHERE clause of each statement
// that acts on a lock: under READ COMMITTED, a statement that waited for a
// concurrent takeover re-checks its WHERE against the row the takeover
// wrote, so a stale token changes nothing. The token alone fences, not the
// clock: a holder whose lock expired but was not taken over is still the
// only one that ran the side effect, and may still finish.
const heldSQL = `consumer = $1 AND key = $2 AND mode = 'external' AND state = 'in_progress' AND token = $3`

// finishSQL stores the outcome ($4) of a held key.
const finishSQL = `
UPDATE {schema}.processed_events
SET state = 'finished', result = $4, locked_until = NULL, processed_at = now()
WHERE ` + heldSQL + `
RETURNING processed_at`

// finishedBySQL runs when finishSQL changed nothing, to tell a lost lock
// from a repeated Finish of the same lock (a retry after a network error
// whose first attempt did commit), which succeeds.
const finishedBySQL = `
SELECT processed_at FROM {schema}.processed_events
WHERE consumer = $1 AND key = $2 AND mode = 'external' AND state = 'finished' AND token = $3`

// extendSQL pushes a held key's lock to $4 milliseconds from now.
const extendSQL = `
UPDATE {schema}.processed_events
SET locked_until = now() + $4 * interval '1 millisecond'
WHERE ` + heldSQL + `
RETURNING locked_until`

// releaseSQL gives up a held key without an outcome, so that the next
// Begin starts afresh. The row is deleted: a later holder gets a new random
// token, so a stale holder can never match it.
const releaseSQL = `DELETE FROM {schema}.processed_events WHERE ` + heldSQL

// prunableSQL matches rows older than the retention ($1 milliseconds),
// except keys in progress whose lock is live (a side effect that began
// before the cutoff and is still running).
const prunableSQL = `processed_at < now() - $1 * interval '1 millisecond'
      AND (state IS DISTINCT FROM 'in_progress' OR locked_until <= now())`

// pruneSQL deletes one batch of at most $2 prunable rows, found through
// the processed_at B-tree (a BRIN index cannot find them once new claims
// reuse the pages old ones left; see migration 14), and returns how many
// it deleted. The batch is picked and locked first (SKIP LOCKED: a row a
// live transaction holds, such as a takeover, waits for the next run),
// then deleted by ctid, which the row lock keeps stable. The condition is checked again in the DELETE
// so that a row which changed meanwhile is kept. Each batch is its own
// short transaction: pruning never holds many locks for long.
const pruneSQL = `
DELETE FROM {schema}.processed_events
WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM {schema}.processed_events
    WHERE ` + prunableSQL + `
    LIMIT $2
    FOR UPDATE SKIP LOCKED))
  AND ` + prunableSQL

// perMinuteSQL counts the keys processed in each of the last $1 minutes,
// by how many whole minutes before now() they were processed (0: the last
// 60 seconds). The range condition on processed_at alone uses its index
// (the one pruning reads), so only the window's rows are read.
const perMinuteSQL = `
SELECT floor(extract(epoch FROM now() - processed_at) / 60)::int AS ago, count(*)
FROM {schema}.processed_events
WHERE processed_at > now() - $1 * interval '1 minute'
  AND state IS DISTINCT FROM 'in_progress'
GROUP BY 1`

// statements holds the SQL rendered for one schema.
type statements struct {
	claim, mode, claimAll, modes, unclaim, begin, read, finish, finishedBy, extend, release, prune, perMinute string
}

func render(schema string) statements {
	r := func(sql string) string { return sqlschema.Render(sql, schema) }
	return statements{
		claim:      r(claimSQL),
		mode:       r(modeSQL),
		claimAll:   r(claimAllSQL),
		modes:      r(modesSQL),
		unclaim:    r(unclaimSQL),
		begin:      r(beginSQL),
		read:       r(readSQL),
		finish:     r(finishSQL),
		finishedBy: r(finishedBySQL),
		extend:     r(extendSQL),
		release:    r(releaseSQL),
		prune:      r(pruneSQL),
		perMinute:  r(perMinuteSQL),
	}
}
