package wharf

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wharfhq/wharf/breaker"
	"github.com/wharfhq/wharf/dlq"
	"github.com/wharfhq/wharf/eventlog"
	"github.com/wharfhq/wharf/idempotency"
	"github.com/wharfhq/wharf/internal/sqlschema"
	"github.com/wharfhq/wharf/queue"
)

// ErrRunning is returned by Source and Handle once Run has started: the
// set of events a worker fetches is fixed when it starts.
var ErrRunning = errors.New("wharf: the pipeline is running")

// ErrClosed is returned by Run after Close: the queue's wake-ups, the
// shared breakers' refresh and the audit log are stopped.
var ErrClosed = errors.New("wharf: the pipeline is closed")

// ErrInvalidConfig is wrapped by every error about a Config, a source or a
// handler registration that cannot work.
var ErrInvalidConfig = errors.New("wharf: invalid config")

// Event is what a handler receives: the webhook as the provider sent it.
type Event struct {
	Source      string
	ID          string // the provider's event id
	Type        string
	OrderingKey string
	Body        []byte // the raw body, verbatim
	Headers     http.Header
	// ReceivedAt is when the event was stored in the queue, just before
	// its webhook was acknowledged; for an event replayed from the dead
	// letter queue, when it was replayed (the entry it was replayed from
	// keeps the first time).
	ReceivedAt time.Time
	// Attempt is this attempt's number, from 1; MaxAttempts the last one.
	Attempt     int
	MaxAttempts int
	// Errors holds the earlier attempts' errors, oldest first.
	Errors []queue.AttemptError
	// Deferrals counts the earlier runs that a downstream failed (through
	// the handler's breaker, while it stayed closed), and the times a
	// rescued event found its lost run's transaction still holding its
	// idempotency claim: they spent no attempt, and each one made the
	// event wait longer before this run.
	Deferrals int
}

// HandlerFunc processes one event inside tx. Its writes commit with the
// event's completion and its idempotency claim, or not at all. Return nil
// when done; an error to retry the event after a backoff (its writes are
// rolled back); queue.Permanent(err) to dead-letter it at once;
// queue.Defer(until, reason) to put it back without spending an attempt.
type HandlerFunc func(ctx context.Context, tx pgx.Tx, ev Event) error

// BatchHandlerFunc processes several events of one handler inside tx at
// once, so that their effects can be written in one statement. It
// succeeds or fails as a whole: its writes commit with every event's
// completion and idempotency claim, or, when it returns an error, are
// rolled back, and each event runs again alone (evs holds just that one
// event), so that only those that fail alone retry or dead-letter. A
// Defer error defers them all. See Pipeline.HandleBatch.
type BatchHandlerFunc func(ctx context.Context, tx pgx.Tx, evs []Event) error

// Unhandled says what happens to events that no handler takes.
type Unhandled int

const (
	// LeaveUnhandled keeps them queued, untouched, for a later deploy that
	// handles them; Stats shows them. The default.
	LeaveUnhandled Unhandled = iota
	// CompleteUnhandled completes them (recording them in the audit log
	// when audit is on), their ids claimed under the idempotency consumer
	// UnhandledConsumer, so that a redelivery is a duplicate, as one of a
	// processed event is. Only events stored without a handler name (no
	// handler took the type where they arrived) are: one stored for a
	// handler this process lacks, by another version during a rolling
	// deploy, waits in the queue for a process that has it. (If that
	// handler is gone for good, its events wait until they are removed
	// by hand.)
	CompleteUnhandled
	// DeadLetterUnhandled moves them to the dead letter queue, with the
	// same exception as CompleteUnhandled.
	DeadLetterUnhandled
)

// UnhandledConsumer is the idempotency consumer under which events
// completed by CompleteUnhandled are recorded as processed. No handler may
// take the name.
const UnhandledConsumer = "wharf:unhandled"

// Defaults for Config.
const (
	DefaultAckDeadline     = 2 * time.Second
	DefaultMaxBodyBytes    = 5 << 20
	DefaultBodyReadTimeout = 10 * time.Second
	DefaultWorkers         = queue.DefaultWorkers
	// DefaultIdempotencyPruneInterval is how often Run prunes processed
	// event ids.
	DefaultIdempotencyPruneInterval = time.Hour
)

