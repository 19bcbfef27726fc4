package dlq_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/dlq"
	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/queue"
)

// fixture is a queue wired to a DLQ on a fresh database.
type fixture struct {
	pool *pgxpool.Pool
	q    *queue.Queue
	dead *dlq.DLQ
}

func newFixture(t *testing.T) fixture {
	t.Helper()
	pool := dbtest.Pool(t)
	dead, err := dlq.New(pool, dlq.Config{})
	require.NoError(t, err)
	q, err := queue.New(pool, queue.Config{
		OnExhausted: dead.Move,
		Backoff:     queue.Backoff{Initial: time.Millisecond, Max: 2 * time.Millisecond},
	})
	require.NoError(t, err)
	t.Cleanup(q.Close)
	_, err = pool.Exec(context.Background(), `CREATE TABLE effects (event_id text PRIMARY KEY, n int NOT NULL)`)
	require.NoError(t, err)
	return fixture{pool: pool, q: q, dead: dead}
}

func (f fixture) count(t *testing.T, sql string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, f.pool.QueryRow(context.Background(), sql, args...).Scan(&n))
	return n
}

// run starts a consumer with handler and stops it at cleanup.
func (f fixture) run(t *testing.T, handler queue.Handler) {
	t.Helper()
	c, err := queue.NewConsumer(f.q, queue.ConsumerConfig{Handler: handler, Workers: 2, PollInterval: 20 * time.Millisecond, RescueInterval: 20 * time.Millisecond})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func effect(ctx context.Context, tx pgx.Tx, id string) error {
	_, err := tx.Exec(ctx, `INSERT INTO effects VALUES ($1, 1) ON CONFLICT (event_id) DO UPDATE SET n = effects.n + 1`, id)
	return err
}

func TestPoisonEventDeadLettersThenReplaysOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)

	var fixed atomic.Bool
	var poisonRuns atomic.Int32
	f.run(t, func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
		if err := effect(ctx, tx, ev.ID); err != nil {
			return err
		}
		if ev.ID == "poison" && !fixed.Load() {
			poisonRuns.Add(1)
			return fmt.Errorf("cannot parse attempt %d", ev.Attempt)
		}
		return nil
	})

	body := []byte{0xff, 0x00, '{', '}'}
	_, err := f.q.Enqueue(ctx, queue.NewEvent{Source: "stripe", ID: "poison", Type: "invoice.paid", Body: body,
		Headers: http.Header{"Stripe-Signature": {"t=1,v1=abc"}}, MaxAttempts: 3})
	require.NoError(t, err)
	_, err = f.q.Enqueue(ctx, queue.NewEvent{Source: "stripe", ID: "fine", Type: "invoice.paid", Body: []byte(`{}`)})
	require.NoError(t, err)

	eventually(t, "the poison event in the DLQ", func() bool {
		n, err := f.dead.Count(ctx, dlq.Filter{})
		require.NoError(t, err)
		return n == 1
	})
	require.EqualValues(t, 3, poisonRuns.Load(), "it ran exactly MaxAttempts times")
	require.Zero(t, f.count(t, `SELECT count(*) FROM wharf.queue WHERE event_id = 'poison'`), "never in both places")
	require.Zero(t, f.count(t, `SELECT count(*) FROM wharf.queue_payloads WHERE event_id = 'poison'`))
	require.Zero(t, f.count(t, `SELECT count(*) FROM effects WHERE event_id = 'poison'`), "its writes were rolled back every time")

	entries, next, err := f.dead.List(ctx, dlq.Filter{}, dlq.Page{})
	require.NoError(t, err)
	require.Nil(t, next)
	require.Len(t, entries, 1)
	e := entries[0]
	require.Equal(t, "poison", e.EventID)
	require.Equal(t, "stripe", e.Source)
	require.Equal(t, "invoice.paid", e.Type)
	require.Equal(t, body, e.Body, "the body is kept verbatim")
	require.Equal(t, []string{"t=1,v1=abc"}, e.Headers.Values("Stripe-Signature"))
	require.Equal(t, 3, e.Attempts)
	require.Equal(t, 3, e.MaxAttempts)
	require.Equal(t, "stripe/invoice.paid", e.Handler)
	require.Equal(t, dlq.StatusDead, e.Status)
	require.Len(t, e.Errors, 3, "every attempt's error, not only the last")
	for i, ae := range e.Errors {
		require.Equal(t, i+1, ae.Attempt)
		require.Contains(t, ae.Error, fmt.Sprintf("cannot parse attempt %d", i+1))
		require.NotEmpty(t, ae.Worker)
		require.False(t, ae.At.IsZero())
	}

	got, err := f.dead.Get(ctx, e.ID)
	require.NoError(t, err)
	require.Equal(t, e.EventID, got.EventID)

	fixed.Store(true)
	res, err := f.dead.Replay(ctx, f.q, e.ID)
	require.NoError(t, err)
	require.Equal(t, dlq.ReplayResult{Replayed: 1}, res)
	eventually(t, "the replayed event processed", func() bool {
		return f.count(t, `SELECT count(*) FROM effects WHERE event_id = 'poison'`) == 1
	})
	eventually(t, "the queue empty", func() bool { return f.count(t, `SELECT count(*) FROM wharf.queue`) == 0 })
	require.Equal(t, 1, f.count(t, `SELECT n FROM effects WHERE event_id = 'poison'`), "one effect")
	got, err = f.dead.Get(ctx, e.ID)
	require.NoError(t, err)
	require.Equal(t, dlq.StatusReplayed, got.Status)
	require.Equal(t, 1, got.ReplayCount)
	require.NotNil(t, got.LastReplayedAt)
	n, err := f.dead.Count(ctx, dlq.Filter{})
	require.NoError(t, err)
	require.Zero(t, n, "a replayed entry no longer counts as dead")

	res, err = f.dead.Replay(ctx, f.q, e.ID)
	require.NoError(t, err)
	require.Equal(t, dlq.ReplayResult{Skipped: 1}, res, "replaying a replayed entry does nothing")
}

