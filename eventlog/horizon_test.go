package eventlog_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
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

	writeElsewhere(t)

	_, err := l.Append(ctx, "order-1", eventlog.NoStream, ev("order.placed", 1))
	require.NoError(t, err)
	// Polled: this database's own short transactions (the NOTIFY that
	// Append sends after it returns) can hold a read back for a moment.
	// The transaction in "elsewhere" stays open throughout.
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

// Transactions of another database that end at any moment never hold back
// an event that was final before a read began: the read sees
// pg_stat_activity as it was before its snapshot, so each of them is
// either shown with its database or newer than the event. (Read after the
// snapshot, one that ended in between held a read back: about one read in
// twenty here.) No transaction of this database may hold the tail
// meanwhile: autovacuum (an automatic ANALYZE) is off for the log's
// tables, and the events go in with AppendTx, which sends no NOTIFY (the
// notifying transaction, which Append's send after they return, is one of
// this database's).
func TestReadsNotHeldBackByOtherDatabasesEndingTransactions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, pool := newLog(t, 8, eventlog.Config{})
	_, err := pool.Exec(ctx, `ALTER TABLE wharf.event_log SET (autovacuum_enabled = false);
		ALTER TABLE wharf.event_streams SET (autovacuum_enabled = false)`)
	require.NoError(t, err)

	other, err := pgxpool.New(ctx, dbtest.Database(t, dbtest.Options{Empty: true}))
	require.NoError(t, err)
	t.Cleanup(other.Close)
	churn, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			for n := 0; churn.Err() == nil; n++ {
				tx, err := other.Begin(churn)
				if err != nil {
					return
				}
				_, _ = tx.Exec(churn, `SELECT txid_current()`) // takes a transaction id
				time.Sleep(time.Duration((n*7+i*3)%10) * time.Millisecond)
				_ = tx.Commit(churn)
			}
		})
	}
	defer func() { stop(); wg.Wait() }()

	cursor := eventlog.Cursor{}
	for i := range 150 {
		require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			_, err := l.AppendTx(ctx, tx, fmt.Sprintf("order-%d", i), eventlog.NoStream, ev("order.placed", i))
			return err
		}))
		events, next, err := l.ReadAll(ctx, cursor, 10)
		require.NoError(t, err)
		require.Len(t, events, 1, "read %d: an event final before the read was held back", i)
		cursor = next
		head, err := l.Head(ctx)
		require.NoError(t, err)
		require.Equal(t, cursor, head, "read %d: Head short of the last event", i)
	}
}

// On a physical replica the horizon is the snapshot's xmin, which any
// running transaction of the cluster holds: there Postgres keeps the
// running transactions out of pg_snapshot_xip, and the primary's backends
// out of pg_stat_activity. The recovery branch is taken here on a primary
// by a pg_is_in_recovery that returns true, found first on the search_path:
// a write transaction of another database, which the primary's horizon
// ignores, then holds the tail back.
func TestHorizonDuringRecoveryIsSnapshotXmin(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := dbtest.Database(t, dbtest.Options{})
	setup, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	_, err = setup.Exec(ctx, `CREATE SCHEMA recovering;
		CREATE FUNCTION recovering.pg_is_in_recovery() RETURNS boolean LANGUAGE sql AS 'SELECT true'`)
	require.NoError(t, err)
	require.NoError(t, setup.Close(ctx))
	l, _ := logOn(t, url, func(cfg *pgxpool.Config) {
		cfg.ConnConfig.RuntimeParams["search_path"] = "recovering, pg_catalog, public"
	})
	elsewhere := writeElsewhere(t)

	_, err = l.Append(ctx, "order-1", eventlog.NoStream, ev("order.placed", 1))
	require.NoError(t, err)
	events, _, err := l.ReadAll(ctx, eventlog.Cursor{}, 10)
	require.NoError(t, err)
	require.Empty(t, events, "during recovery a transaction of another database holds the tail")

	require.NoError(t, elsewhere.Rollback(ctx))
	readAllUntil(t, l, 1)
}
