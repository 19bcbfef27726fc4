package wharf_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/breaker"
	"github.com/wharfhq/wharf/idempotency"
	"github.com/wharfhq/wharf/queue"
)

// batchTx is the MaxTxDuration of the tests that need events to share
// calls: a worker's first chunk holds one event, and the next ones as many
// as its transactions ran in MaxTxDuration; on a loaded machine the
// default (100ms) can keep every chunk at one event, and no call would
// hold two.
const batchTx = time.Minute

// writeEffects records one run of each event's handler, in one statement.
func writeEffects(ctx context.Context, tx pgx.Tx, evs []wharf.Event) error {
	ids := make([]string, len(evs))
	for i, ev := range evs {
		ids[i] = ev.ID
	}
	_, err := tx.Exec(ctx, `INSERT INTO effects SELECT unnest($1::text[]), 1
		ON CONFLICT (event_id) DO UPDATE SET n = effects.n + 1`, ids)
	return err
}

// batchCalls records the events of each call of a batch handler, and the
// attempt each event was processed on.
type batchCalls struct {
	mu          sync.Mutex
	calls       [][]string
	processedAt map[string]int
}

func (b *batchCalls) add(evs []wharf.Event, processed bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	ids := make([]string, len(evs))
	for i, ev := range evs {
		ids[i] = ev.ID
		if processed {
			if b.processedAt == nil {
				b.processedAt = map[string]int{}
			}
			b.processedAt[ev.ID] = ev.Attempt
		}
	}
	b.calls = append(b.calls, ids)
}

// largest returns the most events one call had.
func (b *batchCalls) largest() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, c := range b.calls {
		n = max(n, len(c))
	}
	return n
}

// sendAll posts n new events id0..id(n-1) of type typ.
func (h *harness) sendAll(prefix, typ string, n int) {
	h.t.Helper()
	for i := range n {
		require.Equal(h.t, http.StatusAccepted, h.send(fmt.Sprintf("%s%d", prefix, i), typ))
	}
}

// A batch handler gets many events per call, each exactly once, with
// their claims and audit records; an event processed before (its claim
// taken) is completed without reaching it.
func TestPipelineHandleBatchExactlyOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := newHarness(t, wharf.Config{Audit: true, Workers: 1, MaxTxDuration: batchTx})
	var calls batchCalls
	require.NoError(t, h.p.HandleBatch("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, evs []wharf.Event) error {
		calls.add(evs, true)
		return writeEffects(ctx, tx, evs)
	}))
	const n = 60
	h.sendAll("b", "order.paid", n)
	require.Equal(t, http.StatusOK, h.send("b7", "order.paid"), "a redelivery is a duplicate")
	// b9 was processed already by a delivery the queue no longer shows
	// (a redelivery racing the completion): its claim is taken.
	_, err := h.pool.Exec(ctx, `INSERT INTO wharf.processed_events (consumer, key, mode) VALUES ($1, $2, 'tx')`,
		"acme/order.paid", idempotency.Key("acme", "b9"))
	require.NoError(t, err)

	h.run()
	h.eventually("the queue empty", func() bool { return h.count(`SELECT count(*) FROM wharf.queue`) == 0 })
	require.Equal(t, n-1, h.count(`SELECT count(*) FROM effects WHERE n = 1`))
	require.Zero(t, h.count(`SELECT count(*) FROM effects WHERE n <> 1 OR event_id = 'b9'`), "b9 ran again, or an event ran twice")
	require.Equal(t, n, h.count(`SELECT count(*) FROM wharf.processed_events`))
	require.Zero(t, h.count(`SELECT count(*) FROM wharf.dead_letters`))

	calls.mu.Lock()
	seen := map[string]bool{}
	for _, c := range calls.calls {
		for _, id := range c {
			require.False(t, seen[id], "%s handed to the batch handler twice", id)
			seen[id] = true
		}
	}
	require.Len(t, seen, n-1)
	require.NotContains(t, seen, "b9")
	for id, attempt := range calls.processedAt {
		require.Equal(t, 1, attempt, id)
	}
	calls.mu.Unlock()
	require.Greater(t, calls.largest(), 1, "events shared calls")

	events, err := h.p.AuditLog().ReadStream(ctx, wharf.DeliveryStream("acme", "b3"), 1, 100)
	require.NoError(t, err)
	var types []string
	for _, e := range events {
		types = append(types, e.Type)
	}
	require.Equal(t, []string{wharf.AuditReceived, wharf.AuditProcessed}, types)
}

