package wharf_test

import (
	"bytes"
	"context"
	"encoding/base64"
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
	"github.com/wharfhq/wharf/dlq"
	"github.com/wharfhq/wharf/eventlog"
	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/internal/testio"
	"github.com/wharfhq/wharf/queue"
)

var testSecret = "whsec_" + base64.StdEncoding.EncodeToString([]byte("wharf-pipeline-test-secret-0123"))

// harnessAckDeadline is the AckDeadline of a harness whose test sets
// none: generous, as for any wait on work that can stall under load.
const harnessAckDeadline = 30 * time.Second

// harness is a pipeline on a fresh database behind a real HTTP server.
type harness struct {
	t    *testing.T
	pool *pgxpool.Pool
	p    *wharf.Pipeline
	url  string
}

func newHarness(t *testing.T, cfg wharf.Config) *harness {
	t.Helper()
	return newHarnessOn(t, dbtest.Pool(t), cfg)
}

// newHarnessOn is newHarness on the given pool's database.
func newHarnessOn(t *testing.T, pool *pgxpool.Pool, cfg wharf.Config) *harness {
	t.Helper()
	if cfg.Backoff == (queue.Backoff{}) {
		cfg.Backoff = queue.Backoff{Initial: 5 * time.Millisecond, Max: 10 * time.Millisecond}
	}
	if cfg.AckDeadline == 0 {
		// The tests' sends require 202 or 200. The 2s default is meant for
		// a provider's patience; on a loaded CI machine (parallel tests
		// creating databases, -race) a store can stall past it and the
		// send gets 503. The 503 path has its own test.
		cfg.AckDeadline = harnessAckDeadline
	}
	p, err := wharf.New(pool, cfg)
	require.NoError(t, err)
	t.Cleanup(p.Close)
	require.NoError(t, p.Source("acme", wharf.StandardWebhooks(testSecret)))
	mux := http.NewServeMux()
	mux.Handle("POST /hooks/acme", p.Handler("acme"))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	_, err = pool.Exec(context.Background(), `CREATE TABLE effects (event_id text PRIMARY KEY, n int NOT NULL)`)
	require.NoError(t, err)
	return &harness{t: t, pool: pool, p: p, url: srv.URL + "/hooks/acme"}
}

// run starts the workers; the returned func stops them and waits.
func (h *harness) run() (stop func()) {
	h.t.Helper()
	cancel, wait := h.start()
	return func() {
		cancel()
		wait()
	}
}

// start starts the workers and returns how to signal shutdown and how to
// wait for Run to return, separately; both are also done at cleanup.
func (h *harness) start() (cancel func(), wait func()) {
	h.t.Helper()
	ctx, cancelCtx := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.p.Run(ctx) }()
	var once sync.Once
	wait = func() {
		once.Do(func() {
			err := <-done
			if err != nil {
				h.t.Errorf("Run: %v", err)
			}
		})
	}
	h.t.Cleanup(func() {
		cancelCtx()
		wait()
	})
	return cancelCtx, wait
}

// send posts a signed event and returns the status.
func (h *harness) send(id, typ string) int {
	h.t.Helper()
	body := []byte(fmt.Sprintf(`{"type":%q,"data":{"n":1}}`, typ))
	return h.post(body, wharf.SignStandardWebhooks(testSecret, id, time.Now(), body))
}

func (h *harness) post(body []byte, header http.Header) int {
	h.t.Helper()
	return postTo(h.t, h.url, body, header).StatusCode
}

// postTo posts body with header to url and returns the answer, its body
// closed.
func postTo(t testing.TB, url string, body []byte, header http.Header) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	require.NoError(t, err)
	req.Header = header
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	return resp
}

func (h *harness) count(sql string, args ...any) int {
	h.t.Helper()
	var n int
	require.NoError(h.t, h.pool.QueryRow(context.Background(), sql, args...).Scan(&n))
	return n
}

