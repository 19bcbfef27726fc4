package queue_test

// Tests of the low-level lease API: Fetch, Complete(Tx), Retry(Tx),
// Defer(Tx), Release, Heartbeat and Rescue. Leases are made to expire by
// moving lease_expires_at into the past in SQL, and backoff is skipped by
// moving run_at into the past, so no test waits for the clock.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/queue"
)

// leaseRow is one wharf.queue row as the lease tests inspect it.
type leaseRow struct {
	State     string
	Attempt   int
	Token     *int64
	LeasedBy  *string
	RunIn     float64    // seconds from now() to run_at (negative: due)
	ExpiresIn *float64   // seconds from now() to lease_expires_at
	ExpiresAt *time.Time // lease_expires_at
	Errors    []queue.AttemptError
	Payload   bool // its queue_payloads row exists
}

// leaseRowOf reads queue row id; ok is false when the row is gone.
func leaseRowOf(t testing.TB, pool *pgxpool.Pool, id int64) (r leaseRow, ok bool) {
	t.Helper()
	var errs []byte
	err := pool.QueryRow(context.Background(), `
		SELECT state, attempt, lease_token, leased_by,
		       extract(epoch FROM run_at - now())::float8,
		       extract(epoch FROM lease_expires_at - now())::float8,
		       lease_expires_at, errors,
		       EXISTS (SELECT 1 FROM wharf.queue_payloads p WHERE p.queue_id = q.id)
		FROM wharf.queue q WHERE id = $1`, id).
		Scan(&r.State, &r.Attempt, &r.Token, &r.LeasedBy, &r.RunIn, &r.ExpiresIn, &r.ExpiresAt, &errs, &r.Payload)
	if errors.Is(err, pgx.ErrNoRows) {
		return leaseRow{}, false
	}
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(errs, &r.Errors))
	return r, true
}

// mustLeaseRow is leaseRowOf for a row that must exist.
func mustLeaseRow(t testing.TB, pool *pgxpool.Pool, id int64) leaseRow {
	t.Helper()
	r, ok := leaseRowOf(t, pool, id)
	require.True(t, ok, "queue row %d is gone", id)
	return r
}

// leaseExec runs one statement that must change exactly want rows.
func leaseExec(t testing.TB, pool *pgxpool.Pool, want int64, sql string, args ...any) {
	t.Helper()
	tag, err := pool.Exec(context.Background(), sql, args...)
	require.NoError(t, err)
	require.Equal(t, want, tag.RowsAffected(), sql)
}

// leaseExpire makes the lease on row id lapse a second ago.
func leaseExpire(t testing.TB, pool *pgxpool.Pool, id int64) {
	t.Helper()
	leaseExec(t, pool, 1, `UPDATE wharf.queue SET lease_expires_at = now() - interval '1 second' WHERE id = $1`, id)
}

// leaseMakeDue moves row id's run_at a second into the past (skipping a
// backoff or a RunAt).
func leaseMakeDue(t testing.TB, pool *pgxpool.Pool, id int64) {
	t.Helper()
	leaseExec(t, pool, 1, `UPDATE wharf.queue SET run_at = now() - interval '1 second' WHERE id = $1`, id)
}

// leaseFetch fetches with p (Limit 100 unless set).
func leaseFetch(t testing.TB, q *queue.Queue, p queue.FetchParams) []*queue.Event {
	t.Helper()
	if p.Limit == 0 {
		p.Limit = 100
	}
	evs, err := q.Fetch(context.Background(), p)
	require.NoError(t, err)
	return evs
}

// leaseFetchOne fetches and requires exactly one event, with event id want.
func leaseFetchOne(t testing.TB, q *queue.Queue, want string) *queue.Event {
	t.Helper()
	evs := leaseFetch(t, q, queue.FetchParams{})
	require.Equal(t, []string{want}, leaseIDs(evs))
	return evs[0]
}

// leaseIDs returns the events' provider ids, sorted.
func leaseIDs(evs []*queue.Event) []string {
	ids := make([]string, 0, len(evs))
	for _, ev := range evs {
		ids = append(ids, ev.ID)
	}
	sort.Strings(ids)
	return ids
}

// leaseEnqueue stores evs (committed) and returns their queue ids.
func leaseEnqueue(t testing.TB, q *queue.Queue, evs ...queue.NewEvent) []int64 {
	t.Helper()
	res, err := q.EnqueueBatch(context.Background(), evs)
	require.NoError(t, err)
	ids := make([]int64, len(res))
	for i, r := range res {
		require.False(t, r.Duplicate, "event %s is a duplicate", evs[i].ID)
		ids[i] = r.QueueID
	}
	return ids
}

// leaseKeyed is event() with an ordering key.
func leaseKeyed(source, id, key string) queue.NewEvent {
	ev := event(source, id)
	ev.OrderingKey = key
	return ev
}

// 1. Concurrent fetchers never get the same event while its lease is live.
func TestLeaseConcurrentFetchersNeverShare(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, pool := newQueue(t, queue.Config{})

	const total, fetchers = 2000, 8
	evs := make([]queue.NewEvent, total)
	for i := range evs {
		evs[i] = event("s", fmt.Sprintf("e%04d", i))
	}
	ids := leaseEnqueue(t, q, evs...)

	got := make([][]int64, fetchers)
	errs := make([]error, fetchers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for w := range fetchers {
		wg.Go(func() {
			<-start
			for {
				batch, err := q.Fetch(ctx, queue.FetchParams{Limit: 25, Worker: fmt.Sprintf("w%d", w)})
				if err != nil {
					errs[w] = err
					return
				}
				if len(batch) == 0 {
					return
				}
				for _, ev := range batch {
					got[w] = append(got[w], ev.QueueID)
					if ev.Attempt != 1 {
						errs[w] = fmt.Errorf("event %d fetched with attempt %d", ev.QueueID, ev.Attempt)
					}
				}
			}
		})
	}
	close(start)
	wg.Wait()
	for w, err := range errs {
		require.NoError(t, err, "fetcher %d", w)
	}

	seen := map[int64]int{}
	for w := range got {
		for _, id := range got[w] {
			seen[id]++
		}
	}
	for id, n := range seen {
		require.Equal(t, 1, n, "event %d fetched %d times", id, n)
	}
	require.Len(t, seen, total)
	for _, id := range ids {
		require.Contains(t, seen, id)
	}
	busy := 0
	for w := range got {
		if len(got[w]) > 0 {
			busy++
		}
	}
	t.Logf("%d of %d fetchers got events", busy, fetchers)

	require.Equal(t, total, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue WHERE state = 'running' AND attempt = 1 AND lease_token IS NOT NULL`))
	require.Equal(t, total, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue`))
	require.Empty(t, leaseFetch(t, q, queue.FetchParams{}), "leased events must not be fetched again")
}

// 2. Fetch never returns an event whose run_at is in the future.
func TestLeaseFetchSkipsFutureRunAt(t *testing.T) {
	t.Parallel()
	q, pool := newQueue(t, queue.Config{})

	later := event("s", "later")
	later.RunAt = time.Now().Add(time.Hour)
	ids := leaseEnqueue(t, q, later, event("s", "now"))

	leaseFetchOne(t, q, "now")
	require.Empty(t, leaseFetch(t, q, queue.FetchParams{}))
	r := mustLeaseRow(t, pool, ids[0])
	require.Equal(t, "available", r.State)
	require.Zero(t, r.Attempt)
	require.InDelta(t, 3600, r.RunIn, 5, "run_at kept as given")

	leaseMakeDue(t, pool, ids[0])
	ev := leaseFetchOne(t, q, "later")
	require.Equal(t, 1, ev.Attempt)
	require.Equal(t, "running", mustLeaseRow(t, pool, ids[0]).State)
}

