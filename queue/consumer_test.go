package queue_test

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/internal/testio"
	"github.com/wharfhq/wharf/queue"
)

// Helpers of this file are prefixed "ct" so they cannot collide with those of
// the package's other test files.

// ctSmallBackoff makes retries due almost at once.
var ctSmallBackoff = queue.Backoff{Initial: 10 * time.Millisecond, Max: 20 * time.Millisecond}

// ctCreateEffects creates the table handlers write their effects to. A
// second run of one event's handler that commits shows as n = 2.
func ctCreateEffects(t testing.TB, pool *pgxpool.Pool) {
	t.Helper()
	_, err := pool.Exec(context.Background(), `CREATE TABLE effects (event_id text PRIMARY KEY, n int NOT NULL)`)
	require.NoError(t, err)
}

// ctWriteEffect records one run of id's handler in tx.
func ctWriteEffect(ctx context.Context, tx pgx.Tx, id string) error {
	_, err := tx.Exec(ctx, `INSERT INTO effects (event_id, n) VALUES ($1, 1)
		ON CONFLICT (event_id) DO UPDATE SET n = effects.n + 1`, id)
	return err
}

// ctEffects returns the committed effects, event id -> n.
func ctEffects(t testing.TB, pool *pgxpool.Pool) map[string]int {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT event_id, n FROM effects`)
	require.NoError(t, err)
	out := map[string]int{}
	var id string
	var n int
	_, err = pgx.ForEachRow(rows, []any{&id, &n}, func() error {
		out[id] = n
		return nil
	})
	require.NoError(t, err)
	return out
}

func ctQueueLen(t testing.TB, pool *pgxpool.Pool) int {
	t.Helper()
	return dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue`)
}

// ctRow is an event's row in the queue table.
type ctRow struct {
	State      string
	Attempt    int
	Errors     []queue.AttemptError
	LeaseToken *int64
	RunAt      time.Time
	Deferrals  int
}

func ctGetRow(t testing.TB, pool *pgxpool.Pool, id string) ctRow {
	t.Helper()
	var r ctRow
	var errs []byte
	require.NoError(t, pool.QueryRow(context.Background(),
		`SELECT state, attempt, errors, lease_token, run_at, deferrals FROM wharf.queue WHERE event_id = $1`, id).
		Scan(&r.State, &r.Attempt, &errs, &r.LeaseToken, &r.RunAt, &r.Deferrals), "row of event %q", id)
	require.NoError(t, json.Unmarshal(errs, &r.Errors))
	return r
}

// ctCall is what a handler saw on one run.
type ctCall struct {
	ID      string
	Attempt int
	Errors  []queue.AttemptError
	TxID    int64
	Seq     int // order of the call among all calls
}

// ctRecorder collects handler calls from worker goroutines.
type ctRecorder struct {
	mu    sync.Mutex
	calls []ctCall
}

// add records ev's call and returns its sequence number and how many
// earlier calls ev had.
func (r *ctRecorder) add(ev *queue.Event, txID int64) (seq, earlier int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.calls {
		if c.ID == ev.ID {
			earlier++
		}
	}
	seq = len(r.calls)
	r.calls = append(r.calls, ctCall{
		ID: ev.ID, Attempt: ev.Attempt, Errors: append([]queue.AttemptError(nil), ev.Errors...),
		TxID: txID, Seq: seq,
	})
	return seq, earlier
}

func (r *ctRecorder) byID() map[string][]ctCall {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string][]ctCall{}
	for _, c := range r.calls {
		out[c.ID] = append(out[c.ID], c)
	}
	return out
}

// ctTxID returns the id of tx's transaction.
func ctTxID(ctx context.Context, tx pgx.Tx) (int64, error) {
	var id int64
	err := tx.QueryRow(ctx, `SELECT txid_current()`).Scan(&id)
	return id, err
}

// ctRecv receives from ch, failing the test after a generous deadline.
func ctRecv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(20 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// ctRun is a Consumer.Run in the background, for tests that control its
// shutdown themselves.
type ctRun struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// ctStart runs c until cancel, and at cleanup cancels it and waits for it.
func ctStart(t testing.TB, c *queue.Consumer) *ctRun {
	ctx, cancel := context.WithCancel(context.Background())
	r := &ctRun{cancel: cancel, done: make(chan struct{})}
	go func() {
		r.err = c.Run(ctx)
		close(r.done)
	}()
	t.Cleanup(func() {
		cancel()
		<-r.done
	})
	return r
}

// wait returns Run's result, failing the test after a generous deadline.
func (r *ctRun) wait(t testing.TB) error {
	t.Helper()
	select {
	case <-r.done:
		return r.err
	case <-time.After(20 * time.Second):
		t.Fatalf("timed out waiting for Run to return")
		return nil
	}
}

// ctBacklog returns a queue with the effects table and n events queued,
// prefix0 to prefix(n-1), and their ids.
func ctBacklog(t testing.TB, prefix string, n int) (*queue.Queue, *pgxpool.Pool, []string) {
	t.Helper()
	q, pool := newQueue(t, queue.Config{})
	ctCreateEffects(t, pool)
	ids := ctIDs(prefix, n)
	ctEnqueueAll(t, q, ids)
	return q, pool, ids
}

// ctIDs returns n event ids prefix0..prefix(n-1).
func ctIDs(prefix string, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s%d", prefix, i)
	}
	return ids
}

func ctEnqueueAll(t testing.TB, q *queue.Queue, ids []string) {
	t.Helper()
	evs := make([]queue.NewEvent, len(ids))
	for i, id := range ids {
		evs[i] = event("s", id)
	}
	res, err := q.EnqueueBatch(context.Background(), evs)
	require.NoError(t, err)
	for _, r := range res {
		require.False(t, r.Duplicate)
	}
}