func TestWorkerDyingEveryAttemptDeadLetters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	_, err := f.q.Enqueue(ctx, queue.NewEvent{Source: "gh", ID: "crash", Type: "push", Body: []byte(`{}`), MaxAttempts: 2})
	require.NoError(t, err)

	for attempt := 1; attempt <= 2; attempt++ {
		_, err := f.pool.Exec(ctx, `UPDATE wharf.queue SET run_at = now() - interval '1 second'`)
		require.NoError(t, err)
		evs, err := f.q.Fetch(ctx, queue.FetchParams{Limit: 1, Worker: fmt.Sprintf("doomed-%d", attempt)})
		require.NoError(t, err)
		require.Len(t, evs, 1)
		require.Equal(t, attempt, evs[0].Attempt)
		// The worker dies: its lease runs out without a heartbeat.
		_, err = f.pool.Exec(ctx, `UPDATE wharf.queue SET lease_expires_at = now() - interval '1 second'`)
		require.NoError(t, err)
		n, err := f.q.Rescue(ctx, 10)
		require.NoError(t, err)
		require.Equal(t, 1, n)
	}
	require.Zero(t, f.count(t, `SELECT count(*) FROM wharf.queue`))
	entries, _, err := f.dead.List(ctx, dlq.Filter{}, dlq.Page{})
	require.NoError(t, err)
	require.Len(t, entries, 1)
	require.Equal(t, 2, entries[0].Attempts)
	require.Len(t, entries[0].Errors, 2)
	for i, ae := range entries[0].Errors {
		require.Contains(t, ae.Error, "lease expired")
		require.Equal(t, fmt.Sprintf("doomed-%d", i+1), ae.Worker)
	}
}

