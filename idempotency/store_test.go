package idempotency_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/idempotency"
	"github.com/wharfhq/wharf/internal/dbtest"
)

// Fifty transactions claim one key at once. The first to insert wins; the
// other 49 block inside Claim until the winner's transaction ends. The
// winner rolls back, so its claim vanishes and exactly one of the others
// wins in its place; that one commits, and the remaining 48 then learn
// they lost. One row remains.
func TestClaimFiftyConcurrentTransactionsOneWinner(t *testing.T) {
	t.Parallel()
	const n = 50
	ctx := context.Background()
	pool, observer := twoPools(t, n)
	store, err := idempotency.New(pool, idempotency.Config{})
	require.NoError(t, err)
	key := idempotency.Key("stripe", "evt_race")

	type result struct {
		worker int
		first  bool
		err    error
	}
	results := make(chan result, n)
	ended := make(chan error, n)
	commit := make([]chan bool, n) // true: commit, false: roll back
	var began sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		commit[i] = make(chan bool, 1)
		began.Add(1)
		go func() {
			tx, err := pool.Begin(ctx)
			began.Done()
			if err != nil {
				results <- result{i, false, err}
				return
			}
			<-start
			first, err := store.Claim(ctx, tx, "billing.mark-paid", key)
			results <- result{i, first, err}
			if <-commit[i] {
				ended <- tx.Commit(ctx)
			} else {
				ended <- tx.Rollback(ctx)
			}
		}()
	}
	t.Cleanup(func() {
		// If the test failed midway, roll every transaction back so the
		// pool can close.
		for i := range n {
			select {
			case commit[i] <- false:
			default:
			}
		}
	})
	began.Wait() // fifty transactions open at once
	close(start)

	winner := <-results
	require.NoError(t, winner.err)
	require.True(t, winner.first, "the first claim to return must be the winner")
	dbtest.Eventually(t, 30*time.Second, "49 claims blocked on the winner", func() bool { return lockWaiters(t, observer) == n-1 })
	require.Empty(t, results, "no other claim may return while the winner's transaction is open")

	// The winner rolls back: its claim goes with it, and one waiter wins.
	commit[winner.worker] <- false
	require.NoError(t, <-ended)
	second := <-results
	require.NoError(t, second.err)
	require.True(t, second.first, "after the winner rolled back, a waiting claim must win")
	require.NotEqual(t, winner.worker, second.worker)
	dbtest.Eventually(t, 30*time.Second, "48 claims blocked on the second winner", func() bool { return lockWaiters(t, observer) == n-2 })
	require.Empty(t, results, "no other claim may return while the second winner's transaction is open")

	commit[second.worker] <- true
	require.NoError(t, <-ended)
	for range n - 2 {
		r := <-results
		require.NoError(t, r.err)
		require.False(t, r.first, "worker %d claimed a key already committed by another", r.worker)
		commit[r.worker] <- true
	}
	for range n - 2 {
		require.NoError(t, <-ended)
	}
	require.Equal(t, 1, rows(t, observer))
	r, ok := readRow(t, observer, "billing.mark-paid", key)
	require.True(t, ok)
	require.Equal(t, "tx", r.Mode)
	require.Nil(t, r.State)
}

// A claim in a transaction that rolls back is gone: the redelivery claims
// the key again and does the work. Once committed, the key is a duplicate.
func TestClaimRolledBackIsClaimableAgain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, pool := newStore(t, idempotency.Config{})
	_, err := pool.Exec(ctx, invoicesTable)
	require.NoError(t, err)
	key := idempotency.Key("stripe", "evt_1")
	// First delivery: the handler fails after claiming; nothing stays.
	tx := beginTx(t, pool)
	first, err := store.Claim(ctx, tx, "billing", key)
	require.NoError(t, err)
	require.True(t, first)
	_, err = tx.Exec(ctx, `INSERT INTO invoices (id, paid) VALUES ('in_1', true)`)
	require.NoError(t, err)
	require.NoError(t, tx.Rollback(ctx))
	require.Zero(t, rows(t, pool))
	require.Zero(t, dbtest.Count(t, pool, `SELECT count(*) FROM invoices`))

	// Redelivery: claims again, and this time commits.
	tx = beginTx(t, pool)
	first, err = store.Claim(ctx, tx, "billing", key)
	require.NoError(t, err)
	require.True(t, first, "a rolled-back claim must be claimable again")
	_, err = tx.Exec(ctx, `INSERT INTO invoices (id, paid) VALUES ('in_1', true)`)
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))

	// A third delivery is a duplicate: the work is skipped.
	tx = beginTx(t, pool)
	first, err = store.Claim(ctx, tx, "billing", key)
	require.NoError(t, err)
	require.False(t, first)
	require.NoError(t, tx.Commit(ctx))
	require.Equal(t, 1, rows(t, pool))
	require.Equal(t, 1, dbtest.Count(t, pool, `SELECT count(*) FROM invoices`))
}