// 1. Exactly-once database effects: the handler's writes and the event's
// completion commit together, so 1000 events leave 1000 effects of n = 1,
// with several events per transaction (TxBatch) and never more than TxBatch.
func TestConsumerExactlyOnceEffects(t *testing.T) {
	t.Parallel()
	q, pool, ids := ctBacklog(t, "e", 1000)

	var rec ctRecorder
	c, err := queue.NewConsumer(q, queue.ConsumerConfig{
		Workers: 4,
		TxBatch: 16,
		Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
			txID, err := ctTxID(ctx, tx)
			if err != nil {
				return err
			}
			rec.add(ev, txID)
			return ctWriteEffect(ctx, tx, ev.ID)
		},
	})
	require.NoError(t, err)
	stop := runConsumer(t, c)
	dbtest.Eventually(t, 30*time.Second, "queue drained", func() bool { return ctQueueLen(t, pool) == 0 })
	stop()

	effects := ctEffects(t, pool)
	require.Len(t, effects, 1000)
	for _, id := range ids {
		require.Equal(t, 1, effects[id], "effect of %s", id)
	}
	calls := rec.byID()
	require.Len(t, calls, 1000)
	perTx := map[int64]int{}
	for id, cs := range calls {
		require.Len(t, cs, 1, "handler runs of %s", id)
		require.Equal(t, 1, cs[0].Attempt)
		perTx[cs[0].TxID]++
	}
	largest := 0
	for _, n := range perTx {
		largest = max(largest, n)
	}
	require.Greater(t, largest, 1, "events never shared a transaction")
	require.LessOrEqual(t, largest, 16, "a transaction ran more than TxBatch events")
	require.Zero(t, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue_payloads`))
	noOrphans(t, pool)
}

// A transaction stops taking events once MaxTxSavepoints of its handlers
// have used the database (each such handler opens a savepoint, and too many
// subtransactions slow every session), whatever TxBatch allows; events
// whose handlers leave the database alone share transactions up to
// TxBatch. Prepare and Unprepare show what each transaction ran.
func TestConsumerTransactionsStopAtMaxTxSavepoints(t *testing.T) {
	t.Parallel()
	const events, txBatch = 300, 200
	for _, tc := range []struct {
		name    string
		useTx   bool
		largest func(t *testing.T, n int)
	}{
		{name: "handlers that use the database", useTx: true, largest: func(t *testing.T, n int) {
			require.Equal(t, queue.MaxTxSavepoints, n, "the savepoint cap, not TxBatch, ends transactions")
		}},
		{name: "handlers that do not", largest: func(t *testing.T, n int) {
			require.Greater(t, n, queue.MaxTxSavepoints, "handlers without savepoints are not capped")
			require.LessOrEqual(t, n, txBatch)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			q, pool := newQueue(t, queue.Config{})
			ctCreateEffects(t, pool)
			ctEnqueueAll(t, q, ctIDs("e", events))

			var mu sync.Mutex
			ran := map[int64]int{} // transaction id -> events completed in it
			c, err := queue.NewConsumer(q, queue.ConsumerConfig{
				Workers:       1,
				TxBatch:       txBatch,
				MaxTxDuration: time.Minute, // never the reason a transaction ends
				Prepare: func(ctx context.Context, tx pgx.Tx, evs []*queue.Event) error {
					txID, err := ctTxID(ctx, tx)
					mu.Lock()
					ran[txID] += len(evs)
					mu.Unlock()
					return err
				},
				Unprepare: func(ctx context.Context, tx pgx.Tx, evs []*queue.Event) error {
					txID, err := ctTxID(ctx, tx)
					mu.Lock()
					ran[txID] -= len(evs)
					mu.Unlock()
					return err
				},
				Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
					if tc.useTx {
						return ctWriteEffect(ctx, tx, ev.ID)
					}
					return nil
				},
			})
			require.NoError(t, err)
			stop := runConsumer(t, c)
			dbtest.Eventually(t, 30*time.Second, "queue drained", func() bool { return ctQueueLen(t, pool) == 0 })
			stop()

			mu.Lock()
			defer mu.Unlock()
			total, largest := 0, 0
			for _, n := range ran {
				total += n
				largest = max(largest, n)
			}
			require.Equal(t, events, total, "every event completed once")
			tc.largest(t, largest)
		})
	}
}

// A worker is handed about as many events as its transactions run in
// MaxTxDuration: with handlers of 20ms and 100ms transactions, chunks of at
// most 5, not TxBatch; so a process leases little more than it can soon
// run, and other replicas get the rest. (With chunks of TxBatch, this
// consumer leased 25 per chunk.)
func TestConsumerChunksFollowHandlerSpeed(t *testing.T) {
	t.Parallel()
	const handlerTime, maxTx = 20 * time.Millisecond, 100 * time.Millisecond
	q, pool := newQueue(t, queue.Config{})
	ctEnqueueAll(t, q, ctIDs("e", 100))

	var largest atomic.Int64
	c, err := queue.NewConsumer(q, queue.ConsumerConfig{
		Workers:       2,
		TxBatch:       100,
		MaxTxDuration: maxTx,
		Prepare: func(_ context.Context, _ pgx.Tx, evs []*queue.Event) error {
			for n := int64(len(evs)); ; { // the chunk, on its first transaction
				cur := largest.Load()
				if n <= cur || largest.CompareAndSwap(cur, n) {
					return nil
				}
			}
		},
		Unprepare: func(context.Context, pgx.Tx, []*queue.Event) error { return nil },
		Handler: func(context.Context, pgx.Tx, *queue.Event) error {
			time.Sleep(handlerTime) // the handler's own work
			return nil
		},
	})
	require.NoError(t, err)
	stop := runConsumer(t, c)
	dbtest.Eventually(t, 30*time.Second, "queue drained", func() bool { return ctQueueLen(t, pool) == 0 })
	stop()
	require.Positive(t, largest.Load())
	require.LessOrEqual(t, largest.Load(), int64(maxTx/handlerTime), "events handed to a worker at once")
}

// The fetcher leaves the events' JSON columns to the workers. An event whose
// stored headers do not decode (written by hand, of the wrong shape) never
// reaches the handler: each fetch counts a failed attempt with the decode
// error, and after MaxAttempts it is exhausted; its neighbours run.
func TestConsumerFailsAnEventWhoseStoredJSONDoesNotDecode(t *testing.T) {
	t.Parallel()
	q, pool := newQueue(t, queue.Config{MaxAttempts: 2, Backoff: ctSmallBackoff})
	ctCreateEffects(t, pool)
	ids := ctIDs("e", 5)
	ctEnqueueAll(t, q, ids)
	_, err := pool.Exec(context.Background(),
		`UPDATE wharf.queue_payloads SET headers = '{"X-Count": 1}' WHERE event_id = 'e3'`)
	require.NoError(t, err)

	var rec ctRecorder
	c, err := queue.NewConsumer(q, queue.ConsumerConfig{
		Workers:      1,
		PollInterval: 20 * time.Millisecond, // the retry is due after its backoff, with no wake-up
		Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
			rec.add(ev, 0)
			return ctWriteEffect(ctx, tx, ev.ID)
		},
	})
	require.NoError(t, err)
	stop := runConsumer(t, c)
	dbtest.Eventually(t, 20*time.Second, "e3 exhausted and the rest done", func() bool {
		return ctQueueLen(t, pool) == 1 && ctGetRow(t, pool, "e3").State == "exhausted"
	})
	stop()

	calls := rec.byID()
	require.NotContains(t, calls, "e3", "the handler never saw the undecodable event")
	effects := ctEffects(t, pool)
	for _, id := range ids {
		if id != "e3" {
			require.Equal(t, 1, effects[id], "effect of %s", id)
		}
	}
	row := ctGetRow(t, pool, "e3")
	require.Equal(t, 2, row.Attempt)
	require.Len(t, row.Errors, 2)
	for _, e := range row.Errors {
		require.Contains(t, e.Error, "decode headers")
	}
}

// A Consumer's workers read their events' payloads themselves. An event
// fetched ahead whose row and payload are removed before its worker gets to
// it (its lease lost, another holder done with it) is dropped unrun; the
// consumer goes on with the rest.
func TestConsumerDropsAnEventRemovedBeforeItsWorkerReadIt(t *testing.T) {
	t.Parallel()
	q, pool := newQueue(t, queue.Config{})
	ctCreateEffects(t, pool)
	ctEnqueueAll(t, q, []string{"e1", "e2"})

	entered := make(chan struct{})
	release := make(chan struct{})
	var rec ctRecorder
	c, err := queue.NewConsumer(q, queue.ConsumerConfig{
		Workers: 1, // e1 runs; e2 waits in the second chunk the fetcher took ahead
		Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
			rec.add(ev, 0)
			if ev.ID == "e1" {
				close(entered)
				<-release
			}
			return ctWriteEffect(ctx, tx, ev.ID)
		},
	})
	require.NoError(t, err)
	stop := runConsumer(t, c)
	ctRecv(t, entered, "e1 to start")
	dbtest.Eventually(t, 10*time.Second, "e2 fetched ahead", func() bool { return ctGetRow(t, pool, "e2").State == "running" })
	_, err = pool.Exec(context.Background(), `WITH gone AS (DELETE FROM wharf.queue WHERE event_id = 'e2' RETURNING id)
		DELETE FROM wharf.queue_payloads WHERE queue_id IN (SELECT id FROM gone)`)
	require.NoError(t, err)
	close(release)

	ctEnqueueAll(t, q, []string{"e3"})
	dbtest.Eventually(t, 10*time.Second, "e1 and e3 done", func() bool { return ctQueueLen(t, pool) == 0 && len(ctEffects(t, pool)) == 2 })
	stop()
	calls := rec.byID()
	require.NotContains(t, calls, "e2", "the handler never ran the removed event")
	require.Len(t, calls["e1"], 1)
	require.Len(t, calls["e3"], 1)
}

// 2. One event's failure (an error, a swallowed failed statement, a panic)
// rolls back only that event's writes in a transaction shared with others;
// its neighbours, before and after it, commit; it is retried once.
func TestConsumerFailureRollsBackOnlyItsEvent(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		fail    func(ctx context.Context, tx pgx.Tx) error // e5's first run, after its effect is written
		wantErr []string                                   // in the error-history entry e5's retry sees
	}{
		{
			name:    "error",
			fail:    func(context.Context, pgx.Tx) error { return errors.New("e5 fails once") },
			wantErr: []string{"e5 fails once"},
		},
		{
			name: "swallowed SQL error",
			fail: func(ctx context.Context, tx pgx.Tx) error {
				_, _ = tx.Exec(ctx, `SELECT 1 / 0`) // fails, aborting the transaction; the error is ignored
				return nil
			},
			wantErr: []string{"transaction"}, // the handler's own error is gone; the entry says the transaction failed
		},
		{
			name:    "panic",
			fail:    func(context.Context, pgx.Tx) error { panic("e5 blew up") },
			wantErr: []string{"panic", "e5 blew up", "goroutine ", "consumer_test.go"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			q, pool := newQueue(t, queue.Config{Backoff: ctSmallBackoff})
			ctCreateEffects(t, pool)
			ids := ctIDs("e", 16)
			ctEnqueueAll(t, q, ids)

			var rec ctRecorder
			c, err := queue.NewConsumer(q, queue.ConsumerConfig{
				Workers:       1, // one worker, so all 16 share one transaction
				TxBatch:       16,
				MaxTxDuration: time.Minute,           // never cut the transaction short on a slow machine
				PollInterval:  20 * time.Millisecond, // the retry is due after its backoff, with no wake-up
				Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
					txID, err := ctTxID(ctx, tx)
					if err != nil {
						return err
					}
					rec.add(ev, txID)
					if err := ctWriteEffect(ctx, tx, ev.ID); err != nil {
						return err
					}
					if ev.ID == "e5" && ev.Attempt == 1 {
						return tc.fail(ctx, tx)
					}
					return nil
				},
			})
			require.NoError(t, err)
			stop := runConsumer(t, c)
			dbtest.Eventually(t, 20*time.Second, "queue drained", func() bool { return ctQueueLen(t, pool) == 0 })
			stop()

			effects := ctEffects(t, pool)
			require.Len(t, effects, 16)
			for _, id := range ids {
				require.Equal(t, 1, effects[id], "effect of %s (e5's first write must have been rolled back)", id)
			}
			calls := rec.byID()
			for _, id := range ids {
				if id == "e5" {
					continue
				}
				require.Len(t, calls[id], 1, "runs of %s", id)
				require.Equal(t, 1, calls[id][0].Attempt)
			}
			e5 := calls["e5"]
			require.Len(t, e5, 2, "runs of e5")
			require.Equal(t, 1, e5[0].Attempt)
			require.Equal(t, 2, e5[1].Attempt)
			require.Len(t, e5[1].Errors, 1)
			require.Equal(t, 1, e5[1].Errors[0].Attempt)
			for _, want := range tc.wantErr {
				require.Contains(t, e5[1].Errors[0].Error, want)
			}

			// e5's failed run shared its transaction with neighbours that
			// ran before it and after it, and those committed (above).
			var before, after int
			for id, cs := range calls {
				if id != "e5" && cs[0].TxID == e5[0].TxID {
					if cs[0].Seq < e5[0].Seq {
						before++
					} else {
						after++
					}
				}
			}
			require.Positive(t, before, "no event ran before e5 in its transaction")
			require.Positive(t, after, "no event ran after e5 in its transaction")
			noOrphans(t, pool)
		})
	}
}

// 3. A deferred event gets its attempt back, its writes are rolled back and
// no error is recorded; its neighbour in the same transaction commits.
func TestConsumerDeferGivesAttemptBack(t *testing.T) {
	t.Parallel()
	q, pool := newQueue(t, queue.Config{})
	ctCreateEffects(t, pool)
	ctEnqueueAll(t, q, []string{"d1", "d2"})

	var rec ctRecorder
	c, err := queue.NewConsumer(q, queue.ConsumerConfig{
		Workers: 1,
		Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
			_, earlier := rec.add(ev, 0)
			if err := ctWriteEffect(ctx, tx, ev.ID); err != nil {
				return err
			}
			if ev.ID == "d1" && earlier == 0 {
				return queue.Defer(time.Now().Add(time.Hour), errors.New("downstream busy"))
			}
			return nil
		},
	})
	require.NoError(t, err)
	runConsumer(t, c)

	dbtest.Eventually(t, 20*time.Second, "d1 deferred and d2 done", func() bool {
		return dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue
			WHERE event_id = 'd1' AND state = 'available' AND run_at > now() + interval '30 minutes'`) == 1 &&
			dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue WHERE event_id = 'd2'`) == 0
	})
	row := ctGetRow(t, pool, "d1")
	require.Equal(t, 0, row.Attempt, "the deferred attempt was not given back")
	require.Empty(t, row.Errors, "a deferral is not a failure")
	require.Nil(t, row.LeaseToken)
	require.Equal(t, map[string]int{"d2": 1}, ctEffects(t, pool), "d1's writes must be rolled back, d2's kept")

	// Make it due and wake the consumer.
	_, err = pool.Exec(context.Background(), `UPDATE wharf.queue SET run_at = now() WHERE event_id = 'd1'`)
	require.NoError(t, err)
	q.Notify()
	dbtest.Eventually(t, 20*time.Second, "queue drained", func() bool { return ctQueueLen(t, pool) == 0 })

	d1 := rec.byID()["d1"]
	require.Len(t, d1, 2)
	require.Equal(t, 1, d1[0].Attempt)
	require.Equal(t, 1, d1[1].Attempt, "the run after a deferral must see the same attempt number")
	require.Empty(t, d1[1].Errors)
	require.Equal(t, map[string]int{"d1": 1, "d2": 1}, ctEffects(t, pool))
	noOrphans(t, pool)
}

// With polling all but off, the consumer wakes for each deferred event
// when it falls due, not only for the soonest: the first wake-up finding
// only its own event must not cost the later ones theirs (before the fix,
// d2 and d4 waited for the hour's poll). A warm-up event first lets the
// transactions grow to two events, so each defers a short and a long one.
func TestConsumerWakesForEveryDeferral(t *testing.T) {
	t.Parallel()
	q, pool := newQueue(t, queue.Config{})

	var rec ctRecorder
	delays := map[string]time.Duration{
		"d1": 50 * time.Millisecond, "d2": 400 * time.Millisecond,
		"d3": 60 * time.Millisecond, "d4": 410 * time.Millisecond,
	}
	c, err := queue.NewConsumer(q, queue.ConsumerConfig{
		Workers:       1,
		TxBatch:       2,
		MaxTxDuration: time.Minute,
		PollInterval:  time.Hour,
		Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
			if _, earlier := rec.add(ev, 0); earlier == 0 && delays[ev.ID] > 0 {
				return queue.Defer(time.Now().Add(delays[ev.ID]), errors.New("not yet"))
			}
			return nil
		},
	})
	require.NoError(t, err)
	runConsumer(t, c)
	ctEnqueueAll(t, q, []string{"warm"})
	dbtest.Eventually(t, 20*time.Second, "the warm-up event done", func() bool { return ctQueueLen(t, pool) == 0 })
	ctEnqueueAll(t, q, []string{"d1", "d2", "d3", "d4"})
	dbtest.Eventually(t, 20*time.Second, "every deferred event run again", func() bool { return ctQueueLen(t, pool) == 0 })
	for id := range delays {
		require.Len(t, rec.byID()[id], 2, id)
	}
}

// DeferCounted defers like Defer and counts the deferral in the event's
// Deferrals, which the next run sees; Defer and Release leave the count
// as it is. The attempt is given back every time.
func TestConsumerDeferCountedCountsDeferrals(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, pool := newQueue(t, queue.Config{})
	ctEnqueueAll(t, q, []string{"c1"})

	type run struct{ attempt, deferrals int }
	var mu sync.Mutex
	var runs []run
	c, err := queue.NewConsumer(q, queue.ConsumerConfig{
		Workers: 1,
		Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
			mu.Lock()
			runs = append(runs, run{ev.Attempt, ev.Deferrals})
			n := len(runs)
			mu.Unlock()
			reason := errors.New("downstream failed this one")
			switch n {
			case 1, 3:
				return queue.DeferCounted(time.Now(), reason)
			case 2:
				return queue.Defer(time.Now(), reason)
			}
			return nil
		},
	})
	require.NoError(t, err)
	stop := runConsumer(t, c)
	dbtest.Eventually(t, 20*time.Second, "c1 done", func() bool { return ctQueueLen(t, pool) == 0 })
	stop()
	mu.Lock()
	require.Equal(t, []run{{1, 0}, {1, 1}, {1, 1}, {1, 2}}, runs)
	mu.Unlock()

	// Queue.Defer and Release, outside a Consumer, count nothing.
	ctEnqueueAll(t, q, []string{"c2"})
	_, err = pool.Exec(ctx, `UPDATE wharf.queue SET deferrals = 2 WHERE event_id = 'c2'`)
	require.NoError(t, err)
	fetchOne := func() *queue.Event {
		evs, err := q.Fetch(ctx, queue.FetchParams{Limit: 1})
		require.NoError(t, err)
		require.Len(t, evs, 1)
		require.Equal(t, 1, evs[0].Attempt)
		require.Equal(t, 2, evs[0].Deferrals)
		return evs[0]
	}
	require.NoError(t, q.Defer(ctx, fetchOne(), time.Time{}))
	require.NoError(t, q.Release(ctx, fetchOne()))
	fetchOne()
}

// 4. An event that always fails runs exactly MaxAttempts times, then is
// exhausted: kept in the queue table with its whole error history, or handed
// to OnExhausted in the transaction that removes it.
func TestConsumerExhaustsAfterMaxAttempts(t *testing.T) {
	t.Parallel()
	failing := func(rec *ctRecorder) queue.Handler {
		return func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
			rec.add(ev, 0)
			if ev.ID == "x" {
				return fmt.Errorf("attempt %d failed", ev.Attempt)
			}
			return nil
		}
	}
	enqueueX := func(t *testing.T, q *queue.Queue) {
		ev := event("s", "x")
		ev.MaxAttempts = 3
		_, err := q.Enqueue(context.Background(), ev)
		require.NoError(t, err)
	}
	checkHistory := func(t *testing.T, errs []queue.AttemptError) {
		require.Len(t, errs, 3)
		for i, e := range errs {
			require.Equal(t, i+1, e.Attempt)
			require.Equal(t, fmt.Sprintf("attempt %d failed", i+1), e.Error)
			require.Equal(t, "exhaust-consumer", e.Worker)
			require.False(t, e.At.IsZero())
		}
	}
	consumerCfg := func(h queue.Handler) queue.ConsumerConfig {
		return queue.ConsumerConfig{Name: "exhaust-consumer", Workers: 1, TxBatch: 1, PollInterval: 20 * time.Millisecond, Handler: h}
	}

	t.Run("kept", func(t *testing.T) {
		t.Parallel()
		q, pool := newQueue(t, queue.Config{Backoff: ctSmallBackoff})
		var rec ctRecorder
		c, err := queue.NewConsumer(q, consumerCfg(failing(&rec)))
		require.NoError(t, err)
		runConsumer(t, c)
		enqueueX(t, q)

		dbtest.Eventually(t, 20*time.Second, "x exhausted", func() bool {
			return dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue WHERE event_id = 'x' AND state = 'exhausted'`) == 1
		})
		row := ctGetRow(t, pool, "x")
		require.Equal(t, 3, row.Attempt)
		require.Nil(t, row.LeaseToken)
		checkHistory(t, row.Errors)

		// A later event runs, so a fetch has passed since: x is not fetched again.
		_, err = q.Enqueue(context.Background(), event("s", "sentinel"))
		require.NoError(t, err)
		dbtest.Eventually(t, 20*time.Second, "sentinel done", func() bool {
			return dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue WHERE event_id = 'sentinel'`) == 0
		})
		x := rec.byID()["x"]
		require.Len(t, x, 3, "handler runs of x")
		for i, call := range x {
			require.Equal(t, i+1, call.Attempt)
			require.Len(t, call.Errors, i)
		}
		require.Equal(t, 1, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue_payloads`), "x keeps its payload")
		noOrphans(t, pool)
	})

	// An exhausted event stops holding back its ordering key.
	t.Run("ordering key", func(t *testing.T) {
		t.Parallel()
		q, pool := newQueue(t, queue.Config{Backoff: ctSmallBackoff})
		for _, id := range []string{"x", "next"} {
			ev := event("s", id)
			ev.OrderingKey = "k"
			ev.MaxAttempts = 3
			_, err := q.Enqueue(context.Background(), ev)
			require.NoError(t, err)
		}
		var rec ctRecorder
		c, err := queue.NewConsumer(q, consumerCfg(failing(&rec)))
		require.NoError(t, err)
		runConsumer(t, c)
		dbtest.Eventually(t, 20*time.Second, "next done", func() bool {
			return dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue WHERE event_id = 'next'`) == 0
		})
		row := ctGetRow(t, pool, "x")
		require.Equal(t, "exhausted", row.State)
		checkHistory(t, row.Errors)
		calls := rec.byID()
		require.Len(t, calls["x"], 3)
		require.Len(t, calls["next"], 1)
		require.Greater(t, calls["next"][0].Seq, calls["x"][2].Seq, "next ran before x was exhausted")
		noOrphans(t, pool)
	})

	t.Run("OnExhausted", func(t *testing.T) {
		t.Parallel()
		hook := func(ctx context.Context, tx pgx.Tx, evs []*queue.Event) error {
			for _, ev := range evs {
				errs, err := json.Marshal(ev.Errors)
				if err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, `INSERT INTO dead (event_id, attempt, errors, body) VALUES ($1, $2, $3, $4)`,
					ev.ID, ev.Attempt, errs, ev.Body); err != nil {
					return err
				}
			}
			return nil
		}
		q, pool := newQueue(t, queue.Config{Backoff: ctSmallBackoff, OnExhausted: hook})
		_, err := pool.Exec(context.Background(), `CREATE TABLE dead (event_id text, attempt int, errors jsonb, body bytea)`)
		require.NoError(t, err)
		var rec ctRecorder
		c, err := queue.NewConsumer(q, consumerCfg(failing(&rec)))
		require.NoError(t, err)
		runConsumer(t, c)
		enqueueX(t, q)

		dbtest.Eventually(t, 20*time.Second, "x dead-lettered", func() bool {
			return dbtest.Count(t, pool, `SELECT count(*) FROM dead`) > 0
		})
		_, err = q.Enqueue(context.Background(), event("s", "sentinel"))
		require.NoError(t, err)
		dbtest.Eventually(t, 20*time.Second, "sentinel done", func() bool { return ctQueueLen(t, pool) == 0 })

		require.Equal(t, 1, dbtest.Count(t, pool, `SELECT count(*) FROM dead`), "copied once")
		require.Zero(t, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue_payloads`), "payload left behind")
		var attempt int
		var errsJSON, body []byte
		require.NoError(t, pool.QueryRow(context.Background(), `SELECT attempt, errors, body FROM dead WHERE event_id = 'x'`).
			Scan(&attempt, &errsJSON, &body))
		require.Equal(t, 3, attempt)
		require.Equal(t, `{"id":"x"}`, string(body))
		var errs []queue.AttemptError
		require.NoError(t, json.Unmarshal(errsJSON, &errs))
		checkHistory(t, errs)
		require.Len(t, rec.byID()["x"], 3, "handler runs of x")
		noOrphans(t, pool)
	})
}

