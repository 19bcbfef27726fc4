package wharf_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/queue"
)

// recorder is an Observer that keeps what it is told, and marks the
// contexts it returns so a test can see that they reach the handler.
type recorder struct {
	mu       sync.Mutex
	ingests  []wharf.IngestResult
	attempts []recordedAttempt
}

type recordedAttempt struct {
	wharf.Attempt
	wharf.AttemptResult
}

type observedKey struct{}

func (r *recorder) StartIngest(ctx context.Context, source string) (context.Context, func(wharf.IngestResult)) {
	return context.WithValue(ctx, observedKey{}, "ingest:"+source), func(res wharf.IngestResult) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.ingests = append(r.ingests, res)
	}
}

func (r *recorder) StartAttempt(ctx context.Context, a wharf.Attempt) (context.Context, func(wharf.AttemptResult)) {
	return context.WithValue(ctx, observedKey{}, "attempt:"+a.EventID), func(res wharf.AttemptResult) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.attempts = append(r.attempts, recordedAttempt{a, res})
	}
}

func (r *recorder) ingested() []wharf.IngestResult {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]wharf.IngestResult(nil), r.ingests...)
}

// attemptsOf returns the attempts of one event, in the order they ended.
func (r *recorder) attemptsOf(id string) []recordedAttempt {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []recordedAttempt
	for _, a := range r.attempts {
		if a.EventID == id {
			out = append(out, a)
		}
	}
	return out
}

func TestObserverIngest(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	h := newHarness(t, wharf.Config{Observer: rec})

	require.Equal(t, http.StatusAccepted, h.send("evt_obs_1", "order.paid"))
	require.Equal(t, http.StatusOK, h.send("evt_obs_1", "order.paid"))
	body := []byte(`{"type":"order.paid"}`)
	header := wharf.SignStandardWebhooks(testSecret, "evt_obs_2", time.Now(), body)
	header.Set("Webhook-Signature", "v1,"+"AAAA")
	require.Equal(t, http.StatusUnauthorized, h.post(body, header))

	// A result is told after the answer is written, so the client may
	// have it first.
	h.eventually("a result per request", func() bool { return len(rec.ingested()) == 3 })
	byOutcome := map[wharf.IngestOutcome]wharf.IngestResult{}
	for _, res := range rec.ingested() {
		require.Positive(t, res.Duration, "%s", res.Outcome)
		res.Duration = 0
		byOutcome[res.Outcome] = res
	}
	require.Equal(t, map[wharf.IngestOutcome]wharf.IngestResult{
		wharf.IngestStored:    {Source: "acme", EventID: "evt_obs_1", EventType: "order.paid", Status: http.StatusAccepted, Outcome: wharf.IngestStored},
		wharf.IngestDuplicate: {Source: "acme", EventID: "evt_obs_1", EventType: "order.paid", Status: http.StatusOK, Outcome: wharf.IngestDuplicate},
		wharf.IngestRejected:  {Source: "acme", Status: http.StatusUnauthorized, Outcome: wharf.IngestRejected},
	}, byOutcome)
	require.Equal(t, 1, h.count(`SELECT count(*) FROM wharf.queue`), "observing changes nothing stored")
}

// A request to a name no source is registered under reaches the observer
// without that name: a Handler built per request from the URL would
// otherwise give the observer (and its metrics) names of the sender's
// choosing.
func TestObserverIngestOfAnUnknownSourceCarriesNoName(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	h := newHarness(t, wharf.Config{Observer: rec})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.p.Handler(r.URL.Query().Get("source")).ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)

	body := []byte(`{"type":"order.paid"}`)
	header := wharf.SignStandardWebhooks(testSecret, "evt_obs_unknown", time.Now(), body)
	require.Equal(t, http.StatusNotFound, postTo(t, srv.URL+"?source=random-7f3a", body, header).StatusCode)
	require.Equal(t, http.StatusAccepted, postTo(t, srv.URL+"?source=acme", body, header).StatusCode)

	h.eventually("a result per request", func() bool { return len(rec.ingested()) == 2 })
	bySource := map[string]wharf.IngestResult{}
	for _, res := range rec.ingested() {
		res.Duration = 0
		bySource[res.Source] = res
	}
	require.Equal(t, map[string]wharf.IngestResult{
		"":     {Status: http.StatusNotFound, Outcome: wharf.IngestRejected},
		"acme": {Source: "acme", EventID: "evt_obs_unknown", EventType: "order.paid", Status: http.StatusAccepted, Outcome: wharf.IngestStored},
	}, bySource)
}