// deadEvent moves one event straight into the DLQ, as the queue's hook
// would, and returns its entry id.
func (f fixture) deadEvent(t *testing.T, source, id, typ, lastError string, deadAgo time.Duration) int64 {
	t.Helper()
	ctx := context.Background()
	ev := &queue.Event{Source: source, ID: id, Type: typ, Body: []byte(`{"id":"` + id + `"}`), ReceivedAt: time.Now(),
		Attempt: 2, MaxAttempts: 2, Errors: []queue.AttemptError{
			{Attempt: 1, Error: "first try failed", At: time.Now()},
			{Attempt: 2, Error: lastError, At: time.Now()},
		}}
	require.NoError(t, pgx.BeginFunc(ctx, f.pool, func(tx pgx.Tx) error { return f.dead.Move(ctx, tx, []*queue.Event{ev}) }))
	var entryID int64
	require.NoError(t, f.pool.QueryRow(ctx, `UPDATE wharf.dead_letters SET dead_at = now() - $3 * interval '1 second'
		WHERE source = $1 AND event_id = $2 AND status = 'dead' RETURNING id`, source, id, deadAgo.Seconds()).Scan(&entryID))
	return entryID
}

func TestConcurrentReplaysMakeOneQueueRow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	id := f.deadEvent(t, "stripe", "evt_1", "charge.failed", "boom", time.Minute)

	const replayers = 20
	var replayed atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, replayers)
	for range replayers {
		wg.Go(func() {
			<-start
			res, err := f.dead.Replay(ctx, f.q, id)
			if err != nil {
				errs <- err
				return
			}
			replayed.Add(int32(res.Replayed))
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.EqualValues(t, 1, replayed.Load(), "exactly one replay took effect")
	require.Equal(t, 1, f.count(t, `SELECT count(*) FROM wharf.queue WHERE source = 'stripe' AND event_id = 'evt_1'`))
	require.Equal(t, 1, f.count(t, `SELECT replay_count FROM wharf.dead_letters WHERE id = $1`, id))
	require.Equal(t, 0, f.count(t, `SELECT attempt FROM wharf.queue WHERE event_id = 'evt_1'`), "attempts reset")
	require.Equal(t, 2, f.count(t, `SELECT max_attempts FROM wharf.queue WHERE event_id = 'evt_1'`), "its own max attempts kept")
}

func TestReplayOfAnEventAlreadyRequeued(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	id := f.deadEvent(t, "stripe", "evt_2", "charge.failed", "boom", time.Minute)
	// A redelivery queued the same event meanwhile.
	_, err := f.q.Enqueue(ctx, queue.NewEvent{Source: "stripe", ID: "evt_2", Type: "charge.failed", Body: []byte(`{}`)})
	require.NoError(t, err)

	res, err := f.dead.Replay(ctx, f.q, id)
	require.NoError(t, err)
	require.Equal(t, 1, res.Replayed, "the event is back in the queue either way")
	require.Equal(t, 1, f.count(t, `SELECT count(*) FROM wharf.queue WHERE event_id = 'evt_2'`), "still one queue row")
}

func TestSecondDeathMergesIntoTheDeadEntry(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	first := f.deadEvent(t, "gh", "d1", "push", "first death", time.Minute)
	// A redelivered copy was queued and died too.
	_, err := f.q.Enqueue(ctx, queue.NewEvent{Source: "gh", ID: "d1", Type: "push", Body: []byte(`{"v":2}`), MaxAttempts: 1})
	require.NoError(t, err)
	evs, err := f.q.Fetch(ctx, queue.FetchParams{Limit: 1})
	require.NoError(t, err)
	require.Len(t, evs, 1)
	exhausted, err := f.q.Retry(ctx, evs[0], errors.New("second death"))
	require.NoError(t, err)
	require.True(t, exhausted)

	require.Equal(t, 1, f.count(t, `SELECT count(*) FROM wharf.dead_letters WHERE event_id = 'd1'`), "dead at most once")
	e, err := f.dead.Get(ctx, first)
	require.NoError(t, err)
	require.Equal(t, 3, e.Attempts, "attempts of both deaths")
	require.Len(t, e.Errors, 3)
	require.Equal(t, "second death", e.Errors[2].Error)
	require.Equal(t, `{"v":2}`, string(e.Body), "the latest copy as received")
}

func TestListFiltersAndPagination(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)

	type row struct {
		id                     int64
		source, typ, lastError string
		ago                    time.Duration
	}
	var rows []row
	for i := range 24 {
		r := row{
			source:    []string{"stripe", "github"}[i%2],
			typ:       []string{"a.created", "b.deleted", "c.updated"}[i%3],
			lastError: []string{"timeout after 5s", "HTTP 500: 100% broken_thing", "invalid payload"}[i%3],
			ago:       time.Duration(i/2) * time.Minute, // pairs share a dead_at: ties break by id
		}
		r.id = f.deadEvent(t, r.source, fmt.Sprintf("e%02d", i), r.typ, r.lastError, r.ago)
		rows = append(rows, r)
	}
	// Force exact ties within pairs.
	_, err := f.pool.Exec(ctx, `UPDATE wharf.dead_letters d SET dead_at = date_trunc('second', d.dead_at)`)
	require.NoError(t, err)
	_, err = f.pool.Exec(ctx, `UPDATE wharf.dead_letters d SET dead_at = p.dead_at
		FROM wharf.dead_letters p WHERE p.event_id = 'e' || lpad(((substr(d.event_id, 2)::int / 2) * 2)::text, 2, '0')`)
	require.NoError(t, err)
	discarded := rows[23].id
	n, err := f.dead.Discard(ctx, discarded)
	require.NoError(t, err)
	require.Equal(t, 1, n)

	now := time.Now()
	cases := []struct {
		name   string
		filter dlq.Filter
		keep   func(r row) bool
	}{
		{"all dead", dlq.Filter{}, func(r row) bool { return true }},
		{"source", dlq.Filter{Source: "github"}, func(r row) bool { return r.source == "github" }},
		{"type", dlq.Filter{Type: "b.deleted"}, func(r row) bool { return r.typ == "b.deleted" }},
		{"handler", dlq.Filter{Handler: "stripe/c.updated"}, func(r row) bool { return r.source == "stripe" && r.typ == "c.updated" }},
		{"error text, case-insensitive", dlq.Filter{ErrorContains: "TIMEOUT"}, func(r row) bool { return r.lastError == "timeout after 5s" }},
		{"error text with LIKE characters", dlq.Filter{ErrorContains: "100% broken_"}, func(r row) bool { return r.lastError == "HTTP 500: 100% broken_thing" }},
		{"error text in an earlier attempt", dlq.Filter{ErrorContains: "first try"}, func(r row) bool { return true }},
		{"a % alone matches only a literal %", dlq.Filter{ErrorContains: "%"}, func(r row) bool { return r.lastError == "HTTP 500: 100% broken_thing" }},
		{"time range", dlq.Filter{Since: now.Add(-5*time.Minute - 30*time.Second), Until: now.Add(-90 * time.Second)},
			func(r row) bool { return r.ago >= 2*time.Minute && r.ago <= 5*time.Minute }},
		{"combined", dlq.Filter{Source: "stripe", Type: "a.created", ErrorContains: "timeout"},
			func(r row) bool { return r.source == "stripe" && r.typ == "a.created" }},
		{"no match", dlq.Filter{Source: "nobody"}, func(r row) bool { return false }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var want []int64
			for _, r := range rows {
				if r.id != discarded && tc.keep(r) {
					want = append(want, r.id)
				}
			}
			var got []int64
			var lastAt time.Time
			var lastID int64
			var after *dlq.Cursor
			for pages := 0; ; pages++ {
				require.Less(t, pages, 30, "pagination must end")
				entries, next, err := f.dead.List(ctx, tc.filter, dlq.Page{Limit: 4, After: after})
				require.NoError(t, err)
				for _, e := range entries {
					if len(got) > 0 {
						ordered := e.DeadAt.Before(lastAt) || (e.DeadAt.Equal(lastAt) && e.ID < lastID)
						require.True(t, ordered, "newest first, ties by id: %d after %d", e.ID, lastID)
					}
					lastAt, lastID = e.DeadAt, e.ID
					got = append(got, e.ID)
				}
				if next == nil {
					break
				}
				require.Len(t, entries, 4, "only the last page is short")
				after = next
			}
			slices.Sort(want)
			sortedGot := slices.Clone(got)
			slices.Sort(sortedGot)
			require.Equal(t, want, sortedGot, "exactly the matching entries, each once")
			count, err := f.dead.Count(ctx, tc.filter)
			require.NoError(t, err)
			require.EqualValues(t, len(want), count)
		})
	}

	entries, _, err := f.dead.List(ctx, dlq.Filter{Status: dlq.StatusDiscarded}, dlq.Page{})
	require.NoError(t, err)
	require.Len(t, entries, 1)
	require.Equal(t, discarded, entries[0].ID)
	require.NotNil(t, entries[0].DiscardedAt)
}

