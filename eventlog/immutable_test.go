package eventlog_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/eventlog"
)

// The log is append-only in the database, not only through the Go API:
// plain SQL, as any role with table privileges would send it, cannot
// change or remove an event.
func TestLogIsImmutableInSQL(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, pool := newLog(t, 4, eventlog.Config{})
	_, err := l.Append(ctx, "s", eventlog.NoStream, ev("a", 1), ev("b", 2))
	require.NoError(t, err)

	snapshot := func() []string {
		rows, err := pool.Query(ctx, `SELECT row_to_json(e)::text FROM wharf.event_log e ORDER BY position`)
		require.NoError(t, err)
		out, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		return out
	}
	before := snapshot()
	require.Len(t, before, 2)

	for _, sql := range []string{
		`UPDATE wharf.event_log SET data = '{"n": 99}'`,
		`UPDATE wharf.event_log SET version = version + 10 WHERE stream = 's'`,
		`DELETE FROM wharf.event_log`,
		`DELETE FROM wharf.event_log WHERE version = 2`,
		`TRUNCATE wharf.event_log`,
		`TRUNCATE wharf.event_log, wharf.event_streams`,
		// An upsert aimed at an existing row is an UPDATE too.
		`INSERT INTO wharf.event_log (position, stream, version, event_type, data)
		 OVERRIDING SYSTEM VALUE SELECT position, stream, version, 'x', '{}' FROM wharf.event_log
		 ON CONFLICT (position) DO UPDATE SET event_type = 'changed'`,
		// And a DELETE in a CTE.
		`WITH gone AS (DELETE FROM wharf.event_log RETURNING position) SELECT count(*) FROM gone`,
	} {
		_, err := pool.Exec(ctx, sql)
		var pgErr *pgconn.PgError
		require.ErrorAs(t, err, &pgErr, sql)
		require.Equal(t, "23001", pgErr.Code, sql) // restrict_violation
		require.Contains(t, pgErr.Message, "event_log is append-only", sql)
	}
	require.Equal(t, before, snapshot(), "the rows are unchanged")
}
