package queue_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/queue"
)

// btWriteEffects records one run of each event's handler in tx, in one
// statement, as a batch handler would.
func btWriteEffects(ctx context.Context, tx pgx.Tx, evs []*queue.Event) error {
	ids := make([]string, len(evs))
	for i, ev := range evs {
		ids[i] = ev.ID
	}
	_, err := tx.Exec(ctx, `INSERT INTO effects (event_id, n) SELECT unnest($1::text[]), 1
		ON CONFLICT (event_id) DO UPDATE SET n = effects.n + 1`, ids)
	return err
}

// btCalls records which events each handler was called with.
type btCalls struct {
	mu      sync.Mutex
	batches [][]string // BatchHandler calls
	singles []ctCall   // Handler calls
}

func (c *btCalls) batch(evs []*queue.Event) {
	ids := make([]string, len(evs))
	for i, ev := range evs {
		ids[i] = ev.ID
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.batches = append(c.batches, ids)
}

func (c *btCalls) single(ev *queue.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.singles = append(c.singles, ctCall{ID: ev.ID, Attempt: ev.Attempt, Errors: ev.Errors})
}

// btBatchKey puts the events with an even number in batch "even" and
// leaves the others to run alone.
func btBatchKey(ev *queue.Event) (string, int) {
	if strings.IndexAny(ev.ID[len(ev.ID)-1:], "02468") == 0 {
		return "even", 0
	}
	return "", 0
}

// btRecording is a config for transactions of up to 40 events, batched by
// key, whose handlers record their calls in calls and write each event's
// effect.
func btRecording(calls *btCalls, key func(*queue.Event) (string, int)) queue.ConsumerConfig {
	return queue.ConsumerConfig{
		TxBatch:       40,
		MaxTxDuration: time.Minute,
		BatchKey:      key,
		BatchHandler: func(ctx context.Context, tx pgx.Tx, evs []*queue.Event) error {
			calls.batch(evs)
			return btWriteEffects(ctx, tx, evs)
		},
		Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
			calls.single(ev)
			return ctWriteEffect(ctx, tx, ev.ID)
		},
	}
}

// btDrain runs a one-worker consumer with cfg until the queue is empty
// and requires every one of ids to have exactly one effect.
func btDrain(t *testing.T, q *queue.Queue, pool *pgxpool.Pool, ids []string, cfg queue.ConsumerConfig) {
	t.Helper()
	cfg.Workers = 1
	c, err := queue.NewConsumer(q, cfg)
	require.NoError(t, err)
	stop := runConsumer(t, c)
	dbtest.Eventually(t, 20*time.Second, "queue drained", func() bool { return ctQueueLen(t, pool) == 0 })
	stop()
	effects := ctEffects(t, pool)
	require.Len(t, effects, len(ids))
	for _, id := range ids {
		require.Equal(t, 1, effects[id], "effect of %s (a failed batch's writes must be rolled back)", id)
	}
}

// Events that BatchKey groups run in one BatchHandler call, under one
// savepoint, in the same transaction as the events that run alone; all
// commit once.
func TestConsumerBatchHandlerRunsGroupsInOneCall(t *testing.T) {
	t.Parallel()
	q, pool, ids := ctBacklog(t, "e", 40)

	var calls btCalls
	btDrain(t, q, pool, ids, btRecording(&calls, btBatchKey))
	calls.mu.Lock()
	defer calls.mu.Unlock()
	// A worker's first chunk holds one event (chunks grow with the
	// measured pace), so an even event may run alone; none runs twice.
	batched := map[string]bool{}
	for _, b := range calls.batches {
		require.GreaterOrEqual(t, len(b), 2, "a group of one runs through Handler")
		for _, id := range b {
			key, _ := btBatchKey(&queue.Event{ID: id})
			require.Equal(t, "even", key, "%s ran in a batch", id)
			require.False(t, batched[id], "%s ran in two batches", id)
			batched[id] = true
		}
	}
	require.NotEmpty(t, calls.batches)
	require.Less(t, len(calls.batches), len(batched), "batched events shared calls")
	alone := map[string]bool{}
	for _, s := range calls.singles {
		require.False(t, batched[s.ID], "%s ran both in a batch and alone", s.ID)
		require.False(t, alone[s.ID], "%s ran alone twice", s.ID)
		require.Equal(t, 1, s.Attempt)
		alone[s.ID] = true
	}
	require.Len(t, ids, len(batched)+len(alone), "every event ran once")
	noOrphans(t, pool)
}