func (h *harness) eventually(what string, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func writeEffect(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
	_, err := tx.Exec(ctx, `INSERT INTO effects VALUES ($1, 1) ON CONFLICT (event_id) DO UPDATE SET n = effects.n + 1`, ev.ID)
	return err
}

func TestPipelineSameEventFiveTimesOneEffect(t *testing.T) {
	t.Parallel()
	h := newHarness(t, wharf.Config{})
	require.NoError(t, h.p.Handle("acme", "order.paid", writeEffect))

	statuses := make(chan int, 5)
	var wg sync.WaitGroup
	for range 5 {
		wg.Go(func() { statuses <- h.send("evt_1", "order.paid") })
	}
	wg.Wait()
	close(statuses)
	counts := map[int]int{}
	for s := range statuses {
		counts[s]++
	}
	require.Equal(t, map[int]int{http.StatusAccepted: 1, http.StatusOK: 4}, counts, "one stored, four duplicates")
	require.Equal(t, 1, h.count(`SELECT count(*) FROM wharf.queue`))

	h.run()
	h.eventually("the effect", func() bool { return h.count(`SELECT count(*) FROM effects`) == 1 })
	h.eventually("the queue empty", func() bool { return h.count(`SELECT count(*) FROM wharf.queue`) == 0 })
	require.Equal(t, http.StatusOK, h.send("evt_1", "order.paid"), "a redelivery after processing is a duplicate")
	require.Zero(t, h.count(`SELECT count(*) FROM wharf.queue`), "and makes no queue row")
	require.Equal(t, 1, h.count(`SELECT n FROM effects WHERE event_id = 'evt_1'`))
}

func TestPipelineFailsTwiceThenSucceeds(t *testing.T) {
	t.Parallel()
	h := newHarness(t, wharf.Config{Audit: true})
	var attempts []int
	var mu sync.Mutex
	require.NoError(t, h.p.Handle("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		mu.Lock()
		attempts = append(attempts, ev.Attempt)
		mu.Unlock()
		if err := writeEffect(ctx, tx, ev); err != nil {
			return err
		}
		if ev.Attempt < 3 {
			return fmt.Errorf("flaky %d", ev.Attempt)
		}
		return nil
	}))
	require.Equal(t, http.StatusAccepted, h.send("evt_2", "order.paid"))
	h.run()
	h.eventually("the queue empty", func() bool { return h.count(`SELECT count(*) FROM wharf.queue`) == 0 })
	require.Equal(t, 1, h.count(`SELECT n FROM effects WHERE event_id = 'evt_2'`), "failed attempts' writes rolled back")
	mu.Lock()
	require.Equal(t, []int{1, 2, 3}, attempts)
	mu.Unlock()

	events, err := h.p.AuditLog().ReadStream(context.Background(), wharf.DeliveryStream("acme", "evt_2"), 1, 100)
	require.NoError(t, err)
	var types []string
	for _, e := range events {
		types = append(types, e.Type)
	}
	require.Equal(t, []string{wharf.AuditReceived, wharf.AuditAttemptFailed, wharf.AuditAttemptFailed, wharf.AuditProcessed}, types,
		"the delivery's whole life in one stream")
	require.Contains(t, string(events[2].Data), "flaky 2")
}

func TestPipelinePoisonDeadLettersReplaysOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := newHarness(t, wharf.Config{Audit: true})
	var fixed atomic.Bool
	var runs atomic.Int32
	require.NoError(t, h.p.Handle("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		runs.Add(1)
		if err := writeEffect(ctx, tx, ev); err != nil {
			return err
		}
		if !fixed.Load() {
			return errors.New("cannot parse")
		}
		return nil
	}, wharf.MaxAttempts(3)))
	require.Equal(t, http.StatusAccepted, h.send("poison", "order.paid"))
	h.run()
	h.eventually("the dead letter", func() bool { return h.count(`SELECT count(*) FROM wharf.dead_letters`) == 1 })
	require.EqualValues(t, 3, runs.Load(), "exactly MaxAttempts runs")
	require.Zero(t, h.count(`SELECT count(*) FROM wharf.queue`))
	require.Zero(t, h.count(`SELECT count(*) FROM effects`))

	require.Equal(t, http.StatusOK, h.send("poison", "order.paid"), "a redelivery of a dead event is a duplicate")
	require.Zero(t, h.count(`SELECT count(*) FROM wharf.queue`), "and makes no queue row")

	entries, _, err := h.p.DLQ().List(ctx, dlq.Filter{}, dlq.Page{})
	require.NoError(t, err)
	require.Len(t, entries, 1)
	require.Equal(t, "acme/order.paid", entries[0].Handler)
	require.Len(t, entries[0].Errors, 3)

	fixed.Store(true)
	res, err := h.p.Replay(ctx, entries[0].ID)
	require.NoError(t, err)
	require.Equal(t, 1, res.Replayed)
	h.eventually("the replayed event processed", func() bool { return h.count(`SELECT count(*) FROM effects`) == 1 })
	h.eventually("the queue empty", func() bool { return h.count(`SELECT count(*) FROM wharf.queue`) == 0 })
	require.Equal(t, 1, h.count(`SELECT n FROM effects WHERE event_id = 'poison'`))

	events, err := h.p.AuditLog().ReadStream(ctx, wharf.DeliveryStream("acme", "poison"), 1, 100)
	require.NoError(t, err)
	var types []string
	for _, e := range events {
		types = append(types, e.Type)
	}
	require.Equal(t, []string{
		wharf.AuditReceived, wharf.AuditAttemptFailed, wharf.AuditAttemptFailed, wharf.AuditAttemptFailed, wharf.AuditDeadLettered,
		wharf.AuditReplayed,
		wharf.AuditReceived, wharf.AuditProcessed,
	}, types)
	require.IsType(t, eventlog.Event{}, events[0])
}

