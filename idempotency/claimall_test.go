package idempotency_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/idempotency"
	"github.com/wharfhq/wharf/internal/dbtest"
)

func TestClaimAll(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, pool := newStore(t, idempotency.Config{})
	old := idempotency.Pair{Consumer: "billing", Key: idempotency.Key("stripe", "evt_old")}
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		_, err := store.Claim(ctx, tx, old.Consumer, old.Key)
		return err
	}))
	external := idempotency.Pair{Consumer: "billing", Key: idempotency.Key("stripe", "evt_ext")}
	lock, _, err := store.Begin(ctx, external.Consumer, external.Key)
	require.NoError(t, err)
	require.NotNil(t, lock)

	fresh := idempotency.Pair{Consumer: "billing", Key: idempotency.Key("stripe", "evt_new")}
	other := idempotency.Pair{Consumer: "ledger", Key: fresh.Key} // same key, another consumer
	bad := idempotency.Pair{Consumer: "billing", Key: ""}
	pairs := []idempotency.Pair{fresh, old, other, bad, fresh, external}

	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx)
	res, err := store.ClaimAll(ctx, tx, pairs)
	require.NoError(t, err)
	require.Len(t, res, len(pairs))
	require.Equal(t, idempotency.ClaimResult{First: true}, res[0])
	require.Equal(t, idempotency.ClaimResult{}, res[1], "claimed before: a duplicate")
	require.Equal(t, idempotency.ClaimResult{First: true}, res[2])
	require.ErrorIs(t, res[3].Err, idempotency.ErrInvalidKey)
	require.Equal(t, idempotency.ClaimResult{}, res[4], "a pair given twice is first once")
	require.ErrorIs(t, res[5].Err, idempotency.ErrModeMismatch)
	require.False(t, res[5].First)

	// Work for fresh failed under a savepoint taken after the claims: the
	// rollback to it keeps the claim, Unclaim removes it.
	_, err = tx.Exec(ctx, `SAVEPOINT work`)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `ROLLBACK TO SAVEPOINT work`)
	require.NoError(t, err)
	require.NoError(t, store.Unclaim(ctx, tx, []idempotency.Pair{fresh}))
	require.NoError(t, tx.Commit(ctx))

	require.Zero(t, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.processed_events WHERE consumer = 'billing' AND key = $1`, fresh.Key), "unclaimed")
	require.Equal(t, 1, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.processed_events WHERE consumer = 'ledger' AND key = $1`, other.Key))
	require.Equal(t, 1, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.processed_events WHERE key = $1 AND mode = 'external'`, external.Key), "Unclaim leaves the external mode alone")

	// A rolled-back ClaimAll leaves nothing.
	require.EqualError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		res, err := store.ClaimAll(ctx, tx, []idempotency.Pair{fresh})
		require.True(t, res[0].First)
		if err != nil {
			return err
		}
		return fmt.Errorf("roll back")
	}), "roll back")
	require.Zero(t, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.processed_events WHERE consumer = 'billing' AND key = $1`, fresh.Key))
}

// Transactions claiming overlapping sets, given in opposite orders, do not
// deadlock, and each pair is first exactly once.
func TestClaimAllConcurrentOverlaps(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, pool := newStore(t, idempotency.Config{})
	const goroutines, keys = 8, 40
	var mu sync.Mutex
	firsts := map[string]int{}
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pairs := make([]idempotency.Pair, keys)
			for i := range keys {
				k := i
				if g%2 == 1 {
					k = keys - 1 - i
				}
				pairs[i] = idempotency.Pair{Consumer: "c", Key: fmt.Sprintf("k%03d", k)}
			}
			err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				res, err := store.ClaimAll(ctx, tx, pairs)
				if err != nil {
					return err
				}
				time.Sleep(time.Millisecond) // hold the claims a little, so others wait on them
				mu.Lock()
				defer mu.Unlock()
				for i, r := range res {
					if r.First {
						firsts[pairs[i].Key]++
					}
				}
				return nil
			})
			require.NoError(t, err)
		}()
	}
	wg.Wait()
	require.Len(t, firsts, keys)
	for k, n := range firsts {
		require.Equal(t, 1, n, k)
	}
	require.Equal(t, keys, rows(t, pool))
}

func TestClaimAllAndUnclaimNeedATransaction(t *testing.T) {
	t.Parallel()
	store, _ := newStore(t, idempotency.Config{})
	_, err := store.ClaimAll(context.Background(), nil, []idempotency.Pair{{Consumer: "c", Key: "k"}})
	require.ErrorIs(t, err, idempotency.ErrInvalidArgument)
	require.ErrorIs(t, store.Unclaim(context.Background(), nil, []idempotency.Pair{{Consumer: "c", Key: "k"}}), idempotency.ErrInvalidArgument)
	require.True(t, strings.Contains(err.Error(), "transaction"))
}