func TestListOmitBody(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	f.deadEvent(t, "stripe", "evt_1", "invoice.paid", "boom", time.Minute)
	f.deadEvent(t, "stripe", "evt_2", "invoice.paid", "boom", 2*time.Minute)

	whole, _, err := f.dead.List(ctx, dlq.Filter{}, dlq.Page{})
	require.NoError(t, err)
	bare, _, err := f.dead.List(ctx, dlq.Filter{}, dlq.Page{OmitBody: true})
	require.NoError(t, err)
	require.Len(t, bare, 2)
	for i := range whole {
		require.NotEmpty(t, whole[i].Body)
		require.Nil(t, bare[i].Body, "no body read")
		whole[i].Body = nil
	}
	require.Equal(t, whole, bare, "everything else as listed with bodies")
}

func TestReplayMatching(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	for i := range 7 {
		f.deadEvent(t, "stripe", fmt.Sprintf("s%d", i), "x", "timeout", time.Minute)
	}
	for i := range 3 {
		f.deadEvent(t, "github", fmt.Sprintf("g%d", i), "x", "timeout", time.Minute)
	}
	var progress [][2]int64
	res, err := f.dead.ReplayMatching(ctx, f.q, dlq.Filter{Source: "stripe"}, dlq.ReplayOptions{
		BatchSize: 3, MaxPerSecond: 10_000,
		Progress: func(done, total int64) { progress = append(progress, [2]int64{done, total}) },
	})
	require.NoError(t, err)
	require.Equal(t, dlq.ReplayResult{Replayed: 7}, res)
	require.Equal(t, [][2]int64{{3, 7}, {6, 7}, {7, 7}}, progress)
	require.Equal(t, 7, f.count(t, `SELECT count(*) FROM wharf.queue WHERE source = 'stripe'`))
	require.Zero(t, f.count(t, `SELECT count(*) FROM wharf.queue WHERE source = 'github'`))
	n, err := f.dead.Count(ctx, dlq.Filter{})
	require.NoError(t, err)
	require.EqualValues(t, 3, n, "the github entries are still dead")
}

