package queue

// Test access to the SQL a Queue renders and the settings sent ahead of it.

const (
	FetchSettingsSQL = fetchSettingsSQL
	IndexPlansSQL    = indexPlansSQL
	OwnEnqueueSQL    = ownEnqueueSQL
)

// RenderedSQL returns q's statements that run on generic plans.
func RenderedSQL(q *Queue) (fetch [2][2]string, complete, insert, recheck string) {
	return q.sql.fetch, q.sql.complete, q.sql.insert, q.sql.recheck
}
