package idempotency_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/idempotency"
	"github.com/wharfhq/wharf/internal/dbtest"
)

// newStore returns a store on a fresh database.
func newStore(t testing.TB, cfg idempotency.Config) (*idempotency.Store, *pgxpool.Pool) {
	t.Helper()
	pool := dbtest.Pool(t)
	store, err := idempotency.New(pool, cfg)
	require.NoError(t, err)
	return store, pool
}

// twoPools returns a pool of maxConns connections and a small observer
// pool, both on one fresh database, so a test can watch backends blocked
// on locks while every connection of the first pool is busy.
func twoPools(t testing.TB, maxConns int32) (pool, observer *pgxpool.Pool) {
	t.Helper()
	url := dbtest.Database(t, dbtest.Options{})
	open := func(n int32) *pgxpool.Pool {
		cfg, err := pgxpool.ParseConfig(url)
		require.NoError(t, err)
		cfg.MaxConns = n
		p, err := pgxpool.NewWithConfig(context.Background(), cfg)
		require.NoError(t, err)
		t.Cleanup(p.Close) // before the database is dropped
		return p
	}
	return open(maxConns), open(2)
}

// rows counts processed_events rows in the default schema.
func rows(t testing.TB, pool *pgxpool.Pool) int {
	t.Helper()
	return dbtest.Count(t, pool, `SELECT count(*) FROM wharf.processed_events`)
}

// lockWaiters counts backends of the test's database that wait for a lock
// (a row, or another transaction to end).
func lockWaiters(t testing.TB, pool *pgxpool.Pool) int {
	t.Helper()
	return dbtest.Count(t, pool, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`)
}

// row is one processed_events row as stored.
type row struct {
	Mode        string
	State       *string
	Token       *int64
	LockedUntil *time.Time
	Attempts    *int32
	Result      []byte
	ProcessedAt time.Time
	Live        *bool // locked_until > now()
}

// readRow reads the row of (consumer, key), or reports it absent.
func readRow(t testing.TB, pool *pgxpool.Pool, consumer, key string) (row, bool) {
	t.Helper()
	var r row
	err := pool.QueryRow(context.Background(), `
SELECT mode, state, token, locked_until, attempts, result, processed_at, locked_until > now()
FROM wharf.processed_events WHERE consumer = $1 AND key = $2`, consumer, key).
		Scan(&r.Mode, &r.State, &r.Token, &r.LockedUntil, &r.Attempts, &r.Result, &r.ProcessedAt, &r.Live)
	if errors.Is(err, pgx.ErrNoRows) {
		return r, false
	}
	require.NoError(t, err)
	return r, true
}

// exec runs a statement and returns the rows it affected.
func exec(t testing.TB, pool *pgxpool.Pool, sql string, args ...any) int64 {
	t.Helper()
	tag, err := pool.Exec(context.Background(), sql, args...)
	require.NoError(t, err)
	return tag.RowsAffected()
}

// expire moves the lock of (consumer, key) into the past, as if its
// holder had died LockDuration ago.
func expire(t testing.TB, pool *pgxpool.Pool, consumer, key string) {
	t.Helper()
	require.EqualValues(t, 1, exec(t, pool, `
UPDATE wharf.processed_events SET locked_until = now() - interval '1 second'
WHERE consumer = $1 AND key = $2 AND state = 'in_progress'`, consumer, key))
}

// claimIn claims in a transaction of its own and commits it.
func claimIn(t testing.TB, pool *pgxpool.Pool, store *idempotency.Store, consumer, key string) bool {
	t.Helper()
	ctx := context.Background()
	tx := beginTx(t, pool)
	first, err := store.Claim(ctx, tx, consumer, key)
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))
	return first
}

// keyError asserts that err is a *KeyError about (consumer, key) wrapping
// sentinel, and returns it.
func keyError(t testing.TB, err error, sentinel error, consumer, key string) *idempotency.KeyError {
	t.Helper()
	require.ErrorIs(t, err, sentinel)
	var ke *idempotency.KeyError
	require.ErrorAs(t, err, &ke)
	require.Equal(t, consumer, ke.Consumer)
	require.Equal(t, key, ke.Key)
	return ke
}

// invoicesTable is a business table for handlers to write to.
const invoicesTable = `CREATE TABLE invoices (id text PRIMARY KEY, paid boolean NOT NULL DEFAULT false)`

// beginTx begins a transaction that is rolled back when the test ends, if
// it is still open then, so that a failing assertion cannot leave it
// holding a connection (the pool's Close would wait for it forever).
func beginTx(t testing.TB, pool *pgxpool.Pool, opts ...pgx.TxOptions) pgx.Tx {
	t.Helper()
	ctx := context.Background()
	var o pgx.TxOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	tx, err := pool.BeginTx(ctx, o)
	require.NoError(t, err)
	t.Cleanup(func() { _ = tx.Rollback(ctx) }) // a no-op after Commit or Rollback
	return tx
}

// gate returns a channel and a function that closes it, at most once; the
// test's end closes it too, so goroutines waiting on it never outlive a
// failed test.
func gate(t testing.TB) (<-chan struct{}, func()) {
	ch := make(chan struct{})
	var once sync.Once
	open := func() { once.Do(func() { close(ch) }) }
	t.Cleanup(open)
	return ch, open
}