// ctOrdering checks ordering-key exclusivity and order from handlers. The
// events in failOnce fail their first attempt, so the next event of their
// key must wait out their backoff too. With rendezvous, the first event of
// each key waits until events of two keys are in handlers at once, which
// proves that different keys run in parallel without measuring time.
type ctOrdering struct {
	rendezvous bool
	failOnce   map[string]bool

	mu         sync.Mutex
	running    map[string]int
	order      map[string][]string // key ("" for none) -> ids in handler start order
	violations []string

	parallel     chan struct{}
	parallelOnce sync.Once
}

func newCtOrdering(rendezvous bool, failOnce ...string) *ctOrdering {
	o := &ctOrdering{
		rendezvous: rendezvous,
		failOnce:   map[string]bool{},
		running:    map[string]int{},
		order:      map[string][]string{},
		parallel:   make(chan struct{}),
	}
	for _, id := range failOnce {
		o.failOnce[id] = true
	}
	return o
}

func (o *ctOrdering) handle(_ context.Context, _ pgx.Tx, ev *queue.Event) error {
	key := ev.OrderingKey
	o.mu.Lock()
	first := key != "" && len(o.order[key]) == 0
	o.order[key] = append(o.order[key], ev.ID)
	if key != "" {
		o.running[key]++
		if o.running[key] > 1 {
			o.violations = append(o.violations, fmt.Sprintf("%s started while another event of key %s was running", ev.ID, key))
		}
		keys := 0
		for _, n := range o.running {
			if n > 0 {
				keys++
			}
		}
		if keys >= 2 {
			o.parallelOnce.Do(func() { close(o.parallel) })
		}
	}
	o.mu.Unlock()

	if o.rendezvous && first {
		select {
		case <-o.parallel:
		case <-time.After(10 * time.Second):
			o.mu.Lock()
			o.violations = append(o.violations, "never parallel: no two keys were in handlers at once within 10s")
			o.mu.Unlock()
		}
	}

	if key != "" {
		o.mu.Lock()
		o.running[key]--
		o.mu.Unlock()
	}
	if o.failOnce[ev.ID] && ev.Attempt == 1 {
		return fmt.Errorf("%s fails its first attempt", ev.ID)
	}
	return nil
}

