package wharf_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/breaker"
	"github.com/wharfhq/wharf/idempotency"
	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/internal/testio"
	"github.com/wharfhq/wharf/queue"
)

func TestPipelineTimeoutFailsTheAttemptAndKeepsTheBatch(t *testing.T) {
	t.Parallel()
	h := newHarness(t, wharf.Config{Workers: 1, TxBatch: 8})
	var slowRuns atomic.Int32
	require.NoError(t, h.p.Handle("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		if ev.ID == "slow" && slowRuns.Add(1) == 1 {
			// A statement that outlives the handler's timeout: Postgres
			// cancels it (statement_timeout) without closing the
			// connection the batch shares.
			if _, err := tx.Exec(ctx, `SELECT pg_sleep(5)`); err != nil {
				return err
			}
		}
		return writeEffect(ctx, tx, ev)
	}, wharf.Timeout(200*time.Millisecond)))
	require.Equal(t, http.StatusAccepted, h.send("before", "order.paid"))
	require.Equal(t, http.StatusAccepted, h.send("slow", "order.paid"))
	require.Equal(t, http.StatusAccepted, h.send("after", "order.paid"))
	h.run()
	h.eventually("all three processed", func() bool { return h.count(`SELECT count(*) FROM effects`) == 3 })
	h.eventually("the queue empty", func() bool { return h.count(`SELECT count(*) FROM wharf.queue`) == 0 })
	require.EqualValues(t, 2, slowRuns.Load(), "the timed-out run failed its attempt and ran again")
	require.Zero(t, h.count(`SELECT count(*) FROM effects WHERE n <> 1`))
}

func TestPipelineConcurrencyCap(t *testing.T) {
	t.Parallel()
	h := newHarness(t, wharf.Config{Workers: 4, TxBatch: 1})
	var running, peak atomic.Int32
	release := make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(unblock) // runs before the harness stops the workers
	require.NoError(t, h.p.Handle("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		<-release
		return writeEffect(ctx, tx, ev)
	}, wharf.Concurrency(2)))
	for _, id := range []string{"c1", "c2", "c3", "c4"} {
		require.Equal(t, http.StatusAccepted, h.send(id, "order.paid"))
	}
	h.run()
	// All four workers are inside their events' transactions, two of them
	// waiting for a slot.
	h.eventually("four workers in their transactions, two handlers running", func() bool {
		return running.Load() == 2 && h.count(`SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND state = 'idle in transaction'`) == 4
	})
	unblock()
	h.eventually("all processed", func() bool { return h.count(`SELECT count(*) FROM effects`) == 4 })
	require.EqualValues(t, 2, peak.Load(), "never more than the cap at once")
}

func TestPipelineUnhandledPolicies(t *testing.T) {
	t.Parallel()
	t.Run("complete", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, wharf.Config{Unhandled: wharf.CompleteUnhandled, Audit: true})
		require.NoError(t, h.p.Handle("acme", "order.paid", writeEffect))
		require.Equal(t, http.StatusAccepted, h.send("x1", "order.refunded"))
		h.run()
		h.eventually("the unhandled event completed", func() bool { return h.count(`SELECT count(*) FROM wharf.queue`) == 0 })
		require.Zero(t, h.count(`SELECT count(*) FROM wharf.dead_letters`))
		events, err := h.p.AuditLog().ReadStream(context.Background(), wharf.DeliveryStream("acme", "x1"), 1, 10)
		require.NoError(t, err)
		require.Len(t, events, 2)
		require.Equal(t, wharf.AuditUnhandled, events[1].Type, "and recorded")

		// Its id is recorded as processed, so that a redelivery is a
		// duplicate (invariant 3: an acknowledged id is in one place).
		require.Equal(t, 1, h.count(`SELECT count(*) FROM wharf.processed_events WHERE consumer = $1`, wharf.UnhandledConsumer))
		require.Equal(t, http.StatusOK, h.send("x1", "order.refunded"), "a redelivery of a completed event is a duplicate")
		require.Zero(t, h.count(`SELECT count(*) FROM wharf.queue`), "and makes no queue row")
	})
	t.Run("dead-letter", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, wharf.Config{Unhandled: wharf.DeadLetterUnhandled})
		require.NoError(t, h.p.Handle("acme", "order.paid", writeEffect))
		require.Equal(t, http.StatusAccepted, h.send("x2", "order.refunded"))
		h.run()
		h.eventually("the unhandled event dead-lettered", func() bool { return h.count(`SELECT count(*) FROM wharf.dead_letters`) == 1 })
		require.Zero(t, h.count(`SELECT count(*) FROM wharf.queue`))
		require.Equal(t, 1, h.count(`SELECT attempts FROM wharf.dead_letters`), "at once, not after every attempt")
		require.Equal(t, 1, h.count(`SELECT count(*) FROM wharf.dead_letters WHERE handler = ''`), "no handler took it")

		// Replayed while still unhandled, it is dead-lettered again, not
		// left waiting for a handler of a made-up name.
		var id int64
		require.NoError(t, h.pool.QueryRow(context.Background(), `SELECT id FROM wharf.dead_letters`).Scan(&id))
		_, err := h.p.Replay(context.Background(), id)
		require.NoError(t, err)
		h.eventually("the replayed event dead again", func() bool {
			return h.count(`SELECT count(*) FROM wharf.dead_letters WHERE status = 'dead'`) == 1 &&
				h.count(`SELECT count(*) FROM wharf.queue`) == 0
		})
	})
}