// Config configures a Pipeline. The zero value is usable.
type Config struct {
	// Schema holds every table (created by Migrate). Defaults to "wharf".
	Schema string

	// Workers is how many transactions process events at once, each on
	// one pool connection. Defaults to 4, or fewer when the pool is too
	// small for 4 besides the fetcher, the maintenance loop and the
	// ingestion's group commits (pgxpool's default MaxConns is the number
	// of CPUs, at least 4): size the pool with pool_max_conns.
	Workers int
	// TxBatch is the most events one worker transaction processes, each
	// under its own savepoint; a transaction also stops at
	// queue.MaxTxSavepoints events whose handlers used the database.
	// Defaults to 100 (see queue.ConsumerConfig).
	TxBatch int
	// MaxTxDuration stops adding events to a worker transaction once it
	// has run this long, and sizes the chunks of events a worker is
	// handed: about as many as its recent transactions ran in this long
	// (see queue.ConsumerConfig). Raise it to let slow handlers share
	// transactions, and HandleBatch calls hold more events; but a worker
	// transaction holds back the tail of the database's event logs (the
	// audit log's readers, projections: see eventlog.TailLag) while it
	// runs, so they lag by up to this long. Defaults to 100ms.
	MaxTxDuration time.Duration
	// LeaseDuration is how long a fetched event is held without a
	// heartbeat. Defaults to 30s.
	LeaseDuration time.Duration
	// RescueInterval is how often workers look for events whose lease
	// expired (their worker died) and put them back, an attempt counted.
	// A crashed worker's events wait up to LeaseDuration plus this long.
	// Defaults to 5s.
	RescueInterval time.Duration
	// MaxAttempts is how many times an event runs before it is
	// dead-lettered, unless its handler says otherwise. It is stored with
	// each event when it arrives, so the setting of the process that
	// stored it applies, not the worker's. Defaults to 8.
	MaxAttempts int
	// Backoff schedules retries. Defaults to 1s doubling to 1h, with 20%
	// jitter.
	Backoff queue.Backoff
	// PollOnly disables LISTEN (for a PgBouncer in transaction mode).
	PollOnly bool
	// PollInterval is how often idle workers look for due events without
	// a wake-up (retries scheduled by other processes). Defaults to 1s.
	PollInterval time.Duration

	// AckDeadline bounds the time from a request's body being read to its
	// answer: if the event is not durably stored by then, the provider
	// gets 503 and retries. Defaults to 2s, under Slack's 3s.
	AckDeadline time.Duration
	// MaxBodyBytes refuses larger bodies with 413. Defaults to 5 MiB.
	MaxBodyBytes int64
	// BodyReadTimeout bounds the reading of a request's body, counted from
	// the moment the handler starts: a sender that trickles its body, or
	// stops sending it, gets 408 and nothing is stored, instead of holding
	// a connection and a goroutine for as long as it likes. For the body,
	// it replaces the http.Server's ReadTimeout; the server's
	// ReadHeaderTimeout still has to bound the headers. Defaults to 10s.
	BodyReadTimeout time.Duration
	// ShutdownTimeout is how long Run waits for running handlers after its
	// context ends; then it cancels their contexts (a run cut off counts
	// its attempt) and waits for them to return, so a handler that ignores
	// its context keeps Run from returning. Defaults to 30s.
	ShutdownTimeout time.Duration

	// Unhandled says what happens to events no handler takes. Defaults to
	// LeaveUnhandled.
	Unhandled Unhandled

	// Audit records each delivery's life (received, failed attempts,
	// processed, dead-lettered, replayed) in the event log, one stream per
	// delivery ("delivery:<source>:<id>"). Defaults to false.
	Audit bool

	// Breakers configures the circuit breakers named by handlers'
	// Downstream options. Defaults to breaker.Config's defaults.
	Breakers breaker.Config

	// RateLimits caps the calls to downstreams, by the name handlers give
	// Downstream, per process; Run logs a warning for a name no handler
	// gives. An event that the downstream's open breaker turns away takes
	// no turn. Defaults to none.
	RateLimits map[string]RateLimit

	// IdempotencyRetention is how long processed event ids are kept; a
	// redelivery within it is a duplicate. Defaults to 7 days.
	IdempotencyRetention time.Duration
	// IdempotencyPruneInterval is how often Run deletes processed event
	// ids older than IdempotencyRetention (also once when it starts; on
	// several replicas the extra runs are harmless). A negative value
	// leaves pruning to the caller (Idempotency().Prune, from a cron job,
	// say). Defaults to 1h.
	IdempotencyPruneInterval time.Duration

	// Logger receives warnings and errors, an info record when the workers
	// rescue events whose lease expired, and debug records. Defaults to
	// discarding them.
	Logger *slog.Logger

	// Observer is told about every request to an endpoint and every
	// processing attempt, for metrics and traces (see the wharfotel
	// module). Defaults to none.
	Observer Observer
}