// An event that fails its batch is found by running the batch's events
// alone: it alone retries and dead-letters, the rest are processed on their
// first attempt, and nothing of the failed batches remains.
func TestPipelineHandleBatchPoisonFailsAlone(t *testing.T) {
	t.Parallel()
	h := newHarness(t, wharf.Config{Workers: 1, MaxTxDuration: batchTx})
	var calls batchCalls
	require.NoError(t, h.p.HandleBatch("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, evs []wharf.Event) error {
		if err := writeEffects(ctx, tx, evs); err != nil {
			return err
		}
		if slices.ContainsFunc(evs, func(ev wharf.Event) bool { return ev.ID == "p3" }) {
			calls.add(evs, false)
			return errors.New("p3 cannot be parsed")
		}
		calls.add(evs, true)
		return nil
	}, wharf.MaxAttempts(2)))
	h.sendAll("p", "order.paid", 12)
	h.run()
	h.eventually("p3 dead-lettered", func() bool { return h.count(`SELECT count(*) FROM wharf.dead_letters WHERE event_id = 'p3'`) == 1 })
	h.eventually("the queue empty", func() bool { return h.count(`SELECT count(*) FROM wharf.queue`) == 0 })
	require.Equal(t, 11, h.count(`SELECT count(*) FROM effects WHERE n = 1 AND event_id <> 'p3'`))
	require.Zero(t, h.count(`SELECT count(*) FROM effects WHERE event_id = 'p3' OR n <> 1`), "a failed batch's writes were kept")
	require.Equal(t, 2, h.count(`SELECT jsonb_array_length(errors) FROM wharf.dead_letters WHERE event_id = 'p3'`),
		"p3 spent exactly its own attempts")

	calls.mu.Lock()
	defer calls.mu.Unlock()
	require.Len(t, calls.processedAt, 11)
	for id, attempt := range calls.processedAt {
		require.Equal(t, 1, attempt, "%s: its failed batch spent none of its attempts", id)
	}
	failedBatch := false
	for _, c := range calls.calls {
		failedBatch = failedBatch || (len(c) > 1 && slices.Contains(c, "p3"))
	}
	require.True(t, failedBatch, "p3 never shared a call, so nothing was split")
}

// A batch handler behind a breaker: an outage defers whole batches without
// spending attempts or dead-lettering, and the backlog drains once the
// downstream is back.
func TestPipelineHandleBatchDownstreamOutage(t *testing.T) {
	t.Parallel()
	h, downstream := newOutageHarness(t)
	var processed batchCalls
	require.NoError(t, h.p.HandleBatch("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, evs []wharf.Event) error {
		if err := downstream.call(); err != nil {
			return err
		}
		processed.add(evs, true)
		return writeEffects(ctx, tx, evs)
	}, wharf.Downstream("ledger"), wharf.MaxAttempts(2)))
	h.sendAll("o", "order.paid", 20)
	h.run()
	h.requireOutageSpendsNothing(downstream)

	downstream.down.Store(false)
	h.eventually("the backlog drained", func() bool { return h.count(`SELECT count(*) FROM effects WHERE n = 1`) == 20 })
	h.eventually("the queue empty", func() bool { return h.count(`SELECT count(*) FROM wharf.queue`) == 0 })
	require.Zero(t, h.count(`SELECT count(*) FROM wharf.dead_letters`))
	processed.mu.Lock()
	defer processed.mu.Unlock()
	for id, attempt := range processed.processedAt {
		require.Equal(t, 1, attempt, "%s processed on its first counted attempt", id)
	}
}

