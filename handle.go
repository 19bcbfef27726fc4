package wharf

import (
	"context"
	"fmt"
	"math"
	"reflect"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/wharfhq/wharf/queue"
)

// source is a registered webhook source.
type source struct {
	name     string
	verifier Verifier
	fields   SourceFields
}

// Source registers a webhook source: its name (the first half of every
// event's deduplication key, so keep it stable), the verifier of its
// signatures, and, optionally, where its events' id, type and ordering key
// come from when the verifier's provider defaults are not right.
//
//	p.Source("stripe", wharf.Stripe(os.Getenv("STRIPE_WEBHOOK_SECRET")))
//	p.Source("orders", wharf.HMAC("X-Signature", secret), wharf.SourceFields{ID: wharf.FromJSON("id"), Type: wharf.FromHeader("X-Event")})
func (p *Pipeline) Source(name string, v Verifier, fields ...SourceFields) error {
	if reason := checkName(name, queue.MaxSourceLen); reason != "" {
		return fmt.Errorf("%w: source name %q %s", ErrInvalidConfig, name, reason)
	}
	if v == nil {
		return fmt.Errorf("%w: source %q: verifier is nil (use NoVerification to accept unsigned requests)", ErrInvalidConfig, name)
	}
	if rv := reflect.ValueOf(v); rv.Kind() == reflect.Pointer && rv.IsNil() {
		// A verifier variable left unset: its methods would panic on
		// the first request, or on the checks below.
		return fmt.Errorf("%w: source %q: verifier is a nil %T", ErrInvalidConfig, name, v)
	}
	var f SourceFields
	switch len(fields) {
	case 0:
	case 1:
		f = fields[0]
	default:
		return fmt.Errorf("%w: source %q: give at most one SourceFields", ErrInvalidConfig, name)
	}
	if err := f.validate(); err != nil {
		return fmt.Errorf("source %q: %w", name, err)
	}
	if check, ok := v.(interface{ validate() error }); ok {
		if err := check.validate(); err != nil {
			return fmt.Errorf("%w: source %q: %w", ErrInvalidConfig, name, err)
		}
	}
	if needsFields(v) && (f.ID.IsZero() || f.Type.IsZero()) {
		return fmt.Errorf("%w: source %q: its verifier has no default identity; set SourceFields.ID and Type", ErrInvalidConfig, name)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	// Checked under the lock that Run's reading of the routes and sources
	// takes: one registered as Run starts is either refused or seen.
	if p.running.Load() {
		return ErrRunning
	}
	if _, ok := p.sources[name]; ok {
		return fmt.Errorf("%w: source %q is already registered", ErrInvalidConfig, name)
	}
	p.sources[name] = &source{name: name, verifier: v, fields: f}
	return nil
}

// route is a (source, type) a handler takes; type queue.AnyType takes every
// type of the source not taken by a handler of its own.
type route struct{ source, typ string }

// handler is a registered handler with its options applied.
type handler struct {
	route
	fn          HandlerFunc
	batch       BatchHandlerFunc // nil unless registered with HandleBatch; fn then calls it with one event
	name        string           // the idempotency consumer
	downstream  string
	maxAttempts int
	timeout     time.Duration
	backoff     *queue.Backoff
	slots       chan struct{} // nil: no concurrency limit
	maxBatch    int           // 0: no cap on a batch call's events
}

// HandleOption adjusts one handler.
type HandleOption func(*handler) error

// HandlerName sets the handler's stable name: the idempotency consumer
// under which its processed events are recorded. Renaming it makes every
// event new to it again, so set it when the Go code may move. Defaults to
// "source/type" ("stripe/invoice.paid"; "stripe/*" for AnyType).
func HandlerName(name string) HandleOption {
	return func(h *handler) error {
		if reason := checkName(name, queue.MaxHandlerLen); reason != "" {
			return fmt.Errorf("handler name %q %s", name, reason)
		}
		h.name = name
		return nil
	}
}

// Downstream names the circuit breaker the handler's calls go through: the
// handler runs inside the breaker (its errors counted as the breaker's
// classifier says), its events stay in the queue while the breaker is
// open (unfetched, but for a catch-all handler's whose source has other
// handlers outside the breaker: those are fetched and put back), and a
// failure the breaker counts puts the event back
// without spending an attempt. A failure that leaves the breaker closed
// (the downstream rejects that event alone) also adds one to the event's
// Deferrals and one step to its wait (Config.Backoff, from its attempt
// on), so such an event is retried less and less often rather than at
// the same pace forever; the failures of an outage (those that open the
// breaker, probes included) count nothing. Requests the handler sends
// with its ctx through the same breaker's Transport are part of the
// handler's call, counted once with it; a panic is the handler's bug and
// is not counted. Defaults to none.
func Downstream(name string) HandleOption {
	return func(h *handler) error {
		if name == "" {
			return fmt.Errorf("downstream name is empty")
		}
		h.downstream = name
		return nil
	}
}

// MaxAttempts sets how many times the handler's events run before they are
// dead-lettered; like Config.MaxAttempts, it is stored with each event when
// it arrives. Defaults to Config.MaxAttempts.
func MaxAttempts(n int) HandleOption {
	return func(h *handler) error {
		if n < 1 || n > queue.MaxMaxAttempts {
			return fmt.Errorf("max attempts %d is outside 1..%d", n, queue.MaxMaxAttempts)
		}
		h.maxAttempts = n
		return nil
	}
}

// MaxTimeout is the longest Timeout: statement_timeout's largest value,
// 2^31-1 milliseconds (about 24.9 days).
const MaxTimeout = math.MaxInt32 * time.Millisecond

// Timeout bounds one run of the handler: its context's deadline, and a
// statement_timeout on its database statements, which Postgres enforces
// without closing the connection (cancelling a running pgx query would
// close it, and with it the transaction other events share). A statement
// given the handler's ctx after the deadline fails at once with
// context.DeadlineExceeded, so a statement that starts just before the
// deadline can take the run to twice the Timeout. Postgres applies
// statement_timeout to each statement: a pgx.Batch (SendBatch), or a
// query string of several statements, sent just before the deadline can
// take the run the Timeout once more for each of its statements. A run
// that times out is a failed attempt; with Downstream, unless the
// breaker counts the deadline as the downstream's failure (its
// DefaultClassifier counts timeouts): the event is then deferred, as for
// any failure the breaker counts. Statements sent through tx.Conn() or
// tx.LargeObjects() bypass this: pgx cancels them at the deadline by
// closing the connection, which fails every event of the transaction, so
// a timed handler should use tx itself. At least a millisecond,
// statement_timeout's unit, and at most MaxTimeout, its largest value.
// Defaults to none.
func Timeout(d time.Duration) HandleOption {
	return func(h *handler) error {
		if d < time.Millisecond {
			return fmt.Errorf("timeout %s is under a millisecond", d)
		}
		if d.Milliseconds() > MaxTimeout.Milliseconds() {
			// Postgres would refuse it as the statement_timeout of every
			// run, and every event would fail until dead-lettered.
			return fmt.Errorf("timeout %s is over %s, the largest statement_timeout", d, MaxTimeout)
		}
		h.timeout = d
		return nil
	}
}

// Backoff sets the handler's retry schedule (see queue.Backoff; zero
// fields take its defaults). Defaults to Config.Backoff.
func Backoff(b queue.Backoff) HandleOption {
	return func(h *handler) error {
		// A copy of its own for each handler: the option may be given to
		// several, from several goroutines.
		b := withBackoffDefaults(b)
		if b.Initial < 0 || b.Max < b.Initial || b.Multiplier < 1 || (b.Jitter != queue.NoJitter && (b.Jitter < 0 || b.Jitter > 1)) {
			return fmt.Errorf("backoff %+v is not a valid schedule", b)
		}
		h.backoff = &b
		return nil
	}
}

// Concurrency caps how many of the handler's events run at once in this
// process. A worker waits for a slot at most a second, holding its
// transaction (a longer wait could deadlock with a handler that waits on
// the transaction's row locks); then the event goes back to the queue,
// its attempt given back. Defaults to no cap beyond Config.Workers.
func Concurrency(n int) HandleOption {
	return func(h *handler) error {
		if n < 1 {
			return fmt.Errorf("concurrency %d is under 1", n)
		}
		h.slots = make(chan struct{}, n)
		return nil
	}
}

// MaxBatch caps how many events one call of a HandleBatch handler gets,
// for a downstream bulk API with a maximum, or a Timeout sized for n
// events: a worker transaction with more of them makes several calls.
// Defaults to no cap (up to Config.TxBatch). Only for HandleBatch.
func MaxBatch(n int) HandleOption {
	return func(h *handler) error {
		if h.batch == nil {
			return fmt.Errorf("MaxBatch applies to HandleBatch handlers only")
		}
		if n < 1 {
			return fmt.Errorf("max batch %d is under 1", n)
		}
		h.maxBatch = n
		return nil
	}
}

// Handle registers fn for the events of source whose type is eventType, or
// every type without a handler of its own when eventType is "*"
// (queue.AnyType). Workers fetch only the (source, type) pairs registered
// here, so during a rolling deploy an old worker never takes an event type
// that only the new version knows.
func (p *Pipeline) Handle(sourceName, eventType string, fn HandlerFunc, opts ...HandleOption) error {
	if fn == nil {
		return fmt.Errorf("%w: handler for %s/%s is nil", ErrInvalidConfig, sourceName, eventType)
	}
	return p.register(&handler{route: route{sourceName, eventType}, fn: fn}, opts)
}

// HandleBatch registers fn like Handle, for handlers that are faster with
// many events at once: a worker hands fn, in one call, every event of its
// transaction that fn takes and that no earlier delivery has processed
// (up to Config.TxBatch; one alone runs in a call of its own). The
// options apply to each call: Timeout bounds the call, Concurrency counts
// it as one, and Downstream's breaker and rate limit see one call. A call
// that fails is rolled back, and its events run again one call each, so
// an event that fails spends its attempt alone; a Defer error defers them
// all.
func (p *Pipeline) HandleBatch(sourceName, eventType string, fn BatchHandlerFunc, opts ...HandleOption) error {
	if fn == nil {
		return fmt.Errorf("%w: batch handler for %s/%s is nil", ErrInvalidConfig, sourceName, eventType)
	}
	one := func(ctx context.Context, tx pgx.Tx, ev Event) error { return fn(ctx, tx, []Event{ev}) }
	return p.register(&handler{route: route{sourceName, eventType}, fn: one, batch: fn}, opts)
}

// register applies opts to h and adds it to the routes.
func (p *Pipeline) register(h *handler, opts []HandleOption) error {
	sourceName, eventType := h.source, h.typ
	if reason := checkName(eventType, queue.MaxTypeLen); reason != "" {
		return fmt.Errorf("%w: event type %q %s", ErrInvalidConfig, eventType, reason)
	}
	h.name = sourceName + "/" + eventType
	for _, opt := range opts {
		if opt == nil {
			return fmt.Errorf("%w: handler %s/%s: an option is nil", ErrInvalidConfig, sourceName, eventType)
		}
		if err := opt(h); err != nil {
			return fmt.Errorf("%w: handler %s/%s: %v", ErrInvalidConfig, sourceName, eventType, err)
		}
	}
	if reason := checkName(h.name, queue.MaxHandlerLen); reason != "" {
		// The default "source/type" can be longer than the queue and the
		// idempotency store take for a handler name, and every delivery
		// would then be refused as bad input.
		return fmt.Errorf("%w: handler %s/%s: its name %q %s; set a shorter one with HandlerName", ErrInvalidConfig, sourceName, eventType, h.name, reason)
	}
	if h.name == UnhandledConsumer {
		return fmt.Errorf("%w: handler %s/%s: the name %q is reserved for events no handler takes (Config.Unhandled)", ErrInvalidConfig, sourceName, eventType, h.name)
	}
	if h.maxAttempts == 0 {
		h.maxAttempts = p.cfg.MaxAttempts
	}
	if h.downstream != "" {
		if _, err := p.breakers.Breaker(h.downstream); err != nil {
			return fmt.Errorf("%w: handler %s/%s: %w", ErrInvalidConfig, sourceName, eventType, err)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.running.Load() { // under the lock: see Source
		return ErrRunning
	}
	if _, ok := p.sources[sourceName]; !ok {
		return fmt.Errorf("%w: handler for unknown source %q (register it with Source first)", ErrInvalidConfig, sourceName)
	}
	if _, ok := p.routes[h.route]; ok {
		return fmt.Errorf("%w: %s/%s already has a handler", ErrInvalidConfig, sourceName, eventType)
	}
	p.routes[h.route] = h
	if h.batch != nil {
		p.batching = true
	}
	return nil
}

// handlerFor returns the handler for an event, or nil.
func (p *Pipeline) handlerFor(source, typ string) *handler {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if h, ok := p.routes[route{source, typ}]; ok {
		return h
	}
	return p.routes[route{source, queue.AnyType}]
}

// acquire takes one of the handler's concurrency slots, if it has a cap.
// The worker waits holding its transaction, whose row locks a handler
// that holds a slot may be waiting on: a deadlock Postgres cannot see. So
// it waits at most maxWaitInTx; then, or when ctx ends first, it returns a
// queue.DeferError due now: the event goes back to the queue without
// spending an attempt, and the transaction can end.
func (h *handler) acquire(ctx context.Context) (release func(), err error) {
	if h.slots == nil {
		return func() {}, nil
	}
	select {
	case h.slots <- struct{}{}:
		return func() { <-h.slots }, nil
	default:
	}
	t := time.NewTimer(maxWaitInTx)
	defer t.Stop()
	select {
	case h.slots <- struct{}{}:
		if err := ctx.Err(); err != nil {
			// Both were ready (a slot freed by the same hard stop that
			// ended ctx): the stop wins, the event does not start.
			<-h.slots
			return nil, queue.Defer(time.Now(), err)
		}
		return func() { <-h.slots }, nil
	case <-t.C:
		return nil, queue.Defer(time.Now(), fmt.Errorf("wharf: handler %q: all %d of its concurrency slots stayed taken for %s", h.name, cap(h.slots), maxWaitInTx))
	case <-ctx.Done():
		return nil, queue.Defer(time.Now(), ctx.Err())
	}
}

// checkName returns why s is unusable as a name, or "".
func checkName(s string, maxLen int) string {
	switch {
	case s == "":
		return "is empty"
	case len(s) > maxLen:
		return fmt.Sprintf("is longer than %d bytes", maxLen)
	case !utf8.ValidString(s):
		return "is not valid UTF-8"
	}
	for _, r := range s {
		if r == 0 || r < ' ' {
			return "contains a control character"
		}
	}
	return ""
}