// ctOrderingKeys are the keys of ctEnqueueOrdered; the third event of each
// fails once.
var (
	ctOrderingKeys    = []string{"k1", "k2", "k3"}
	ctOrderingFailing = []string{"k1-f", "k2-f", "k3-f"}
)

// ctEnqueueOrdered stores 3 keys × 8 events and 8 unkeyed ones, one at a
// time (so storage order is call order), interleaved, with ids that sort
// against their storage order. It returns the handler runs expected per
// key, in order: a failing event runs twice in a row.
func ctEnqueueOrdered(t *testing.T, q *queue.Queue) map[string][]string {
	want := map[string][]string{}
	for i := range 8 {
		for _, key := range append(slices.Clone(ctOrderingKeys), "") {
			ev := event("s", fmt.Sprintf("%s-%c", cmp.Or(key, "u"), 'h'-i))
			ev.OrderingKey = key
			_, err := q.Enqueue(context.Background(), ev)
			require.NoError(t, err)
			want[key] = append(want[key], ev.ID)
			if slices.Contains(ctOrderingFailing, ev.ID) {
				want[key] = append(want[key], ev.ID)
			}
		}
	}
	return want
}

// ctOrderingQueueConfig gives a failed event a retry delay long enough that
// fetches certainly happen while the next event of its key waits.
var ctOrderingQueueConfig = queue.Config{Backoff: queue.Backoff{Initial: 200 * time.Millisecond, Max: 200 * time.Millisecond}}

func (o *ctOrdering) check(t *testing.T, pool *pgxpool.Pool, want map[string][]string) {
	dbtest.Eventually(t, 30*time.Second, "queue drained", func() bool { return ctQueueLen(t, pool) == 0 })
	o.mu.Lock()
	defer o.mu.Unlock()
	require.Empty(t, o.violations)
	for _, key := range ctOrderingKeys {
		require.Equal(t, want[key], o.order[key], "runs of key %s", key)
	}
	require.ElementsMatch(t, want[""], o.order[""], "unkeyed events")
	noOrphans(t, pool)
}

// 5. Events of one ordering key run one at a time, in storage order, even
// when one of them fails and waits for its retry, while different keys run
// in parallel; the same holds across replicas.
func TestConsumerOrderingKeys(t *testing.T) {
	t.Parallel()

	t.Run("one consumer", func(t *testing.T) {
		t.Parallel()
		q, pool := newQueue(t, ctOrderingQueueConfig)
		want := ctEnqueueOrdered(t, q)
		o := newCtOrdering(true, ctOrderingFailing...)
		c, err := queue.NewConsumer(q, queue.ConsumerConfig{
			Workers:      4,
			TxBatch:      1,
			PollInterval: 20 * time.Millisecond, // the next event of a key is due when its predecessor commits, with no wake-up
			Handler:      o.handle,
		})
		require.NoError(t, err)
		runConsumer(t, c)
		o.check(t, pool, want)
	})

	t.Run("three replicas", func(t *testing.T) {
		t.Parallel()
		pool := dbtest.PoolWith(t, dbtest.Options{MaxConns: 24})
		o := newCtOrdering(true, ctOrderingFailing...)
		var qs []*queue.Queue
		for range 3 {
			q, err := queue.New(pool, ctOrderingQueueConfig)
			require.NoError(t, err)
			t.Cleanup(q.Close)
			qs = append(qs, q)
		}
		want := ctEnqueueOrdered(t, qs[0])
		for _, q := range qs {
			c, err := queue.NewConsumer(q, queue.ConsumerConfig{
				Workers:      2,
				TxBatch:      1,
				PollInterval: 20 * time.Millisecond,
				Handler:      o.handle,
			})
			require.NoError(t, err)
			runConsumer(t, c)
		}
		o.check(t, pool, want)
	})

	// An older event of a key that commits after a newer one started (an
	// EnqueueTx whose transaction was open) must not run beside it.
	t.Run("late commit", func(t *testing.T) {
		t.Parallel()
		ctx := context.Background()
		q, pool := newQueue(t, queue.Config{})
		lateTx, err := pool.Begin(ctx)
		require.NoError(t, err)
		t.Cleanup(func() { _ = lateTx.Rollback(ctx) })
		late := event("s", "late")
		late.OrderingKey = "k"
		_, err = q.EnqueueTx(ctx, lateTx, late) // the lower id, not yet visible
		require.NoError(t, err)
		early := event("s", "early")
		early.OrderingKey = "k"
		_, err = q.Enqueue(ctx, early)
		require.NoError(t, err)

		var mu sync.Mutex
		var started []string
		running := 0
		violation := ""
		entered := make(chan string, 3)
		unblock := make(chan struct{})
		c, err := queue.NewConsumer(q, queue.ConsumerConfig{
			Workers: 2,
			TxBatch: 4,
			Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
				mu.Lock()
				started = append(started, ev.ID)
				if ev.OrderingKey != "" {
					running++
					if running > 1 {
						violation = ev.ID + " ran beside another event of its key"
					}
				}
				mu.Unlock()
				entered <- ev.ID
				if ev.ID == "early" {
					<-unblock
				}
				mu.Lock()
				if ev.OrderingKey != "" {
					running--
				}
				mu.Unlock()
				return nil
			},
		})
		require.NoError(t, err)
		runConsumer(t, c)
		var unblockOnce sync.Once
		t.Cleanup(func() { unblockOnce.Do(func() { close(unblock) }) })
		require.Equal(t, "early", ctRecv(t, entered, "early"))

		require.NoError(t, lateTx.Commit(ctx))
		// The sentinel is fetched after "late" became visible, by a fetch
		// that would have taken "late" (older, due earlier) had it been
		// eligible.
		_, err = q.Enqueue(ctx, event("s", "sentinel"))
		require.NoError(t, err)
		require.Equal(t, "sentinel", ctRecv(t, entered, "sentinel"))
		mu.Lock()
		require.Equal(t, []string{"early", "sentinel"}, started, "late must wait for early")
		mu.Unlock()

		unblockOnce.Do(func() { close(unblock) })
		require.Equal(t, "late", ctRecv(t, entered, "late"))
		dbtest.Eventually(t, 20*time.Second, "queue drained", func() bool { return ctQueueLen(t, pool) == 0 })
		mu.Lock()
		defer mu.Unlock()
		require.Empty(t, violation)
		noOrphans(t, pool)
	})
}