// A batch call that the downstream fails while its breaker stays closed
// (it rejects one of the events) is deferred whole; its events then run
// one call each, so the rejected one holds none of the others back.
func TestPipelineHandleBatchRejectedEventHoldsNoneBack(t *testing.T) {
	t.Parallel()
	h := newHarness(t, wharf.Config{Workers: 1, MaxTxDuration: batchTx, Breakers: breaker.Config{Default: breaker.Settings{
		Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 1000,
	}}})
	var calls batchCalls
	var mu sync.Mutex
	mostDeferred := 0 // the most deferrals an event processed had
	require.NoError(t, h.p.HandleBatch("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, evs []wharf.Event) error {
		calls.add(evs, false)
		for _, ev := range evs {
			if ev.ID == "poison" {
				return &breaker.StatusError{Code: http.StatusInternalServerError}
			}
		}
		mu.Lock()
		for _, ev := range evs {
			mostDeferred = max(mostDeferred, ev.Deferrals)
		}
		mu.Unlock()
		return writeEffects(ctx, tx, evs)
	}, wharf.Downstream("ledger")))
	h.sendAll("a", "order.paid", 10)
	require.Equal(t, http.StatusAccepted, h.send("poison", "order.paid"))
	h.sendAll("b", "order.paid", 10)
	h.run()
	h.eventually("every other event processed", func() bool { return h.count(`SELECT count(*) FROM effects WHERE n = 1`) == 20 })
	h.eventually("the rejected event waiting, its deferrals counted", func() bool {
		return h.count(`SELECT count(*) FROM wharf.queue WHERE event_id = 'poison' AND attempt = 0 AND deferrals >= 2`) == 1
	})
	require.Equal(t, 1, h.count(`SELECT count(*) FROM wharf.queue`))
	require.Zero(t, h.count(`SELECT count(*) FROM wharf.dead_letters`))
	calls.mu.Lock()
	defer calls.mu.Unlock()
	shared := false
	for _, c := range calls.calls {
		shared = shared || (len(c) > 1 && slices.Contains(c, "poison"))
	}
	require.True(t, shared, "the rejected event never shared a call")
	mu.Lock()
	defer mu.Unlock()
	require.LessOrEqual(t, mostDeferred, 1, "an event deferred with the rejected one was deferred with it again")
}

// The observer sees each event of a batch: processed with the batch, or
// split when the batch failed (an error, or a statement that failed under
// a nil return) and then processed alone, under one attempt number.
func TestObserverBatchAttempts(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		fail func(ctx context.Context, tx pgx.Tx) error
		err  error // what the split attempts report, matched with ErrorIs; nil for the message below
	}{
		{"error", func(context.Context, pgx.Tx) error { return errors.New("the first batch fails") }, nil},
		{"swallowed SQL error", func(ctx context.Context, tx pgx.Tx) error {
			_, _ = tx.Exec(ctx, `SELECT 1 / 0`)
			return nil
		}, queue.ErrTxAborted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rec := &recorder{}
			h := newHarness(t, wharf.Config{Observer: rec, Workers: 1, MaxTxDuration: batchTx})
			var failed atomic.Bool
			require.NoError(t, h.p.HandleBatch("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, evs []wharf.Event) error {
				if len(evs) > 1 && !failed.Swap(true) {
					return tc.fail(ctx, tx)
				}
				return writeEffects(ctx, tx, evs)
			}))
			h.sendAll("o", "order.paid", 20)
			h.run()
			h.eventually("the queue empty", func() bool { return h.count(`SELECT count(*) FROM wharf.queue`) == 0 })
			require.Equal(t, 20, h.count(`SELECT count(*) FROM effects WHERE n = 1`))
			require.True(t, failed.Load(), "no batch ran")

			splits := 0
			for i := range 20 {
				attempts := rec.attemptsOf(fmt.Sprintf("o%d", i))
				require.NotEmpty(t, attempts)
				last := attempts[len(attempts)-1]
				require.Equal(t, wharf.AttemptProcessed, last.Outcome)
				require.Equal(t, 1, last.Number)
				require.Equal(t, "acme/order.paid", last.Handler)
				if len(attempts) == 2 {
					require.Equal(t, wharf.AttemptSplit, attempts[0].Outcome)
					require.Equal(t, 1, attempts[0].Number)
					if tc.err != nil {
						require.ErrorIs(t, attempts[0].Err, tc.err)
					} else {
						require.ErrorContains(t, attempts[0].Err, "the first batch fails")
					}
					splits++
				} else {
					require.Len(t, attempts, 1)
				}
			}
			require.Greater(t, splits, 1, "the failed batch's events were reported split")
		})
	}
}