// Filter.UpTo leaves out what died after the bound, ties included: a bulk
// replay replays what was counted for its confirmation.
func TestReplayMatchingUpTo(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	for i := range 5 {
		f.deadEvent(t, "stripe", fmt.Sprintf("old%d", i), "x", "timeout", time.Duration(5-i)*time.Minute)
	}
	newest, _, err := f.dead.List(ctx, dlq.Filter{Source: "stripe"}, dlq.Page{Limit: 1, OmitBody: true})
	require.NoError(t, err)
	require.Len(t, newest, 1)
	bounded := dlq.Filter{Source: "stripe", UpTo: &dlq.Cursor{DeadAt: newest[0].DeadAt, ID: newest[0].ID}}
	n, err := f.dead.Count(ctx, bounded)
	require.NoError(t, err)
	require.EqualValues(t, 5, n)

	// Entries that die after the bound was fixed: one later, one at the
	// same time with a higher id.
	f.deadEvent(t, "stripe", "later", "x", "timeout", 0)
	tie := f.deadEvent(t, "stripe", "tie", "x", "timeout", 0)
	_, err = f.pool.Exec(ctx, `UPDATE wharf.dead_letters SET dead_at = $1 WHERE id = $2`, newest[0].DeadAt, tie)
	require.NoError(t, err)

	listed, _, err := f.dead.List(ctx, bounded, dlq.Page{OmitBody: true})
	require.NoError(t, err)
	require.Len(t, listed, 5)
	var progress [][2]int64
	res, err := f.dead.ReplayMatching(ctx, f.q, bounded, dlq.ReplayOptions{
		BatchSize: 2, Progress: func(done, total int64) { progress = append(progress, [2]int64{done, total}) }})
	require.NoError(t, err)
	require.Equal(t, dlq.ReplayResult{Replayed: 5}, res)
	require.Equal(t, [][2]int64{{2, 5}, {4, 5}, {5, 5}}, progress)
	require.Zero(t, f.count(t, `SELECT count(*) FROM wharf.queue WHERE event_id IN ('later', 'tie')`))
	n, err = f.dead.Count(ctx, dlq.Filter{Source: "stripe"})
	require.NoError(t, err)
	require.EqualValues(t, 2, n, "the entries that died after the bound are still dead")
}

