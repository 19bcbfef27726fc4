package eventlog_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/eventlog"
	"github.com/wharfhq/wharf/internal/dbtest"
)

// A write transaction left open in another database of the cluster does
// not hold this log's tail back; one in this database does, until it ends.
func TestHorizonIgnoresOtherDatabases(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, pool := newLog(t, 8, eventlog.Config{})

	other, err := pgxpool.New(ctx, dbtest.Database(t, dbtest.Options{Empty: true}))
	require.NoError(t, err)
	t.Cleanup(other.Close)
	elsewhere, err := other.Begin(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = elsewhere.Rollback(ctx) })
	_, err = elsewhere.Exec(ctx, `CREATE TABLE held (x int)`) // takes a transaction id
	require.NoError(t, err)

	_, err = l.Append(ctx, "order-1", eventlog.NoStream, ev("order.placed", 1))
	require.NoError(t, err)
	// Polled: a transaction of any database that ends between a read's
	// snapshot and its look at pg_stat_activity holds that one read back
	// (its rows might be this database's), and other tests create and
	// drop databases all the time. The one in "elsewhere" stays open.
	events := readAllUntil(t, l, 1)

	here, err := pool.Begin(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = here.Rollback(ctx) })
	_, err = here.Exec(ctx, `CREATE TEMP TABLE held_here (x int)`)
	require.NoError(t, err)
	res, err := l.Append(ctx, "order-2", eventlog.NoStream, ev("order.placed", 2))
	require.NoError(t, err)
	events, _, err = l.ReadAll(ctx, events[0].Cursor(), 10)
	require.NoError(t, err)
	require.Empty(t, events, "a write transaction of this database that started before the append holds it back")
	dbtest.Eventually(t, 30*time.Second, "a lag of exactly the held-back event", func() bool {
		lag, err := l.TailLag(ctx)
		require.NoError(t, err)
		require.GreaterOrEqual(t, lag.Events, int64(1), "the held-back event is behind the tail")
		return lag.Events == 1
	})

	require.NoError(t, here.Rollback(ctx))
	events = readAllUntil(t, l, 2)
	require.Equal(t, res.Positions[0], events[1].Position)
}