// Audit records reach the projections of the audit log when their
// transactions commit, not at the projections' next poll: the Pipeline
// announces them, as eventlog's AppendTx asks of its callers, after a
// worker's commit (processed, dead-lettered) and after a replay.
func TestAuditRecordsWakeTheAuditLogsProjections(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := newHarness(t, wharf.Config{Audit: true})
	require.NoError(t, h.p.Handle("acme", "*", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		if ev.Type == "order.bad" {
			return wharf.Permanent(errors.New("cannot parse"))
		}
		return nil
	}))
	seen := make(chan string, 100)
	proj, err := h.p.AuditLog().NewProjection(eventlog.ProjectionConfig{
		Name:         "audit-watch",
		PollInterval: time.Hour, // only an announcement wakes it in time
		Handler: func(_ context.Context, _ pgx.Tx, evs []eventlog.Event) error {
			for _, e := range evs {
				seen <- e.Metadata.SourceEventID + " " + e.Type
			}
			return nil
		},
	})
	require.NoError(t, err)
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- proj.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		require.NoError(t, <-ran)
	})
	awaitRecord := func(want string) {
		t.Helper()
		timeout := time.After(20 * time.Second)
		for {
			select {
			case got := <-seen:
				if got == want {
					return
				}
			case <-timeout:
				t.Fatalf("the projection did not see %q within 20 s", want)
			}
		}
	}
	// An append of the Log's own wakes it; after this it sleeps, idle.
	_, err = h.p.AuditLog().Append(ctx, "sentinel", eventlog.AnyVersion, eventlog.NewEvent{Type: "ready", Data: []byte(`{}`), Metadata: eventlog.Metadata{SourceEventID: "sentinel"}})
	require.NoError(t, err)
	awaitRecord("sentinel ready")

	h.run()
	require.Equal(t, http.StatusAccepted, h.send("evt_good", "order.paid"))
	awaitRecord("evt_good " + wharf.AuditProcessed)
	require.Equal(t, http.StatusAccepted, h.send("evt_bad", "order.bad"))
	awaitRecord("evt_bad " + wharf.AuditDeadLettered)

	entries, _, err := h.p.DLQ().List(ctx, dlq.Filter{}, dlq.Page{})
	require.NoError(t, err)
	require.Len(t, entries, 1)
	res, err := h.p.Replay(ctx, entries[0].ID)
	require.NoError(t, err)
	require.Equal(t, 1, res.Replayed)
	awaitRecord("evt_bad " + wharf.AuditReplayed)
}

// flakyDownstream is an HTTP downstream that answers 503 while down (it
// starts down) and 200 otherwise, counting the calls it gets.
type flakyDownstream struct {
	*httptest.Server
	down  atomic.Bool
	calls atomic.Int32
}

func newFlakyDownstream(t *testing.T) *flakyDownstream {
	d := &flakyDownstream{}
	d.down.Store(true)
	d.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.calls.Add(1)
		if d.down.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(d.Close)
	return d
}

// call posts to the downstream; a 5xx is a *breaker.StatusError, which
// the breaker counts as the downstream's failure.
func (d *flakyDownstream) call() error {
	return d.callWith(context.Background(), http.DefaultClient)
}

// callWith is call, with ctx and through client.
func (d *flakyDownstream) callWith(ctx context.Context, client *http.Client) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.URL, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode >= 500 {
		return &breaker.StatusError{Code: resp.StatusCode}
	}
	return nil
}

// newOutageHarness is a harness whose breakers open after 2 failures in a
// row for 100 ms, and a downstream that starts down.
func newOutageHarness(t *testing.T) (*harness, *flakyDownstream) {
	h := newHarness(t, wharf.Config{Breakers: breaker.Config{Default: breaker.Settings{
		Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 2,
		OpenTimeout: 100 * time.Millisecond, HalfOpenProbes: 1,
	}}})
	return h, newFlakyDownstream(t)
}

// requireOutageSpendsNothing waits for several open/half-open cycles to
// pass while d stays down, and requires that they dead-lettered nothing
// and spent no attempt.
func (h *harness) requireOutageSpendsNothing(d *flakyDownstream) {
	h.t.Helper()
	h.eventually("probes to fail repeatedly", func() bool { return d.calls.Load() >= 6 })
	require.Zero(h.t, h.count(`SELECT count(*) FROM wharf.dead_letters`), "an outage floods nothing into the DLQ")
	require.Zero(h.t, h.count(`SELECT count(*) FROM wharf.queue WHERE attempt > 1`), "no attempt spent on the outage")
	require.Zero(h.t, h.count(`SELECT count(*) FROM wharf.queue WHERE deferrals > 1`),
		"only a failure that left the breaker closed counts a deferral; probes count none")
}

// An outage counts no deferrals but the one failure that left the
// breaker closed (it trips on the second): an event that waits through
// many failed probes is not made to wait longer for each, and runs as
// soon as the downstream is back.
func TestPipelineOutageCountsNoDeferrals(t *testing.T) {
	t.Parallel()
	h, downstream := newOutageHarness(t)
	require.NoError(t, h.p.Handle("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		if err := downstream.call(); err != nil {
			return err
		}
		return writeEffect(ctx, tx, ev)
	}, wharf.Downstream("ledger")))
	require.Equal(t, http.StatusAccepted, h.send("o1", "order.paid"))
	h.run()
	h.eventually("the breaker to open and probes to fail", func() bool { return downstream.calls.Load() >= 6 })
	require.Equal(t, 1, h.count(`SELECT deferrals FROM wharf.queue WHERE event_id = 'o1'`))

	downstream.down.Store(false)
	h.eventually("the event processed", func() bool { return h.count(`SELECT count(*) FROM effects`) == 1 })
}

