package wharf

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/wharfhq/wharf/queue"
)

// Observer is told what a Pipeline does on its hot paths, for metrics and
// traces (the wharfotel module implements it with OpenTelemetry). Both
// methods are called from many goroutines at once and must not block: they
// sit between a provider and its acknowledgement, and inside a worker's
// open transaction. A panic in them, or in the end funcs they return, is
// logged (Config.Logger) and goes no further: an observer's bug must
// neither fail an event's processing nor cut off an acknowledgement. Set
// it as Config.Observer; without one the Pipeline pays a nil check and
// nothing else.
type Observer interface {
	// StartIngest is called when a request reaches an endpoint (Handler),
	// before anything else is done with it. The request is served in the
	// context it returns (so a span started here is the parent of the
	// signature check and the store), and end is called once, after the
	// answer is written. source is empty, in the IngestResult too, for a
	// request to a name no source is registered under (answered 404): a
	// Handler built per request from the URL (r.PathValue) would otherwise
	// hand the observer names of the sender's choosing, one series each.
	StartIngest(ctx context.Context, source string) (_ context.Context, end func(IngestResult))

	// StartAttempt is called when a worker starts processing an event, in
	// the worker's transaction. The handler runs in the context it
	// returns, and end is called once, when the attempt's outcome is known:
	// after the handler (and the Pipeline's own bookkeeping) returns, but
	// before the worker's batch transaction commits. If that transaction
	// then fails to commit, the queue counts a failed attempt for every
	// event in it, those reported processed included, and the observer
	// sees their next attempts; an event for which it was the last
	// attempt goes to the dead letter queue without another report. So
	// does an event of a failed HandleBatch call (reported split) when
	// shutdown comes before its run alone: that call counts as its failed
	// attempt. A handler that returns nil after one of its statements
	// failed is reported as failing with queue.ErrTxAborted, as the queue
	// records it.
	StartAttempt(ctx context.Context, a Attempt) (_ context.Context, end func(AttemptResult))
}

// IngestOutcome is what became of one request to an endpoint.
type IngestOutcome string

const (
	// IngestStored: the event was stored durably and acknowledged (202).
	IngestStored IngestOutcome = "stored"
	// IngestDuplicate: the event was queued, processed or dead-lettered
	// already; nothing was stored (200).
	IngestDuplicate IngestOutcome = "duplicate"
	// IngestHandshake: the request was a provider's handshake (Slack's
	// url_verification), answered without storing anything.
	IngestHandshake IngestOutcome = "handshake"
	// IngestRejected: the request was refused for what it is (a 4xx: bad
	// signature, body without an id or type, too large, too slow, not
	// POST, unknown source); the provider must not expect a retry to help.
	IngestRejected IngestOutcome = "rejected"
	// IngestUnavailable: the event could not be verified or stored in time,
	// or the source is misconfigured (a 5xx); the provider retries.
	IngestUnavailable IngestOutcome = "unavailable"
)

// IngestResult describes one request to an endpoint, when it is answered.
type IngestResult struct {
	Source string
	// EventID and EventType are empty unless the request got as far as
	// having its identity extracted (after the signature check).
	EventID   string
	EventType string
	// Status is the HTTP status answered.
	Status  int
	Outcome IngestOutcome
	// Duration runs from StartIngest to the answer: for a stored event,
	// the acknowledgement latency the provider saw, less the network.
	Duration time.Duration
}

// Attempt describes one processing attempt of an event, as it starts.
type Attempt struct {
	Source    string
	EventID   string
	EventType string
	// Handler names the handler that takes the event; empty when none does
	// (Config.Unhandled).
	Handler string
	// Number is this attempt's number, from 1; MaxAttempts the last one.
	Number      int
	MaxAttempts int
	// QueueWait is how long the event waited in the queue for this attempt:
	// since it was received, or since its previous attempt failed, whichever
	// is later. It includes the retry backoff and any deferral, since the
	// queue does not tell a worker when the event became due. The database
	// stamps those times and this process's clock ends the wait, so a
	// database clock ahead of this one shortens it; it is never negative.
	QueueWait time.Duration
}

// AttemptOutcome is what became of one processing attempt.
type AttemptOutcome string