func (c Config) withDefaults() Config {
	c.Schema = sqlschema.Or(c.Schema)
	if c.AckDeadline == 0 {
		c.AckDeadline = DefaultAckDeadline
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.BodyReadTimeout == 0 {
		c.BodyReadTimeout = DefaultBodyReadTimeout
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = queue.DefaultMaxAttempts
	}
	if c.IdempotencyPruneInterval == 0 {
		c.IdempotencyPruneInterval = DefaultIdempotencyPruneInterval
	}
	c.Backoff = withBackoffDefaults(c.Backoff)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Observer != nil {
		c.Observer = guardedObserver{observer: c.Observer, log: c.Logger}
	}
	return c
}

// withBackoffDefaults fills a Backoff as the queue would, so the Pipeline
// can compute the same delays.
func withBackoffDefaults(b queue.Backoff) queue.Backoff {
	if b.Initial == 0 {
		b.Initial = queue.DefaultBackoffInitial
	}
	if b.Max == 0 {
		b.Max = queue.DefaultBackoffMax
	}
	if b.Multiplier == 0 {
		b.Multiplier = queue.DefaultBackoffMultiplier
	}
	return b
}

func (c Config) validate() error {
	switch {
	case c.AckDeadline < 0 || c.MaxBodyBytes < 0 || c.BodyReadTimeout < 0 || c.ShutdownTimeout < 0 || c.MaxTxDuration < 0:
		return fmt.Errorf("%w: AckDeadline, MaxBodyBytes, BodyReadTimeout, ShutdownTimeout and MaxTxDuration must not be negative", ErrInvalidConfig)
	case c.Unhandled < LeaveUnhandled || c.Unhandled > DeadLetterUnhandled:
		return fmt.Errorf("%w: Unhandled %d is not one of the Unhandled constants", ErrInvalidConfig, c.Unhandled)
	case c.Workers < 0 || c.TxBatch < 0 || c.TxBatch > queue.MaxTxBatch:
		// Checked here rather than only when Run starts the workers.
		return fmt.Errorf("%w: Workers %d must not be negative, and TxBatch %d must be 0 (the default) to %d", ErrInvalidConfig, c.Workers, c.TxBatch, queue.MaxTxBatch)
	case c.PollInterval < 0 || c.RescueInterval < 0:
		return fmt.Errorf("%w: PollInterval and RescueInterval must not be negative", ErrInvalidConfig)
	}
	return nil
}

// asConfigError makes a package's invalid-config error match
// ErrInvalidConfig too, as every error about a Config does.
func asConfigError(err error) error {
	for _, invalid := range []error{queue.ErrInvalidConfig, breaker.ErrInvalidConfig, dlq.ErrInvalidConfig, idempotency.ErrInvalidConfig, eventlog.ErrInvalidConfig} {
		if errors.Is(err, invalid) && !errors.Is(err, ErrInvalidConfig) {
			return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
	}
	return err
}

// Pipeline receives webhooks, stores them before acknowledging them, and
// processes each once, in a transaction, through the five patterns: the
// queue, idempotency claims, the dead letter queue, circuit breakers and
// (when Audit is on) the event log. Build it with New, register sources
// and handlers, mount Handler in a router and call Run (in the same
// process or another one).
type Pipeline struct {
	pool     *pgxpool.Pool
	cfg      Config
	queue    *queue.Queue
	dead     *dlq.DLQ
	claims   *idempotency.Store
	breakers *breaker.Registry
	audit    *eventlog.Log // nil unless Config.Audit

	limits map[string]*limiter

	running atomic.Bool
	closed  atomic.Bool
	mu      sync.RWMutex
	sources map[string]*source
	routes  map[route]*handler
	// batching: some handler was registered with HandleBatch.
	batching bool
}

// New builds a Pipeline on pool. It does no I/O; the schema must have been
// migrated with Migrate.
func New(pool *pgxpool.Pool, cfg Config) (*Pipeline, error) {
	if pool == nil {
		return nil, fmt.Errorf("%w: pool is nil", ErrInvalidConfig)
	}
	c := cfg.withDefaults()
	if err := sqlschema.Validate(c.Schema); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidSchema, err)
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	if c.Workers == 0 {
		c.Workers = defaultWorkers(int(pool.Config().MaxConns))
	}
	p := &Pipeline{pool: pool, cfg: c, sources: map[string]*source{}, routes: map[route]*handler{}, limits: map[string]*limiter{}}
	for name, rl := range c.RateLimits {
		l, err := newLimiter(name, rl)
		if err != nil {
			return nil, err
		}
		p.limits[name] = l
	}
	var err error
	deadCfg := dlq.Config{Schema: c.Schema, Logger: c.Logger, HandlerName: p.deadLetterHandler}
	if c.Audit {
		deadCfg.OnReplay = p.onReplay
	}
	if p.dead, err = dlq.New(pool, deadCfg); err != nil {
		return nil, asConfigError(err)
	}
	if p.claims, err = idempotency.New(pool, idempotency.Config{Schema: c.Schema, Retention: c.IdempotencyRetention}); err != nil {
		return nil, asConfigError(err)
	}
	if c.Audit {
		if p.audit, err = eventlog.New(pool, eventlog.Config{Schema: c.Schema}); err != nil {
			return nil, asConfigError(err)
		}
	}
	// From here a failure stops what was started: the audit log's
	// notifier, the breakers' refresher (which, in shared mode, would poll
	// the database for the life of the process).
	fail := func(err error) (*Pipeline, error) {
		if p.breakers != nil {
			p.breakers.Close()
		}
		if p.audit != nil {
			p.audit.Close()
		}
		return nil, asConfigError(err)
	}
	breakers := c.Breakers
	breakers.OnStateChange = p.onBreakerChange(c.Breakers.OnStateChange)
	if p.breakers, err = breaker.New(breakers); err != nil {
		return fail(err)
	}
	p.queue, err = queue.New(pool, queue.Config{
		Schema:        c.Schema,
		MaxAttempts:   c.MaxAttempts,
		LeaseDuration: c.LeaseDuration,
		Backoff:       c.Backoff,
		OnExhausted:   p.exhausted,
		DuplicateIf:   duplicateIfSQL,
		Logger:        c.Logger,
	})
	if err != nil {
		return fail(err)
	}
	return p, nil
}

// onBreakerChange returns the breakers' OnStateChange: a breaker that
// closes wakes this process's workers, whose events it held back in the
// queue may be fetched now rather than at the next poll; then the user's
// own hook, if any, is called. Breakers change only on calls, which start
// after New has set p.queue.
func (p *Pipeline) onBreakerChange(user func(breaker.StateChange)) func(breaker.StateChange) {
	return func(c breaker.StateChange) {
		if c.To == breaker.StateClosed {
			p.queue.WakeLocal()
		}
		if user != nil {
			user(c)
		}
	}
}

// defaultWorkers is DefaultWorkers, or as many as a pool of maxConns can
// serve besides the fetcher and maintenance loop (queue.ConnsNeeded) and
// the ingestion's committers and notifier, but at least one.
func defaultWorkers(maxConns int) int {
	spare := maxConns - queue.ConnsNeeded(0) - (queue.DefaultCommitters + 1)
	return max(1, min(DefaultWorkers, spare))
}

// deadLetterHandler names the handler a dead letter records: the one its
// queue row named, else the one that took it here (an event stored
// before its route existed), else none, for an event no handler took
// (Config.Unhandled). A replay puts the name back in the queue, where a
// made-up one would make the event wait for a handler of that name,
// which no version has.
func (p *Pipeline) deadLetterHandler(ev *queue.Event) string {
	if ev.Handler != "" {
		return ev.Handler
	}
	if h := p.handlerFor(ev.Source, ev.Type); h != nil {
		return h.name
	}
	return ""
}

// duplicateIfSQL makes a delivery a duplicate, inside the group-commit
// INSERT, when the event is dead-lettered (replay is the way back) or its
// handler already processed it (within the idempotency retention); one
// that no handler takes, when CompleteUnhandled completed it. The key
// expression is idempotency.Key in SQL.
const duplicateIfSQL = `EXISTS (
        SELECT 1 FROM {schema}.dead_letters d
        WHERE d.source = t.source AND d.event_id = t.event_id AND d.status = 'dead')
    OR EXISTS (
        SELECT 1 FROM {schema}.processed_events p
        WHERE p.consumer = coalesce(nullif(t.handler, ''), '` + UnhandledConsumer + `')
          AND p.key = octet_length(t.source)::text || ':' || t.source || ':' || t.event_id)`

// Close stops the background work of the queue, the breakers and the audit
// log. Call it after Run has returned and the HTTP server has stopped.
func (p *Pipeline) Close() {
	p.closed.Store(true)
	p.queue.Close()
	p.breakers.Close()
	if p.audit != nil {
		p.audit.Close()
	}
}

// Queue returns the pipeline's queue, for operators' tools (Stats).
func (p *Pipeline) Queue() *queue.Queue { return p.queue }

// DLQ returns the pipeline's dead letter queue, for listing entries;
// replay through Pipeline.Replay, which records the replay in the audit log.
func (p *Pipeline) DLQ() *dlq.DLQ { return p.dead }

// Idempotency returns the pipeline's store of processed event ids.
func (p *Pipeline) Idempotency() *idempotency.Store { return p.claims }

// Breakers returns the registry of the handlers' downstream breakers, for
// a handler that calls several downstreams through Execute or Transport.
func (p *Pipeline) Breakers() *breaker.Registry { return p.breakers }

// AuditLog returns the event log the audit trail is written to, or nil
// unless Config.Audit is on.
func (p *Pipeline) AuditLog() *eventlog.Log { return p.audit }

// UnhandledPolicy returns Config.Unhandled: what Run does with the events
// no handler takes, for tools that wait for the queue to empty.
func (p *Pipeline) UnhandledPolicy() Unhandled { return p.cfg.Unhandled }