// 3. Kind filters: Only, AnyType, Exclude, walking and by kind.
func TestLeaseKindFilters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, pool := newQueue(t, queue.Config{})

	mk := func(source, id, typ string) queue.NewEvent {
		ev := event(source, id)
		ev.Type = typ
		return ev
	}
	ids := leaseEnqueue(t, q,
		mk("s1", "a", "t1"),
		mk("s1", "b", "t2"),
		mk("s2", "c", "t1"),
		mk("s3", "d", "t1"),
	)

	cases := []struct {
		name          string
		only, exclude []queue.Kind
		want          []string
	}{
		{"only one pair", []queue.Kind{{Source: "s1", Type: "t1"}}, nil, []string{"a"}},
		{"only pair is per source", []queue.Kind{{Source: "s2", Type: "t1"}}, nil, []string{"c"}},
		{"only any type", []queue.Kind{{Source: "s1", Type: queue.AnyType}}, nil, []string{"a", "b"}},
		{"only two pairs", []queue.Kind{{Source: "s1", Type: "t2"}, {Source: "s2", Type: "t1"}}, nil, []string{"b", "c"}},
		{"only nothing matches", []queue.Kind{{Source: "s9", Type: queue.AnyType}, {Source: "s1", Type: "t9"}}, nil, nil},
		{"exclude any type", nil, []queue.Kind{{Source: "s1", Type: queue.AnyType}}, []string{"c", "d"}},
		{"exclude pairs", nil, []queue.Kind{{Source: "s2", Type: "t1"}, {Source: "s3", Type: queue.AnyType}}, []string{"a", "b"}},
		{"only minus exclude", []queue.Kind{{Source: "s1", Type: queue.AnyType}}, []queue.Kind{{Source: "s1", Type: "t2"}}, []string{"a"}},
		{"only pairs minus an excluded pair", []queue.Kind{{Source: "s1", Type: "t1"}, {Source: "s1", Type: "t2"}, {Source: "s2", Type: "t1"}}, []queue.Kind{{Source: "s1", Type: "t2"}}, []string{"a", "c"}},
		{"only pairs minus an excluded source", []queue.Kind{{Source: "s1", Type: "t1"}, {Source: "s1", Type: "t2"}, {Source: "s2", Type: "t1"}}, []queue.Kind{{Source: "s1", Type: queue.AnyType}}, []string{"c"}},
		{"only pairs all excluded", []queue.Kind{{Source: "s1", Type: "t1"}}, []queue.Kind{{Source: "s1", Type: "t1"}}, nil},
		{"only a pair twice", []queue.Kind{{Source: "s1", Type: "t1"}, {Source: "s1", Type: "t1"}}, nil, []string{"a"}},
		{"only a pair and its source", []queue.Kind{{Source: "s1", Type: "t1"}, {Source: "s1", Type: queue.AnyType}}, nil, []string{"a", "b"}},
		{"no filter", nil, nil, []string{"a", "b", "c", "d"}},
	}
	for _, byKind := range []bool{false, true} {
		for _, tc := range cases {
			evs := leaseFetch(t, q, queue.FetchParams{Only: tc.only, Exclude: tc.exclude, ByKind: byKind})
			if tc.want == nil {
				tc.want = []string{}
			}
			require.Equal(t, tc.want, leaseIDs(evs), "%s (by kind: %v)", tc.name, byKind)
			require.NoError(t, q.Release(ctx, evs...), tc.name)
		}
	}

	// Released events got their attempts back; nothing is running.
	require.Equal(t, 4, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue WHERE state = 'available' AND attempt = 0`))

	// What matches no Only kind is left alone.
	evs := leaseFetch(t, q, queue.FetchParams{Only: []queue.Kind{{Source: "s1", Type: queue.AnyType}, {Source: "s2", Type: "t1"}}})
	require.Equal(t, []string{"a", "b", "c"}, leaseIDs(evs))
	for _, id := range ids[:3] {
		r := mustLeaseRow(t, pool, id)
		require.Equal(t, "running", r.State)
		require.Equal(t, 1, r.Attempt)
	}
	d := mustLeaseRow(t, pool, ids[3])
	require.Equal(t, "available", d.State)
	require.Zero(t, d.Attempt)
	require.Nil(t, d.Token)
}

// 4. Fencing: a lost lease changes nothing.
func TestLeaseFencing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, pool := newQueue(t, queue.Config{})

	id := leaseEnqueue(t, q, event("s", "fenced"))[0]
	evA := leaseFetchOne(t, q, "fenced")
	require.Equal(t, 1, evA.Attempt)

	// Lease A lapses; the rescuer puts the event back.
	leaseExpire(t, pool, id)
	n, err := q.Rescue(ctx, 100)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	r := mustLeaseRow(t, pool, id)
	require.Equal(t, "available", r.State)
	require.Equal(t, 1, r.Attempt, "the lapsed run counts as an attempt")
	require.Nil(t, r.Token)
	require.Len(t, r.Errors, 1)
	require.Equal(t, 1, r.Errors[0].Attempt)
	require.Contains(t, r.Errors[0].Error, "lease expired")
	n, err = q.Rescue(ctx, 100)
	require.NoError(t, err)
	require.Zero(t, n, "nothing left to rescue")

	leaseMakeDue(t, pool, id)
	evB := leaseFetchOne(t, q, "fenced")
	require.Equal(t, 2, evB.Attempt)
	require.NotEqual(t, evA.Lease.Token, evB.Lease.Token)
	require.Len(t, evB.Errors, 1)
	require.Contains(t, evB.Errors[0].Error, "lease expired")
	before := mustLeaseRow(t, pool, id)

	unchanged := func(op string) {
		t.Helper()
		r := mustLeaseRow(t, pool, id)
		require.Equal(t, "running", r.State, op)
		require.NotNil(t, r.Token, op)
		require.Equal(t, evB.Lease.Token, *r.Token, op)
		require.Equal(t, 2, r.Attempt, op)
		require.Len(t, r.Errors, 1, op)
		require.True(t, r.ExpiresAt.Equal(*before.ExpiresAt), op)
		require.InDelta(t, before.RunIn, r.RunIn, 5, op)
		require.True(t, r.Payload, op)
	}

	require.ErrorIs(t, q.Complete(ctx, evA), queue.ErrLeaseLost)
	unchanged("Complete")

	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	require.ErrorIs(t, q.CompleteTx(ctx, tx, evA), queue.ErrLeaseLost)
	require.NoError(t, tx.Commit(ctx), "a lost lease is not an SQL error: the tx stays usable")
	unchanged("CompleteTx")

	exhausted, err := q.Retry(ctx, evA, errors.New("stale worker failed"))
	require.ErrorIs(t, err, queue.ErrLeaseLost)
	require.False(t, exhausted)
	unchanged("Retry")

	tx, err = pool.Begin(ctx)
	require.NoError(t, err)
	_, err = q.RetryTx(ctx, tx, evA, errors.New("stale worker failed"))
	require.ErrorIs(t, err, queue.ErrLeaseLost)
	require.NoError(t, tx.Commit(ctx))
	unchanged("RetryTx")

	require.ErrorIs(t, q.Defer(ctx, evA, time.Now().Add(time.Hour)), queue.ErrLeaseLost)
	unchanged("Defer")

	tx, err = pool.Begin(ctx)
	require.NoError(t, err)
	require.ErrorIs(t, q.DeferTx(ctx, tx, evA, time.Now().Add(time.Hour)), queue.ErrLeaseLost)
	require.NoError(t, tx.Commit(ctx))
	unchanged("DeferTx")

	require.ErrorIs(t, q.Release(ctx, evA), queue.ErrLeaseLost)
	unchanged("Release")

	extended, err := q.Heartbeat(ctx, evA)
	require.NoError(t, err)
	require.Zero(t, extended, "a lost lease is not extended")
	unchanged("Heartbeat")

	// The current holder completes: row and payload go.
	require.NoError(t, q.Complete(ctx, evB))
	_, ok := leaseRowOf(t, pool, id)
	require.False(t, ok)
	require.Zero(t, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue_payloads WHERE queue_id = $1`, id))
	noOrphans(t, pool)

	// Completing twice: the second finds no lease.
	require.ErrorIs(t, q.Complete(ctx, evB), queue.ErrLeaseLost)
	require.ErrorIs(t, q.Complete(ctx, evA), queue.ErrLeaseLost)
}