// A key's limit caps the events of one BatchHandler call: a larger group
// of one transaction runs in several calls, and a remainder of one runs
// alone, after the calls and with the events that have no key.
func TestConsumerUnitsSplitAGroupAtItsLimit(t *testing.T) {
	t.Parallel()
	q, _ := newQueue(t, queue.Config{})
	c, err := queue.NewConsumer(q, queue.ConsumerConfig{
		Handler: func(context.Context, pgx.Tx, *queue.Event) error { return nil },
		BatchKey: func(ev *queue.Event) (string, int) {
			if strings.HasPrefix(ev.ID, "k") {
				return "k", 3
			}
			return "", 0
		},
		BatchHandler: func(context.Context, pgx.Tx, []*queue.Event) error { return nil },
	})
	require.NoError(t, err)
	var evs []*queue.Event
	for _, id := range []string{"k1", "x1", "k2", "k3", "k4", "k5", "x2", "k6", "k7"} {
		evs = append(evs, &queue.Event{ID: id})
	}
	var got [][]string
	for _, u := range c.Units(evs) {
		var ids []string
		for _, ev := range u {
			ids = append(ids, ev.ID)
		}
		got = append(got, ids)
	}
	require.Equal(t, [][]string{{"k1", "k2", "k3"}, {"k4", "k5", "k6"}, {"x1"}, {"x2"}, {"k7"}}, got)
}

// The limit holds in a running consumer: no call exceeds it, and calls of
// the full limit are made.
func TestConsumerBatchKeyLimitCapsACall(t *testing.T) {
	t.Parallel()
	q, pool, ids := ctBacklog(t, "e", 40)

	var calls btCalls
	btDrain(t, q, pool, ids, btRecording(&calls, func(*queue.Event) (string, int) { return "all", 3 }))
	calls.mu.Lock()
	defer calls.mu.Unlock()
	largest := 0
	for _, b := range calls.batches {
		require.LessOrEqual(t, len(b), 3, "a call over the limit: %v", b)
		largest = max(largest, len(b))
	}
	require.Equal(t, 3, largest, "transactions of more than 3 events made calls of 3")
	noOrphans(t, pool)
}