// Pin bounds a filter by its newest entry as the database dated it, not
// by the caller's clock: an entry dated ahead of the caller (clock skew)
// is in the set, and one that dies after the newest is not.
func TestPin(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	for i := range 3 {
		f.deadEvent(t, "stripe", fmt.Sprintf("old%d", i), "x", "timeout", time.Duration(3-i)*time.Minute)
	}
	ahead := f.deadEvent(t, "stripe", "ahead", "x", "timeout", -time.Hour)
	f.deadEvent(t, "github", "other", "x", "timeout", 0)

	pinned, n, err := f.dead.Pin(ctx, dlq.Filter{Source: "stripe"})
	require.NoError(t, err)
	require.EqualValues(t, 4, n)
	require.NotNil(t, pinned.UpTo)
	require.Equal(t, ahead, pinned.UpTo.ID, "the newest entry, though dated an hour ahead of this process")
	require.Equal(t, "stripe", pinned.Source)

	later := f.deadEvent(t, "stripe", "later", "x", "timeout", 0)
	_, err = f.pool.Exec(ctx, `UPDATE wharf.dead_letters SET dead_at = $1::timestamptz + interval '1 microsecond' WHERE id = $2`, pinned.UpTo.DeadAt, later)
	require.NoError(t, err)
	n, err = f.dead.Count(ctx, pinned)
	require.NoError(t, err)
	require.EqualValues(t, 4, n, "an entry that died after the newest counted stays out")

	none, n, err := f.dead.Pin(ctx, dlq.Filter{Source: "slack"})
	require.NoError(t, err)
	require.Zero(t, n)
	require.Equal(t, dlq.Filter{Source: "slack"}, none, "nothing to pin")
}

func TestDiscardAndPurge(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	keep := f.deadEvent(t, "s", "keep", "x", "boom", 48*time.Hour)
	gone := f.deadEvent(t, "s", "gone", "x", "boom", 48*time.Hour)
	recent := f.deadEvent(t, "s", "recent", "x", "boom", time.Minute)
	replayed := f.deadEvent(t, "s", "replayed", "x", "boom", 48*time.Hour)

	n, err := f.dead.Discard(ctx, gone, recent, 999999)
	require.NoError(t, err)
	require.Equal(t, 2, n, "an unknown id discards nothing")
	res, err := f.dead.Replay(ctx, f.q, replayed, gone)
	require.NoError(t, err)
	require.Equal(t, dlq.ReplayResult{Replayed: 1, Skipped: 1}, res, "a discarded entry does not replay")

	purged, err := f.dead.Purge(ctx, time.Hour)
	require.NoError(t, err)
	require.Zero(t, purged, "nothing was discarded or replayed over an hour ago")

	_, err = f.pool.Exec(ctx, `UPDATE wharf.dead_letters SET discarded_at = now() - interval '2 hours' WHERE id = $1`, gone)
	require.NoError(t, err)
	_, err = f.pool.Exec(ctx, `UPDATE wharf.dead_letters SET last_replayed_at = now() - interval '2 hours' WHERE id = $1`, replayed)
	require.NoError(t, err)
	purged, err = f.dead.Purge(ctx, time.Hour)
	require.NoError(t, err)
	require.EqualValues(t, 2, purged)

	var left []int64
	rows, err := f.pool.Query(ctx, `SELECT id FROM wharf.dead_letters ORDER BY id`)
	require.NoError(t, err)
	left, err = pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	require.Equal(t, []int64{keep, recent}, left, "dead entries are never purged, however old")
}