func TestPipelineAnswersSlackHandshake(t *testing.T) {
	t.Parallel()
	pool := dbtest.Pool(t)
	p, err := wharf.New(pool, wharf.Config{})
	require.NoError(t, err)
	t.Cleanup(p.Close)
	const secret = "8f742231b10e8888abcd99yyyzzz85a5"
	require.NoError(t, p.Source("slack", wharf.Slack(secret)))
	srv := httptest.NewServer(p.Handler("slack"))
	t.Cleanup(srv.Close)

	body := []byte(`{"token":"t","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}`)
	req, err := http.NewRequest(http.MethodPost, srv.URL, bytes.NewReader(body))
	require.NoError(t, err)
	req.Header = wharf.SignSlack(secret, time.Now(), body)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, readAll(t, resp), "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P")
	var n int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT count(*) FROM wharf.queue`).Scan(&n))
	require.Zero(t, n, "a handshake stores nothing")
}

// A redelivery that arrives while a worker is committing the event's
// completion waits on the event's key; when the worker commits, the
// redelivery is a duplicate (200, no queue row), not a second copy.
func TestPipelineRedeliveryRacingTheCompletion(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := newHarness(t, wharf.Config{})
	require.NoError(t, h.p.Handle("acme", "order.paid", writeEffect))
	require.Equal(t, http.StatusAccepted, h.send("race", "order.paid"))

	evs, err := h.p.Queue().Fetch(ctx, queue.FetchParams{Limit: 1})
	require.NoError(t, err)
	require.Len(t, evs, 1)
	tx, err := h.pool.Begin(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = tx.Rollback(ctx) })
	first, err := h.p.Idempotency().Claim(ctx, tx, "acme/order.paid", idempotency.Key("acme", "race"))
	require.NoError(t, err)
	require.True(t, first)
	require.NoError(t, h.p.Queue().CompleteTx(ctx, tx, evs[0]))

	status := make(chan int, 1)
	go func() { status <- h.send("race", "order.paid") }()
	h.eventually("the redelivery waiting on the worker's commit", func() bool {
		return h.count(`SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`) == 1
	})
	require.NoError(t, tx.Commit(ctx))
	require.Equal(t, http.StatusOK, <-status, "a duplicate of a processed event")
	require.Zero(t, h.count(`SELECT count(*) FROM wharf.queue`), "no second copy in the queue")
	require.Zero(t, h.count(`SELECT count(*) FROM wharf.queue_payloads`))
}

func TestPipelineHandlerBackoff(t *testing.T) {
	t.Parallel()
	h := newHarness(t, wharf.Config{}) // the harness's own backoff is milliseconds
	require.NoError(t, h.p.Handle("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		return errors.New("not yet")
	}, wharf.Backoff(queue.Backoff{Initial: time.Hour, Max: time.Hour, Jitter: queue.NoJitter})))
	require.Equal(t, http.StatusAccepted, h.send("b1", "order.paid"))
	h.run()
	h.eventually("the retry scheduled by the handler's backoff", func() bool {
		return h.count(`SELECT count(*) FROM wharf.queue
			WHERE attempt = 1 AND state = 'available' AND run_at > now() + interval '59 minutes'`) == 1
	})
}

func TestPipelineRateLimitConfig(t *testing.T) {
	t.Parallel()
	pool := dbtest.Pool(t)
	_, err := wharf.New(pool, wharf.Config{RateLimits: map[string]wharf.RateLimit{"ledger": {PerSecond: 0}}})
	require.ErrorIs(t, err, wharf.ErrInvalidConfig)
	var log testio.Buffer
	p, err := wharf.New(pool, wharf.Config{
		RateLimits: map[string]wharf.RateLimit{"ledger": {PerSecond: 50, Burst: 5}, "ledgr": {PerSecond: 1}},
		Logger:     slog.New(slog.NewTextHandler(&log, nil)),
	})
	require.NoError(t, err)
	defer p.Close()
	require.NoError(t, p.Source("acme", wharf.StandardWebhooks(testSecret)))
	require.NoError(t, p.Handle("acme", "order.paid", writeEffect, wharf.Downstream("ledger")))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.NoError(t, p.Run(ctx))
	// A misspelt name limits nothing; Run says so.
	require.Contains(t, log.String(), "downstream=ledgr")
	require.NotContains(t, log.String(), "downstream=ledger")
}

// A downstream's rate limit makes events wait, in the worker or back in
// the queue, without spending attempts or eating into the handler's
// Timeout: with four workers and two calls a second, every event is
// processed on its first attempt (before, the waits ran out the Timeout
// and 11 of 12 events were dead-lettered).
func TestPipelineRateLimitSpendsNoAttempts(t *testing.T) {
	t.Parallel()
	h := newHarness(t, wharf.Config{Workers: 4, MaxAttempts: 2,
		RateLimits: map[string]wharf.RateLimit{"ledger": {PerSecond: 4}}})
	var mu sync.Mutex
	attempts := map[string]int{}
	require.NoError(t, h.p.Handle("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		mu.Lock()
		attempts[ev.ID] = ev.Attempt
		mu.Unlock()
		return writeEffect(ctx, tx, ev)
	}, wharf.Downstream("ledger"), wharf.Timeout(300*time.Millisecond)))
	const events = 12
	for i := range events {
		require.Equal(t, http.StatusAccepted, h.send(fmt.Sprintf("o%d", i), "order.paid"))
	}
	h.run()
	h.eventually("every event processed", func() bool { return h.count(`SELECT count(*) FROM effects`) == events })
	require.Zero(t, h.count(`SELECT count(*) FROM wharf.dead_letters`))
	mu.Lock()
	defer mu.Unlock()
	for id, attempt := range attempts {
		require.Equal(t, 1, attempt, id)
	}
}

// An event that the open breaker of its downstream turns away takes no
// turn of that downstream's rate limit: the calls after the outage need
// them. A catch-all handler's events are fetched while its breaker is
// open (its source has another handler); with a limit of one call a
// minute and a burst of two, the failing call that opens the breaker takes
// one turn, and the probe after OpenTimeout must find the other. Before,
// the refused event took it, and the probe waited a minute.
func TestPipelineEventTurnedAwayByAnOpenBreakerTakesNoRateLimitTurn(t *testing.T) {
	t.Parallel()
	h := newHarness(t, wharf.Config{
		Breakers: breaker.Config{Default: breaker.Settings{
			Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 1, OpenTimeout: 5 * time.Second,
		}},
		RateLimits: map[string]wharf.RateLimit{"ledger": {PerSecond: 1.0 / 60, Burst: 2}},
	})
	var down atomic.Bool
	down.Store(true)
	require.NoError(t, h.p.Handle("acme", queue.AnyType, func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		if down.Load() {
			return &breaker.StatusError{Code: http.StatusServiceUnavailable}
		}
		return writeEffect(ctx, tx, ev)
	}, wharf.Downstream("ledger")))
	require.NoError(t, h.p.Handle("acme", "order.shipped", writeEffect))
	require.Equal(t, http.StatusAccepted, h.send("opener", "order.paid"))
	h.run()
	h.eventually("the ledger's breaker to open", func() bool {
		st, err := h.p.Breakers().State("ledger")
		return err == nil && st.State == breaker.StateOpen
	})
	require.Equal(t, http.StatusAccepted, h.send("refused", "order.paid"))
	h.eventually("the event fetched and put back by the open breaker", func() bool {
		return h.count(`SELECT count(*) FROM wharf.queue WHERE event_id = 'refused' AND run_at > now() AND state = 'available'`) == 1
	})

	down.Store(false)
	h.eventually("the probe after the outage to run an event", func() bool { return h.count(`SELECT count(*) FROM effects`) >= 1 })
	require.Zero(t, h.count(`SELECT count(*) FROM wharf.dead_letters`))
}

// Config.RescueInterval reaches the workers: an event whose worker died
// holding its lease is put back and processed once the lease expires plus
// at most one rescue interval, well before the 5s default interval would
// first look, with the dead worker's attempt counted.
func TestPipelineRescueInterval(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := newHarness(t, wharf.Config{LeaseDuration: time.Second, RescueInterval: 50 * time.Millisecond, PollInterval: 50 * time.Millisecond})
	attempts := make(chan int, 1)
	require.NoError(t, h.p.Handle("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		attempts <- ev.Attempt
		return writeEffect(ctx, tx, ev)
	}))
	require.Equal(t, http.StatusAccepted, h.send("crashed", "order.paid"))
	leased, err := h.p.Queue().Fetch(ctx, queue.FetchParams{Limit: 1, Worker: "dead-worker"})
	require.NoError(t, err)
	require.Len(t, leased, 1, "the dead worker holds the event's lease")

	h.run()
	select {
	case attempt := <-attempts:
		require.Equal(t, 2, attempt, "the dead worker's attempt counts")
	case <-time.After(4 * time.Second):
		t.Fatal("the expired lease was not rescued within 4s: Config.RescueInterval did not reach the workers")
	}
	h.eventually("the effect", func() bool { return h.count(`SELECT count(*) FROM effects`) == 1 })
}

// Run prunes processed event ids past IdempotencyRetention, when it starts
// and every IdempotencyPruneInterval, and keeps the recent ones: a
// redelivery within the retention is still a duplicate.
func TestPipelineRunPrunesProcessedEventIDs(t *testing.T) {
	t.Parallel()
	h := newHarness(t, wharf.Config{IdempotencyRetention: time.Hour, IdempotencyPruneInterval: 50 * time.Millisecond})
	require.NoError(t, h.p.Handle("acme", "order.paid", writeEffect))
	require.Equal(t, http.StatusAccepted, h.send("recent", "order.paid"))
	h.run()
	h.eventually("the event processed", func() bool { return h.count(`SELECT count(*) FROM effects`) == 1 })

	_, err := h.pool.Exec(context.Background(), `INSERT INTO wharf.processed_events (consumer, key, mode, processed_at)
		VALUES ('acme/order.paid', 'acme:old', 'tx', now() - interval '30 days')`)
	require.NoError(t, err)
	h.eventually("the old id pruned", func() bool {
		return h.count(`SELECT count(*) FROM wharf.processed_events WHERE key = 'acme:old'`) == 0
	})
	require.Equal(t, 1, h.count(`SELECT count(*) FROM wharf.processed_events`), "the recent id is kept")
	require.Equal(t, http.StatusOK, h.send("recent", "order.paid"), "a redelivery within the retention is a duplicate")
}

// A handler with a Concurrency cap whose events update one row, with
// several events per worker transaction: a worker that ran one event
// holds the row's lock while it waits for a slot, and the handler holding
// the slot waits on that lock. Postgres cannot see the deadlock (half of
// it is a Go channel); before, only the shutdown timeout broke it. The
// slot wait is bounded, the waiting event goes back to the queue with its
// attempt given back, and everything drains.
func TestPipelineConcurrencyCapCannotDeadlockWithRowLocks(t *testing.T) {
	t.Parallel()
	h := newHarness(t, wharf.Config{Workers: 2, TxBatch: 20})
	_, err := h.pool.Exec(context.Background(), `CREATE TABLE balance (id int PRIMARY KEY, n int NOT NULL); INSERT INTO balance VALUES (1, 0)`)
	require.NoError(t, err)
	require.NoError(t, h.p.Handle("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		if _, err := tx.Exec(ctx, `UPDATE balance SET n = n + 1 WHERE id = 1`); err != nil {
			return err
		}
		return writeEffect(ctx, tx, ev)
	}, wharf.Concurrency(1), wharf.MaxAttempts(1)))
	const events = 40
	for i := range events {
		require.Equal(t, http.StatusAccepted, h.send(fmt.Sprintf("o%d", i), "order.paid"))
	}
	h.run()
	h.eventually("every event processed", func() bool { return h.count(`SELECT count(*) FROM effects`) == events })
	require.Equal(t, events, h.count(`SELECT n FROM balance WHERE id = 1`))
	require.Zero(t, h.count(`SELECT count(*) FROM effects WHERE n <> 1`))
	require.Zero(t, h.count(`SELECT count(*) FROM wharf.dead_letters`), "a wait for a slot spends no attempt")
}

// An event that only waited for a slot when shutdown cut the wait off
// goes back with its attempt given back: its handler never ran.
func TestPipelineSlotWaitAtShutdownSpendsNoAttempt(t *testing.T) {
	t.Parallel()
	h := newHarness(t, wharf.Config{Workers: 2, TxBatch: 1, ShutdownTimeout: 200 * time.Millisecond})
	var ran sync.Map
	require.NoError(t, h.p.Handle("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		ran.Store(ev.ID, true)
		<-ctx.Done() // holds the only slot until the hard stop
		return ctx.Err()
	}, wharf.Concurrency(1)))
	require.Equal(t, http.StatusAccepted, h.send("s1", "order.paid"))
	require.Equal(t, http.StatusAccepted, h.send("s2", "order.paid"))
	stop := h.run()
	h.eventually("one handler running, the other worker waiting in its transaction", func() bool {
		n := 0
		ran.Range(func(any, any) bool { n++; return true })
		return n == 1 && h.count(`SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND state = 'idle in transaction'`) == 2
	})
	stop()
	waited := "s2"
	if _, ok := ran.Load("s2"); ok {
		waited = "s1"
	}
	require.Equal(t, 0, h.count(`SELECT attempt FROM wharf.queue WHERE event_id = $1`, waited),
		"%s only waited for a slot: its attempt is given back", waited)
}

// A Timeout bounds a run of many short statements, not only each
// statement: once the deadline has passed, a statement given the
// handler's ctx fails at once, and the run is a failed attempt. Each
// statement takes a sixth of the Timeout, so that its statement_timeout
// does not end it first, even on a loaded machine.
func TestPipelineTimeoutBoundsARunOfShortStatements(t *testing.T) {
	t.Parallel()
	h := newHarness(t, wharf.Config{})
	require.NoError(t, h.p.Handle("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		for range 20 {
			if _, err := tx.Exec(ctx, `SELECT pg_sleep(0.05)`); err != nil {
				return err
			}
		}
		return writeEffect(ctx, tx, ev)
	}, wharf.Timeout(300*time.Millisecond), wharf.MaxAttempts(1)))
	require.Equal(t, http.StatusAccepted, h.send("slow", "order.paid"))
	h.run()
	h.eventually("the run dead-lettered", func() bool { return h.count(`SELECT count(*) FROM wharf.dead_letters`) == 1 })
	require.Zero(t, h.count(`SELECT count(*) FROM effects`), "a run past its Timeout does not complete")
	require.Equal(t, 1, h.count(`SELECT count(*) FROM wharf.dead_letters WHERE last_error LIKE '%deadline exceeded%'`))
}

// A Timeout is also the statement_timeout of the handler's runs, so the
// largest one Postgres takes is the largest a handler may have: it
// processes events, and one a millisecond longer is refused when the
// handler is registered. Before, it was accepted, and every run failed
// on setting it, until every event was dead-lettered.
func TestPipelineTimeoutIsBoundedByStatementTimeout(t *testing.T) {
	t.Parallel()
	h := newHarness(t, wharf.Config{})
	require.NoError(t, h.p.Handle("acme", "order.paid", writeEffect, wharf.Timeout(wharf.MaxTimeout), wharf.MaxAttempts(1)))
	require.ErrorIs(t, h.p.Handle("acme", "order.shipped", writeEffect, wharf.Timeout(wharf.MaxTimeout+time.Millisecond)),
		wharf.ErrInvalidConfig, "a Timeout over the largest statement_timeout")
	require.Equal(t, http.StatusAccepted, h.send("long", "order.paid"))
	h.run()
	h.eventually("the event processed", func() bool { return h.count(`SELECT count(*) FROM effects`) == 1 })
	require.Zero(t, h.count(`SELECT count(*) FROM wharf.dead_letters`))
}

// During a rolling deploy, an old worker that applies CompleteUnhandled
// (and so fetches every type of its sources) must not complete an event
// that the new version stored for a handler only it has: the event waits
// for the new version. Before, it was completed unrun, and lost.
func TestPipelineCompleteUnhandledLeavesAnotherVersionsEvents(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	v2 := newHarness(t, wharf.Config{}) // the new version: it handles refunds
	require.NoError(t, v2.p.Handle("acme", "order.paid", writeEffect))
	require.NoError(t, v2.p.Handle("acme", "order.refunded", writeEffect))
	require.Equal(t, http.StatusAccepted, v2.send("r1", "order.refunded"))

	v1, err := wharf.New(v2.pool, wharf.Config{Unhandled: wharf.CompleteUnhandled}) // the old version
	require.NoError(t, err)
	t.Cleanup(v1.Close)
	require.NoError(t, v1.Source("acme", wharf.StandardWebhooks(testSecret)))
	require.NoError(t, v1.Handle("acme", "order.paid", writeEffect))
	runCtx, stopV1 := context.WithCancel(ctx)
	v1Done := make(chan error, 1)
	go func() { v1Done <- v1.Run(runCtx) }()
	v2.eventually("the old worker to have put r1 back", func() bool {
		return v2.count(`SELECT count(*) FROM wharf.queue WHERE event_id = 'r1' AND run_at > now()`) == 1
	})
	stopV1()
	require.NoError(t, <-v1Done)
	require.Zero(t, v2.count(`SELECT count(*) FROM effects`))
	require.Zero(t, v2.count(`SELECT attempt FROM wharf.queue WHERE event_id = 'r1'`), "no attempt spent")

	// The new version takes it (its wait is skipped here).
	_, err = v2.pool.Exec(ctx, `UPDATE wharf.queue SET run_at = now() WHERE event_id = 'r1'`)
	require.NoError(t, err)
	v2.run()
	v2.eventually("r1 processed by the new version", func() bool { return v2.count(`SELECT count(*) FROM effects WHERE event_id = 'r1'`) == 1 })
}

// With Audit on, a rescue that dead-letters an expired event on its last
// attempt appends to the event's delivery stream; a stalled worker that
// has already processed that event (uncommitted) holds the stream's row.
// The rescue must not wait for the stalled transaction, nor hold back the
// other expired events: here a dead worker's event is rescued at once,
// and the waiting one is left for later. Before, the whole rescue batch
// waited as long as the stalled transaction stayed open.
func TestRescueDoesNotWaitOnAStalledWorkersAuditRecord(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := newHarness(t, wharf.Config{Workers: 1, MaxAttempts: 1, LeaseDuration: 30 * time.Second, Audit: true,
		MaxTxDuration: time.Minute, PollInterval: 20 * time.Millisecond, RescueInterval: time.Hour})
	stuckIn := make(chan struct{}, 1)
	unblock := make(chan struct{})
	var once sync.Once
	require.NoError(t, h.p.Handle("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		if err := writeEffect(ctx, tx, ev); err != nil {
			return err
		}
		if ev.ID == "g" {
			stuckIn <- struct{}{}
			<-unblock
		}
		return nil
	}))
	// "d": its worker died holding the lease.
	require.Equal(t, http.StatusAccepted, h.send("d", "order.paid"))
	dead, err := h.p.Queue().Fetch(ctx, queue.FetchParams{Limit: 1, Worker: "dead-worker"})
	require.NoError(t, err)
	require.Len(t, dead, 1)
	require.Equal(t, http.StatusAccepted, h.send("warm", "order.paid"))
	h.run()
	t.Cleanup(func() { once.Do(func() { close(unblock) }) })
	h.eventually("warm-up", func() bool { return h.count(`SELECT count(*) FROM effects`) == 1 })
	src := queue.PauseTarget{Source: "acme"}
	require.NoError(t, h.p.Queue().Pause(ctx, src, "fetch them together"))
	for _, id := range []string{"e", "f", "g"} { // one fetch: chunks [e] [f g]
		require.Equal(t, http.StatusAccepted, h.send(id, "order.paid"))
	}
	_, err = h.p.Queue().Resume(ctx, src)
	require.NoError(t, err)
	<-stuckIn // f processed and audited in the open transaction; g stalls
	_, err = h.pool.Exec(ctx, `UPDATE wharf.queue SET lease_expires_at = now() - interval '1 second' WHERE event_id IN ('d', 'f')`)
	require.NoError(t, err)

	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	n, err := h.p.Queue().Rescue(rctx, 500)
	require.NoError(t, err, "the rescuer must not wait on a stalled worker's transaction")
	require.Equal(t, 1, n, "the dead worker's event is rescued")
	require.Equal(t, 1, h.count(`SELECT count(*) FROM wharf.dead_letters WHERE event_id = 'd'`))
	require.Equal(t, 1, h.count(`SELECT count(*) FROM wharf.queue WHERE event_id = 'f' AND state = 'running'`),
		"the event whose record waits is left for a later rescue")

	once.Do(func() { close(unblock) })
	h.eventually("settled", func() bool { return h.count(`SELECT count(*) FROM wharf.queue WHERE state = 'running'`) == 0 })
}

// An event stored before its route existed (no handler name on its row)
// and dead-lettered by the handler that took it records that handler's
// name, for the DLQ's filters and a replay.
func TestDeadLetterRecordsTheHandlerThatRanIt(t *testing.T) {
	t.Parallel()
	h := newHarness(t, wharf.Config{})
	require.Equal(t, http.StatusAccepted, h.send("x", "order.paid")) // no route yet
	require.Equal(t, 1, h.count(`SELECT count(*) FROM wharf.queue WHERE event_id = 'x' AND handler IS NULL`))
	require.NoError(t, h.p.Handle("acme", "order.paid", func(context.Context, pgx.Tx, wharf.Event) error {
		return wharf.Permanent(errors.New("refused"))
	}, wharf.HandlerName("billing.paid")))
	h.run()
	h.eventually("dead-lettered", func() bool { return h.count(`SELECT count(*) FROM wharf.dead_letters`) == 1 })
	require.Equal(t, 1, h.count(`SELECT count(*) FROM wharf.dead_letters WHERE handler = 'billing.paid'`))
}

// A handler's default name, "source/type", can be longer than a queue row
// or an idempotency claim takes for a handler (a type of 200 bytes is
// valid), so registering it must fail and ask for a HandlerName. Before,
// Handle and HandleBatch accepted it, and then the endpoint answered 400
// to every delivery of that type: the queue refused the handler name, and
// the provider was told its valid webhook was bad input.
func TestHandlerWhoseDefaultNameIsTooLongIsRefused(t *testing.T) {
	t.Parallel()
	h := newHarness(t, wharf.Config{})
	typ := strings.Repeat("t", 200)
	err := h.p.Handle("acme", typ, writeEffect)
	require.ErrorIs(t, err, wharf.ErrInvalidConfig)
	require.ErrorContains(t, err, "HandlerName")
	err = h.p.HandleBatch("acme", typ, func(context.Context, pgx.Tx, []wharf.Event) error { return nil })
	require.ErrorIs(t, err, wharf.ErrInvalidConfig)

	require.NoError(t, h.p.Handle("acme", typ, writeEffect, wharf.HandlerName("acme/long")))
	require.Equal(t, http.StatusAccepted, h.send("long1", typ))
	h.run()
	h.eventually("processed", func() bool { return h.count(`SELECT count(*) FROM effects WHERE event_id = 'long1'`) == 1 })
}

// The idempotency consumer of the events CompleteUnhandled completes is no
// handler's to take: its processed ids would be taken for the handler's.
func TestHandlerNamedAsTheUnhandledConsumerIsRefused(t *testing.T) {
	t.Parallel()
	h := newHarness(t, wharf.Config{})
	err := h.p.Handle("acme", "order.paid", writeEffect, wharf.HandlerName(wharf.UnhandledConsumer))
	require.ErrorIs(t, err, wharf.ErrInvalidConfig)
	require.ErrorContains(t, err, "reserved")
}

// Every Config mistake New can see is refused there, matching
// wharf.ErrInvalidConfig, whichever package found it; none waits for Run.
func TestNewRefusesBadConfig(t *testing.T) {
	t.Parallel()
	pool := dbtest.Pool(t)
	for name, cfg := range map[string]wharf.Config{
		"negative Workers":        {Workers: -1},
		"TxBatch over the limit":  {TxBatch: queue.MaxTxBatch + 1},
		"negative TxBatch":        {TxBatch: -1},
		"negative PollInterval":   {PollInterval: -time.Second},
		"negative RescueInterval": {RescueInterval: -time.Second},
		"negative LeaseDuration":  {LeaseDuration: -time.Second}, // the queue's check
		"negative MaxAttempts":    {MaxAttempts: -1},             // the queue's check
		"bad breaker settings":    {Breakers: breaker.Config{Default: breaker.Settings{HalfOpenProbes: -1}}},
	} {
		_, err := wharf.New(pool, cfg)
		require.ErrorIs(t, err, wharf.ErrInvalidConfig, name)
	}
}

// A rescued event whose last run's transaction is still open (its worker
// stalled, or its host vanished and the server has not noticed) cannot
// be claimed until that transaction ends. The worker that runs it again
// waits a second at most, then puts it back without spending an attempt,
// and goes on with other events; it runs once the transaction is gone.
// Before, it waited on the claim for as long as the transaction stayed
// open, and the only worker here never took another event.
func TestRescuedEventWhoseLostRunStillHoldsItsClaimWaitsAside(t *testing.T) {
	t.Parallel()
	h := newHarness(t, wharf.Config{Workers: 1, PollInterval: 50 * time.Millisecond})
	var stuckAttempt atomic.Int32
	require.NoError(t, h.p.Handle("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		if ev.ID == "stuck" {
			stuckAttempt.Store(int32(ev.Attempt))
		}
		return writeEffect(ctx, tx, ev)
	}))
	ctx := context.Background()
	require.Equal(t, http.StatusAccepted, h.send("stuck", "order.paid"))

	lost := loseRunHoldingClaim(t, h, "stuck")

	for i := range 5 {
		require.Equal(t, http.StatusAccepted, h.send(fmt.Sprintf("o%d", i), "order.paid"))
	}
	h.run()
	h.eventually("the other events to run beside the held one", func() bool {
		return h.count(`SELECT count(*) FROM effects WHERE event_id LIKE 'o%'`) == 5
	})
	require.Zero(t, h.count(`SELECT count(*) FROM effects WHERE event_id = 'stuck'`))
	h.eventually("the held event to be put back", func() bool {
		return h.count(`SELECT count(*) FROM wharf.queue WHERE event_id = 'stuck' AND deferrals > 0`) == 1
	})

	require.NoError(t, lost.Rollback(ctx))
	h.eventually("the held event to run once its lost run's transaction is gone", func() bool {
		return h.count(`SELECT count(*) FROM effects WHERE event_id = 'stuck'`) == 1
	})
	require.Equal(t, int32(1), stuckAttempt.Load(), "every put-back gave its attempt back")
	require.Zero(t, h.count(`SELECT count(*) FROM effects WHERE n <> 1`))
	require.Zero(t, h.count(`SELECT count(*) FROM wharf.dead_letters`))
}

// loseRunHoldingClaim makes the queued acme/order.paid event id look
// rescued from a run that lost its lease while its transaction, still
// open, holds the event's idempotency claim. It returns that transaction;
// rolling it back ends the lost run.
func loseRunHoldingClaim(t *testing.T, h *harness, id string) pgx.Tx {
	t.Helper()
	ctx := context.Background()
	lost, err := h.pool.Begin(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = lost.Rollback(ctx) })
	_, err = lost.Exec(ctx, `INSERT INTO wharf.processed_events (consumer, key, mode) VALUES ($1, $2, 'tx')`,
		"acme/order.paid", idempotency.Key("acme", id))
	require.NoError(t, err)
	_, err = h.pool.Exec(ctx, `UPDATE wharf.queue SET rescued = true WHERE event_id = $1`, id)
	require.NoError(t, err)
	return lost
}

// A session whose statement_timeout is shorter than the rescued claim's
// wait cancels the claim before its lock_timeout runs out: the event is
// still held by its lost run, and goes back with a backoff like one whose
// wait ran out, not at once, over and over, without a deferral counted.
func TestRescuedEventHeldPastAShortStatementTimeoutWaitsAside(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(dbtest.Database(t, dbtest.Options{}))
	require.NoError(t, err)
	cfg.ConnConfig.RuntimeParams["statement_timeout"] = "300ms"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	h := newHarnessOn(t, pool, wharf.Config{Workers: 1, PollInterval: 50 * time.Millisecond})
	require.NoError(t, h.p.Handle("acme", "order.paid", writeEffect))
	require.Equal(t, http.StatusAccepted, h.send("stuck", "order.paid"))

	lost := loseRunHoldingClaim(t, h, "stuck")

	h.run()
	h.eventually("the held event to be put back", func() bool {
		return h.count(`SELECT count(*) FROM wharf.queue WHERE event_id = 'stuck' AND deferrals > 0`) == 1
	})
	require.NoError(t, lost.Rollback(ctx))
	h.eventually("the held event to run once its lost run's transaction is gone", func() bool {
		return h.count(`SELECT count(*) FROM effects WHERE event_id = 'stuck'`) == 1
	})
	require.Zero(t, h.count(`SELECT count(*) FROM wharf.dead_letters`))
}

// A rescued event's claim waits with a lock_timeout of its own; the
// handler that runs after it must see the session's lock_timeout, however
// the session got it: a SET when the connection opened (AfterConnect),
// the pool's RuntimeParams, or the role's defaults. SET LOCAL ... TO
// DEFAULT restored only the latter two: a handler that relied on a
// session-level SET ran with no lock_timeout at all.
func TestRescuedEventHandlerSeesTheSessionsLockTimeout(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(dbtest.Database(t, dbtest.Options{}))
	require.NoError(t, err)
	cfg.AfterConnect = func(ctx context.Context, conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, `SET lock_timeout = '4321ms'`)
		return err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	h := newHarnessOn(t, pool, wharf.Config{Workers: 1, PollInterval: 50 * time.Millisecond})
	seen := make(chan string, 10)
	require.NoError(t, h.p.Handle("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		var v string
		if err := tx.QueryRow(ctx, `SELECT current_setting('lock_timeout')`).Scan(&v); err != nil {
			return err
		}
		seen <- ev.ID + " " + v
		return writeEffect(ctx, tx, ev)
	}))
	require.Equal(t, http.StatusAccepted, h.send("plain", "order.paid"))
	require.Equal(t, http.StatusAccepted, h.send("rescued", "order.paid"))
	_, err = pool.Exec(ctx, `UPDATE wharf.queue SET rescued = true WHERE event_id = 'rescued'`)
	require.NoError(t, err)
	h.run()
	got := map[string]bool{}
	for range 2 {
		select {
		case s := <-seen:
			got[s] = true
		case <-time.After(20 * time.Second):
			t.Fatalf("handlers did not run; saw %v", got)
		}
	}
	require.Equal(t, map[string]bool{"plain 4321ms": true, "rescued 4321ms": true}, got)
}
