package idempotency_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/idempotency"
	"github.com/wharfhq/wharf/internal/dbtest"
)

// begin takes (consumer, key) and requires a lock.
func begin(t testing.TB, store *idempotency.Store, consumer, key string) *idempotency.Lock {
	t.Helper()
	lock, out, err := store.Begin(context.Background(), consumer, key)
	require.NoError(t, err)
	require.Nil(t, out)
	require.NotNil(t, lock)
	return lock
}

// The life of a key in the external mode: in progress (a duplicate gets
// ErrInProgress with the lock's expiry), then finished (a duplicate gets
// the stored outcome).
func TestBeginInProgressThenFinished(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, pool := newStore(t, idempotency.Config{})
	lock := begin(t, store, "billing.charge", "6:stripe:evt_1")
	require.Equal(t, "billing.charge", lock.Consumer)
	require.Equal(t, "6:stripe:evt_1", lock.Key)
	require.Equal(t, 1, lock.Attempt)
	require.NotZero(t, lock.Token)

	r, ok := readRow(t, pool, "billing.charge", "6:stripe:evt_1")
	require.True(t, ok)
	require.Equal(t, "external", r.Mode)
	require.Equal(t, "in_progress", *r.State)
	require.Equal(t, lock.Token, *r.Token)
	require.True(t, lock.LockedUntil.Equal(*r.LockedUntil))
	require.True(t, *r.Live)
	// The deadline is LockDuration from the database's now(), at most.
	require.Equal(t, 1, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.processed_events WHERE locked_until <= now() + interval '5 minutes'`))

	// A duplicate while in progress.
	dupLock, out, err := store.Begin(ctx, "billing.charge", "6:stripe:evt_1")
	require.Nil(t, dupLock)
	require.Nil(t, out)
	ke := keyError(t, err, idempotency.ErrInProgress, "billing.charge", "6:stripe:evt_1")
	require.True(t, ke.LockedUntil.Equal(lock.LockedUntil), "ErrInProgress carries the lock's expiry")
	require.Contains(t, err.Error(), `idempotency: consumer "billing.charge", key "6:stripe:evt_1": in progress: locked until`)

	require.NoError(t, store.Finish(ctx, lock, []byte(`{"charge":"ch_1"}`)))
	r, _ = readRow(t, pool, "billing.charge", "6:stripe:evt_1")
	require.Equal(t, "finished", *r.State)
	require.Nil(t, r.LockedUntil)
	require.Equal(t, `{"charge":"ch_1"}`, string(r.Result))

	// A duplicate after finish gets the stored outcome.
	dupLock, out, err = store.Begin(ctx, "billing.charge", "6:stripe:evt_1")
	require.NoError(t, err)
	require.Nil(t, dupLock)
	require.NotNil(t, out)
	require.Equal(t, `{"charge":"ch_1"}`, string(out.Result))
	require.True(t, out.FinishedAt.Equal(r.ProcessedAt))

	// Finish repeated with the same lock (a retry after a lost reply)
	// succeeds and changes nothing.
	require.NoError(t, store.Finish(ctx, lock, []byte("other")))
	r2, _ := readRow(t, pool, "billing.charge", "6:stripe:evt_1")
	require.Equal(t, `{"charge":"ch_1"}`, string(r2.Result))
	require.True(t, r2.ProcessedAt.Equal(r.ProcessedAt))
}

// Finish with no result stores NULL and returns a nil Result.
func TestFinishWithoutResult(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, _ := newStore(t, idempotency.Config{})
	lock := begin(t, store, "emails", "welcome:u1")
	require.NoError(t, store.Finish(ctx, lock, nil))
	_, out, err := store.Begin(ctx, "emails", "welcome:u1")
	require.NoError(t, err)
	require.NotNil(t, out)
	require.Nil(t, out.Result)
}

// An abandoned lock (its holder died) is taken over after its deadline,
// with a new token and the attempt counted; the old holder, finishing
// late, is refused and changes nothing, and so are its Extend and
// Release.
func TestBeginTakesOverExpiredLockAndFencesTheOldHolder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, pool := newStore(t, idempotency.Config{})
	old := begin(t, store, "billing.charge", "k")

	// Still live: no takeover.
	_, _, err := store.Begin(ctx, "billing.charge", "k")
	require.ErrorIs(t, err, idempotency.ErrInProgress)

	expire(t, pool, "billing.charge", "k")
	taker := begin(t, store, "billing.charge", "k")
	require.Equal(t, 2, taker.Attempt)
	require.NotEqual(t, old.Token, taker.Token)
	r, _ := readRow(t, pool, "billing.charge", "k")
	require.Equal(t, taker.Token, *r.Token)
	require.True(t, *r.Live)
	require.EqualValues(t, 2, *r.Attempts)

	// The old holder wakes up and reports its outcome: refused.
	err = store.Finish(ctx, old, []byte("old"))
	keyError(t, err, idempotency.ErrLockLost, "billing.charge", "k")
	require.Contains(t, err.Error(), `idempotency: consumer "billing.charge", key "k": lock lost`)
	keyError(t, store.Extend(ctx, old), idempotency.ErrLockLost, "billing.charge", "k")
	keyError(t, store.Release(ctx, old), idempotency.ErrLockLost, "billing.charge", "k")
	tx := beginTx(t, pool)
	keyError(t, store.FinishTx(ctx, tx, old, []byte("old")), idempotency.ErrLockLost, "billing.charge", "k")
	require.NoError(t, tx.Commit(ctx))
	after, _ := readRow(t, pool, "billing.charge", "k")
	require.Equal(t, r, after, "a stale lock must change nothing")

	require.NoError(t, store.Finish(ctx, taker, []byte("new")))
	_, out, err := store.Begin(ctx, "billing.charge", "k")
	require.NoError(t, err)
	require.Equal(t, "new", string(out.Result))
}

// Callers racing to take over one expired lock: exactly one wins. They are
// made to race for real by holding the row locked until all of them wait
// on it, then letting go at once.
func TestTakeoverRaceExactlyOneWins(t *testing.T) {
	t.Parallel()
	const racers = 20
	ctx := context.Background()
	pool, observer := twoPools(t, racers+2)
	store, err := idempotency.New(pool, idempotency.Config{})
	require.NoError(t, err)
	old := begin(t, store, "billing.charge", "k")
	expire(t, observer, "billing.charge", "k")

	holder := beginTx(t, observer)
	_, err = holder.Exec(ctx, `SELECT 1 FROM wharf.processed_events WHERE consumer = 'billing.charge' AND key = 'k' FOR UPDATE`)
	require.NoError(t, err)

	type result struct {
		lock *idempotency.Lock
		err  error
	}
	results := make(chan result, racers)
	for range racers {
		go func() {
			lock, out, err := store.Begin(ctx, "billing.charge", "k")
			if out != nil {
				err = errors.New("an in-progress key must not report an outcome")
			}
			results <- result{lock, err}
		}()
	}
	dbtest.Eventually(t, 30*time.Second, "every racer waiting on the row", func() bool { return lockWaiters(t, observer) == racers })
	require.NoError(t, holder.Rollback(ctx))

	var winners []*idempotency.Lock
	for range racers {
		r := <-results
		if r.lock != nil {
			require.NoError(t, r.err)
			winners = append(winners, r.lock)
			continue
		}
		require.ErrorIs(t, r.err, idempotency.ErrInProgress)
	}
	require.Len(t, winners, 1, "exactly one racer takes the expired lock over")
	row, _ := readRow(t, observer, "billing.charge", "k")
	require.Equal(t, winners[0].Token, *row.Token)
	require.NotEqual(t, old.Token, *row.Token)
	require.EqualValues(t, 2, *row.Attempts, "one takeover, counted once")
	require.ErrorIs(t, store.Finish(ctx, old, nil), idempotency.ErrLockLost)
	require.NoError(t, store.Finish(ctx, winners[0], []byte("won")))
}

// Release gives the key up at once. The next Begin starts afresh with a
// new random token, so the released lock cannot act on the new holder's
// row even though the attempt count starts over.
func TestReleaseLetsTheNextBeginRunAndFencesTheReleasedLock(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, pool := newStore(t, idempotency.Config{})
	first := begin(t, store, "billing.charge", "k")
	require.NoError(t, store.Release(ctx, first))
	_, ok := readRow(t, pool, "billing.charge", "k")
	require.False(t, ok)

	second := begin(t, store, "billing.charge", "k")
	require.Equal(t, 1, second.Attempt)
	require.NotEqual(t, first.Token, second.Token)
	require.ErrorIs(t, store.Finish(ctx, first, []byte("stale")), idempotency.ErrLockLost)
	require.ErrorIs(t, store.Release(ctx, first), idempotency.ErrLockLost)
	r, _ := readRow(t, pool, "billing.charge", "k")
	require.Equal(t, "in_progress", *r.State)
	require.Equal(t, second.Token, *r.Token)
}

// Extend pushes the deadline to LockDuration from now, so a long side
// effect is not taken over; a lock whose deadline passed but which nobody
// took over may still extend and finish.
func TestExtendKeepsTheLock(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, pool := newStore(t, idempotency.Config{})
	lock := begin(t, store, "billing.charge", "k")
	expire(t, pool, "billing.charge", "k")
	before, _ := readRow(t, pool, "billing.charge", "k")
	require.False(t, *before.Live)

	require.NoError(t, store.Extend(ctx, lock))
	r, _ := readRow(t, pool, "billing.charge", "k")
	require.True(t, *r.Live)
	require.True(t, lock.LockedUntil.Equal(*r.LockedUntil))
	require.True(t, r.LockedUntil.After(*before.LockedUntil))
	_, _, err := store.Begin(ctx, "billing.charge", "k")
	require.ErrorIs(t, err, idempotency.ErrInProgress, "an extended lock is not taken over")
	require.NoError(t, store.Finish(ctx, lock, []byte("done")))
}

// FinishTx stores the outcome with the caller's own writes: both commit,
// or neither.
func TestFinishTxCommitsWithTheCallersWrites(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, pool := newStore(t, idempotency.Config{})
	_, err := pool.Exec(ctx, invoicesTable)
	require.NoError(t, err)
	lock := begin(t, store, "billing.charge", "k")

	tx := beginTx(t, pool)
	_, err = tx.Exec(ctx, `INSERT INTO invoices (id, paid) VALUES ('in_1', true)`)
	require.NoError(t, err)
	require.NoError(t, store.FinishTx(ctx, tx, lock, []byte("ch_1")))
	require.NoError(t, tx.Rollback(ctx))
	r, _ := readRow(t, pool, "billing.charge", "k")
	require.Equal(t, "in_progress", *r.State, "a rolled-back FinishTx leaves the key in progress")
	_, _, err = store.Begin(ctx, "billing.charge", "k")
	require.ErrorIs(t, err, idempotency.ErrInProgress)

	tx = beginTx(t, pool)
	_, err = tx.Exec(ctx, `INSERT INTO invoices (id, paid) VALUES ('in_1', true)`)
	require.NoError(t, err)
	require.NoError(t, store.FinishTx(ctx, tx, lock, []byte("ch_1")))
	require.NoError(t, tx.Commit(ctx))
	r, _ = readRow(t, pool, "billing.charge", "k")
	require.Equal(t, "finished", *r.State)
	require.Equal(t, "ch_1", string(r.Result))
	require.Equal(t, 1, dbtest.Count(t, pool, `SELECT count(*) FROM invoices`))
}

// Do: runs the function once to a stored outcome; a duplicate gets the
// outcome without running it; a failure releases the key for a retry; a
// key held elsewhere is ErrInProgress without running it.
func TestDo(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, _ := newStore(t, idempotency.Config{})
	var calls atomic.Int32
	var sentKey string
	charge := func(fail error) func(context.Context, *idempotency.Lock) ([]byte, error) {
		return func(ctx context.Context, lock *idempotency.Lock) ([]byte, error) {
			calls.Add(1)
			sentKey = lock.DownstreamKey()
			if fail != nil {
				return nil, fail
			}
			return []byte("ch_1"), nil
		}
	}
	timeout := errors.New("payment api timed out")

	res, ran, err := store.Do(ctx, "billing.charge", "k", charge(timeout))
	require.ErrorIs(t, err, timeout)
	require.True(t, ran)
	require.Nil(t, res)
	require.Equal(t, idempotency.DownstreamKey("billing.charge", "k"), sentKey)

	res, ran, err = store.Do(ctx, "billing.charge", "k", charge(nil))
	require.NoError(t, err)
	require.True(t, ran, "a failed attempt releases the key, so the retry runs")
	require.Equal(t, "ch_1", string(res))
	require.Equal(t, idempotency.DownstreamKey("billing.charge", "k"), sentKey, "every attempt sends the same downstream key")

	res, ran, err = store.Do(ctx, "billing.charge", "k", charge(nil))
	require.NoError(t, err)
	require.False(t, ran)
	require.Equal(t, "ch_1", string(res))
	require.EqualValues(t, 2, calls.Load())

	held := begin(t, store, "billing.charge", "k2")
	_, ran, err = store.Do(ctx, "billing.charge", "k2", charge(nil))
	require.ErrorIs(t, err, idempotency.ErrInProgress)
	require.False(t, ran)
	require.EqualValues(t, 2, calls.Load())
	require.NoError(t, store.Release(ctx, held))
}

// Do whose lock is taken over while its function runs returns the result
// with ErrLockLost, and does not overwrite the taker's outcome.
func TestDoReportsALockTakenOverMidway(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, pool := newStore(t, idempotency.Config{})
	var taker *idempotency.Lock
	res, ran, err := store.Do(ctx, "billing.charge", "k", func(ctx context.Context, lock *idempotency.Lock) ([]byte, error) {
		expire(t, pool, "billing.charge", "k")
		taker = begin(t, store, "billing.charge", "k")
		return []byte("slow"), nil
	})
	require.ErrorIs(t, err, idempotency.ErrLockLost)
	require.True(t, ran)
	require.Equal(t, "slow", string(res))
	r, _ := readRow(t, pool, "billing.charge", "k")
	require.Equal(t, "in_progress", *r.State)
	require.Equal(t, taker.Token, *r.Token)
}

// Concurrent Do calls for one key run the function at most once; the
// others get ErrInProgress while it runs, or its outcome after.
func TestDoConcurrentRunsOnce(t *testing.T) {
	t.Parallel()
	const n = 20
	ctx := context.Background()
	store, pool := newStore(t, idempotency.Config{})
	var calls atomic.Int32
	running := make(chan struct{})
	release, releaseNow := gate(t)
	var wg sync.WaitGroup
	var inProgress atomic.Int32
	errs := make(chan error, n)
	fn := func(ctx context.Context, lock *idempotency.Lock) ([]byte, error) {
		calls.Add(1)
		close(running)
		<-release
		return []byte("once"), nil
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, _, err := store.Do(ctx, "emails", "k", fn); err != nil {
			errs <- err
		}
	}()
	<-running
	for range n - 1 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, ran, err := store.Do(ctx, "emails", "k", fn)
			switch {
			case errors.Is(err, idempotency.ErrInProgress) && !ran:
				inProgress.Add(1)
			case err != nil:
				errs <- err
			default:
				errs <- errors.New("a duplicate ran or finished while the first was running")
			}
		}()
	}
	// Wait until every duplicate has been turned away, then let the first
	// one finish; a late duplicate gets the outcome.
	dbtest.Eventually(t, 30*time.Second, "every duplicate turned away", func() bool { return inProgress.Load() == n-1 })
	releaseNow()
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	res, ran, err := store.Do(ctx, "emails", "k", fn)
	require.NoError(t, err)
	require.False(t, ran)
	require.Equal(t, "once", string(res))
	require.EqualValues(t, 1, calls.Load())
	require.Equal(t, 1, rows(t, pool))
}

// A key claimed in one mode cannot be used from the other: typed error,
// nothing changed, and a caller's transaction stays usable.
func TestModesCannotBeConfused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, pool := newStore(t, idempotency.Config{})
	fnCalled := false
	fn := func(context.Context, *idempotency.Lock) ([]byte, error) { fnCalled = true; return nil, nil }
	txFn := func(context.Context, pgx.Tx) error { fnCalled = true; return nil }

	// Claimed in the tx mode, then used with Begin and Do.
	require.True(t, claimIn(t, pool, store, "c", "tx-key"))
	before, _ := readRow(t, pool, "c", "tx-key")
	lock, out, err := store.Begin(ctx, "c", "tx-key")
	require.Nil(t, lock)
	require.Nil(t, out)
	ke := keyError(t, err, idempotency.ErrModeMismatch, "c", "tx-key")
	require.Equal(t, idempotency.ModeTx, ke.Mode)
	require.Contains(t, err.Error(), `idempotency: consumer "c", key "tx-key": mode mismatch`)
	_, _, err = store.Do(ctx, "c", "tx-key", fn)
	require.ErrorIs(t, err, idempotency.ErrModeMismatch)
	after, _ := readRow(t, pool, "c", "tx-key")
	require.Equal(t, before, after)

	// Taken in the external mode (in progress, then finished), then used
	// with Claim and Once.
	held := begin(t, store, "c", "ext-key")
	for _, phase := range []string{"in progress", "finished"} {
		if phase == "finished" {
			require.NoError(t, store.Finish(ctx, held, []byte("r")))
		}
		before, _ := readRow(t, pool, "c", "ext-key")
		tx := beginTx(t, pool)
		first, err := store.Claim(ctx, tx, "c", "ext-key")
		require.False(t, first)
		ke := keyError(t, err, idempotency.ErrModeMismatch, "c", "ext-key")
		require.Equal(t, idempotency.ModeExternal, ke.Mode, phase)
		_, err = tx.Exec(ctx, `SELECT 1`)
		require.NoError(t, err, "the transaction must stay usable after a mode mismatch (%s)", phase)
		require.NoError(t, tx.Commit(ctx))
		ran, err := store.Once(ctx, "c", "ext-key", txFn)
		require.False(t, ran)
		require.ErrorIs(t, err, idempotency.ErrModeMismatch)
		after, _ := readRow(t, pool, "c", "ext-key")
		require.Equal(t, before, after, phase)
	}
	require.False(t, fnCalled)
	require.Equal(t, 2, rows(t, pool))
}