// Keys are per consumer, and Key keeps sources apart: two providers that
// both number their events "1" do not collide.
func TestClaimScopesByConsumerAndSource(t *testing.T) {
	t.Parallel()
	store, pool := newStore(t, idempotency.Config{})
	require.True(t, claimIn(t, pool, store, "billing", idempotency.Key("stripe", "1")))
	require.True(t, claimIn(t, pool, store, "billing", idempotency.Key("github", "1")), "same id from another source is another event")
	require.True(t, claimIn(t, pool, store, "emails", idempotency.Key("stripe", "1")), "another consumer processes the same event independently")
	require.True(t, claimIn(t, pool, store, "billing", idempotency.Key("stripe", "2")))
	require.False(t, claimIn(t, pool, store, "billing", idempotency.Key("stripe", "1")))
	require.False(t, claimIn(t, pool, store, "emails", idempotency.Key("stripe", "1")))
	require.Equal(t, 4, rows(t, pool))
}

// A duplicate claim does not abort the caller's transaction: it can go on
// and commit its other work.
func TestClaimDuplicateLeavesTransactionUsable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, pool := newStore(t, idempotency.Config{})
	_, err := pool.Exec(ctx, invoicesTable)
	require.NoError(t, err)
	require.True(t, claimIn(t, pool, store, "billing", "k"))

	tx := beginTx(t, pool)
	first, err := store.Claim(ctx, tx, "billing", "k")
	require.NoError(t, err)
	require.False(t, first)
	_, err = tx.Exec(ctx, `INSERT INTO invoices (id) VALUES ('audit')`)
	require.NoError(t, err, "the transaction must still be usable after a duplicate claim")
	require.NoError(t, tx.Commit(ctx))
	require.Equal(t, 1, dbtest.Count(t, pool, `SELECT count(*) FROM invoices`))
}

// Under REPEATABLE READ, a claim that conflicts with one committed after
// the transaction's snapshot is a serialization failure (as documented),
// never a silent "first".
func TestClaimRepeatableReadConflictIsSerializationFailure(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, pool := newStore(t, idempotency.Config{})
	tx, err := pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	require.NoError(t, err)
	defer tx.Rollback(ctx)            //nolint:errcheck
	_, err = tx.Exec(ctx, `SELECT 1`) // takes the snapshot
	require.NoError(t, err)

	require.True(t, claimIn(t, pool, store, "billing", "k")) // commits after the snapshot

	first, err := store.Claim(ctx, tx, "billing", "k")
	require.False(t, first)
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	require.Equal(t, "40001", pgErr.Code)
	require.Contains(t, err.Error(), `idempotency: claim consumer "billing", key "k"`)
}

// Fifty concurrent Once calls for one key: exactly one runs its function
// and reports ran; the others, including those that waited inside their
// claim for the winner to commit, report ran=false without running it.
func TestOnceRunsOnceUnderConcurrency(t *testing.T) {
	t.Parallel()
	const n = 50
	const conns = 10
	ctx := context.Background()
	pool, observer := twoPools(t, conns)
	_, err := pool.Exec(ctx, invoicesTable)
	require.NoError(t, err)
	store, err := idempotency.New(pool, idempotency.Config{})
	require.NoError(t, err)

	var calls atomic.Int32
	running := make(chan struct{})
	release, releaseNow := gate(t)
	type result struct {
		ran bool
		err error
	}
	results := make(chan result, n)
	for range n {
		go func() {
			ran, err := store.Once(ctx, "billing", idempotency.Key("stripe", "evt_once"), func(ctx context.Context, tx pgx.Tx) error {
				if calls.Add(1) == 1 {
					close(running)
				}
				<-release
				_, err := tx.Exec(ctx, `INSERT INTO invoices (id, paid) VALUES ('in_1', true)`)
				return err
			})
			results <- result{ran, err}
		}()
	}
	<-running
	// Every other connection of the pool is now blocked in a claim behind
	// the running function; the remaining callers wait for a connection.
	dbtest.Eventually(t, 30*time.Second, "claims blocked behind the running function", func() bool { return lockWaiters(t, observer) == conns-1 })
	releaseNow()

	ran := 0
	for range n {
		r := <-results
		require.NoError(t, r.err)
		if r.ran {
			ran++
		}
	}
	require.Equal(t, 1, ran, "exactly one Once call reports ran")
	require.EqualValues(t, 1, calls.Load(), "the function ran exactly once")
	require.Equal(t, 1, dbtest.Count(t, observer, `SELECT count(*) FROM invoices`))
	require.Equal(t, 1, rows(t, observer))
}