const (
	// AttemptProcessed: the event is completed: its handler succeeded, or
	// an earlier delivery of it had been processed already, or no handler
	// takes it and Config.Unhandled is CompleteUnhandled.
	AttemptProcessed AttemptOutcome = "processed"
	// AttemptRetried: the attempt failed and the event will run again
	// after a backoff (or the handler's RetryIn).
	AttemptRetried AttemptOutcome = "retried"
	// AttemptDeferred: the event goes back to the queue with its attempt
	// given back: the handler returned Defer, or its downstream's breaker
	// is open or counted the failure.
	AttemptDeferred AttemptOutcome = "deferred"
	// AttemptDeadLettered: the attempt failed for good, because its error
	// is Permanent or it was the last attempt; the event moves to the dead
	// letter queue.
	AttemptDeadLettered AttemptOutcome = "dead_lettered"
	// AttemptSplit: the event ran in a batch (Pipeline.HandleBatch) that
	// failed; the batch's writes were rolled back and the event runs again
	// alone, without spending an attempt. That run is reported as an
	// attempt of its own, with the same number. (If shutdown comes first,
	// the failed call counts as the event's attempt; see StartAttempt.)
	AttemptSplit AttemptOutcome = "split"
)

// AttemptResult describes how one processing attempt ended.
type AttemptResult struct {
	Outcome AttemptOutcome
	// Err is the attempt's error (a Defer's reason included); nil when
	// processed.
	Err error
	// Duration is the time spent processing, handler included, from
	// StartAttempt.
	Duration time.Duration
}

// guardedObserver is Config.Observer as the Pipeline calls it: a panic in
// the observer is logged instead of raised, and each end func runs once.
type guardedObserver struct {
	observer Observer
	log      *slog.Logger
}

func (g guardedObserver) StartIngest(ctx context.Context, source string) (context.Context, func(IngestResult)) {
	return guardStart(g, "StartIngest", ctx, func() (context.Context, func(IngestResult)) {
		return g.observer.StartIngest(ctx, source)
	})
}

func (g guardedObserver) StartAttempt(ctx context.Context, a Attempt) (context.Context, func(AttemptResult)) {
	return guardStart(g, "StartAttempt", ctx, func() (context.Context, func(AttemptResult)) {
		return g.observer.StartAttempt(ctx, a)
	})
}

// guardStart runs start, one of the Observer's methods called with ctx,
// and returns its context and its end func, guarded and to run at most
// once; or ctx and a no-op if it panicked or returned no end func.
func guardStart[R any](g guardedObserver, what string, ctx context.Context, start func() (context.Context, func(R))) (context.Context, func(R)) {
	outCtx, end := ctx, func(R) {}
	g.protect(what, func() {
		if c, e := start(); e != nil {
			outCtx, end = cmp.Or(c, ctx), e
		}
	})
	var once sync.Once
	return outCtx, func(r R) { once.Do(func() { g.protect(what+"'s end", func() { end(r) }) }) }
}

// protect runs fn, logging a panic instead of raising it.
func (g guardedObserver) protect(what string, fn func()) {
	defer func() {
		if r := recover(); r != nil {
			g.log.Error("wharf: the Observer panicked; the Pipeline carries on", "call", what, "panic", r, "stack", string(debug.Stack()))
		}
	}()
	fn()
}

// observeIngest serves one request through p.ingest, telling the observer.
// A request whose serving panics (a Verifier's or secret lookup's bug) is
// reported as a 500 before the panic goes on to net/http.
func (p *Pipeline) observeIngest(w http.ResponseWriter, r *http.Request, source string) {
	start := time.Now()
	observed := source
	p.mu.RLock()
	if p.sources[source] == nil {
		observed = ""
	}
	p.mu.RUnlock()
	ctx, end := p.cfg.Observer.StartIngest(r.Context(), observed)
	sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
	var id Identity
	ended := func(status int) {
		end(IngestResult{
			Source: observed, EventID: id.ID, EventType: id.Type,
			Status: status, Outcome: ingestOutcome(status, id), Duration: time.Since(start),
		})
	}
	defer func() {
		if r := recover(); r != nil {
			ended(http.StatusInternalServerError)
			panic(r)
		}
	}()
	p.ingest(sw, r.WithContext(ctx), source, &id)
	ended(sw.status)
}