func TestPipelineDownstreamOutageSpendsNoAttempts(t *testing.T) {
	t.Parallel()
	h, downstream := newOutageHarness(t)
	var mu sync.Mutex
	processedAt := map[string]int{}
	require.NoError(t, h.p.Handle("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		if err := downstream.call(); err != nil {
			return err
		}
		mu.Lock()
		processedAt[ev.ID] = ev.Attempt
		mu.Unlock()
		return writeEffect(ctx, tx, ev)
	}, wharf.Downstream("ledger"), wharf.MaxAttempts(2)))

	for i := range 10 {
		require.Equal(t, http.StatusAccepted, h.send(fmt.Sprintf("o%d", i), "order.paid"))
	}
	h.run()
	h.eventually("the breaker to open", func() bool {
		st, err := h.p.Breakers().State("ledger")
		return err == nil && st.State == breaker.StateOpen
	})
	h.requireOutageSpendsNothing(downstream)

	downstream.down.Store(false)
	h.eventually("the backlog drained", func() bool { return h.count(`SELECT count(*) FROM effects`) == 10 })
	h.eventually("the queue empty", func() bool { return h.count(`SELECT count(*) FROM wharf.queue`) == 0 })
	require.Zero(t, h.count(`SELECT count(*) FROM wharf.dead_letters`))
	mu.Lock()
	defer mu.Unlock()
	for id, attempt := range processedAt {
		require.Equal(t, 1, attempt, "%s processed on its first counted attempt", id)
	}
}

// While a downstream's breaker is open and its events pile up ahead of
// another handler's, the Pipeline's workers switch to fetching by kind
// (queue.FetchParams.ByKind): the breaker's kinds, which the fetch
// excludes, are what the workers' count of skipped events sees. The other
// handler's events run meanwhile, and the backlog spends no attempt.
func TestPipelineOpenBreakerBacklogSwitchesWorkersToFetchByKind(t *testing.T) {
	t.Parallel()
	var log testio.Buffer
	h := newHarness(t, wharf.Config{
		Logger: slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Breakers: breaker.Config{Default: breaker.Settings{
			Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 2, OpenTimeout: time.Hour,
		}},
	})
	require.NoError(t, h.p.Handle("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		return &breaker.StatusError{Code: http.StatusServiceUnavailable} // the ledger is down
	}, wharf.Downstream("ledger")))
	require.NoError(t, h.p.Handle("acme", "order.shipped", writeEffect))

	const backlog = 600
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < backlog; i += 8 {
				require.Equal(t, http.StatusAccepted, h.send(fmt.Sprintf("paid-%d", i), "order.paid"))
			}
		})
	}
	wg.Wait()
	h.run()
	defer func() {
		if t.Failed() {
			t.Logf("log:\n%s", log.String())
		}
	}()
	h.eventually("the ledger's breaker to open", func() bool {
		st, err := h.p.Breakers().State("ledger")
		return err == nil && st.State == breaker.StateOpen
	})
	for i := range 5 {
		require.Equal(t, http.StatusAccepted, h.send(fmt.Sprintf("shipped-%d", i), "order.shipped"))
	}
	h.eventually("the other handler's events to run", func() bool { return h.count(`SELECT count(*) FROM effects`) == 5 })
	h.eventually("the workers to fetch by kind", func() bool {
		return strings.Contains(log.String(), `msg="queue: fetch strategy changed" by_kind=true`)
	})
	require.Equal(t, backlog, h.count(`SELECT count(*) FROM wharf.queue WHERE event_type = 'order.paid' AND attempt <= 1`),
		"the backlog waits, spending no attempt")
}

// A catch-all handler ("*") behind a downstream whose breaker is open
// holds back its own events only: a type of the same source with a
// handler of its own keeps running. Before, the workers left the whole
// source unfetched (an excluded kind of type "*" matches every type), so
// one downstream's outage stalled the source's unrelated handlers.
func TestPipelineCatchAllHandlersOpenBreakerHoldsBackOnlyItsEvents(t *testing.T) {
	t.Parallel()
	h := newHarness(t, wharf.Config{Breakers: breaker.Config{Default: breaker.Settings{
		Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 1, OpenTimeout: time.Hour,
	}}})
	require.NoError(t, h.p.Handle("acme", queue.AnyType, func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		return &breaker.StatusError{Code: http.StatusServiceUnavailable} // the ledger is down
	}, wharf.Downstream("ledger"), wharf.MaxAttempts(1)))
	require.NoError(t, h.p.Handle("acme", "order.shipped", writeEffect))
	require.Equal(t, http.StatusAccepted, h.send("paid-1", "order.paid"))
	h.run()
	h.eventually("the ledger's breaker to open", func() bool {
		st, err := h.p.Breakers().State("ledger")
		return err == nil && st.State == breaker.StateOpen
	})

	require.Equal(t, http.StatusAccepted, h.send("shipped-1", "order.shipped"))
	h.eventually("the other handler's event to run", func() bool { return h.count(`SELECT count(*) FROM effects`) == 1 })
	require.Equal(t, 1, h.count(`SELECT count(*) FROM wharf.queue WHERE event_id = 'paid-1'`), "the catch-all's event waits")
	require.Zero(t, h.count(`SELECT count(*) FROM wharf.dead_letters`), "the outage spends no attempt")
}