func TestObserverAttempts(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	h := newHarness(t, wharf.Config{Observer: rec, MaxAttempts: 5})
	var contexts sync.Map // event id -> what the handler's context carried
	require.NoError(t, h.p.Handle("acme", "order.flaky", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		contexts.Store(ev.ID, ctx.Value(observedKey{}))
		if err := writeEffect(ctx, tx, ev); err != nil {
			return err
		}
		if ev.Attempt == 1 {
			return errors.New("flaky once")
		}
		return nil
	}))
	require.NoError(t, h.p.Handle("acme", "order.poison", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		return wharf.Permanent(errors.New("cannot parse"))
	}))

	require.NoError(t, h.p.Handle("acme", "order.swallows", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		if ev.Attempt == 1 {
			_, _ = tx.Exec(ctx, `SELECT 1 / 0`) // fails, and the handler ignores it
		}
		return nil
	}))

	require.NoError(t, h.p.Handle("acme", "order.panics", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		if ev.Attempt == 1 {
			panic("boom")
		}
		return nil
	}))

	require.Equal(t, http.StatusAccepted, h.send("evt_flaky", "order.flaky"))
	require.Equal(t, http.StatusAccepted, h.send("evt_panics", "order.panics"))
	require.Equal(t, http.StatusAccepted, h.send("evt_poison", "order.poison"))
	require.Equal(t, http.StatusAccepted, h.send("evt_swallows", "order.swallows"))
	h.run()
	h.eventually("the queue empty", func() bool { return h.count(`SELECT count(*) FROM wharf.queue`) == 0 })
	require.Equal(t, 1, h.count(`SELECT count(*) FROM wharf.dead_letters WHERE event_id = 'evt_poison'`))

	flaky := rec.attemptsOf("evt_flaky")
	for i, want := range []struct {
		number  int
		outcome wharf.AttemptOutcome
		err     string
	}{{1, wharf.AttemptRetried, "flaky once"}, {2, wharf.AttemptProcessed, ""}} {
		a := flaky[i]
		require.Equal(t, wharf.Attempt{
			Source: "acme", EventID: "evt_flaky", EventType: "order.flaky", Handler: "acme/order.flaky",
			Number: want.number, MaxAttempts: 5, QueueWait: a.QueueWait,
		}, a.Attempt, "attempt %d", want.number)
		require.Positive(t, a.QueueWait, "attempt %d", want.number)
		require.Equal(t, want.outcome, a.Outcome, "attempt %d", want.number)
		if want.err == "" {
			require.NoError(t, a.Err)
		} else {
			require.EqualError(t, a.Err, want.err)
		}
		require.Positive(t, a.Duration)
	}
	got, _ := contexts.Load("evt_flaky")
	require.Equal(t, "attempt:evt_flaky", got, "the handler runs in the observer's context")

	panics := rec.attemptsOf("evt_panics")
	require.Len(t, panics, 2, "a panic ends its attempt too, and the queue still retries it")
	require.Equal(t, wharf.AttemptRetried, panics[0].Outcome)
	require.EqualError(t, panics[0].Err, "panic: boom")
	require.Equal(t, wharf.AttemptProcessed, panics[1].Outcome)

	swallows := rec.attemptsOf("evt_swallows")
	require.Len(t, swallows, 2, "a handler that returns nil after a failed statement has failed its attempt")
	require.Equal(t, wharf.AttemptRetried, swallows[0].Outcome)
	require.ErrorIs(t, swallows[0].Err, queue.ErrTxAborted)
	require.Equal(t, wharf.AttemptProcessed, swallows[1].Outcome)

	poison := rec.attemptsOf("evt_poison")
	require.Len(t, poison, 1, "a Permanent error ends the event at its first attempt")
	require.Equal(t, wharf.AttemptDeadLettered, poison[0].Outcome)
	require.Equal(t, 1, poison[0].Number)
	require.ErrorContains(t, poison[0].Err, "cannot parse")
}