// ingestOutcome classifies an answer by its status: every 2xx but 202
// either answers a duplicate (the event was identified) or a handshake.
func ingestOutcome(status int, id Identity) IngestOutcome {
	switch {
	case status == http.StatusAccepted:
		return IngestStored
	case status >= 500:
		return IngestUnavailable
	case status >= 300:
		return IngestRejected
	case id.ID != "":
		return IngestDuplicate
	default:
		return IngestHandshake
	}
}

// statusWriter remembers the status written. Unwrap lets
// http.ResponseController reach the connection (for the body's read
// deadline) through it.
type statusWriter struct {
	http.ResponseWriter
	status      int
	wroteHeader bool
}

func (w *statusWriter) WriteHeader(status int) {
	if !w.wroteHeader {
		w.status, w.wroteHeader = status, true
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.wroteHeader = true
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// observeWork is p.work, telling the observer about each attempt.
func (p *Pipeline) observeWork(ctx context.Context, tx pgx.Tx, qev *queue.Event) (err error) {
	start := time.Now()
	ctx, end := p.cfg.Observer.StartAttempt(ctx, attemptOf(qev, p.handlerFor(qev.Source, qev.Type), start))
	defer func() {
		// A panic is the consumer's to recover (it counts as an error); the
		// attempt is ended on the way.
		if r := recover(); r != nil {
			perr := fmt.Errorf("panic: %v", r)
			end(AttemptResult{Outcome: attemptOutcome(perr, qev), Err: perr, Duration: time.Since(start)})
			panic(r)
		}
	}()
	err = p.work(ctx, tx, qev)
	end(AttemptResult{Outcome: attemptOutcome(err, qev), Err: err, Duration: time.Since(start)})
	return err
}

// startAttempts tells the observer, if any, that the events of a batch
// start their attempts, and returns the func that ends them all with the
// batch's error: processed, deferred, or split (they run again alone). The
// batch function runs in the worker's context, not in one of theirs.
func (p *Pipeline) startAttempts(ctx context.Context, h *handler, qevs []*queue.Event) (ended func(error)) {
	if p.cfg.Observer == nil {
		return func(error) {}
	}
	start := time.Now()
	ends := make([]func(AttemptResult), len(qevs))
	for i, qev := range qevs {
		_, ends[i] = p.cfg.Observer.StartAttempt(ctx, attemptOf(qev, h, start))
	}
	return func(err error) {
		d := time.Since(start)
		for i, qev := range qevs {
			outcome := attemptOutcome(err, qev)
			if outcome != AttemptProcessed && outcome != AttemptDeferred {
				outcome = AttemptSplit
			}
			ends[i](AttemptResult{Outcome: outcome, Err: err, Duration: d})
		}
	}
}

// attemptOf describes qev's attempt, starting at start, by handler h (nil
// when none takes it).
func attemptOf(qev *queue.Event, h *handler, start time.Time) Attempt {
	a := Attempt{
		Source: qev.Source, EventID: qev.ID, EventType: qev.Type,
		Number: qev.Attempt, MaxAttempts: qev.MaxAttempts, QueueWait: max(0, start.Sub(waitingSince(qev))),
	}
	if h != nil {
		a.Handler = h.name
	}
	return a
}

// waitingSince is when qev last entered the queue as far as a worker can
// tell: its arrival, or its latest failed attempt.
func waitingSince(qev *queue.Event) time.Time {
	if n := len(qev.Errors); n > 0 && qev.Errors[n-1].At.After(qev.ReceivedAt) {
		return qev.Errors[n-1].At
	}
	return qev.ReceivedAt
}

// attemptOutcome is what the queue makes of an attempt that returned err,
// decided as the consumer decides it.
func attemptOutcome(err error, qev *queue.Event) AttemptOutcome {
	var deferred *queue.DeferError
	var permanent *queue.PermanentError
	switch {
	case err == nil:
		return AttemptProcessed
	case errors.As(err, &deferred):
		return AttemptDeferred
	case errors.As(err, &permanent) || qev.Attempt >= qev.MaxAttempts:
		return AttemptDeadLettered
	default:
		return AttemptRetried
	}
}