// A handler that runs under Downstream("ledger") and sends through the
// same breaker's Transport (what the README warns against, but easy to
// do): each call is counted once, and the half-open probe's own request
// is not turned away for want of a probe. Before, the breaker stayed
// half-open for good and every event burnt its attempts on the refusal.
func TestPipelineHandlerSendingThroughItsOwnBreakerDrainsAfterAnOutage(t *testing.T) {
	t.Parallel()
	h, downstream := newOutageHarness(t)
	transport, err := h.p.Breakers().Transport("ledger", nil)
	require.NoError(t, err)
	client := &http.Client{Transport: transport}
	require.NoError(t, h.p.Handle("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		if err := downstream.callWith(ctx, client); err != nil {
			return err
		}
		return writeEffect(ctx, tx, ev)
	}, wharf.Downstream("ledger"), wharf.MaxAttempts(2)))

	for i := range 5 {
		require.Equal(t, http.StatusAccepted, h.send(fmt.Sprintf("o%d", i), "order.paid"))
	}
	h.run()
	h.requireOutageSpendsNothing(downstream)

	downstream.down.Store(false)
	h.eventually("the backlog drained", func() bool { return h.count(`SELECT count(*) FROM effects`) == 5 })
	require.Zero(t, h.count(`SELECT count(*) FROM wharf.dead_letters`))
	st, err := h.p.Breakers().State("ledger")
	require.NoError(t, err)
	require.Equal(t, breaker.StateClosed, st.State)
}

// A handler that panics on one event spends that event's attempts and
// dead-letters it; the panics are not the downstream's failures, so they
// never open its breaker for the other events.
func TestPipelinePanickingHandlerDoesNotOpenItsBreaker(t *testing.T) {
	t.Parallel()
	var opened atomic.Int32
	h := newHarness(t, wharf.Config{Breakers: breaker.Config{
		Default: breaker.Settings{Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 2},
		OnStateChange: func(c breaker.StateChange) {
			if c.To == breaker.StateOpen {
				opened.Add(1)
			}
		},
	}})
	require.NoError(t, h.p.Handle("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		if ev.ID == "poison" {
			panic("nil map in the handler")
		}
		return writeEffect(ctx, tx, ev)
	}, wharf.Downstream("ledger"), wharf.MaxAttempts(3)))

	require.Equal(t, http.StatusAccepted, h.send("poison", "order.paid"))
	h.run()
	h.eventually("the poison event dead-lettered", func() bool {
		return h.count(`SELECT count(*) FROM wharf.dead_letters WHERE event_id = 'poison'`) == 1
	})
	require.Equal(t, 3, h.count(`SELECT attempts FROM wharf.dead_letters WHERE event_id = 'poison'`), "each panic spent an attempt")
	require.Equal(t, http.StatusAccepted, h.send("o1", "order.paid"))
	h.eventually("the next event processed", func() bool { return h.count(`SELECT count(*) FROM effects`) == 1 })
	require.Zero(t, opened.Load(), "the breaker never opened")
	st, err := h.p.Breakers().State("ledger")
	require.NoError(t, err)
	require.Zero(t, st.Counts.Failures)
}

// While a half-open breaker's only probe is in flight, its backlog stays in
// the queue untouched: fetching it would only defer it again (before the
// fix, every backlog row was fetched and deferred, over and over, for as
// long as the probe ran). When the probe succeeds, the breaker's closing
// wakes the workers: with an hour's poll interval nothing else would.
func TestPipelineProbingBreakerLeavesItsBacklogAlone(t *testing.T) {
	t.Parallel()
	const backlog = 60
	const workers, txBatch = 2, 1
	const fetchLimit = 2 * workers * txBatch // the Consumer fetches for two chunks per worker
	h := newHarness(t, wharf.Config{
		Workers: workers, TxBatch: txBatch, PollInterval: time.Hour,
		Breakers: breaker.Config{Default: breaker.Settings{
			Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 1,
			OpenTimeout: 50 * time.Millisecond, HalfOpenProbes: 1, HalfOpenWait: 20 * time.Millisecond,
		}},
	})
	var calls atomic.Int32
	var probed atomic.Bool
	probing := make(chan struct{})
	release := make(chan struct{})
	require.NoError(t, h.p.Handle("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		if calls.Add(1) == 1 {
			return breaker.MarkFailure(errors.New("ledger refused the connection"))
		}
		// The other worker's call may have started before the failure
		// opened the breaker; only a call made half-open is the probe.
		if st, err := h.p.Breakers().State("ledger"); err == nil && st.Probing && probed.CompareAndSwap(false, true) {
			close(probing)
			<-release
		}
		return writeEffect(ctx, tx, ev)
	}, wharf.Downstream("ledger")))
	require.NoError(t, h.p.Handle("acme", "ping", writeEffect))

	for i := range backlog {
		require.Equal(t, http.StatusAccepted, h.send(fmt.Sprintf("o%d", i), "order.paid"))
	}
	rows, err := h.pool.Query(context.Background(), `SELECT ARRAY[event_id, xmin::text] FROM wharf.queue`)
	require.NoError(t, err)
	versions, err := pgx.CollectRows(rows, pgx.RowTo[[]string])
	require.NoError(t, err)
	require.Len(t, versions, backlog)

	h.run()
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(unblock) // before the workers' shutdown, if the test fails first
	select {
	case <-probing:
	case <-time.After(20 * time.Second):
		t.Fatal("no half-open probe ran")
	}
	st, err := h.p.Breakers().State("ledger")
	require.NoError(t, err)
	require.True(t, st.Probing, "the only probe is in flight")

	// The ping is fetched after the backlog (it is younger), so once it has
	// run, every fetch since the probe started has passed the backlog by.
	require.Equal(t, http.StatusAccepted, h.send("ping", "ping"))
	h.eventually("the ping to run", func() bool { return h.count(`SELECT count(*) FROM effects WHERE event_id = 'ping'`) == 1 })
	rewritten := 0
	for _, v := range versions {
		if h.count(`SELECT count(*) FROM wharf.queue WHERE event_id = $1 AND xmin::text = $2`, v[0], v[1]) == 0 {
			rewritten++
		}
	}
	// The fetch that opened the breaker and the one that started the probe
	// may each have taken a full batch; nothing since.
	require.LessOrEqual(t, rewritten, 2*fetchLimit, "backlog rows rewritten while the breaker turned calls away")

	unblock()
	h.eventually("the backlog to drain after the probe closed the breaker", func() bool {
		return h.count(`SELECT count(*) FROM effects WHERE event_id <> 'ping'`) == backlog
	})
	require.Zero(t, h.count(`SELECT count(*) FROM effects WHERE n <> 1`), "each event's effect once")
	require.Zero(t, h.count(`SELECT count(*) FROM wharf.dead_letters`))
}

