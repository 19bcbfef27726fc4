package queue

// Test access to the SQL a Queue renders and the settings sent ahead of it.

import (
	"context"
	"time"
)

const (
	FetchSettingsSQL = fetchSettingsSQL
	IndexPlansSQL    = indexPlansSQL
	OwnEnqueueSQL    = ownEnqueueSQL
)

// RenderedSQL returns q's statements that run on generic plans: the
// fetches with payloads (Fetch) and without (a Consumer's), walking and by
// kind, the count of skipped events, then the rest.
func RenderedSQL(q *Queue) (walk [2][2][2]string, byKind [2][2]string, skipped [2][2]string, payloads, heldPayloads, complete, insert, recheck string) {
	walk = [2][2][2]string{q.sql.fetch.walk, q.sql.fetchNoPayload.walk}
	byKind = [2][2]string{q.sql.fetch.byKind, q.sql.fetchNoPayload.byKind}
	return walk, byKind, q.sql.skipped, q.sql.payloads, q.sql.heldPayloads, q.sql.complete, q.sql.insert, q.sql.recheck
}

// FetchStatement returns the statement Fetch runs for p, with its
// arguments (a placeholder lease and worker), or "" when it runs none.
func FetchStatement(q *Queue, p FetchParams) (string, []any) {
	sql, kindArgs := q.fetchStatement(p, true)
	return sql, append([]any{p.Limit, int64(1), int64(60000), "w"}, kindArgs...)
}

// Skipped counts, of the first n due events, those a walking fetch with
// only and exclude would read past.
func Skipped(ctx context.Context, q *Queue, n int, only, exclude []Kind) (int, error) {
	return q.skipped(ctx, n, only, exclude)
}

// FetchesByKind says whether c's fetches walk each kind on their own, as
// its fetch loop last chose.
func (c *Consumer) FetchesByKind() bool { return c.byKind.Load() }

// SetRescueIdleTimeout sets how long q's rescue transactions may wait on
// the client. Call it before q is used.
func SetRescueIdleTimeout(q *Queue, d time.Duration) { q.rescueIdleTimeout = d }

// Units returns how c's transactions would run evs: one slice per
// BatchHandler call or per event alone.
func (c *Consumer) Units(evs []*Event) [][]*Event { return c.units(evs) }

// SetsReadCommitted reports whether q's own transactions now start with
// SET TRANSACTION ISOLATION LEVEL READ COMMITTED.
func (q *Queue) SetsReadCommitted() bool { return q.setReadCommitted.Load() }