// CountPurgeable's cutoff, given to PurgeBefore, deletes what was counted
// and nothing discarded since.
func TestCountPurgeableThenPurgeBefore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	old := f.deadEvent(t, "s", "old", "x", "boom", 48*time.Hour)
	later := f.deadEvent(t, "s", "later", "x", "boom", 48*time.Hour)
	f.deadEvent(t, "s", "dead", "x", "boom", 48*time.Hour)
	_, err := f.dead.Discard(ctx, old)
	require.NoError(t, err)
	time.Sleep(10 * time.Millisecond) // so that it is older than a millisecond at the count

	n, before, err := f.dead.CountPurgeable(ctx, time.Millisecond)
	require.NoError(t, err)
	require.EqualValues(t, 1, n)
	require.WithinDuration(t, time.Now(), before, time.Minute, "the database's now() minus a millisecond")
	time.Sleep(10 * time.Millisecond) // so that what is discarded now is older than a millisecond at the purge
	_, err = f.dead.Discard(ctx, later)
	require.NoError(t, err)
	time.Sleep(10 * time.Millisecond)

	purged, err := f.dead.PurgeBefore(ctx, before)
	require.NoError(t, err)
	require.EqualValues(t, 1, purged, "only the entry counted")
	require.Equal(t, 2, f.count(t, `SELECT count(*) FROM wharf.dead_letters`))
	require.Equal(t, 1, f.count(t, `SELECT count(*) FROM wharf.dead_letters WHERE id = $1`, later))
	n, _, err = f.dead.CountPurgeable(ctx, time.Millisecond)
	require.NoError(t, err)
	require.EqualValues(t, 1, n, "the entry discarded since, never a dead one")
	_, _, err = f.dead.CountPurgeable(ctx, -time.Second)
	require.ErrorIs(t, err, dlq.ErrInvalidFilter)
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)

	_, err := dlq.New(f.pool, dlq.Config{Schema: "Bad-Name"})
	require.ErrorIs(t, err, dlq.ErrInvalidConfig)
	_, err = dlq.New(nil, dlq.Config{})
	require.ErrorIs(t, err, dlq.ErrInvalidConfig)

	other, err := queue.New(f.pool, queue.Config{Schema: "other"})
	require.NoError(t, err)
	_, err = f.dead.Replay(ctx, other, 1)
	require.ErrorIs(t, err, dlq.ErrInvalidConfig, "a queue in another schema")
	_, err = f.dead.Replay(ctx, nil, 1)
	require.ErrorIs(t, err, dlq.ErrInvalidConfig)

	_, err = f.dead.Get(ctx, 424242)
	require.ErrorIs(t, err, dlq.ErrNotFound)

	for _, bad := range []struct {
		f dlq.Filter
		p dlq.Page
	}{
		{dlq.Filter{Status: "zombie"}, dlq.Page{}},
		{dlq.Filter{}, dlq.Page{Limit: -1}},
		{dlq.Filter{}, dlq.Page{Limit: dlq.MaxListLimit + 1}},
		{dlq.Filter{Since: time.Now(), Until: time.Now().Add(-time.Hour)}, dlq.Page{}},
	} {
		_, _, err := f.dead.List(ctx, bad.f, bad.p)
		require.ErrorIs(t, err, dlq.ErrInvalidFilter, "%+v %+v", bad.f, bad.p)
	}
	now := time.Now()
	_, _, err = f.dead.List(ctx, dlq.Filter{Since: now, Until: now.Add(-time.Hour)}, dlq.Page{})
	require.EqualError(t, err, "dlq: invalid filter: Since "+now.Format(time.RFC3339Nano)+" is not before Until "+now.Add(-time.Hour).Format(time.RFC3339Nano),
		"the times in RFC 3339, not with the monotonic clock reading (m=+...)")
	_, err = f.dead.Purge(ctx, -time.Second)
	require.ErrorIs(t, err, dlq.ErrInvalidFilter)
	_, err = f.dead.ReplayMatching(ctx, f.q, dlq.Filter{}, dlq.ReplayOptions{MaxPerSecond: -1})
	require.ErrorIs(t, err, dlq.ErrInvalidFilter)
}

