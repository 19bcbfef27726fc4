package queue

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/internal/dbtest"
)

// The fetch and the completion run on generic plans, made once per
// connection (see indexPlans). A generic plan made while the queue is empty
// is the one a connection keeps as the queue fills, so each statement's
// plan, made on an empty queue (never analyzed, then analyzed), must reach
// rows only through indexes, the fetch through the fetch index in run_at
// order: a sequential or bitmap scan there would read the whole queue on
// every call once it holds a backlog.
func TestHotStatementPlans(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := dbtest.Pool(t)
	q, err := New(pool, Config{})
	require.NoError(t, err)
	defer q.Close()

	fetchArgs := []string{"100", "1", "60000", "'w'", "'{s}'", "'{t}'", "'{s}'", "'{u}'"}
	cases := []struct {
		name, settings, sql, args string
		mustUse                   string
	}{
		{"fetch", fetchSettingsSQL, q.sql.fetch[0][0], strings.Join(fetchArgs[:4], ","), "queue_fetch_idx"},
		{"fetch only", fetchSettingsSQL, q.sql.fetch[1][0], strings.Join(fetchArgs[:6], ","), "queue_fetch_idx"},
		{"fetch exclude", fetchSettingsSQL, q.sql.fetch[0][1], strings.Join(fetchArgs[:6], ","), "queue_fetch_idx"},
		{"fetch only and exclude", fetchSettingsSQL, q.sql.fetch[1][1], strings.Join(fetchArgs, ","), "queue_fetch_idx"},
		{"complete", indexPlansSQL, q.sql.complete, "'{1,2}', '{3,4}'", "queue_pkey"},
	}
	for _, analyzed := range []bool{false, true} {
		if analyzed {
			_, err := pool.Exec(ctx, `ANALYZE wharf.queue, wharf.queue_payloads, wharf.queue_ordering_locks, wharf.queue_pauses`)
			require.NoError(t, err)
		}
		for _, c := range cases {
			plan := genericPlan(t, pool, c.settings, c.sql, c.args)
			require.Contains(t, plan, c.mustUse, "%s (analyzed: %v):\n%s", c.name, analyzed, plan)
			require.NotContains(t, plan, "Seq Scan", "%s (analyzed: %v):\n%s", c.name, analyzed, plan)
			require.NotContains(t, plan, "Bitmap", "%s (analyzed: %v):\n%s", c.name, analyzed, plan)
		}
	}
}

// genericPlan returns the generic plan of sql, under settings, with args
// (SQL literals) for its parameters. EXPLAIN without ANALYZE runs nothing.
func genericPlan(t *testing.T, pool interface {
	Begin(context.Context) (pgx.Tx, error)
}, settings, sql, args string) string {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx) //nolint:errcheck
	_, err = tx.Exec(ctx, settings)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "PREPARE hot AS "+sql)
	require.NoError(t, err)
	rows, err := tx.Query(ctx, "EXPLAIN EXECUTE hot("+args+")")
	require.NoError(t, err)
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "DEALLOCATE hot")
	require.NoError(t, err)
	return strings.Join(lines, "\n")
}