// 5. Retry records the failure and reschedules after the backoff.
func TestLeaseRetryBackoff(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, pool := newQueue(t, queue.Config{Backoff: queue.Backoff{
		Initial: time.Minute, Max: time.Hour, Multiplier: 2, Jitter: queue.NoJitter,
	}})

	id := leaseEnqueue(t, q, event("s", "r"))[0]
	ev1 := leaseFetchOne(t, q, "r")
	leasedBy := mustLeaseRow(t, pool, id).LeasedBy
	require.NotNil(t, leasedBy)
	require.NotEmpty(t, *leasedBy)

	exhausted, err := q.Retry(ctx, ev1, errors.New("downstream said 503"))
	require.NoError(t, err)
	require.False(t, exhausted)
	r := mustLeaseRow(t, pool, id)
	require.Equal(t, "available", r.State)
	require.Equal(t, 1, r.Attempt, "a failed attempt stays counted")
	require.Nil(t, r.Token)
	require.Nil(t, r.ExpiresAt)
	require.Nil(t, r.LeasedBy)
	require.True(t, r.Payload)
	require.Len(t, r.Errors, 1)
	require.Equal(t, 1, r.Errors[0].Attempt)
	require.Equal(t, "downstream said 503", r.Errors[0].Error)
	require.Equal(t, *leasedBy, r.Errors[0].Worker)
	require.False(t, r.Errors[0].At.IsZero())
	require.InDelta(t, 60, r.RunIn, 3, "after attempt 1: now + Initial")
	require.Empty(t, leaseFetch(t, q, queue.FetchParams{}), "not due during backoff")

	leaseMakeDue(t, pool, id)
	ev2 := leaseFetchOne(t, q, "r")
	require.Equal(t, 2, ev2.Attempt)
	require.Len(t, ev2.Errors, 1)
	require.Equal(t, "downstream said 503", ev2.Errors[0].Error)

	// RetryTx in a transaction that rolls back changes nothing.
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	_, err = q.RetryTx(ctx, tx, ev2, errors.New("rolled back"))
	require.NoError(t, err)
	require.NoError(t, tx.Rollback(ctx))
	r = mustLeaseRow(t, pool, id)
	require.Equal(t, "running", r.State)
	require.Equal(t, ev2.Lease.Token, *r.Token)
	require.Len(t, r.Errors, 1)

	exhausted, err = q.Retry(ctx, ev2, errors.New("timeout"))
	require.NoError(t, err)
	require.False(t, exhausted)
	r = mustLeaseRow(t, pool, id)
	require.Equal(t, "available", r.State)
	require.Equal(t, 2, r.Attempt)
	require.InDelta(t, 120, r.RunIn, 3, "after attempt 2: now + Initial*Multiplier")
	require.Len(t, r.Errors, 2)
	require.Equal(t, []int{1, 2}, []int{r.Errors[0].Attempt, r.Errors[1].Attempt})
	require.Equal(t, []string{"downstream said 503", "timeout"}, []string{r.Errors[0].Error, r.Errors[1].Error})

	// A nil cause is still recorded.
	leaseMakeDue(t, pool, id)
	ev3 := leaseFetchOne(t, q, "r")
	_, err = q.Retry(ctx, ev3, nil)
	require.NoError(t, err)
	r = mustLeaseRow(t, pool, id)
	require.Len(t, r.Errors, 3)
	require.NotEmpty(t, r.Errors[2].Error)
	require.InDelta(t, 240, r.RunIn, 3, "after attempt 3: now + 4*Initial")
}

// 5b. Backoff.Delay: exponential, capped, jittered downwards only.
func TestLeaseBackoffDelay(t *testing.T) {
	t.Parallel()

	exact := queue.Backoff{Initial: time.Second, Max: 30 * time.Second, Multiplier: 2, Jitter: queue.NoJitter}
	want := []time.Duration{1, 2, 4, 8, 16, 30, 30, 30}
	for i, w := range want {
		require.Equal(t, w*time.Second, exact.Delay(i+1), "attempt %d", i+1)
	}
	require.Equal(t, time.Second, exact.Delay(0), "attempt 0 counts as 1")
	require.Equal(t, 30*time.Second, exact.Delay(100))
	require.Equal(t, 30*time.Second, exact.Delay(100_000), "overflow to +Inf is capped")

	frac := queue.Backoff{Initial: 100 * time.Millisecond, Max: time.Hour, Multiplier: 1.5, Jitter: queue.NoJitter}
	require.Equal(t, []time.Duration{100 * time.Millisecond, 150 * time.Millisecond, 225 * time.Millisecond},
		[]time.Duration{frac.Delay(1), frac.Delay(2), frac.Delay(3)})

	jittered := queue.Backoff{Initial: time.Second, Max: time.Minute, Multiplier: 2, Jitter: 0.5}
	for n := 1; n <= 8; n++ {
		d := min(time.Second<<(n-1), time.Minute) // the schedule without jitter
		distinct := map[time.Duration]bool{}
		for range 1000 {
			got := jittered.Delay(n)
			require.GreaterOrEqual(t, got, d/2, "attempt %d", n)
			require.LessOrEqual(t, got, d, "attempt %d", n)
			distinct[got] = true
		}
		require.Greater(t, len(distinct), 1, "attempt %d: jitter draws all equal", n)
	}

	// The zero Backoff: 1s, doubling, jitter up to 20% off.
	var def queue.Backoff
	distinct := map[time.Duration]bool{}
	for range 1000 {
		d1 := def.Delay(1)
		require.GreaterOrEqual(t, d1, 800*time.Millisecond)
		require.LessOrEqual(t, d1, time.Second)
		distinct[d1] = true
		d2 := def.Delay(2)
		require.GreaterOrEqual(t, d2, 1600*time.Millisecond)
		require.LessOrEqual(t, d2, 2*time.Second)
		dMax := def.Delay(50)
		require.GreaterOrEqual(t, dMax, 48*time.Minute)
		require.LessOrEqual(t, dMax, time.Hour)
	}
	require.Greater(t, len(distinct), 1, "default jitter is on")
}