// A downstream that fails one event while its breaker stays closed (it
// rejects that payload alone) puts the event back without spending an
// attempt, one backoff step later each time: it is retried less and less
// often instead of at its first backoff forever, and never dead-lettered.
// The downstream's other events go through.
func TestPipelineDownstreamRejectingOneEventWaitsLongerEachTime(t *testing.T) {
	t.Parallel()
	backoff := queue.Backoff{Initial: 20 * time.Millisecond, Max: time.Second, Jitter: queue.NoJitter}
	h := newHarness(t, wharf.Config{
		Backoff: backoff,
		Breakers: breaker.Config{Default: breaker.Settings{
			Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 1000,
		}},
	})
	type call struct {
		at                 time.Time
		attempt, deferrals int
	}
	var mu sync.Mutex
	var calls []call
	require.NoError(t, h.p.Handle("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		if ev.ID != "poison" {
			return writeEffect(ctx, tx, ev)
		}
		mu.Lock()
		calls = append(calls, call{time.Now(), ev.Attempt, ev.Deferrals})
		mu.Unlock()
		return &breaker.StatusError{Code: http.StatusInternalServerError}
	}, wharf.Downstream("ledger"), wharf.MaxAttempts(2)))

	require.Equal(t, http.StatusAccepted, h.send("poison", "order.paid"))
	h.run()
	const runs = 5
	h.eventually("the poison event to run 5 times", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(calls) >= runs
	})
	require.Equal(t, http.StatusAccepted, h.send("fine", "order.paid"))
	h.eventually("the other event to go through", func() bool {
		return h.count(`SELECT count(*) FROM effects WHERE event_id = 'fine'`) == 1
	})

	st, err := h.p.Breakers().State("ledger")
	require.NoError(t, err)
	require.Equal(t, breaker.StateClosed, st.State, "the breaker never opened")
	require.Zero(t, h.count(`SELECT count(*) FROM wharf.dead_letters`))
	h.eventually("the poison event queued, between runs, with its deferrals counted", func() bool {
		return h.count(`SELECT count(*) FROM wharf.queue WHERE event_id = 'poison' AND attempt = 0 AND deferrals >= $1`, runs) == 1
	})
	mu.Lock()
	defer mu.Unlock()
	for i, c := range calls[:runs] {
		require.Equal(t, 1, c.attempt, "run %d spent no attempt", i)
		require.Equal(t, i, c.deferrals, "run %d", i)
		if i > 0 {
			wait := backoff.Delay(1 + calls[i-1].deferrals)
			require.GreaterOrEqual(t, c.at.Sub(calls[i-1].at), wait, "run %d came before its backoff step", i)
		}
	}
}

// A role or database whose transactions default to REPEATABLE READ must
// not let a redelivery in twice. The redelivery's insert waits on the
// payload of an event being dead-lettered; when it goes on, the check that
// follows must see the dead letter, which only a new snapshot does: the
// group commit starts its transactions READ COMMITTED (before the fix it
// answered 202 and queued the dead event again). The workers run there
// too.
func TestPipelineRedeliveryRacingDeadLetteringUnderRepeatableRead(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(dbtest.Database(t, dbtest.Options{}))
	require.NoError(t, err)
	cfg.ConnConfig.RuntimeParams["default_transaction_isolation"] = "repeatable read"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	h := newHarnessOn(t, pool, wharf.Config{MaxAttempts: 1})
	require.NoError(t, h.p.Handle("acme", "order.paid", writeEffect))

	require.Equal(t, http.StatusAccepted, h.send("race", "order.paid"))
	evs, err := h.p.Queue().Fetch(ctx, queue.FetchParams{Limit: 1})
	require.NoError(t, err)
	require.Len(t, evs, 1)
	tx, err := pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}) // as a worker's
	require.NoError(t, err)
	t.Cleanup(func() { _ = tx.Rollback(ctx) })
	exhausted, err := h.p.Queue().RetryTx(ctx, tx, evs[0], queue.Permanent(errors.New("poison")))
	require.NoError(t, err)
	require.True(t, exhausted, "moved to the dead letter queue, not yet committed")

	body := []byte(`{"type":"order.paid","data":{"n":1}}`)
	req, err := http.NewRequest(http.MethodPost, h.url, bytes.NewReader(body))
	require.NoError(t, err)
	req.Header = wharf.SignStandardWebhooks(testSecret, "race", time.Now(), body)
	status := make(chan int, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			status <- 0
			return
		}
		resp.Body.Close()
		status <- resp.StatusCode
	}()
	h.eventually("the redelivery to wait on the dead-lettering", func() bool {
		return h.count(`SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`) == 1
	})
	require.NoError(t, tx.Commit(ctx))
	require.Equal(t, http.StatusOK, <-status, "a redelivery of a dead-lettered event is a duplicate")
	require.Zero(t, h.count(`SELECT count(*) FROM wharf.queue`))
	require.Equal(t, 1, h.count(`SELECT count(*) FROM wharf.dead_letters WHERE status = 'dead'`))

	require.Equal(t, http.StatusAccepted, h.send("fine", "order.paid"))
	h.run()
	h.eventually("the workers to process an event", func() bool {
		return h.count(`SELECT count(*) FROM effects WHERE event_id = 'fine'`) == 1
	})
}