// An entry of an event queued without a handler records the derived name
// "source/type", which can be longer than the queue takes for a handler
// (a long source and type, each valid). Replay must still put it back,
// and must not fail the other entries replayed with it: before, the
// queue refused the name and the whole replay failed, so such an event
// could never leave the DLQ.
func TestReplayOfAnEntryWhoseDerivedHandlerNameIsTooLong(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	source := strings.Repeat("s", queue.MaxSourceLen)
	typ := strings.Repeat("t", queue.MaxHandlerLen)
	long := f.deadEvent(t, source, "evt_long", typ, "boom", time.Minute)
	other := f.deadEvent(t, "stripe", "evt_other", "charge.failed", "boom", time.Minute)
	e, err := f.dead.Get(ctx, long)
	require.NoError(t, err)
	require.Greater(t, len(e.Handler), queue.MaxHandlerLen, "the derived name is longer than a queue row's handler")

	res, err := f.dead.Replay(ctx, f.q, long, other)
	require.NoError(t, err)
	require.Equal(t, dlq.ReplayResult{Replayed: 2}, res)
	require.Equal(t, 1, f.count(t, `SELECT count(*) FROM wharf.queue WHERE event_id = 'evt_long'`))
	require.Equal(t, 1, f.count(t, `SELECT count(*) FROM wharf.queue WHERE event_id = 'evt_other'`))
}

// Events of one ordering key that all died (a handler broken for a while)
// go back by a bulk replay in the order they were first stored, so they
// run in that order again: the queue runs a key's events in the order
// they are stored, and a replay stores them anew. The bulk replay pages
// newest first; before, each page went back as it was read, so a key's
// newer events, on an earlier page, were queued (and run) before its
// older ones.
func TestReplayMatchingKeepsAKeysOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	ids := []string{"e1", "e2", "e3"}
	for _, id := range ids {
		_, err := f.q.Enqueue(ctx, queue.NewEvent{Source: "shop", ID: id, Type: "order.updated", OrderingKey: "order-42",
			Body: []byte(`{}`), MaxAttempts: 1})
		require.NoError(t, err)
	}
	for _, id := range ids { // the head of the key fails for good, then the next
		evs, err := f.q.Fetch(ctx, queue.FetchParams{Limit: 10})
		require.NoError(t, err)
		require.Len(t, evs, 1)
		require.Equal(t, id, evs[0].ID)
		require.NoError(t, pgx.BeginFunc(ctx, f.pool, func(tx pgx.Tx) error {
			exhausted, err := f.q.RetryTx(ctx, tx, evs[0], errors.New("handler bug"))
			require.True(t, exhausted)
			return err
		}))
	}
	require.Equal(t, 3, f.count(t, `SELECT count(*) FROM wharf.dead_letters WHERE status = 'dead'`))

	res, err := f.dead.ReplayMatching(ctx, f.q, dlq.Filter{Source: "shop"}, dlq.ReplayOptions{BatchSize: 1})
	require.NoError(t, err)
	require.Equal(t, dlq.ReplayResult{Replayed: 3}, res)
	var ran []string
	for range ids {
		evs, err := f.q.Fetch(ctx, queue.FetchParams{Limit: 10})
		require.NoError(t, err)
		require.Len(t, evs, 1, "one event of the key at a time")
		ran = append(ran, evs[0].ID)
		require.NoError(t, f.q.Complete(ctx, evs[0]))
	}
	require.Equal(t, ids, ran, "the key's events run in the order they were first stored")
}