// A batch that fails is rolled back whole, and its events run again one by
// one in Handler: only the event that fails alone spends an attempt.
func TestConsumerBatchFailureSplitsTheBatch(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		fail func(ctx context.Context, tx pgx.Tx) error // after the batch wrote its effects
	}{
		{"error", func(context.Context, pgx.Tx) error { return errors.New("e4 is poison") }},
		{"swallowed SQL error", func(ctx context.Context, tx pgx.Tx) error {
			_, _ = tx.Exec(ctx, `SELECT 1 / 0`)
			return nil
		}},
		{"panic", func(context.Context, pgx.Tx) error { panic("e4 blew up the batch") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			q, pool := newQueue(t, queue.Config{Backoff: ctSmallBackoff})
			ctCreateEffects(t, pool)
			ids := ctIDs("e", 10)
			ctEnqueueAll(t, q, ids)

			var calls btCalls
			btDrain(t, q, pool, ids, queue.ConsumerConfig{
				TxBatch:       10,
				MaxTxDuration: time.Minute,
				PollInterval:  20 * time.Millisecond,
				BatchKey:      func(*queue.Event) (string, int) { return "all", 0 },
				BatchHandler: func(ctx context.Context, tx pgx.Tx, evs []*queue.Event) error {
					calls.batch(evs)
					if err := btWriteEffects(ctx, tx, evs); err != nil {
						return err
					}
					for _, ev := range evs {
						if ev.ID == "e4" {
							return tc.fail(ctx, tx)
						}
					}
					return nil
				},
				Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
					calls.single(ev)
					if err := ctWriteEffect(ctx, tx, ev.ID); err != nil {
						return err
					}
					if ev.ID == "e4" && ev.Attempt == 1 {
						return errors.New("e4 fails alone too")
					}
					return nil
				},
			})
			calls.mu.Lock()
			defer calls.mu.Unlock()
			require.NotEmpty(t, calls.batches)
			require.Contains(t, calls.batches[0], "e4")
			runs := map[string][]ctCall{}
			for _, s := range calls.singles {
				runs[s.ID] = append(runs[s.ID], s)
			}
			for _, id := range calls.batches[0] {
				if id == "e4" {
					continue
				}
				require.Len(t, runs[id], 1, "%s ran alone once after its batch failed", id)
				require.Equal(t, 1, runs[id][0].Attempt, "%s: a failed batch spends no attempt", id)
			}
			e4 := runs["e4"]
			require.Len(t, e4, 2, "e4 failed alone once, then succeeded")
			require.Equal(t, 1, e4[0].Attempt)
			require.Equal(t, 2, e4[1].Attempt)
			require.Len(t, e4[1].Errors, 1, "only e4's own failure is in its history")
			require.Contains(t, e4[1].Errors[0].Error, "e4 fails alone too")
			noOrphans(t, pool)
		})
	}
}