func TestPipelineStoreDownAnswers503(t *testing.T) {
	t.Parallel()
	pool, err := pgxpool.New(context.Background(), "postgres://postgres@127.0.0.1:1/postgres?connect_timeout=1")
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	p, err := wharf.New(pool, wharf.Config{AckDeadline: 300 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(p.Close)
	require.NoError(t, p.Source("acme", wharf.StandardWebhooks(testSecret)))
	srv := httptest.NewServer(p.Handler("acme"))
	t.Cleanup(srv.Close)

	body := []byte(`{"type":"order.paid"}`)
	resp := postTo(t, srv.URL, body, wharf.SignStandardWebhooks(testSecret, "evt_down", time.Now(), body))
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "never a 2xx for what is not stored")
	require.NotEmpty(t, resp.Header.Get("Retry-After"))
}

func TestPipelineGracefulShutdownLosesNothing(t *testing.T) {
	t.Parallel()
	h := newHarness(t, wharf.Config{Workers: 1, TxBatch: 4, ShutdownTimeout: 10 * time.Second})
	started := make(chan string, 20)
	unblock := make(chan struct{})
	var handlerCtxErr atomic.Value
	var runs sync.Map
	require.NoError(t, h.p.Handle("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		n, _ := runs.LoadOrStore(ev.ID, new(atomic.Int32))
		n.(*atomic.Int32).Add(1)
		started <- ev.ID
		if ev.ID == "g0" {
			select {
			case <-unblock:
			case <-ctx.Done():
			}
			handlerCtxErr.Store(fmt.Sprint(ctx.Err()))
		}
		return writeEffect(ctx, tx, ev)
	}))
	for i := range 6 {
		require.Equal(t, http.StatusAccepted, h.send(fmt.Sprintf("g%d", i), "order.paid"))
	}
	cancel, wait := h.start()
	require.Equal(t, "g0", <-started, "events run in the order they arrived")
	cancel() // shutdown begins while g0 is in flight
	close(unblock)
	wait()

	require.Equal(t, "<nil>", handlerCtxErr.Load(), "the shutdown signal does not cancel a running handler")
	require.Equal(t, 1, h.count(`SELECT count(*) FROM effects WHERE event_id = 'g0'`), "the in-flight handler finished and committed")
	require.Equal(t, 5, h.count(`SELECT count(*) FROM wharf.queue WHERE state = 'available' AND attempt = 0`),
		"the others are back, unstarted, attempts given back")
	require.Len(t, started, 0, "nothing else started after the shutdown began")

	h.run()
	h.eventually("everything processed", func() bool { return h.count(`SELECT count(*) FROM effects`) == 6 })
	h.eventually("the queue empty", func() bool { return h.count(`SELECT count(*) FROM wharf.queue`) == 0 })
	require.Zero(t, h.count(`SELECT count(*) FROM effects WHERE n <> 1`), "none ran twice")
	runs.Range(func(k, v any) bool {
		require.EqualValues(t, 1, v.(*atomic.Int32).Load(), "handler runs of %s", k)
		return true
	})
}

func TestPipelineUnhandledTypeStaysQueued(t *testing.T) {
	t.Parallel()
	h := newHarness(t, wharf.Config{})
	require.NoError(t, h.p.Handle("acme", "order.paid", writeEffect))
	require.Equal(t, http.StatusAccepted, h.send("u1", "order.refunded"))
	require.Equal(t, http.StatusAccepted, h.send("u2", "order.paid"))
	h.run()
	h.eventually("the handled event processed", func() bool { return h.count(`SELECT count(*) FROM effects`) == 1 })
	h.eventually("the queue holds only the unhandled event", func() bool { return h.count(`SELECT count(*) FROM wharf.queue`) == 1 })
	require.Equal(t, 1, h.count(`SELECT count(*) FROM wharf.queue WHERE event_id = 'u1' AND state = 'available' AND attempt = 0`),
		"untouched: an old worker never takes a type only a new version knows")
	st, err := h.p.Queue().Stats(context.Background())
	require.NoError(t, err)
	require.EqualValues(t, 1, st.Due, "it shows in the stats")
}