// 6. Defer and Release give the attempt back.
func TestLeaseDeferReleaseKeepAttempt(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, pool := newQueue(t, queue.Config{})

	id := leaseEnqueue(t, q, event("s", "d"))[0]
	ev := leaseFetchOne(t, q, "d")
	require.Equal(t, 1, ev.Attempt)

	require.NoError(t, q.Defer(ctx, ev, time.Now().Add(time.Hour)))
	r := mustLeaseRow(t, pool, id)
	require.Equal(t, "available", r.State)
	require.Zero(t, r.Attempt, "the deferred attempt is given back")
	require.Nil(t, r.Token)
	require.Empty(t, r.Errors, "a deferral is not a failure")
	require.InDelta(t, 3600, r.RunIn, 5)
	require.Empty(t, leaseFetch(t, q, queue.FetchParams{}), "deferred until later")

	leaseMakeDue(t, pool, id)
	ev = leaseFetchOne(t, q, "d")
	require.Equal(t, 1, ev.Attempt)
	require.Empty(t, ev.Errors)

	require.NoError(t, q.Release(ctx, ev))
	r = mustLeaseRow(t, pool, id)
	require.Equal(t, "available", r.State)
	require.Zero(t, r.Attempt, "the released attempt is given back")
	require.LessOrEqual(t, r.RunIn, 0.0, "a released event is due at once")
	require.Empty(t, r.Errors)
	ev = leaseFetchOne(t, q, "d")
	require.Equal(t, 1, ev.Attempt)

	// DeferTx in a transaction that rolls back changes nothing.
	before := mustLeaseRow(t, pool, id)
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, q.DeferTx(ctx, tx, ev, time.Now().Add(time.Hour)))
	require.NoError(t, tx.Rollback(ctx))
	r = mustLeaseRow(t, pool, id)
	require.Equal(t, "running", r.State)
	require.Equal(t, 1, r.Attempt)
	require.Equal(t, ev.Lease.Token, *r.Token)
	require.True(t, r.ExpiresAt.Equal(*before.ExpiresAt))
	require.InDelta(t, before.RunIn, r.RunIn, 5)

	// DeferTx that commits defers; after a real failure only the fetch's
	// attempt is given back, not the failed one.
	_, err = q.Retry(ctx, ev, errors.New("real failure"))
	require.NoError(t, err)
	leaseMakeDue(t, pool, id)
	ev = leaseFetchOne(t, q, "d")
	require.Equal(t, 2, ev.Attempt)
	tx, err = pool.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, q.DeferTx(ctx, tx, ev, time.Time{}))
	require.NoError(t, tx.Commit(ctx))
	r = mustLeaseRow(t, pool, id)
	require.Equal(t, "available", r.State)
	require.Equal(t, 1, r.Attempt, "the failed attempt stays counted")
	require.Len(t, r.Errors, 1)
	require.LessOrEqual(t, r.RunIn, 0.0, "a zero until means now")

	// Releases and deferrals never spend attempts: an event with
	// MaxAttempts 2 released many times still has its attempts.
	id2 := leaseEnqueue(t, q, queue.NewEvent{Source: "s", ID: "m", Type: "x", Body: []byte{}, MaxAttempts: 2})[0]
	for range 5 {
		evs := leaseFetch(t, q, queue.FetchParams{Only: []queue.Kind{{Source: "s", Type: "x"}}})
		require.Len(t, evs, 1)
		require.Equal(t, 1, evs[0].Attempt)
		require.NoError(t, q.Release(ctx, evs[0]))
	}
	evs := leaseFetch(t, q, queue.FetchParams{Only: []queue.Kind{{Source: "s", Type: "x"}}})
	require.Len(t, evs, 1)
	exhausted, err := q.Retry(ctx, evs[0], errors.New("first real failure"))
	require.NoError(t, err)
	require.False(t, exhausted, "releases spent no attempt")
	require.Equal(t, 1, mustLeaseRow(t, pool, id2).Attempt)
	noOrphans(t, pool)
}