// A batch call that outlives its handler's Timeout is cut short by
// statement_timeout, without closing the connection its transaction
// shares, and split: its events run again one call each, within the same
// timeout, and none spends an attempt on the failed call.
func TestPipelineHandleBatchTimeoutSplitsTheCall(t *testing.T) {
	t.Parallel()
	h := newHarness(t, wharf.Config{Workers: 1, MaxTxDuration: batchTx})
	var calls batchCalls
	require.NoError(t, h.p.HandleBatch("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, evs []wharf.Event) error {
		if len(evs) > 1 {
			calls.add(evs, false)
			if _, err := tx.Exec(ctx, `SELECT pg_sleep(5)`); err != nil {
				return err
			}
		} else {
			calls.add(evs, true)
		}
		return writeEffects(ctx, tx, evs)
	}, wharf.Timeout(200*time.Millisecond)))
	h.sendAll("t", "order.paid", 6)
	h.run()
	h.eventually("the queue empty", func() bool { return h.count(`SELECT count(*) FROM wharf.queue`) == 0 })
	require.Equal(t, 6, h.count(`SELECT count(*) FROM effects WHERE n = 1`))
	require.Zero(t, h.count(`SELECT count(*) FROM effects WHERE n <> 1`))
	require.Greater(t, calls.largest(), 1, "a call held several events")
	calls.mu.Lock()
	defer calls.mu.Unlock()
	require.Len(t, calls.processedAt, 6)
	for id, attempt := range calls.processedAt {
		require.Equal(t, 1, attempt, "%s: the timed-out call spent none of its attempts", id)
	}
}

// Concurrency counts a batch call as one run: with a cap of 1, two
// workers never run calls of the handler at once.
func TestPipelineHandleBatchConcurrencyCountsCalls(t *testing.T) {
	t.Parallel()
	h := newHarness(t, wharf.Config{Workers: 2})
	var running, peak atomic.Int32
	require.NoError(t, h.p.HandleBatch("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, evs []wharf.Event) error {
		n := running.Add(1)
		defer running.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		time.Sleep(20 * time.Millisecond) // long enough for the other worker to arrive
		return writeEffects(ctx, tx, evs)
	}, wharf.Concurrency(1)))
	h.sendAll("c", "order.paid", 40)
	h.run()
	h.eventually("the queue empty", func() bool { return h.count(`SELECT count(*) FROM wharf.queue`) == 0 })
	require.Equal(t, 40, h.count(`SELECT count(*) FROM effects WHERE n = 1`))
	require.EqualValues(t, 1, peak.Load(), "never two calls at once")
}

// MaxBatch caps the events of one call: a transaction with more makes
// several calls, each event still exactly once. It is refused for a Handle
// handler and for a cap under 1.
func TestPipelineHandleBatchMaxBatch(t *testing.T) {
	t.Parallel()
	h := newHarness(t, wharf.Config{Workers: 1, MaxTxDuration: batchTx})
	var calls batchCalls
	require.NoError(t, h.p.HandleBatch("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, evs []wharf.Event) error {
		calls.add(evs, true)
		return writeEffects(ctx, tx, evs)
	}, wharf.MaxBatch(4)))
	err := h.p.HandleBatch("acme", "order.refunded", func(context.Context, pgx.Tx, []wharf.Event) error { return nil }, wharf.MaxBatch(0))
	require.ErrorIs(t, err, wharf.ErrInvalidConfig)
	err = h.p.Handle("acme", "order.refunded", func(context.Context, pgx.Tx, wharf.Event) error { return nil }, wharf.MaxBatch(4))
	require.ErrorIs(t, err, wharf.ErrInvalidConfig)
	require.ErrorContains(t, err, "HandleBatch handlers only")

	const n = 60
	h.sendAll("m", "order.paid", n)
	h.run()
	h.eventually("the queue empty", func() bool { return h.count(`SELECT count(*) FROM wharf.queue`) == 0 })
	require.Equal(t, n, h.count(`SELECT count(*) FROM effects WHERE n = 1`))
	require.Zero(t, h.count(`SELECT count(*) FROM effects WHERE n <> 1`))
	require.Equal(t, 4, calls.largest(), "transactions of more than 4 events made calls of 4")
}

// Config.MaxTxDuration reaches the workers: with a nanosecond, every
// transaction stops after its first event, so no batch call holds two.
func TestPipelineMaxTxDurationSizesTransactions(t *testing.T) {
	t.Parallel()
	h := newHarness(t, wharf.Config{Workers: 1, MaxTxDuration: time.Nanosecond})
	var calls batchCalls
	require.NoError(t, h.p.HandleBatch("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, evs []wharf.Event) error {
		calls.add(evs, true)
		return writeEffects(ctx, tx, evs)
	}))
	h.sendAll("d", "order.paid", 20)
	h.run()
	h.eventually("the queue empty", func() bool { return h.count(`SELECT count(*) FROM wharf.queue`) == 0 })
	require.Equal(t, 20, h.count(`SELECT count(*) FROM effects WHERE n = 1`))
	require.Equal(t, 1, calls.largest(), "a transaction stopped after its first event")
}