func TestPipelineHTTPAnswers(t *testing.T) {
	t.Parallel()
	h := newHarness(t, wharf.Config{MaxBodyBytes: 1024})
	require.NoError(t, h.p.Handle("acme", "order.paid", writeEffect))

	resp, err := http.Get(h.url)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)

	big := bytes.Repeat([]byte("x"), 2048)
	require.Equal(t, http.StatusRequestEntityTooLarge, h.post(big, wharf.SignStandardWebhooks(testSecret, "big", time.Now(), big)))

	body := []byte(`{"type":"order.paid"}`)
	bad := wharf.SignStandardWebhooks("whsec_"+base64.StdEncoding.EncodeToString([]byte("some-other-secret-0123456789")), "x", time.Now(), body)
	req, err := http.NewRequest(http.MethodPost, h.url, bytes.NewReader(body))
	require.NoError(t, err)
	req.Header = bad
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	var answer strings.Builder
	_, _ = fmt.Fprint(&answer, readAll(t, resp))
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	require.Equal(t, "invalid signature\n", answer.String(), "says nothing about why")

	noType := []byte(`{"data":{}}`)
	require.Equal(t, http.StatusBadRequest, h.post(noType, wharf.SignStandardWebhooks(testSecret, "no-type", time.Now(), noType)))
	stale := wharf.SignStandardWebhooks(testSecret, "stale", time.Now().Add(-time.Hour), body)
	require.Equal(t, http.StatusUnauthorized, h.post(body, stale))

	require.Equal(t, http.StatusAccepted, h.post(body, wharf.SignStandardWebhooks(testSecret, "ok", time.Now(), body)))
	require.Equal(t, http.StatusOK, h.post(body, wharf.SignStandardWebhooks(testSecret, "ok", time.Now(), body)))
	require.Equal(t, 1, h.count(`SELECT count(*) FROM wharf.queue`), "only the good request stored anything")
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	var b bytes.Buffer
	_, err := b.ReadFrom(resp.Body)
	require.NoError(t, err)
	return b.String()
}

func TestPipelineRegistrationErrors(t *testing.T) {
	t.Parallel()
	pool := dbtest.Pool(t)
	p, err := wharf.New(pool, wharf.Config{})
	require.NoError(t, err)
	t.Cleanup(p.Close)
	noop := func(context.Context, pgx.Tx, wharf.Event) error { return nil }
	require.ErrorIs(t, p.Handle("nobody", "x", noop), wharf.ErrInvalidConfig, "unknown source")
	require.NoError(t, p.Source("acme", wharf.StandardWebhooks(testSecret)))
	require.ErrorIs(t, p.Source("acme", wharf.StandardWebhooks(testSecret)), wharf.ErrInvalidConfig, "twice")
	require.ErrorIs(t, p.Source("", wharf.StandardWebhooks(testSecret)), wharf.ErrInvalidConfig)
	require.ErrorIs(t, p.Source("b", nil), wharf.ErrInvalidConfig)
	require.ErrorIs(t, p.Source("c", wharf.HMAC("X-Sig", "s")), wharf.ErrInvalidConfig, "no default identity and no fields")
	require.ErrorIs(t, p.Handle("acme", "x", nil), wharf.ErrInvalidConfig)
	require.ErrorIs(t, p.Handle("acme", "x", noop, wharf.MaxAttempts(0)), wharf.ErrInvalidConfig)
	require.NoError(t, p.Handle("acme", "x", noop))
	require.ErrorIs(t, p.Handle("acme", "x", noop), wharf.ErrInvalidConfig, "twice")
	batch := func(context.Context, pgx.Tx, []wharf.Event) error { return nil }
	require.ErrorIs(t, p.HandleBatch("acme", "y", nil), wharf.ErrInvalidConfig)
	require.ErrorIs(t, p.HandleBatch("acme", "x", batch), wharf.ErrInvalidConfig, "x has a handler")
	require.ErrorIs(t, p.HandleBatch("acme", "y", batch, wharf.Timeout(0)), wharf.ErrInvalidConfig)
	require.ErrorIs(t, p.HandleBatch("acme", "y", batch, wharf.Timeout(900*time.Microsecond)), wharf.ErrInvalidConfig,
		"statement_timeout counts milliseconds: 0 would turn it off")
	require.NoError(t, p.HandleBatch("acme", "y", batch))
	_, err = wharf.New(pool, wharf.Config{Schema: "Bad"})
	require.ErrorIs(t, err, wharf.ErrInvalidSchema)
	_, err = wharf.New(nil, wharf.Config{})
	require.ErrorIs(t, err, wharf.ErrInvalidConfig)
	_, err = wharf.New(pool, wharf.Config{MaxTxDuration: -time.Second})
	require.ErrorIs(t, err, wharf.ErrInvalidConfig)

	empty, err := wharf.New(pool, wharf.Config{})
	require.NoError(t, err)
	t.Cleanup(empty.Close)
	require.ErrorIs(t, empty.Run(context.Background()), wharf.ErrInvalidConfig, "nothing to run")
}

// A Svix delivery under Svix's default header names is stored under its
// svix-id, over real HTTP, and its redelivery is a duplicate.
func TestPipelineAcceptsSvixHeaderNames(t *testing.T) {
	t.Parallel()
	h := newHarness(t, wharf.Config{})
	body := []byte(`{"type":"order.paid","data":{"n":1}}`)
	header := svixHeaders(wharf.SignStandardWebhooks(testSecret, "msg_svix_1", time.Now(), body))
	require.Equal(t, http.StatusAccepted, h.post(body, header))
	require.Equal(t, 1, h.count(`SELECT count(*) FROM wharf.queue WHERE event_id = 'msg_svix_1'`))
	require.Equal(t, http.StatusOK, h.post(body, header.Clone()))
}