// 7. Without OnExhausted, an event that kills its worker every time is
// parked as exhausted after MaxAttempts.
func TestLeaseExhaustedWithoutHook(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, pool := newQueue(t, queue.Config{})

	doomed := event("s", "doomed")
	doomed.MaxAttempts = 3
	id := leaseEnqueue(t, q, doomed)[0]

	for attempt := 1; attempt <= 3; attempt++ {
		ev := leaseFetchOne(t, q, "doomed")
		require.Equal(t, attempt, ev.Attempt)
		require.Equal(t, 3, ev.MaxAttempts)
		require.Len(t, ev.Errors, attempt-1)
		// The worker dies: no heartbeat, no completion.
		leaseExpire(t, pool, id)
		n, err := q.Rescue(ctx, 100)
		require.NoError(t, err)
		require.Equal(t, 1, n)
		r := mustLeaseRow(t, pool, id)
		require.Len(t, r.Errors, attempt)
		require.Equal(t, attempt, r.Attempt)
		if attempt < 3 {
			require.Equal(t, "available", r.State)
			leaseMakeDue(t, pool, id)
		}
	}

	r := mustLeaseRow(t, pool, id)
	require.Equal(t, "exhausted", r.State)
	require.Equal(t, 3, r.Attempt)
	require.Nil(t, r.Token)
	require.Nil(t, r.ExpiresAt)
	require.True(t, r.Payload, "an exhausted event keeps its body")
	require.Len(t, r.Errors, 3)
	for i, e := range r.Errors {
		require.Equal(t, i+1, e.Attempt)
		require.Contains(t, e.Error, "lease expired")
	}

	// Never fetched or rescued again, even when due.
	leaseExec(t, pool, 1, `UPDATE wharf.queue SET run_at = now() - interval '1 hour' WHERE id = $1`, id)
	require.Empty(t, leaseFetch(t, q, queue.FetchParams{}))
	n, err := q.Rescue(ctx, 100)
	require.NoError(t, err)
	require.Zero(t, n)
	require.Equal(t, "exhausted", mustLeaseRow(t, pool, id).State)

	// Still the owner of its id: a redelivery is a duplicate.
	res, err := q.Enqueue(ctx, event("s", "doomed"))
	require.NoError(t, err)
	require.True(t, res.Duplicate)
	res2, err := q.EnqueueBatch(ctx, []queue.NewEvent{event("s", "doomed")})
	require.NoError(t, err)
	require.True(t, res2[0].Duplicate)
	require.Equal(t, 1, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue`))

	st, err := q.Stats(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(1), st.Exhausted)

	// Through Retry: MaxAttempts 2 is exhausted on the second failure.
	two := event("s", "two")
	two.MaxAttempts = 2
	id2 := leaseEnqueue(t, q, two)[0]
	ev := leaseFetchOne(t, q, "two")
	exhausted, err := q.Retry(ctx, ev, errors.New("fail 1"))
	require.NoError(t, err)
	require.False(t, exhausted)
	require.Equal(t, "available", mustLeaseRow(t, pool, id2).State)
	leaseMakeDue(t, pool, id2)
	ev = leaseFetchOne(t, q, "two")
	require.Equal(t, 2, ev.Attempt)
	exhausted, err = q.Retry(ctx, ev, errors.New("fail 2"))
	require.NoError(t, err)
	require.True(t, exhausted)
	r = mustLeaseRow(t, pool, id2)
	require.Equal(t, "exhausted", r.State)
	require.Len(t, r.Errors, 2)
	require.Equal(t, "fail 2", r.Errors[1].Error)
	require.Empty(t, leaseFetch(t, q, queue.FetchParams{}))

	// The exhausted event's old lease is dead.
	require.ErrorIs(t, q.Complete(ctx, ev), queue.ErrLeaseLost)
	_, err = q.Retry(ctx, ev, errors.New("again"))
	require.ErrorIs(t, err, queue.ErrLeaseLost)
	require.Len(t, mustLeaseRow(t, pool, id2).Errors, 2)
	noOrphans(t, pool)
}

// 7b. An event that kills its worker every time spends only its own
// attempts. The first crash charges every event leased with it; from then
// on each of them is fetched alone, so the crash loop charges only the
// event that causes it. A worker's ordinary retry clears the mark.
func TestLeaseCrashLoopSpendsOnlyItsOwnAttempts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, pool := newQueue(t, queue.Config{MaxAttempts: 3})
	var evs []queue.NewEvent
	for i := range 32 {
		evs = append(evs, event("s", fmt.Sprintf("e%02d", i)))
	}
	const poison, retried = "e07", "e20"
	leaseEnqueue(t, q, evs...)
	makeAllDue := func() {
		_, err := pool.Exec(ctx, `UPDATE wharf.queue SET run_at = now() - interval '1 second' WHERE state = 'available'`)
		require.NoError(t, err)
	}

	// A worker fetches up to 32 at a time. Holding the poison event, it
	// dies with every lease it has, and the rescuer returns them.
	crashes := 0
	for range 100 {
		batch := leaseFetch(t, q, queue.FetchParams{Limit: 32})
		if len(batch) == 0 {
			break
		}
		if crashes == 0 {
			require.Len(t, batch, 32, "before any crash, one fetch takes them all")
		} else {
			require.Len(t, batch, 1, "a rescued event comes alone")
			require.True(t, batch[0].Rescued)
		}
		if batch[0].ID == poison || crashes == 0 {
			crashes++
			for _, ev := range batch {
				leaseExpire(t, pool, ev.QueueID)
			}
			n, err := q.Rescue(ctx, 100)
			require.NoError(t, err)
			require.Equal(t, len(batch), n)
			makeAllDue()
			continue
		}
		for _, ev := range batch {
			if ev.ID == retried && ev.Rescued {
				_, err := q.Retry(ctx, ev, errors.New("a business error"))
				require.NoError(t, err)
				continue
			}
			require.NoError(t, q.Complete(ctx, ev))
		}
	}
	require.Equal(t, 3, crashes)

	// Only the poison event used its attempts up; every other event ran
	// after one charged crash and completed. The retried one is back in
	// ordinary batches.
	rows, err := pool.Query(ctx, `SELECT event_id || ':' || state || ':' || attempt FROM wharf.queue ORDER BY id`)
	require.NoError(t, err)
	left, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Equal(t, []string{poison + ":exhausted:3", retried + ":available:2"}, left)

	leaseEnqueue(t, q, event("s", "late"))
	makeAllDue()
	batch := leaseFetch(t, q, queue.FetchParams{Limit: 32})
	require.Equal(t, []string{retried, "late"}, leaseIDs(batch))
	for _, ev := range batch {
		require.False(t, ev.Rescued)
	}
}

// 8. With OnExhausted, the last failure moves the event to the hook's table
// in the same transaction: it is in exactly one place.
func TestLeaseExhaustedWithHook(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	errHook := errors.New("dead letter table unavailable")
	var failHook atomic.Bool
	var calls atomic.Int32
	q, pool := newQueue(t, queue.Config{OnExhausted: func(ctx context.Context, tx pgx.Tx, evs []*queue.Event) error {
		calls.Add(1)
		if failHook.Load() {
			return errHook
		}
		for _, ev := range evs {
			msgs := make([]string, len(ev.Errors))
			for i, e := range ev.Errors {
				msgs[i] = e.Error
			}
			if _, err := tx.Exec(ctx, `INSERT INTO dead (source, event_id, body, errors, messages) VALUES ($1, $2, $3, $4, $5)`,
				ev.Source, ev.ID, ev.Body, len(ev.Errors), msgs); err != nil {
				return err
			}
		}
		return nil
	}})
	_, err := pool.Exec(ctx, `CREATE TABLE dead (source text, event_id text, body bytea, errors int, messages text[])`)
	require.NoError(t, err)

	type deadRow struct {
		Body     []byte
		Errors   int
		Messages []string
	}
	deadOf := func(id string) (d deadRow, n int) {
		t.Helper()
		rows, err := pool.Query(ctx, `SELECT body, errors, messages FROM dead WHERE source = 's' AND event_id = $1`, id)
		require.NoError(t, err)
		_, err = pgx.ForEachRow(rows, []any{&d.Body, &d.Errors, &d.Messages}, func() error { n++; return nil })
		require.NoError(t, err)
		return d, n
	}

	body := []byte{0x00, 0xff, '{', '"', 'x', '"', ':', '1', '}', 0x80, '\n'}
	ev := queue.NewEvent{Source: "s", ID: "last", Type: "t", Body: body, MaxAttempts: 3, OrderingKey: "k"}
	id := leaseEnqueue(t, q, ev)[0]

	for attempt := 1; attempt <= 2; attempt++ {
		got := leaseFetchOne(t, q, "last")
		exhausted, err := q.Retry(ctx, got, fmt.Errorf("boom %d", attempt))
		require.NoError(t, err)
		require.False(t, exhausted)
		leaseMakeDue(t, pool, id)
	}
	require.Zero(t, calls.Load())

	last := leaseFetchOne(t, q, "last")
	require.Equal(t, 3, last.Attempt)

	// The hook fails: the event stays in the queue, running under the same
	// lease, and is nowhere else.
	failHook.Store(true)
	_, err = q.Retry(ctx, last, errors.New("boom 3"))
	require.ErrorIs(t, err, errHook)
	require.Equal(t, int32(1), calls.Load())
	r := mustLeaseRow(t, pool, id)
	require.Equal(t, "running", r.State)
	require.Equal(t, last.Lease.Token, *r.Token)
	require.Equal(t, 3, r.Attempt)
	require.Len(t, r.Errors, 2, "the failed exhaust recorded nothing")
	require.True(t, r.Payload)
	_, n := deadOf("last")
	require.Zero(t, n)
	require.Equal(t, 1, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue_ordering_locks WHERE queue_id = $1`, id),
		"the key stays locked while the event runs")

	// The hook works again: the same lease exhausts it.
	failHook.Store(false)
	exhausted, err := q.Retry(ctx, last, errors.New("boom 3"))
	require.NoError(t, err)
	require.True(t, exhausted)
	_, ok := leaseRowOf(t, pool, id)
	require.False(t, ok, "the queue row is gone")
	require.Zero(t, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue_payloads WHERE queue_id = $1`, id), "the payload is gone")
	d, n := deadOf("last")
	require.Equal(t, 1, n)
	require.Equal(t, body, d.Body, "the body is handed over verbatim")
	require.Equal(t, 3, d.Errors, "every attempt's error is handed over")
	require.Equal(t, []string{"boom 1", "boom 2", "boom 3"}, d.Messages)
	noOrphans(t, pool)
	require.Zero(t, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue_ordering_locks`))
	require.ErrorIs(t, q.Complete(ctx, last), queue.ErrLeaseLost)
	_, err = q.Retry(ctx, last, errors.New("again"))
	require.ErrorIs(t, err, queue.ErrLeaseLost)
	_, n = deadOf("last")
	require.Equal(t, 1, n, "a stale lease cannot dead-letter twice")

	// Through Rescue: a worker that died on its only attempt. While the
	// hook fails the event stays in the queue.
	one := event("s", "one")
	one.MaxAttempts = 1
	id1 := leaseEnqueue(t, q, one)[0]
	stale := leaseFetchOne(t, q, "one")
	leaseExpire(t, pool, id1)
	failHook.Store(true)
	_, err = q.Rescue(ctx, 100)
	require.ErrorIs(t, err, errHook)
	r = mustLeaseRow(t, pool, id1)
	require.Equal(t, "running", r.State)
	require.Equal(t, stale.Lease.Token, *r.Token)
	_, n = deadOf("one")
	require.Zero(t, n)

	failHook.Store(false)
	rescued, err := q.Rescue(ctx, 100)
	require.NoError(t, err)
	require.Equal(t, 1, rescued)
	_, ok = leaseRowOf(t, pool, id1)
	require.False(t, ok)
	d, n = deadOf("one")
	require.Equal(t, 1, n)
	require.Equal(t, 1, d.Errors)
	require.Contains(t, d.Messages[0], "lease expired")
	_, err = q.Retry(ctx, stale, errors.New("late"))
	require.ErrorIs(t, err, queue.ErrLeaseLost)
	_, n = deadOf("one")
	require.Equal(t, 1, n)
	noOrphans(t, pool)
}