// panickyObserver panics where it is told to, and counts its end calls.
type panickyObserver struct {
	inStart, inEnd   bool
	ingestEndsTotal  atomic.Int32
	attemptEndsTotal atomic.Int32
}

func (o *panickyObserver) StartIngest(ctx context.Context, source string) (context.Context, func(wharf.IngestResult)) {
	if o.inStart {
		panic("observer bug in StartIngest")
	}
	return ctx, func(wharf.IngestResult) {
		o.ingestEndsTotal.Add(1)
		if o.inEnd {
			panic("observer bug in StartIngest's end")
		}
	}
}

func (o *panickyObserver) StartAttempt(ctx context.Context, a wharf.Attempt) (context.Context, func(wharf.AttemptResult)) {
	if o.inStart {
		panic("observer bug in StartAttempt")
	}
	return ctx, func(wharf.AttemptResult) {
		o.attemptEndsTotal.Add(1)
		if o.inEnd {
			panic("observer bug in StartAttempt's end")
		}
	}
}

// An Observer's panic goes no further than a log line: the event is
// acknowledged and processed once, on its first attempt, and each end
// func runs once. Before, a panic in an attempt's end failed every
// attempt (and dead-lettered the event), and one in an ingest's end cut
// the connection off without the 202 of an event already stored.
func TestObserverPanicsChangeNothing(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name           string
		inStart, inEnd bool
	}{{"in start", true, false}, {"in end", false, true}} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			obs := &panickyObserver{inStart: c.inStart, inEnd: c.inEnd}
			h := newHarness(t, wharf.Config{Observer: obs, MaxAttempts: 2})
			require.NoError(t, h.p.Handle("acme", "order.paid", writeEffect))
			require.Equal(t, http.StatusAccepted, h.send("evt_1", "order.paid"))
			h.run()
			h.eventually("the event processed", func() bool { return h.count(`SELECT count(*) FROM effects`) == 1 })
			h.eventually("the queue empty", func() bool { return h.count(`SELECT count(*) FROM wharf.queue`) == 0 })
			require.Zero(t, h.count(`SELECT count(*) FROM wharf.dead_letters`))
			require.Equal(t, 1, h.count(`SELECT n FROM effects WHERE event_id = 'evt_1'`))
			if c.inEnd {
				require.EqualValues(t, 1, obs.ingestEndsTotal.Load(), "one end per request")
				require.EqualValues(t, 1, obs.attemptEndsTotal.Load(), "one end per attempt")
			}
		})
	}
}

// panicVerifier is a custom Verifier with a bug.
type panicVerifier struct{}

func (panicVerifier) Verify(context.Context, http.Header, []byte) error { panic("verifier bug") }

// A request whose serving panics (here a custom Verifier's bug) is still
// reported, as a 500, before net/http takes the panic.
func TestObserverSeesARequestThatPanics(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	h := newHarness(t, wharf.Config{Observer: rec})
	require.NoError(t, h.p.Source("custom", panicVerifier{}, wharf.SourceFields{ID: wharf.FromHeader("X-Id"), Type: wharf.FromHeader("X-Type")}))
	srv := httptest.NewServer(h.p.Handler("custom"))
	t.Cleanup(srv.Close)
	req, err := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader(`{}`))
	require.NoError(t, err)
	req.Header.Set("X-Id", "evt_1")
	req.Header.Set("X-Type", "order.paid")
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
	}
	h.eventually("the request reported", func() bool { return len(rec.ingested()) == 1 })
	res := rec.ingested()[0]
	require.Equal(t, http.StatusInternalServerError, res.Status)
	require.Equal(t, wharf.IngestUnavailable, res.Outcome)
}
