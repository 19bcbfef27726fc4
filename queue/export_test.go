package queue

// Test access to the SQL a Queue renders and the settings sent ahead of it.

const (
	FetchSettingsSQL = fetchSettingsSQL
	IndexPlansSQL    = indexPlansSQL
	OwnEnqueueSQL    = ownEnqueueSQL
)

// RenderedSQL returns q's statements that run on generic plans: the
// fetches with payloads (Fetch) and without (a Consumer's), then the rest.
func RenderedSQL(q *Queue) (fetch [2][2][2]string, payloads, heldPayloads, complete, insert, recheck string) {
	return [2][2][2]string{q.sql.fetch, q.sql.fetchNoPayload}, q.sql.payloads, q.sql.heldPayloads, q.sql.complete, q.sql.insert, q.sql.recheck
}

// Units returns how c's transactions would run evs: one slice per
// BatchHandler call or per event alone.
func (c *Consumer) Units(evs []*Event) [][]*Event { return c.units(evs) }

// SetsReadCommitted reports whether q's own transactions now start with
// SET TRANSACTION ISOLATION LEVEL READ COMMITTED.
func (q *Queue) SetsReadCommitted() bool { return q.setReadCommitted.Load() }