// 9. Heartbeat and Rescue skip a row held by an open transaction instead
// of waiting for it.
func TestLeaseHeartbeatSkipsLockedRow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, pool := newQueue(t, queue.Config{LeaseDuration: 30 * time.Second})

	ids := leaseEnqueue(t, q, event("s", "e1"), event("s", "e2"), event("s", "e3"))
	evs := leaseFetch(t, q, queue.FetchParams{})
	require.Len(t, evs, 3)
	byID := map[int64]*queue.Event{}
	for _, ev := range evs {
		byID[ev.QueueID] = ev
	}
	locked := ids[1]

	leaseExec(t, pool, 3, `UPDATE wharf.queue SET lease_expires_at = now() + interval '2 seconds' WHERE id = ANY($1)`, ids)
	lockedBefore := mustLeaseRow(t, pool, locked)
	lockedLease := byID[locked].Lease.ExpiresAt

	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx) //nolint:errcheck // rolled back explicitly below
	var got int64
	require.NoError(t, tx.QueryRow(ctx, `SELECT id FROM wharf.queue WHERE id = $1 FOR UPDATE`, locked).Scan(&got))

	hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	n, err := q.Heartbeat(hctx, evs...)
	require.NoError(t, err, "Heartbeat must not wait for the locked row")
	require.Equal(t, 2, n)

	for _, id := range ids {
		r := mustLeaseRow(t, pool, id)
		require.Equal(t, "running", r.State)
		if id == locked {
			require.True(t, r.ExpiresAt.Equal(*lockedBefore.ExpiresAt), "locked row untouched")
			require.LessOrEqual(t, *r.ExpiresIn, 2.0)
			require.True(t, byID[id].Lease.ExpiresAt.Equal(lockedLease), "skipped event's Lease.ExpiresAt untouched")
			continue
		}
		require.InDelta(t, 30, *r.ExpiresIn, 3, "extended to now + LeaseDuration")
		require.True(t, byID[id].Lease.ExpiresAt.Equal(*r.ExpiresAt), "Lease.ExpiresAt updated")
	}
	require.NoError(t, tx.Rollback(ctx))

	// Rescue skips an expired row while it is locked, and takes it once
	// the lock is gone.
	leaseExpire(t, pool, locked)
	leaseExpire(t, pool, ids[2])
	tx, err = pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx) //nolint:errcheck // rolled back explicitly below
	require.NoError(t, tx.QueryRow(ctx, `SELECT id FROM wharf.queue WHERE id = $1 FOR UPDATE`, locked).Scan(&got))

	rctx, cancel2 := context.WithTimeout(ctx, 5*time.Second)
	defer cancel2()
	rescued, err := q.Rescue(rctx, 100)
	require.NoError(t, err, "Rescue must not wait for the locked row")
	require.Equal(t, 1, rescued, "only the unlocked expired row")
	require.Equal(t, "available", mustLeaseRow(t, pool, ids[2]).State)
	require.Equal(t, "running", mustLeaseRow(t, pool, locked).State)
	rescued, err = q.Rescue(rctx, 100)
	require.NoError(t, err)
	require.Zero(t, rescued, "the locked row is skipped while locked")
	require.Equal(t, "running", mustLeaseRow(t, pool, locked).State)

	require.NoError(t, tx.Rollback(ctx))
	rescued, err = q.Rescue(ctx, 100)
	require.NoError(t, err)
	require.Equal(t, 1, rescued)
	r := mustLeaseRow(t, pool, locked)
	require.Equal(t, "available", r.State)
	require.Len(t, r.Errors, 1)
	require.Equal(t, "running", mustLeaseRow(t, pool, ids[0]).State, "the heartbeated lease was not rescued")
}

// 10. Ordering keys: one running event per key, in id order, including an
// older event that commits after a younger one was fetched.
func TestLeaseOrderingKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, pool := newQueue(t, queue.Config{})

	// The late-commit race: "a" gets the smaller id but commits after "b"
	// was fetched.
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx) //nolint:errcheck // committed below
	resA, err := q.EnqueueTx(ctx, tx, leaseKeyed("s", "a", "k"))
	require.NoError(t, err)
	resB, err := q.Enqueue(ctx, leaseKeyed("s", "b", "k"))
	require.NoError(t, err)
	require.Less(t, resA.QueueID, resB.QueueID)

	evB := leaseFetchOne(t, q, "b")
	require.Equal(t, "k", evB.OrderingKey)
	require.NoError(t, tx.Commit(ctx))
	_, err = q.Enqueue(ctx, event("s", "u"))
	require.NoError(t, err)

	evs := leaseFetch(t, q, queue.FetchParams{})
	require.Equal(t, []string{"u"}, leaseIDs(evs), `"a" must wait while "b" of its key runs`)
	require.Equal(t, "available", mustLeaseRow(t, pool, resA.QueueID).State)
	require.Zero(t, mustLeaseRow(t, pool, resA.QueueID).Attempt)
	require.Empty(t, leaseFetch(t, q, queue.FetchParams{}))

	require.NoError(t, q.Complete(ctx, evB))
	evA := leaseFetchOne(t, q, "a")
	require.Equal(t, 1, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue_ordering_locks WHERE source = 's' AND ordering_key = 'k' AND queue_id = $1`, evA.QueueID))
	require.NoError(t, q.Complete(ctx, evA))
	require.NoError(t, q.Complete(ctx, evs[0]))
	noOrphans(t, pool)
	require.Zero(t, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue_ordering_locks`))

	// Strict per-key order under concurrent fetchers.
	xids := leaseEnqueue(t, q, leaseKeyed("s", "x1", "k2"), leaseKeyed("s", "x2", "k2"), leaseKeyed("s", "x3", "k2"))
	require.True(t, slices.IsSorted(xids))
	concurrentFetch := func() []*queue.Event {
		t.Helper()
		const fetchers = 8
		var (
			mu  sync.Mutex
			all []*queue.Event
			wg  sync.WaitGroup
		)
		errs := make([]error, fetchers)
		start := make(chan struct{})
		for w := range fetchers {
			wg.Go(func() {
				<-start
				got, err := q.Fetch(ctx, queue.FetchParams{Limit: 10})
				errs[w] = err
				mu.Lock()
				all = append(all, got...)
				mu.Unlock()
			})
		}
		close(start)
		wg.Wait()
		for _, err := range errs {
			require.NoError(t, err)
		}
		return all
	}
	for i, want := range []string{"x1", "x2", "x3"} {
		got := concurrentFetch()
		require.Equal(t, []string{want}, leaseIDs(got), "round %d", i+1)
		require.Empty(t, leaseFetch(t, q, queue.FetchParams{}), "nothing else of k2 while %s runs", want)
		if want == "x1" {
			// A failed head keeps its place: x2 waits through its backoff.
			_, err := q.Retry(ctx, got[0], errors.New("x1 failed"))
			require.NoError(t, err)
			require.Empty(t, leaseFetch(t, q, queue.FetchParams{}), "x2 must wait for the retried x1")
			leaseMakeDue(t, pool, xids[0])
			got = concurrentFetch()
			require.Equal(t, []string{"x1"}, leaseIDs(got))
			require.Equal(t, 2, got[0].Attempt)
		}
		require.NoError(t, q.Complete(ctx, got[0]))
	}
	noOrphans(t, pool)

	// An exhausted head does not block its key forever.
	y1 := leaseKeyed("s", "y1", "k3")
	y1.MaxAttempts = 1
	leaseEnqueue(t, q, y1, leaseKeyed("s", "y2", "k3"))
	evY1 := leaseFetchOne(t, q, "y1")
	exhausted, err := q.Retry(ctx, evY1, errors.New("y1 failed for good"))
	require.NoError(t, err)
	require.True(t, exhausted)
	evY2 := leaseFetchOne(t, q, "y2")
	require.Equal(t, "k3", evY2.OrderingKey)
	require.NoError(t, q.Complete(ctx, evY2))
	require.Empty(t, leaseFetch(t, q, queue.FetchParams{}))
	noOrphans(t, pool)
	require.Zero(t, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue_ordering_locks`))
}

// leaseLockWaiters counts this database's backends waiting on a lock.
func leaseLockWaiters(t testing.TB, pool *pgxpool.Pool) int {
	t.Helper()
	return dbtest.Count(t, pool, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`)
}