// 6. Events leased by a worker that stopped heart-beating are rescued by
// another instance's consumer: counted as a failed attempt ("lease
// expired"), run again, and the dead worker's lease no longer works.
func TestConsumerRescuesExpiredLeases(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := dbtest.Pool(t)
	cfg := queue.Config{LeaseDuration: time.Second, Backoff: ctSmallBackoff}
	dead, err := queue.New(pool, cfg)
	require.NoError(t, err)
	t.Cleanup(dead.Close)
	ids := ctIDs("r", 5)
	ctEnqueueAll(t, dead, ids)
	claimed, err := dead.Fetch(ctx, queue.FetchParams{Limit: 10, Worker: "dead-worker"})
	require.NoError(t, err)
	require.Len(t, claimed, 5)

	live, err := queue.New(pool, cfg)
	require.NoError(t, err)
	t.Cleanup(live.Close)
	var rec ctRecorder
	c, err := queue.NewConsumer(live, queue.ConsumerConfig{
		RescueInterval:    50 * time.Millisecond,
		HeartbeatInterval: 300 * time.Millisecond,
		PollInterval:      50 * time.Millisecond,
		Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
			rec.add(ev, 0)
			return nil
		},
	})
	require.NoError(t, err)
	runConsumer(t, c)
	dbtest.Eventually(t, 20*time.Second, "rescued events processed", func() bool { return ctQueueLen(t, pool) == 0 })

	calls := rec.byID()
	require.Len(t, calls, 5)
	for _, id := range ids {
		require.Len(t, calls[id], 1, "runs of %s", id)
		call := calls[id][0]
		require.Equal(t, 2, call.Attempt, "the dead worker's attempt must count")
		require.Len(t, call.Errors, 1)
		require.Equal(t, 1, call.Errors[0].Attempt)
		require.Contains(t, call.Errors[0].Error, "lease expired")
		require.Contains(t, call.Errors[0].Error, "dead-worker")
	}
	// The dead worker comes back: its lease is worthless.
	require.ErrorIs(t, dead.Complete(ctx, claimed[0]), queue.ErrLeaseLost)
	noOrphans(t, pool)
}

// A consumer runs each rescued event alone: in a transaction of its own,
// with no other handler of the process running meanwhile, so that if the
// event kills the process again it takes no other event's attempt with
// it. After a fetch that brought one it fetches again at once: no poll
// (an hour here) between them. Fresh events run in parallel as usual.
func TestConsumerRunsRescuedEventsAlone(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, pool := newQueue(t, queue.Config{})
	ids := ctIDs("r", 6)
	ctEnqueueAll(t, q, ids)
	claimed, err := q.Fetch(ctx, queue.FetchParams{Limit: 10, Worker: "dead-worker"})
	require.NoError(t, err)
	require.Len(t, claimed, 6)
	_, err = pool.Exec(ctx, `UPDATE wharf.queue SET lease_expires_at = now() - interval '1 second'`)
	require.NoError(t, err)
	n, err := q.Rescue(ctx, 100)
	require.NoError(t, err)
	require.Equal(t, 6, n)
	_, err = pool.Exec(ctx, `UPDATE wharf.queue SET run_at = now() - interval '1 second'`)
	require.NoError(t, err)
	fresh := ctIDs("f", 40)
	ctEnqueueAll(t, q, fresh)

	var rec ctRecorder
	var running atomic.Int32
	var mu sync.Mutex
	rescued := map[string]bool{}
	var overlaps []string
	c, err := queue.NewConsumer(q, queue.ConsumerConfig{
		Workers:      2,
		PollInterval: time.Hour,
		Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
			others := running.Add(1) - 1
			defer running.Add(-1)
			txID, err := ctTxID(ctx, tx)
			if err != nil {
				return err
			}
			rec.add(ev, txID)
			if ev.Rescued {
				time.Sleep(20 * time.Millisecond) // a window another handler would show up in
				others += running.Load() - 1
			}
			mu.Lock()
			defer mu.Unlock()
			rescued[ev.ID] = ev.Rescued
			if ev.Rescued && others > 0 {
				overlaps = append(overlaps, ev.ID)
			}
			return nil
		},
	})
	require.NoError(t, err)
	runConsumer(t, c)
	dbtest.Eventually(t, 20*time.Second, "every event processed", func() bool { return ctQueueLen(t, pool) == 0 })

	calls := rec.byID()
	txs := map[int64]string{}
	for _, id := range ids {
		require.Len(t, calls[id], 1, "runs of %s", id)
		require.Equal(t, 2, calls[id][0].Attempt, id)
		require.True(t, rescued[id], "%s is marked rescued", id)
		other, shared := txs[calls[id][0].TxID]
		require.False(t, shared, "%s ran in the transaction of %s", id, other)
		txs[calls[id][0].TxID] = id
	}
	for _, id := range fresh {
		require.Len(t, calls[id], 1, "runs of %s", id)
		require.False(t, rescued[id], id)
	}
	require.Empty(t, overlaps, "rescued events that ran beside another handler")
}

// ctHelperEnv carries the database of TestHelperConsumerProcess.
const ctHelperEnv = "WHARF_HELPER_DB"

// TestHelperConsumerProcess is not a test: TestConsumerSIGKILL runs it in a
// child process, where it consumes events, writes an effect in each
// transaction, says so in "started", and blocks until it is killed.
func TestHelperConsumerProcess(t *testing.T) {
	t.Parallel()
	connString := os.Getenv(ctHelperEnv)
	if connString == "" {
		return
	}
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(connString)
	require.NoError(t, err)
	cfg.MaxConns = 10
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	q, err := queue.New(pool, queue.Config{LeaseDuration: time.Second})
	require.NoError(t, err)
	c, err := queue.NewConsumer(q, queue.ConsumerConfig{
		Name:    "doomed-child",
		Workers: 2,
		TxBatch: 4,
		Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
			if err := ctWriteEffect(ctx, tx, ev.ID); err != nil {
				return err
			}
			if _, err := pool.Exec(ctx, `INSERT INTO started (event_id) VALUES ($1)`, ev.ID); err != nil {
				return err
			}
			select {} // until SIGKILL
		},
	})
	require.NoError(t, err)
	require.NoError(t, c.Run(ctx))
}

