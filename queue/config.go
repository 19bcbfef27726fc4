package queue

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/wharfhq/wharf/internal/sqlschema"
)

// Defaults for Config.
const (
	DefaultMaxAttempts    = 8
	DefaultLeaseDuration  = 30 * time.Second
	DefaultMaxCommitBatch = 256
	DefaultCommitters     = 2
)

// Defaults for Backoff.
const (
	DefaultBackoffInitial    = time.Second
	DefaultBackoffMax        = time.Hour
	DefaultBackoffMultiplier = 2.0
	DefaultBackoffJitter     = 0.2
)

// ExhaustFunc receives events that failed their last attempt, inside the
// transaction that removes them from the queue, so they land in exactly one
// place: the dead letter queue installs one that copies them to its table.
// If it returns an error the transaction rolls back and the events stay
// where they were, leased, to be retried by the rescuer.
type ExhaustFunc func(ctx context.Context, tx pgx.Tx, events []*Event) error

// Config configures a Queue. The zero value is usable: every field has a
// documented default.
type Config struct {
	// Schema holds the queue tables (created by wharf.Migrate). Defaults to
	// "wharf".
	Schema string

	// MaxAttempts is how many times an event runs before it is exhausted,
	// unless the event sets its own. Defaults to 8.
	MaxAttempts int

	// LeaseDuration is how long a fetched event stays leased without a
	// heartbeat. A worker killed with SIGKILL holds its events this long,
	// plus up to a rescue interval, before they run again. Defaults to 30s.
	LeaseDuration time.Duration

	// Backoff schedules retries after failed attempts.
	Backoff Backoff

	// OnExhausted takes events that used their last attempt out of the
	// queue, in the same transaction. During a rescue (Queue.Rescue) that
	// transaction ends if it is idle for 30 s. Defaults to nil: such events stay in
	// the queue table with state "exhausted", never fetched again, visible
	// in Stats.
	OnExhausted ExhaustFunc

	// MaxCommitBatch caps how many concurrent Enqueue calls share one
	// INSERT and one commit. Defaults to 256.
	MaxCommitBatch int

	// Committers is how many group commits may be in flight at once; while
	// one waits for its fsync the next batch forms. Each holds a pool
	// connection while it writes. Defaults to 2.
	Committers int

	// DuplicateIf is an SQL condition that makes an event a duplicate even
	// though it is not in the queue: wharf's Pipeline uses it to refuse
	// events already processed or dead-lettered. It is evaluated for each
	// row t(source, event_id, event_type, handler) of an insert, inside the
	// inserting statement; {schema} is replaced by the quoted schema. It is
	// code, never input. Defaults to none.
	DuplicateIf string

	// Logger receives warnings (a failed notify, a failed batch that fell
	// back to row-by-row). Defaults to discarding them.
	Logger *slog.Logger
}

func (c *Config) withDefaults() Config {
	out := *c
	out.Schema = sqlschema.Or(out.Schema)
	if out.MaxAttempts == 0 {
		out.MaxAttempts = DefaultMaxAttempts
	}
	if out.LeaseDuration == 0 {
		out.LeaseDuration = DefaultLeaseDuration
	}
	out.Backoff = out.Backoff.withDefaults()
	if out.MaxCommitBatch == 0 {
		out.MaxCommitBatch = DefaultMaxCommitBatch
	}
	if out.Committers == 0 {
		out.Committers = DefaultCommitters
	}
	if out.Logger == nil {
		out.Logger = slog.New(slog.DiscardHandler)
	}
	return out
}

func (c *Config) validate() error {
	if err := sqlschema.Validate(c.Schema); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	switch {
	case c.MaxAttempts < 1 || c.MaxAttempts > MaxMaxAttempts:
		return fmt.Errorf("%w: MaxAttempts %d is outside 1..%d", ErrInvalidConfig, c.MaxAttempts, MaxMaxAttempts)
	case c.LeaseDuration < time.Second:
		return fmt.Errorf("%w: LeaseDuration %s is under 1s", ErrInvalidConfig, c.LeaseDuration)
	case c.MaxCommitBatch < 1 || c.MaxCommitBatch > 10_000:
		return fmt.Errorf("%w: MaxCommitBatch %d is outside 1..10000", ErrInvalidConfig, c.MaxCommitBatch)
	case c.Committers < 1 || c.Committers > 64:
		return fmt.Errorf("%w: Committers %d is outside 1..64", ErrInvalidConfig, c.Committers)
	}
	return c.Backoff.validate()
}

// Backoff is an exponential retry schedule with jitter: the delay after
// attempt n is Initial × Multiplier^(n-1), capped at Max, then shortened by
// a random fraction of up to Jitter, so events that failed together do not
// retry together.
type Backoff struct {
	// Initial is the delay after the first failed attempt. Defaults to 1s.
	Initial time.Duration
	// Max caps the delay. Defaults to 1h.
	Max time.Duration
	// Multiplier grows the delay per attempt. Defaults to 2.
	Multiplier float64
	// Jitter is the largest fraction taken off a delay at random, in
	// [0, 1]. Defaults to 0.2; set NoJitter for none.
	Jitter float64
}

// NoJitter as Backoff.Jitter makes the schedule exact.
const NoJitter = -1

func (b Backoff) withDefaults() Backoff {
	if b.Initial == 0 {
		b.Initial = DefaultBackoffInitial
	}
	if b.Max == 0 {
		b.Max = DefaultBackoffMax
	}
	if b.Multiplier == 0 {
		b.Multiplier = DefaultBackoffMultiplier
	}
	switch b.Jitter {
	case 0:
		b.Jitter = DefaultBackoffJitter
	case NoJitter:
		b.Jitter = 0
	}
	return b
}

func (b Backoff) validate() error {
	switch {
	case b.Initial < 0 || b.Max < b.Initial:
		return fmt.Errorf("%w: Backoff needs 0 <= Initial <= Max (got %s, %s)", ErrInvalidConfig, b.Initial, b.Max)
	case b.Multiplier < 1:
		return fmt.Errorf("%w: Backoff.Multiplier %g is under 1", ErrInvalidConfig, b.Multiplier)
	case b.Jitter < 0 || b.Jitter > 1:
		return fmt.Errorf("%w: Backoff.Jitter %g is outside [0, 1]", ErrInvalidConfig, b.Jitter)
	}
	return nil
}

// Delay returns the wait after failed attempt number attempt (from 1).
func (b Backoff) Delay(attempt int) time.Duration {
	return b.withDefaults().delay(attempt, rand.Float64())
}

// delay is Delay with the random draw u in [0, 1) given, for tests.
func (b Backoff) delay(attempt int, u float64) time.Duration {
	if attempt < 1 {
		attempt = 1
	}
	d := float64(b.Initial) * math.Pow(b.Multiplier, float64(attempt-1))
	if d > float64(b.Max) || math.IsInf(d, 0) || math.IsNaN(d) {
		d = float64(b.Max)
	}
	return time.Duration(d * (1 - b.Jitter*u))
}