// 10b. The race the fetch's key lock exists for: a fetch that has claimed
// the head of a key but not yet committed, and a second fetch that sees an
// older event of that key commit late. The second must not run it.
func TestLeaseOrderingKeyConcurrentLateCommit(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	q, pool := newQueue(t, queue.Config{})

	// "a" gets the smaller id and stays uncommitted.
	txA, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer txA.Rollback(ctx) //nolint:errcheck // committed below
	resA, err := q.EnqueueTx(ctx, txA, leaseKeyed("s", "a", "k"))
	require.NoError(t, err)
	ids := leaseEnqueue(t, q, leaseKeyed("s", "b", "k"), leaseKeyed("s", "z", "kz"))
	require.Less(t, resA.QueueID, ids[0])

	// Hold fetch 1 after it has locked key "k" and before it commits: an
	// uncommitted lock on key "kz" (fetch 1 locks keys in sorted order)
	// makes it wait there.
	txZ, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer txZ.Rollback(ctx) //nolint:errcheck // rolled back below
	_, err = txZ.Exec(ctx, `INSERT INTO wharf.queue_ordering_locks (source, ordering_key, queue_id) VALUES ('s', 'kz', $1)`, ids[1])
	require.NoError(t, err)

	type result struct {
		evs []*queue.Event
		err error
	}
	fetch := func() chan result {
		ch := make(chan result, 1)
		go func() {
			evs, err := q.Fetch(ctx, queue.FetchParams{Limit: 10})
			ch <- result{evs, err}
		}()
		return ch
	}
	first := fetch()
	dbtest.Eventually(t, 10*time.Second, "fetch 1 to wait on key kz", func() bool { return leaseLockWaiters(t, pool) == 1 })

	// "a" commits: fetch 2 sees it as the head of "k", and fetch 1's lock
	// on "k" is not committed yet.
	require.NoError(t, txA.Commit(ctx))
	second := fetch()
	dbtest.Eventually(t, 10*time.Second, "fetch 2 to wait on fetch 1's key lock", func() bool { return leaseLockWaiters(t, pool) == 2 })

	require.NoError(t, txZ.Rollback(ctx))
	r1 := <-first
	require.NoError(t, r1.err)
	r2 := <-second
	require.NoError(t, r2.err)
	require.Equal(t, []string{"b", "z"}, leaseIDs(r1.evs))
	require.Empty(t, leaseIDs(r2.evs), `"a" must not run while "b" of its key runs`)
	require.Equal(t, 1, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue WHERE ordering_key = 'k' AND state = 'running'`))
	ra := mustLeaseRow(t, pool, resA.QueueID)
	require.Equal(t, "available", ra.State)
	require.Zero(t, ra.Attempt)

	for _, ev := range r1.evs {
		require.NoError(t, q.Complete(ctx, ev))
	}
	leaseFetchOne(t, q, "a")
	noOrphans(t, pool)
}

// 4b. Fencing holds when the stale holder's statement races the rescuer:
// it starts while Rescue's transaction has changed the row but not yet
// committed, and finishes after. The stale lease must still be refused.
func TestLeaseFencingRacesRescue(t *testing.T) {
	t.Parallel()
	ops := map[string]func(ctx context.Context, q *queue.Queue, ev *queue.Event) error{
		"Complete": func(ctx context.Context, q *queue.Queue, ev *queue.Event) error { return q.Complete(ctx, ev) },
		"Retry": func(ctx context.Context, q *queue.Queue, ev *queue.Event) error {
			_, err := q.Retry(ctx, ev, errors.New("stale failure"))
			return err
		},
		"Defer": func(ctx context.Context, q *queue.Queue, ev *queue.Event) error {
			return q.Defer(ctx, ev, time.Now().Add(time.Hour))
		},
		"Release": func(ctx context.Context, q *queue.Queue, ev *queue.Event) error { return q.Release(ctx, ev) },
	}
	for name, op := range ops {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			q, pool := newQueue(t, queue.Config{})

			// A keyed event, so its running row has a key-lock row whose
			// deletion is Rescue's last step.
			id := leaseEnqueue(t, q, leaseKeyed("s", "e", "k"))[0]
			stale := leaseFetchOne(t, q, "e")
			leaseExpire(t, pool, id)

			// Pause Rescue after it has updated the queue row: hold a lock
			// on the key-lock row it deletes last.
			hold, err := pool.Begin(ctx)
			require.NoError(t, err)
			defer hold.Rollback(ctx) //nolint:errcheck // rolled back below
			var got int64
			require.NoError(t, hold.QueryRow(ctx, `SELECT queue_id FROM wharf.queue_ordering_locks WHERE queue_id = $1 FOR UPDATE`, id).Scan(&got))

			type result struct {
				n   int
				err error
			}
			rescued := make(chan result, 1)
			go func() {
				n, err := q.Rescue(ctx, 100)
				rescued <- result{n, err}
			}()
			dbtest.Eventually(t, 10*time.Second, "Rescue to wait on the key-lock row", func() bool { return leaseLockWaiters(t, pool) == 1 })

			// The stale holder acts now: its snapshot still shows lease A.
			staleErr := make(chan error, 1)
			go func() { staleErr <- op(ctx, q, stale) }()
			dbtest.Eventually(t, 10*time.Second, name+" to wait on Rescue's row lock", func() bool { return leaseLockWaiters(t, pool) == 2 })

			require.NoError(t, hold.Rollback(ctx))
			r := <-rescued
			require.NoError(t, r.err)
			require.Equal(t, 1, r.n)
			err = <-staleErr

			row, ok := leaseRowOf(t, pool, id)
			require.ErrorIs(t, err, queue.ErrLeaseLost,
				"%s with lease A after Rescue ended it; row now (exists=%v): state=%s attempt=%d errors=%d run_in=%.0fs",
				name, ok, row.State, row.Attempt, len(row.Errors), row.RunIn)
			require.True(t, ok, "%s with a lost lease removed the rescued event", name)
			require.Equal(t, "available", row.State)
			require.Equal(t, 1, row.Attempt, "the rescued attempt stays counted")
			require.Len(t, row.Errors, 1, "only the rescuer's entry")
			require.Contains(t, row.Errors[0].Error, "lease expired")
			require.InDelta(t, 1, row.RunIn, 2, "due after the rescuer's backoff")
			noOrphans(t, pool)
		})
	}
}

// An event fetched ahead whose lease was lost (rescued, then leased to
// another worker) before its worker reached it is dropped, not run beside
// the new holder. Before, only events removed meanwhile were noticed.
func TestConsumerFetchedAheadEventThatLostItsLeaseDoesNotRun(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cfg := queue.Config{LeaseDuration: time.Second, Backoff: ctSmallBackoff}
	q, pool := newQueue(t, cfg)
	other, err := queue.New(pool, cfg)
	require.NoError(t, err)
	t.Cleanup(other.Close)
	var rec ctRecorder
	aIn := make(chan struct{}, 1)
	unblock := make(chan struct{})
	var once sync.Once
	c, err := queue.NewConsumer(q, queue.ConsumerConfig{
		Workers: 1, TxBatch: 1, PollInterval: 20 * time.Millisecond, RescueInterval: time.Hour,
		Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
			rec.add(ev, 0)
			if ev.ID == "a" {
				aIn <- struct{}{}
				<-unblock
			}
			return nil
		},
	})
	require.NoError(t, err)
	ctEnqueueAll(t, q, []string{"a", "b"}) // chunks [a] [b]; b waits, leased
	runConsumer(t, c)
	t.Cleanup(func() { once.Do(func() { close(unblock) }) })
	ctRecv(t, aIn, "a runs")
	require.Equal(t, "running", ctGetRow(t, pool, "b").State)
	_, err = pool.Exec(ctx, `UPDATE wharf.queue SET lease_expires_at = now() - interval '1 second' WHERE event_id = 'b'`)
	require.NoError(t, err)
	n, err := other.Rescue(ctx, 10)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	_, err = pool.Exec(ctx, `UPDATE wharf.queue SET run_at = now() WHERE event_id = 'b'`)
	require.NoError(t, err)
	bNew, err := other.Fetch(ctx, queue.FetchParams{Limit: 1, Worker: "other"})
	require.NoError(t, err)
	require.Len(t, bNew, 1)
	// Only a chunk that waited half a lease can have lost one; the worker
	// checks the leases of those.
	time.Sleep(cfg.LeaseDuration / 2)
	once.Do(func() { close(unblock) })
	dbtest.Eventually(t, 10*time.Second, "a done", func() bool {
		return dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue WHERE event_id = 'a'`) == 0
	})
	// The one worker takes its chunks in order: once an event enqueued now
	// has run, the chunk holding the stale b has been dealt with.
	ctEnqueueAll(t, q, []string{"c"})
	dbtest.Eventually(t, 10*time.Second, "c run", func() bool { return len(rec.byID()["c"]) == 1 })
	require.Len(t, rec.byID()["b"], 0, "b ran under a lease lost before it started, while %q holds it", "other")
	require.Equal(t, bNew[0].Lease.Token, *ctGetRow(t, pool, "b").LeaseToken, "b is still the other worker's")
}