// 7. A consumer process killed with SIGKILL mid-transaction loses nothing:
// its open transactions roll back (their row locks are released with them),
// its leases expire and are rescued, and every event's effect lands once.
func TestConsumerSIGKILL(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	connString := dbtest.Database(t, dbtest.Options{})
	poolCfg, err := pgxpool.ParseConfig(connString)
	require.NoError(t, err)
	poolCfg.MaxConns = 16
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	ctCreateEffects(t, pool)
	_, err = pool.Exec(ctx, `CREATE TABLE started (event_id text)`)
	require.NoError(t, err)
	q, err := queue.New(pool, queue.Config{LeaseDuration: time.Second, Backoff: ctSmallBackoff})
	require.NoError(t, err)
	t.Cleanup(q.Close)
	ids := ctIDs("k", 20)
	ctEnqueueAll(t, q, ids)

	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperConsumerProcess$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), ctHelperEnv+"="+connString)
	var out testio.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})

	// Both of the child's workers are inside a handler, in open transactions.
	dbtest.Eventually(t, 60*time.Second, "the helper process to start handling events", func() bool {
		select {
		case <-exited:
			t.Fatalf("helper process exited early (%v):\n%s", waitErr, out.String())
		default:
		}
		return dbtest.Count(t, pool, `SELECT count(*) FROM started`) >= 2
	})
	require.NoError(t, cmd.Process.Kill())
	<-exited
	var exitErr *exec.ExitError
	require.ErrorAs(t, waitErr, &exitErr, "the child must have died by the signal:\n%s", out.String())
	require.False(t, exitErr.Exited(), "the child exited on its own:\n%s", out.String())

	rows, err := pool.Query(ctx, `SELECT event_id FROM started`)
	require.NoError(t, err)
	started, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Len(t, started, 2)

	var rec ctRecorder
	c, err := queue.NewConsumer(q, queue.ConsumerConfig{
		RescueInterval: 50 * time.Millisecond,
		PollInterval:   50 * time.Millisecond,
		Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
			rec.add(ev, 0)
			return ctWriteEffect(ctx, tx, ev.ID)
		},
	})
	require.NoError(t, err)
	stop := runConsumer(t, c)
	dbtest.Eventually(t, 30*time.Second, "queue drained", func() bool { return ctQueueLen(t, pool) == 0 })
	stop()

	effects := ctEffects(t, pool)
	require.Len(t, effects, 20)
	for _, id := range ids {
		require.Equal(t, 1, effects[id], "effect of %s", id)
	}
	calls := rec.byID()
	require.Len(t, calls, 20)
	rescued := 0
	for _, id := range ids {
		require.Len(t, calls[id], 1, "runs of %s in the parent", id)
		call := calls[id][0]
		switch call.Attempt {
		case 1: // never fetched by the child
			require.Empty(t, call.Errors, id)
		case 2: // leased by the child
			rescued++
			require.Len(t, call.Errors, 1, id)
			require.Equal(t, 1, call.Errors[0].Attempt)
			require.Contains(t, call.Errors[0].Error, "lease expired")
			require.Contains(t, call.Errors[0].Error, "doomed-child")
		default:
			t.Fatalf("%s ran with attempt %d", id, call.Attempt)
		}
	}
	for _, id := range started {
		require.Equal(t, 2, calls[id][0].Attempt, "%s was running in the child", id)
	}
	require.GreaterOrEqual(t, rescued, len(started))
	t.Logf("%d events were leased by the killed child, %d of them in a running handler", rescued, len(started))
	noOrphans(t, pool)
}

// 8. Graceful shutdown: running handlers finish with live contexts and
// commit; fetched, unstarted events are released with their attempts given
// back. A handler that outlives ShutdownTimeout has its context cancelled,
// and its event comes back with the attempt counted.
func TestConsumerGracefulShutdown(t *testing.T) {
	t.Parallel()

	t.Run("handlers finish", func(t *testing.T) {
		t.Parallel()
		q, pool, ids := ctBacklog(t, "g", 8)

		entered := make(chan string, 8)
		ctxErrs := make(chan error, 8)
		unblock := make(chan struct{})
		c, err := queue.NewConsumer(q, queue.ConsumerConfig{
			Workers:         2,
			TxBatch:         4,
			ShutdownTimeout: 10 * time.Second,
			Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
				entered <- ev.ID
				<-unblock
				ctxErrs <- ctx.Err()
				return ctWriteEffect(ctx, tx, ev.ID)
			},
		})
		require.NoError(t, err)
		run := ctStart(t, c)
		var unblockOnce sync.Once
		t.Cleanup(func() { unblockOnce.Do(func() { close(unblock) }) }) // before run's cleanup

		// All 8 were fetched at once for 2 idle workers; each runs one.
		running := []string{ctRecv(t, entered, "first handler"), ctRecv(t, entered, "second handler")}
		run.cancel()
		unblockOnce.Do(func() { close(unblock) })
		require.NoError(t, run.wait(t))

		for range 2 {
			require.NoError(t, <-ctxErrs, "a running handler's context was cancelled by the shutdown signal")
		}
		require.Empty(t, entered, "a handler started after shutdown began")
		require.Equal(t, map[string]int{running[0]: 1, running[1]: 1}, ctEffects(t, pool), "running handlers' work must commit")
		require.Equal(t, 6, ctQueueLen(t, pool))
		for _, id := range ids {
			if slices.Contains(running, id) {
				continue
			}
			row := ctGetRow(t, pool, id)
			require.Equal(t, "available", row.State, id)
			require.Equal(t, 0, row.Attempt, "%s was never started; its attempt must be given back", id)
			require.Empty(t, row.Errors, id)
			require.Nil(t, row.LeaseToken, id)
		}
		noOrphans(t, pool)
	})

	t.Run("handler outlives timeout", func(t *testing.T) {
		t.Parallel()
		q, pool := newQueue(t, queue.Config{Backoff: ctSmallBackoff})
		ctCreateEffects(t, pool)
		ctEnqueueAll(t, q, []string{"slow"})

		entered := make(chan struct{}, 1)
		ctxErrs := make(chan error, 1)
		c, err := queue.NewConsumer(q, queue.ConsumerConfig{
			Workers:         1,
			TxBatch:         1,
			ShutdownTimeout: 200 * time.Millisecond,
			Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
				if err := ctWriteEffect(ctx, tx, ev.ID); err != nil {
					return err
				}
				entered <- struct{}{}
				<-ctx.Done()
				ctxErrs <- ctx.Err()
				return ctx.Err()
			},
		})
		require.NoError(t, err)
		run := ctStart(t, c)
		ctRecv(t, entered, "handler")
		run.cancel()
		require.NoError(t, run.wait(t))
		require.ErrorIs(t, <-ctxErrs, context.Canceled)

		row := ctGetRow(t, pool, "slow")
		require.Equal(t, "available", row.State)
		require.Equal(t, 1, row.Attempt, "the cancelled run could have had effects: its attempt counts")
		require.Len(t, row.Errors, 1)
		require.Equal(t, 1, row.Errors[0].Attempt)
		require.Contains(t, row.Errors[0].Error, "context canceled")
		require.Nil(t, row.LeaseToken)
		require.Empty(t, ctEffects(t, pool), "the cancelled handler's writes must be rolled back")
		noOrphans(t, pool)

		// The event was not lost: the next consumer runs it.
		var rec ctRecorder
		c2, err := queue.NewConsumer(q, queue.ConsumerConfig{
			PollInterval: 20 * time.Millisecond,
			Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
				rec.add(ev, 0)
				return ctWriteEffect(ctx, tx, ev.ID)
			},
		})
		require.NoError(t, err)
		runConsumer(t, c2)
		dbtest.Eventually(t, 20*time.Second, "queue drained", func() bool { return ctQueueLen(t, pool) == 0 })
		calls := rec.byID()["slow"]
		require.Len(t, calls, 1)
		require.Equal(t, 2, calls[0].Attempt)
		require.Equal(t, map[string]int{"slow": 1}, ctEffects(t, pool))
	})

	// Events fetched ahead go back as soon as shutdown begins, not when a
	// worker is free to take them: a process killed while its handlers
	// finish must not leave them leased, to lose an attempt to the
	// rescuer.
	t.Run("events fetched ahead are released at once", func(t *testing.T) {
		t.Parallel()
		q, pool := newQueue(t, queue.Config{})
		ctCreateEffects(t, pool)
		ctEnqueueAll(t, q, []string{"slow", "next"})
		entered := make(chan struct{}, 1)
		unblock := make(chan struct{})
		c, err := queue.NewConsumer(q, queue.ConsumerConfig{
			Workers:         1,
			ShutdownTimeout: time.Minute,
			Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
				if ev.ID == "slow" {
					entered <- struct{}{}
					<-unblock
				}
				return ctWriteEffect(ctx, tx, ev.ID)
			},
		})
		require.NoError(t, err)
		run := ctStart(t, c)
		var unblockOnce sync.Once
		t.Cleanup(func() { unblockOnce.Do(func() { close(unblock) }) })
		ctRecv(t, entered, "the slow handler")
		require.Equal(t, "running", ctGetRow(t, pool, "next").State, "next was fetched ahead")

		run.cancel()
		dbtest.Eventually(t, 10*time.Second, "next released while slow still runs", func() bool {
			return ctGetRow(t, pool, "next").State == "available"
		})
		row := ctGetRow(t, pool, "next")
		require.Equal(t, 0, row.Attempt, "next never started: its attempt is given back")
		require.Nil(t, row.LeaseToken)
		unblockOnce.Do(func() { close(unblock) })
		require.NoError(t, run.wait(t))
		require.Equal(t, map[string]int{"slow": 1}, ctEffects(t, pool))
		noOrphans(t, pool)
	})

	// A handler that outlives the timeout fails alone: the events that
	// completed before it in the same transaction still commit. Before,
	// the rollback to its savepoint ran on its cancelled context, failed,
	// and took the whole transaction with it.
	t.Run("handler outlives timeout after others completed", func(t *testing.T) {
		t.Parallel()
		q, pool := newQueue(t, queue.Config{Backoff: ctSmallBackoff})
		ctCreateEffects(t, pool)
		warm := make([]string, 20)
		for i := range warm {
			warm[i] = fmt.Sprintf("w%d", i)
		}
		ctEnqueueAll(t, q, warm)

		entered := make(chan struct{}, 1)
		var mu sync.Mutex
		txOf := map[string]int64{}
		c, err := queue.NewConsumer(q, queue.ConsumerConfig{
			Workers:         1,
			TxBatch:         10,
			MaxTxDuration:   10 * time.Second,
			ShutdownTimeout: 200 * time.Millisecond,
			Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
				var txid int64
				if err := tx.QueryRow(ctx, `SELECT txid_current()`).Scan(&txid); err != nil {
					return err
				}
				mu.Lock()
				txOf[ev.ID] = txid
				mu.Unlock()
				if err := ctWriteEffect(ctx, tx, ev.ID); err != nil {
					return err
				}
				if ev.ID == "e1" {
					entered <- struct{}{}
					<-ctx.Done()
					return ctx.Err()
				}
				return nil
			},
		})
		require.NoError(t, err)
		run := ctStart(t, c)
		// Warmed up, the worker's chunks grow to hold several events.
		dbtest.Eventually(t, 20*time.Second, "the warm-up drained", func() bool { return ctQueueLen(t, pool) == 0 })
		// Six events for two chunks (one running, one fetched ahead):
		// e0, e1 and e2 share the first.
		others := []string{"e2", "e3", "e4", "e5"}
		ctEnqueueAll(t, q, append([]string{"e0", "e1"}, others...))
		ctRecv(t, entered, "the slow handler")
		run.cancel()
		require.NoError(t, run.wait(t))

		mu.Lock()
		require.Equal(t, txOf["e0"], txOf["e1"], "e0 and e1 ran in one transaction")
		mu.Unlock()
		effects := ctEffects(t, pool)
		require.Equal(t, 1, effects["e0"], "e0 completed before the timeout: its work commits")
		require.Zero(t, effects["e1"], "the cancelled handler's writes are rolled back")
		require.Equal(t, 5, ctQueueLen(t, pool))
		row := ctGetRow(t, pool, "e1")
		require.Equal(t, "available", row.State)
		require.Equal(t, 1, row.Attempt, "the cancelled run counts its attempt")
		for _, id := range others {
			row = ctGetRow(t, pool, id)
			require.Equal(t, "available", row.State, id)
			require.Equal(t, 0, row.Attempt, "%s never started: its attempt is given back", id)
		}
		noOrphans(t, pool)
	})
}

