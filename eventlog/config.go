package eventlog

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/wharfhq/wharf/internal/sqlschema"
)

// Limits on names and reads, in bytes and events. Stream names and event
// types end up in btree index entries, which must stay well under
// Postgres's limit of about 2.7 kB.
const (
	// MaxStreamLen is the longest stream name (and category prefix).
	MaxStreamLen = 512
	// MaxTypeLen is the longest event type.
	MaxTypeLen = 255
	// MaxProjectionNameLen is the longest projection name.
	MaxProjectionNameLen = 255
	// MaxDataLen is the longest event Data, in bytes: jsonb cannot hold a
	// value over 256 MB (its offsets are 28 bits), so longer Data is
	// refused in Go instead of failing in the database, which would abort
	// an AppendTx caller's transaction.
	MaxDataLen = 1<<28 - 1
	// MaxEventsPerAppend caps how many events one Append writes.
	MaxEventsPerAppend = 10_000
	// DefaultReadLimit is the number of events a read returns when its
	// limit is 0.
	DefaultReadLimit = 1_000
	// MaxReadLimit is the largest limit a read accepts.
	MaxReadLimit = 10_000
)

// Defaults for ProjectionConfig.
const (
	DefaultBatchSize        = 100
	DefaultRebuildBatchSize = 1_000
	DefaultPollInterval     = time.Second
	DefaultRetryDelay       = time.Second
	DefaultShutdownTimeout  = 30 * time.Second
	// MaxRetryDelay caps the delay between attempts of a failing batch: the
	// delay starts at RetryDelay and doubles with each consecutive failure.
	MaxRetryDelay = time.Minute
)

// Config configures a Log. The zero value is usable: every field has a
// documented default.
type Config struct {
	// Schema holds the event log tables (created by wharf.Migrate).
	// Defaults to "wharf".
	Schema string

	// PollOnly disables LISTEN for projections run from this Log, for a
	// PgBouncer in transaction mode, where a LISTEN connection cannot be
	// kept: projections then find new events within their PollInterval.
	// Projections of this Log are still woken at once by its own Appends
	// (not by another Log's, even in the same process). Projection.Rebuild
	// still needs a direct connection (see its documentation). Defaults to
	// false.
	PollOnly bool

	// Logger receives warnings (a failed notify, a failing projection
	// batch) and debug records. Defaults to discarding them.
	Logger *slog.Logger
}

func (c *Config) withDefaults() Config {
	out := *c
	out.Schema = sqlschema.Or(out.Schema)
	if out.Logger == nil {
		out.Logger = slog.New(slog.DiscardHandler)
	}
	return out
}

func (c *Config) validate() error {
	if err := sqlschema.Validate(c.Schema); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	return nil
}

// ProjectionConfig configures a Projection.
type ProjectionConfig struct {
	// Name identifies the projection: its checkpoint row, and the lock
	// that serialises its runners on every replica and holds them off
	// during a Rebuild. Required; at most MaxProjectionNameLen bytes of
	// UTF-8 without NUL. Replicas running the same projection use the same
	// name.
	Name string

	// Handler applies a batch of events to the projection's own tables.
	// Required.
	Handler ProjectionFunc

	// Category, when set, restricts the projection to streams whose name
	// starts with it ("order-" for "order-1", "order-2", ...); see
	// ReadCategory. Defaults to every stream.
	Category string

	// BatchSize is the most events one transaction of the running
	// projection applies. Defaults to 100.
	BatchSize int

	// RebuildBatchSize is the most events one transaction of a Rebuild
	// applies; larger batches replay faster. Defaults to 1,000.
	RebuildBatchSize int

	// PollInterval is how often an idle projection looks for new events
	// when no notification arrives (NOTIFY unavailable, PollOnly, or an
	// AppendTx whose caller did not call Notify). A projection whose tail
	// is held back by an older transaction, with committed events waiting
	// beyond it, looks again sooner: after 5ms, backing off to a second,
	// or to PollInterval if shorter. Defaults to 1s.
	PollInterval time.Duration

	// RetryDelay is the wait after a failed batch (the Handler returned an
	// error or panicked, or the database failed) before it is tried again,
	// doubling with each consecutive failure up to MaxRetryDelay. Defaults
	// to 1s.
	RetryDelay time.Duration

	// ShutdownTimeout is how long Run waits, after its context ends, for
	// the batch in flight to finish before cancelling its context (which
	// rolls it back). Defaults to 30s.
	ShutdownTimeout time.Duration

	// Logger receives the projection's warnings and debug records.
	// Defaults to the Log's logger.
	Logger *slog.Logger
}

func (c ProjectionConfig) withDefaults(l *Log) ProjectionConfig {
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.RebuildBatchSize == 0 {
		c.RebuildBatchSize = DefaultRebuildBatchSize
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.RetryDelay == 0 {
		c.RetryDelay = DefaultRetryDelay
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.Logger == nil {
		c.Logger = l.cfg.Logger
	}
	return c
}

func (c ProjectionConfig) validate() error {
	if err := checkName("projection name", c.Name, MaxProjectionNameLen); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	if c.Category != "" {
		if err := checkName("category", c.Category, MaxStreamLen); err != nil {
			return fmt.Errorf("%w: %v", ErrInvalidConfig, err)
		}
	}
	switch {
	case c.Handler == nil:
		return fmt.Errorf("%w: projection %q: Handler is nil", ErrInvalidConfig, c.Name)
	case c.BatchSize < 1 || c.BatchSize > MaxReadLimit:
		return fmt.Errorf("%w: projection %q: BatchSize %d is outside 1..%d", ErrInvalidConfig, c.Name, c.BatchSize, MaxReadLimit)
	case c.RebuildBatchSize < 1 || c.RebuildBatchSize > MaxReadLimit:
		return fmt.Errorf("%w: projection %q: RebuildBatchSize %d is outside 1..%d", ErrInvalidConfig, c.Name, c.RebuildBatchSize, MaxReadLimit)
	case c.PollInterval < time.Millisecond:
		return fmt.Errorf("%w: projection %q: PollInterval %s is under 1ms", ErrInvalidConfig, c.Name, c.PollInterval)
	case c.RetryDelay < time.Millisecond || c.RetryDelay > MaxRetryDelay:
		return fmt.Errorf("%w: projection %q: RetryDelay %s is outside 1ms..%s", ErrInvalidConfig, c.Name, c.RetryDelay, MaxRetryDelay)
	case c.ShutdownTimeout < 0:
		return fmt.Errorf("%w: projection %q: ShutdownTimeout %s is negative", ErrInvalidConfig, c.Name, c.ShutdownTimeout)
	}
	return nil
}