// A function that fails rolls back its writes and the claim, so the next
// call runs it again; once it succeeded, later calls do not run it.
func TestOnceErrorRollsBackClaimAndWork(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, pool := newStore(t, idempotency.Config{})
	_, err := pool.Exec(ctx, invoicesTable)
	require.NoError(t, err)
	boom := errors.New("downstream said no")
	calls := 0
	fn := func(fail bool) func(context.Context, pgx.Tx) error {
		return func(ctx context.Context, tx pgx.Tx) error {
			calls++
			if _, err := tx.Exec(ctx, `INSERT INTO invoices (id, paid) VALUES ('in_1', true)`); err != nil {
				return err
			}
			if fail {
				return boom
			}
			return nil
		}
	}

	ran, err := store.Once(ctx, "billing", "k", fn(true))
	require.False(t, ran)
	require.ErrorIs(t, err, boom)
	require.Contains(t, err.Error(), `idempotency: consumer "billing", key "k": downstream said no`)
	require.Zero(t, rows(t, pool), "the claim must roll back with the failed work")
	require.Zero(t, dbtest.Count(t, pool, `SELECT count(*) FROM invoices`))

	ran, err = store.Once(ctx, "billing", "k", fn(false))
	require.NoError(t, err)
	require.True(t, ran)
	ran, err = store.Once(ctx, "billing", "k", fn(false))
	require.NoError(t, err)
	require.False(t, ran)
	require.Equal(t, 2, calls)
	require.Equal(t, 1, dbtest.Count(t, pool, `SELECT count(*) FROM invoices`))
	require.Zero(t, pool.Stat().AcquiredConns(), "Once must give its connections back")
}

// A function that panics rolls back too, and the panic goes on.
func TestOncePanicRollsBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, pool := newStore(t, idempotency.Config{})
	_, err := pool.Exec(ctx, invoicesTable)
	require.NoError(t, err)
	require.PanicsWithValue(t, "handler bug", func() {
		_, _ = store.Once(ctx, "billing", "k", func(ctx context.Context, tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO invoices (id) VALUES ('in_1')`); err != nil {
				return err
			}
			panic("handler bug")
		})
	})
	require.Zero(t, rows(t, pool))
	require.Zero(t, dbtest.Count(t, pool, `SELECT count(*) FROM invoices`))
	require.Zero(t, pool.Stat().AcquiredConns())
	ran, err := store.Once(ctx, "billing", "k", func(context.Context, pgx.Tx) error { return nil })
	require.NoError(t, err)
	require.True(t, ran, "after a panic the key must still be free")
}

// A caller waiting in its claim behind a running Once whose function then
// fails takes the key and runs its own function.
func TestOnceWaiterRunsWhenWinnerFails(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, observer := twoPools(t, 4)
	_, err := pool.Exec(ctx, invoicesTable)
	require.NoError(t, err)
	store, err := idempotency.New(pool, idempotency.Config{})
	require.NoError(t, err)
	boom := errors.New("boom")

	running := make(chan struct{})
	fail, failNow := gate(t)
	first := make(chan error, 1)
	go func() {
		ran, err := store.Once(ctx, "billing", "k", func(ctx context.Context, tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO invoices (id) VALUES ('first')`); err != nil {
				return err
			}
			close(running)
			<-fail
			return boom
		})
		if ran {
			err = errors.New("the failing call must not report ran")
		}
		first <- err
	}()
	<-running
	type result struct {
		ran bool
		err error
	}
	second := make(chan result, 1)
	go func() {
		ran, err := store.Once(ctx, "billing", "k", func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `INSERT INTO invoices (id) VALUES ('second')`)
			return err
		})
		second <- result{ran, err}
	}()
	dbtest.Eventually(t, 30*time.Second, "the second call blocked in its claim", func() bool { return lockWaiters(t, observer) == 1 })
	failNow()
	require.ErrorIs(t, <-first, boom)
	r2 := <-second
	require.NoError(t, r2.err)
	require.True(t, r2.ran, "the waiter must run once the first call rolled back")
	r, err := observer.Query(ctx, `SELECT id FROM invoices`)
	require.NoError(t, err)
	ids, err := pgx.CollectRows(r, pgx.RowTo[string])
	require.NoError(t, err)
	require.Equal(t, []string{"second"}, ids)
}