// 9. An idle consumer with an hour-long poll interval wakes for new events:
// at once from an Enqueue on its own Queue (even with PollOnly), and through
// LISTEN/NOTIFY from another instance.
func TestConsumerWakeups(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	newConsumer := func(t *testing.T, q *queue.Queue, pollOnly bool) <-chan string {
		handled := make(chan string, 10)
		c, err := queue.NewConsumer(q, queue.ConsumerConfig{
			Workers:      1,
			PollInterval: time.Hour,
			PollOnly:     pollOnly,
			Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
				handled <- ev.ID
				return nil
			},
		})
		require.NoError(t, err)
		runConsumer(t, c)
		return handled
	}

	t.Run("local", func(t *testing.T) {
		t.Parallel()
		// PollOnly: no LISTEN, so only the in-process wake-up can deliver.
		q, _ := newQueue(t, queue.Config{})
		handled := newConsumer(t, q, true)
		for _, id := range []string{"w1", "w2", "w3"} {
			// Each event is enqueued after the previous one was handled, so
			// after the consumer's last fetch: only a wake-up finds it.
			_, err := q.Enqueue(ctx, event("s", id))
			require.NoError(t, err)
			require.Equal(t, id, ctRecv(t, handled, id))
		}
	})

	t.Run("notify", func(t *testing.T) {
		t.Parallel()
		pool := dbtest.Pool(t)
		consumerQ, err := queue.New(pool, queue.Config{})
		require.NoError(t, err)
		t.Cleanup(consumerQ.Close)
		producerQ, err := queue.New(pool, queue.Config{}) // another instance: no in-process wake-up
		require.NoError(t, err)
		t.Cleanup(producerQ.Close)

		handled := newConsumer(t, consumerQ, false)
		dbtest.Eventually(t, 20*time.Second, "consumer LISTENing", func() bool {
			return dbtest.Count(t, pool, `SELECT count(*) FROM pg_stat_activity
				WHERE datname = current_database() AND state = 'idle' AND query LIKE 'LISTEN %'`) == 1
		})
		for _, id := range []string{"n1", "n2", "n3"} {
			_, err := producerQ.Enqueue(ctx, event("s", id))
			require.NoError(t, err)
			require.Equal(t, id, ctRecv(t, handled, id))
		}
	})
}

// 10. NewConsumer refuses configurations that cannot work.
func TestNewConsumerValidation(t *testing.T) {
	t.Parallel()
	handler := func(context.Context, pgx.Tx, *queue.Event) error { return nil }

	small, err := queue.New(dbtest.PoolWith(t, dbtest.Options{MaxConns: 3}), queue.Config{})
	require.NoError(t, err)
	t.Cleanup(small.Close)
	require.Equal(t, 4, queue.ConnsNeeded(2))
	_, err = queue.NewConsumer(small, queue.ConsumerConfig{Handler: handler, Workers: 2})
	require.ErrorIs(t, err, queue.ErrPoolTooSmall)
	_, err = queue.NewConsumer(small, queue.ConsumerConfig{Handler: handler})
	require.ErrorIs(t, err, queue.ErrPoolTooSmall, "default Workers")
	_, err = queue.NewConsumer(small, queue.ConsumerConfig{Handler: handler, Workers: 1})
	require.NoError(t, err, "ConnsNeeded(1) == MaxConns is enough")

	q, _ := newQueue(t, queue.Config{})
	_, err = queue.NewConsumer(q, queue.ConsumerConfig{})
	require.ErrorIs(t, err, queue.ErrInvalidConfig, "nil Handler")
	_, err = queue.NewConsumer(q, queue.ConsumerConfig{Handler: handler, TxBatch: queue.MaxTxBatch + 1})
	require.ErrorIs(t, err, queue.ErrInvalidConfig, "TxBatch over MaxTxBatch")
	_, err = queue.NewConsumer(q, queue.ConsumerConfig{Handler: handler, TxBatch: queue.MaxTxBatch})
	require.NoError(t, err)
	_, err = queue.NewConsumer(q, queue.ConsumerConfig{Handler: handler, BatchKey: func(*queue.Event) (string, int) { return "", 0 }})
	require.ErrorIs(t, err, queue.ErrInvalidConfig, "BatchKey without BatchHandler")
}

// 10b. Run refuses to run twice at once, without disturbing the first Run.
func TestConsumerRunTwice(t *testing.T) {
	t.Parallel()
	q, pool := newQueue(t, queue.Config{})
	entered := make(chan struct{}, 1)
	unblock := make(chan struct{})
	c, err := queue.NewConsumer(q, queue.ConsumerConfig{
		Workers: 1,
		Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
			entered <- struct{}{}
			<-unblock
			return nil
		},
	})
	require.NoError(t, err)
	stop := runConsumer(t, c)
	var unblockOnce sync.Once
	t.Cleanup(func() { unblockOnce.Do(func() { close(unblock) }) }) // runs before stop
	_, err = q.Enqueue(context.Background(), event("s", "1"))
	require.NoError(t, err)
	ctRecv(t, entered, "handler") // the first Run is certainly running

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	second := make(chan error, 1)
	go func() { second <- c.Run(ctx) }()
	require.Error(t, ctRecv(t, second, "second Run to return"))

	unblockOnce.Do(func() { close(unblock) })
	dbtest.Eventually(t, 20*time.Second, "first Run completes its event", func() bool { return ctQueueLen(t, pool) == 0 })
	stop()
}

// 10c. Closing the pool under Run ends it, after the same graceful
// shutdown as ctx would start, with an error wrapping ErrPoolClosed: a
// closed pool never serves again, and retrying every PollInterval would
// only log a failed fetch each time until ctx ended.
func TestConsumerRunEndsWhenItsPoolIsClosed(t *testing.T) {
	t.Parallel()
	q, pool := newQueue(t, queue.Config{Backoff: ctSmallBackoff})
	ctCreateEffects(t, pool)
	ctEnqueueAll(t, q, []string{"before"})
	c, err := queue.NewConsumer(q, queue.ConsumerConfig{
		Workers:      1,
		PollInterval: 20 * time.Millisecond,
		Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
			return ctWriteEffect(ctx, tx, ev.ID)
		},
	})
	require.NoError(t, err)
	run := ctStart(t, c)
	dbtest.Eventually(t, 20*time.Second, "the event to be processed", func() bool { return ctQueueLen(t, pool) == 0 })

	pool.Close()
	require.ErrorIs(t, run.wait(t), queue.ErrPoolClosed)
}

// 11. A handler cannot end the transaction it was given: Commit and
// Rollback return ErrTxOwned and do nothing.
func TestConsumerHandlerCannotEndTx(t *testing.T) {
	t.Parallel()
	q, pool := newQueue(t, queue.Config{Backoff: ctSmallBackoff})
	ctCreateEffects(t, pool)
	ctEnqueueAll(t, q, []string{"t1"})

	var commitErr, rollbackErr atomic.Pointer[error]
	c, err := queue.NewConsumer(q, queue.ConsumerConfig{
		Workers:      1,
		PollInterval: 20 * time.Millisecond,
		Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
			if err := ctWriteEffect(ctx, tx, ev.ID); err != nil {
				return err
			}
			if ev.Attempt == 1 {
				err := tx.Commit(ctx)
				commitErr.Store(&err)
				return errors.New("fail after trying to commit") // the write must not have been committed
			}
			err := tx.Rollback(ctx)
			rollbackErr.Store(&err)
			return nil // the write must not have been rolled back
		},
	})
	require.NoError(t, err)
	runConsumer(t, c)
	dbtest.Eventually(t, 20*time.Second, "queue drained", func() bool { return ctQueueLen(t, pool) == 0 })

	require.NotNil(t, commitErr.Load())
	require.ErrorIs(t, *commitErr.Load(), queue.ErrTxOwned)
	require.NotNil(t, rollbackErr.Load())
	require.ErrorIs(t, *rollbackErr.Load(), queue.ErrTxOwned)
	require.Equal(t, map[string]int{"t1": 1}, ctEffects(t, pool),
		"Commit must not have committed the failed first run, Rollback must not have undone the second")
	noOrphans(t, pool)
}