// A rescue whose process stalls inside its transaction holds the expired
// events it locked only until Postgres ends its idle session; another
// process's rescuer then takes them. (A stalled OnExhausted stands in for
// the stall.)
func TestRescueStalledMidTransactionLetsGoOfItsEvents(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	stalled, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	q1, pool := newQueue(t, queue.Config{OnExhausted: func(ctx context.Context, tx pgx.Tx, evs []*queue.Event) error {
		once.Do(func() { close(stalled) })
		<-release
		return nil
	}})
	queue.SetRescueIdleTimeout(q1, 3*time.Second)
	var releaseOnce sync.Once
	unstall := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(unstall) // before the pool closes, which waits for the stalled rescue's connection
	var exhausted atomic.Int32
	q2, err := queue.New(pool, queue.Config{OnExhausted: func(ctx context.Context, tx pgx.Tx, evs []*queue.Event) error {
		exhausted.Add(int32(len(evs)))
		return nil
	}})
	require.NoError(t, err)
	defer q2.Close()

	ev := event("s", "stuck")
	ev.MaxAttempts = 1
	id := leaseEnqueue(t, q1, ev)[0]
	leaseFetchOne(t, q1, "stuck")
	leaseExpire(t, pool, id)

	done := make(chan error, 1)
	go func() {
		_, err := q1.Rescue(ctx, 10)
		done <- err
	}()
	select {
	case <-stalled:
	case <-time.After(20 * time.Second):
		t.Fatal("the first rescue did not reach OnExhausted")
	}
	n, err := q2.Rescue(ctx, 10)
	require.NoError(t, err)
	require.Zero(t, n, "the stalled rescue holds the event")
	dbtest.Eventually(t, 15*time.Second, "another rescuer to take the event", func() bool {
		n, err := q2.Rescue(ctx, 10)
		require.NoError(t, err)
		return n == 1
	})
	unstall()
	require.Error(t, <-done, "the stalled rescue's session was ended")
	require.Equal(t, int32(1), exhausted.Load())
	_, ok := leaseRowOf(t, pool, id)
	require.False(t, ok, "the event left the queue once, through the second rescuer's OnExhausted")
}

// A rescue's transaction runs with an idle timeout of 30 s, or the
// session's own when that is shorter; the session's setting is left as it
// was.
func TestRescueIdleTimeoutKeepsAShorterSessionSetting(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, tc := range []struct{ session, inRescue string }{{"", "30s"}, {"1500ms", "1500ms"}, {"1min", "30s"}} {
		cfg, err := pgxpool.ParseConfig(dbtest.Database(t, dbtest.Options{}))
		require.NoError(t, err)
		cfg.MaxConns = 1
		if tc.session != "" {
			cfg.ConnConfig.RuntimeParams["idle_in_transaction_session_timeout"] = tc.session
		}
		pool, err := pgxpool.NewWithConfig(ctx, cfg)
		require.NoError(t, err)
		var seen string
		q, err := queue.New(pool, queue.Config{OnExhausted: func(ctx context.Context, tx pgx.Tx, evs []*queue.Event) error {
			return tx.QueryRow(ctx, `SELECT current_setting('idle_in_transaction_session_timeout')`).Scan(&seen)
		}})
		require.NoError(t, err)
		ev := event("s", "e")
		ev.MaxAttempts = 1
		id := leaseEnqueue(t, q, ev)[0]
		leaseFetchOne(t, q, "e")
		leaseExpire(t, pool, id)
		n, err := q.Rescue(ctx, 10)
		require.NoError(t, err)
		require.Equal(t, 1, n)
		require.Equal(t, tc.inRescue, seen, "session %q", tc.session)
		var after string
		require.NoError(t, pool.QueryRow(ctx, `SELECT current_setting('idle_in_transaction_session_timeout')`).Scan(&after))
		want := tc.session
		if want == "" {
			want = "0"
		}
		require.Equal(t, want, after, "session %q after the rescue", tc.session)
		q.Close()
		pool.Close()
	}
}
