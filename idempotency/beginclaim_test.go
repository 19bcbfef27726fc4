package idempotency_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/idempotency"
	"github.com/wharfhq/wharf/internal/dbtest"
)

// BeginClaim opens a transaction holding a first claim; the work done in it
// commits with the claim, after which the key is a duplicate whose
// transaction is still usable. A rolled-back claim is claimable again.
func TestBeginClaim(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, pool := newStore(t, idempotency.Config{})
	_, err := pool.Exec(ctx, invoicesTable)
	require.NoError(t, err)

	tx, first, err := store.BeginClaim(ctx, "billing", "k1")
	require.NoError(t, err)
	require.True(t, first)
	_, err = tx.Exec(ctx, `INSERT INTO invoices (id) VALUES ('k1')`)
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))
	r, ok := readRow(t, pool, "billing", "k1")
	require.True(t, ok)
	require.Equal(t, "tx", r.Mode)

	tx, first, err = store.BeginClaim(ctx, "billing", "k1")
	require.NoError(t, err)
	require.False(t, first, "the key committed above is a duplicate")
	_, err = tx.Exec(ctx, `INSERT INTO invoices (id) VALUES ('audit')`)
	require.NoError(t, err, "a duplicate's transaction stays usable")
	require.NoError(t, tx.Commit(ctx))

	tx, first, err = store.BeginClaim(ctx, "billing", "k2")
	require.NoError(t, err)
	require.True(t, first)
	require.NoError(t, tx.Rollback(ctx))
	require.True(t, claimIn(t, pool, store, "billing", "k2"), "a rolled-back claim is gone")

	require.Equal(t, 2, dbtest.Count(t, pool, `SELECT count(*) FROM invoices`))
	require.Equal(t, 2, rows(t, pool))
}

// Of ten BeginClaims racing for one key, one wins and the rest wait inside
// BeginClaim until its transaction commits, then learn they lost.
func TestBeginClaimConcurrentOneWinner(t *testing.T) {
	t.Parallel()
	const n = 10
	ctx := context.Background()
	pool, observer := twoPools(t, n+1)
	store, err := idempotency.New(pool, idempotency.Config{})
	require.NoError(t, err)

	type result struct {
		first bool
		err   error
	}
	results := make(chan result, n)
	commits := make(chan error, n)
	release := make(chan struct{})
	for range n {
		go func() {
			tx, first, err := store.BeginClaim(ctx, "billing", "race")
			results <- result{first, err}
			if err != nil {
				commits <- err
				return
			}
			<-release
			commits <- tx.Commit(ctx)
		}()
	}
	winner := <-results
	require.NoError(t, winner.err)
	require.True(t, winner.first)
	dbtest.Eventually(t, 30*time.Second, "the other claims blocked on the winner", func() bool { return lockWaiters(t, observer) == n-1 })
	require.Empty(t, results, "no other claim may return while the winner's transaction is open")
	close(release)
	for range n - 1 {
		r := <-results
		require.NoError(t, r.err)
		require.False(t, r.first)
	}
	for range n {
		require.NoError(t, <-commits)
	}
	require.Equal(t, 1, rows(t, observer))
}

// A key taken in the external mode is refused with ErrModeMismatch, no
// transaction is returned and none is left open on the pool; bad input is
// refused before anything is sent.
func TestBeginClaimErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, pool := newStore(t, idempotency.Config{})

	_, _, err := store.Begin(ctx, "c", "ext-key")
	require.NoError(t, err)
	before, _ := readRow(t, pool, "c", "ext-key")
	tx, first, err := store.BeginClaim(ctx, "c", "ext-key")
	require.Nil(t, tx)
	require.False(t, first)
	keyError(t, err, idempotency.ErrModeMismatch, "c", "ext-key")
	after, _ := readRow(t, pool, "c", "ext-key")
	require.Equal(t, before, after)
	require.Zero(t, pool.Stat().AcquiredConns(), "the refused claim's transaction must be rolled back and its connection returned")

	tx, first, err = store.BeginClaim(ctx, "", "k")
	require.Nil(t, tx)
	require.False(t, first)
	require.ErrorIs(t, err, idempotency.ErrInvalidKey)
	tx, _, err = store.BeginClaim(ctx, "c", "bad\x00key")
	require.Nil(t, tx)
	require.ErrorIs(t, err, idempotency.ErrInvalidKey)
	require.Equal(t, 1, rows(t, pool))
}