// A batch that returns a deferral defers every event of it, attempts given
// back, without running them one by one; a counted one counts for each.
func TestConsumerBatchDeferDefersTheWholeBatch(t *testing.T) {
	t.Parallel()
	q, pool, ids := ctBacklog(t, "d", 6)

	var calls btCalls
	c, err := queue.NewConsumer(q, queue.ConsumerConfig{
		Workers:       1,
		TxBatch:       6,
		MaxTxDuration: time.Minute,
		BatchKey:      func(*queue.Event) (string, int) { return "all", 0 },
		BatchHandler: func(ctx context.Context, tx pgx.Tx, evs []*queue.Event) error {
			calls.batch(evs)
			if err := btWriteEffects(ctx, tx, evs); err != nil {
				return err
			}
			return queue.DeferCounted(time.Now().Add(time.Hour), errors.New("downstream busy"))
		},
		Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
			// A worker's first chunk holds one event, which runs alone.
			calls.single(ev)
			return queue.DeferCounted(time.Now().Add(time.Hour), errors.New("downstream busy"))
		},
	})
	require.NoError(t, err)
	stop := runConsumer(t, c)
	dbtest.Eventually(t, 20*time.Second, "every event deferred", func() bool {
		return dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue
			WHERE state = 'available' AND run_at > now() + interval '30 minutes'`) == len(ids)
	})
	stop()

	for _, id := range ids {
		row := ctGetRow(t, pool, id)
		require.Zero(t, row.Attempt, "%s: the deferred attempt was not given back", id)
		require.Empty(t, row.Errors, "%s: a deferral is not a failure", id)
		require.Equal(t, 1, row.Deferrals, "%s: its deferral counted once", id)
	}
	require.Empty(t, ctEffects(t, pool), "the deferred batch's writes must be rolled back")
	calls.mu.Lock()
	defer calls.mu.Unlock()
	require.NotEmpty(t, calls.batches)
	for _, s := range calls.singles {
		for _, b := range calls.batches {
			require.NotContains(t, b, s.ID, "a deferred batch's events do not run one by one")
		}
	}
	noOrphans(t, pool)
}

// A batch that fails after MaxTxDuration leaves its transaction with
// nothing run; its events then run alone in the next one, not in the same
// failing batch again.
func TestConsumerSlowFailedBatchRunsItsEventsAlone(t *testing.T) {
	t.Parallel()
	q, pool, ids := ctBacklog(t, "s", 8)

	var calls btCalls
	btDrain(t, q, pool, ids, queue.ConsumerConfig{
		TxBatch: 8,
		// Long enough that the first transaction (one event: chunks
		// start at 1) leaves room for a batch in the next, even on a
		// loaded machine.
		MaxTxDuration: 300 * time.Millisecond,
		BatchKey:      func(*queue.Event) (string, int) { return "all", 0 },
		BatchHandler: func(ctx context.Context, tx pgx.Tx, evs []*queue.Event) error {
			calls.batch(evs)
			time.Sleep(350 * time.Millisecond) // past MaxTxDuration
			return errors.New("the batch always fails")
		},
		Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
			calls.single(ev)
			return ctWriteEffect(ctx, tx, ev.ID)
		},
	})
	calls.mu.Lock()
	defer calls.mu.Unlock()
	require.NotEmpty(t, calls.batches)
	inBatch := map[string]int{}
	for _, b := range calls.batches {
		for _, id := range b {
			inBatch[id]++
			require.Equal(t, 1, inBatch[id], "%s was batched again after its batch failed", id)
		}
	}
	for _, s := range calls.singles {
		require.Equal(t, 1, s.Attempt, "%s: a failed batch spends no attempt", s.ID)
	}
}

// A batch that fails while the consumer shuts down gracefully is split,
// but its events will not run alone in this process: they are handed back
// with a failed attempt, not released with the attempt given back, since
// the batch ran them and may have had effects outside the database.
func TestConsumerBatchFailingDuringShutdownSpendsItsAttempt(t *testing.T) {
	t.Parallel()
	q, pool := newQueue(t, queue.Config{Backoff: ctSmallBackoff})
	ctCreateEffects(t, pool)

	entered := make(chan []string, 10)
	shutdown := make(chan struct{})
	var singles ctRecorder
	c, err := queue.NewConsumer(q, queue.ConsumerConfig{
		Workers:         1,
		TxBatch:         8,
		MaxTxDuration:   time.Minute,
		PollInterval:    20 * time.Millisecond,
		ShutdownTimeout: 10 * time.Second,
		BatchKey:        func(*queue.Event) (string, int) { return "all", 0 },
		BatchHandler: func(ctx context.Context, tx pgx.Tx, evs []*queue.Event) error {
			if err := btWriteEffects(ctx, tx, evs); err != nil {
				return err
			}
			ids := make([]string, len(evs))
			for i, ev := range evs {
				ids[i] = ev.ID
			}
			entered <- ids
			<-shutdown // fails while the consumer shuts down gracefully
			return errors.New("the batch failed after writing")
		},
		Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
			singles.add(ev, 0)
			return ctWriteEffect(ctx, tx, ev.ID)
		},
	})
	require.NoError(t, err)
	run := ctStart(t, c)

	// Warm up: one event alone, so that chunks grow past one event.
	ctEnqueueAll(t, q, []string{"w"})
	dbtest.Eventually(t, 20*time.Second, "warm-up done", func() bool { return ctQueueLen(t, pool) == 0 })

	ctEnqueueAll(t, q, ctIDs("b", 4))
	batch := ctRecv(t, entered, "batch call")
	require.GreaterOrEqual(t, len(batch), 2)
	run.cancel()
	close(shutdown)
	require.NoError(t, run.wait(t))

	for _, id := range batch {
		row := ctGetRow(t, pool, id)
		require.Empty(t, singles.byID()[id], "%s ran alone after shutdown", id)
		require.Equal(t, "available", row.State, id)
		require.Equal(t, 1, row.Attempt,
			"%s: its batch ran and failed, and could have had effects, but it neither ran alone nor spent an attempt", id)
		require.Len(t, row.Errors, 1, id)
		require.Contains(t, row.Errors[0].Error, "batch failed", id)
	}
}