// A handler's first statement may take any form pgx's Exec takes: several
// statements in one string without arguments (sent by the simple
// protocol), a QueryExecMode argument, named arguments. Each runs, under
// its event's savepoint: the writes of a run that fails are rolled back
// while its neighbour's commit.
func TestConsumerHandlerExecForms(t *testing.T) {
	t.Parallel()
	const upsert = `INSERT INTO effects (event_id, n) VALUES (%s, 1)
		ON CONFLICT (event_id) DO UPDATE SET n = effects.n + 1`
	forms := map[string]func(ctx context.Context, tx pgx.Tx, id string) error{
		"several statements": func(ctx context.Context, tx pgx.Tx, id string) error {
			_, err := tx.Exec(ctx, fmt.Sprintf(upsert, "'"+id+"'")+`; SELECT 1`)
			return err
		},
		"QueryExecMode": func(ctx context.Context, tx pgx.Tx, id string) error {
			_, err := tx.Exec(ctx, fmt.Sprintf(upsert, "$1"), pgx.QueryExecModeSimpleProtocol, id)
			return err
		},
		"named arguments": func(ctx context.Context, tx pgx.Tx, id string) error {
			_, err := tx.Exec(ctx, fmt.Sprintf(upsert, "@id"), pgx.NamedArgs{"id": id})
			return err
		},
	}
	for name, write := range forms {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			q, pool := newQueue(t, queue.Config{MaxAttempts: 2, Backoff: ctSmallBackoff})
			ctCreateEffects(t, pool)
			ctEnqueueAll(t, q, []string{"f1", "f2"})
			var failures sync.Map // event id -> the error of a write that failed
			c, err := queue.NewConsumer(q, queue.ConsumerConfig{
				Workers:       1, // one worker, so both events share a transaction
				TxBatch:       2,
				MaxTxDuration: time.Minute,
				PollInterval:  20 * time.Millisecond,
				Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
					if err := write(ctx, tx, ev.ID); err != nil {
						failures.Store(ev.ID, err)
						return err
					}
					if ev.ID == "f1" && ev.Attempt == 1 {
						return errors.New("f1 fails once, after its write")
					}
					return nil
				},
			})
			require.NoError(t, err)
			runConsumer(t, c)
			dbtest.Eventually(t, 20*time.Second, "no event left to run", func() bool {
				return dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue WHERE state <> 'exhausted'`) == 0
			})
			failures.Range(func(id, err any) bool {
				t.Errorf("the write of %v failed: %v", id, err)
				return true
			})
			require.Zero(t, ctQueueLen(t, pool), "exhausted events")
			require.Equal(t, map[string]int{"f1": 1, "f2": 1}, ctEffects(t, pool),
				"f1's failed first run must have been rolled back")
		})
	}
}

// A Consumer's heartbeats extend a running event's lease in the database
// and leave the Event its handler holds alone: the handler may read it,
// Lease included, while they run (go test -race would report the write).
func TestConsumerHeartbeatLeavesTheHandlersEvent(t *testing.T) {
	t.Parallel()
	q, pool := newQueue(t, queue.Config{LeaseDuration: time.Second})
	ctEnqueueAll(t, q, []string{"h1"})
	handled := make(chan error, 1)
	c, err := queue.NewConsumer(q, queue.ConsumerConfig{
		Workers:           1,
		HeartbeatInterval: 10 * time.Millisecond,
		Handler: func(ctx context.Context, _ pgx.Tx, ev *queue.Event) error {
			granted := ev.Lease.ExpiresAt
			// Two extensions in the database: the first heartbeat has
			// returned, and done whatever it does to ev.
			extended := granted
			for range 2 {
				last := extended
				deadline := time.Now().Add(20 * time.Second)
				for !extended.After(last) {
					if time.Now().After(deadline) {
						handled <- errors.New("the lease was not extended")
						return nil
					}
					if err := pool.QueryRow(ctx, `SELECT lease_expires_at FROM wharf.queue WHERE id = $1`, ev.QueueID).Scan(&extended); err != nil {
						handled <- err
						return nil
					}
					_ = ev.Lease.ExpiresAt // read meanwhile, as a handler may
				}
			}
			if !ev.Lease.ExpiresAt.Equal(granted) {
				handled <- fmt.Errorf("the handler's event changed under it: Lease.ExpiresAt %s, granted %s", ev.Lease.ExpiresAt, granted)
				return nil
			}
			handled <- nil
			return nil
		},
	})
	require.NoError(t, err)
	runConsumer(t, c)
	require.NoError(t, ctRecv(t, handled, "the handler"))
	dbtest.Eventually(t, 20*time.Second, "queue drained", func() bool { return ctQueueLen(t, pool) == 0 })
}

// 12. A worker that lost its lease mid-handler (its heartbeats stalled, the
// rescuer gave the event to another run) changes nothing when it finishes:
// the current lease holder's run is the one effect that commits.
func TestConsumerLeaseLostMidHandler(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cfg := queue.Config{LeaseDuration: time.Second, Backoff: ctSmallBackoff}
	q, pool := newQueue(t, cfg)
	rescuer, err := queue.New(pool, cfg)
	require.NoError(t, err)
	t.Cleanup(rescuer.Close)
	ctCreateEffects(t, pool)
	_, err = pool.Exec(ctx, `CREATE TABLE winner (event_id text PRIMARY KEY, attempt int NOT NULL)`)
	require.NoError(t, err)
	ctEnqueueAll(t, q, []string{"race"})

	var rec ctRecorder
	firstIn := make(chan struct{}, 1)
	secondIn := make(chan struct{}, 1)
	unblock := make(chan struct{})
	c, err := queue.NewConsumer(q, queue.ConsumerConfig{
		Workers:      2,
		TxBatch:      1,
		PollInterval: 20 * time.Millisecond,
		Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
			rec.add(ev, 0)
			if ev.Attempt > 1 {
				secondIn <- struct{}{} // its writes wait for the first run's transaction to end
			}
			if err := ctWriteEffect(ctx, tx, ev.ID); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `INSERT INTO winner (event_id, attempt) VALUES ($1, $2)`, ev.ID, ev.Attempt); err != nil {
				return err
			}
			if ev.Attempt == 1 {
				firstIn <- struct{}{}
				<-unblock
			}
			return nil
		},
	})
	require.NoError(t, err)
	runConsumer(t, c)
	var unblockOnce sync.Once
	t.Cleanup(func() { unblockOnce.Do(func() { close(unblock) }) })
	ctRecv(t, firstIn, "first run")

	// Expire the lease as if the worker's heartbeats had stalled, and rescue
	// it (again if a heartbeat extended it in between).
	dbtest.Eventually(t, 20*time.Second, "lease rescued", func() bool {
		uctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_, err := pool.Exec(uctx, `UPDATE wharf.queue SET lease_expires_at = now() - interval '1 second'
			WHERE event_id = 'race' AND state = 'running'`)
		require.NoError(t, err)
		n, err := rescuer.Rescue(ctx, 10)
		require.NoError(t, err)
		return n == 1
	})
	ctRecv(t, secondIn, "second run")
	unblockOnce.Do(func() { close(unblock) }) // the stale run returns nil; its completion must fail
	dbtest.Eventually(t, 20*time.Second, "queue drained", func() bool { return ctQueueLen(t, pool) == 0 })

	require.Equal(t, map[string]int{"race": 1}, ctEffects(t, pool))
	var winner int
	require.NoError(t, pool.QueryRow(ctx, `SELECT attempt FROM winner WHERE event_id = 'race'`).Scan(&winner))
	require.Equal(t, 2, winner, "the run whose lease was lost committed its work")
	calls := rec.byID()["race"]
	require.Len(t, calls, 2)
	require.Equal(t, 2, calls[1].Attempt)
	require.Len(t, calls[1].Errors, 1)
	require.Contains(t, calls[1].Errors[0].Error, "lease expired")
	noOrphans(t, pool)
}

// 13. When an event with an ordering key completes, the next event of its
// key is due at once, and an idle consumer must run it without waiting for
// its poll interval: otherwise, in a quiet period, a key's backlog drains at
// one event per PollInterval (1s by default) while workers sit idle.
// PollOnly rules out the LISTEN connection's start-up wake-up; the hour-long
// poll interval stands for "never" within the test's deadline.
func TestConsumerOrderingKeySuccessorRunsWithoutPolling(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, _ := newQueue(t, queue.Config{})
	ids := []string{"k-1", "k-2", "k-3"}
	for _, id := range ids { // stored before Run: no Enqueue wakes the consumer later
		ev := event("s", id)
		ev.OrderingKey = "k"
		_, err := q.Enqueue(ctx, ev)
		require.NoError(t, err)
	}
	handled := make(chan string, len(ids))
	c, err := queue.NewConsumer(q, queue.ConsumerConfig{
		Workers:      2,
		PollInterval: time.Hour,
		PollOnly:     true,
		Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
			handled <- ev.ID
			return nil
		},
	})
	require.NoError(t, err)
	runConsumer(t, c)
	for _, id := range ids {
		require.Equal(t, id, ctRecv(t, handled, id+" (its predecessor's completion must wake the fetcher)"))
	}
}
