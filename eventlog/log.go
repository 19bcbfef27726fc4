package eventlog

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wharfhq/wharf/internal/pgnotify"
)

// Log appends events to streams and reads them back: by stream, for the
// whole log, or by category. It is safe for concurrent use. Create it with
// New; call Close when done appending.
type Log struct {
	pool   *pgxpool.Pool
	cfg    Config
	sql    statements
	notify *pgnotify.Notifier
	listen *listener
}

// New returns a Log on pool. It does no I/O; the schema must have been
// migrated with wharf.Migrate.
func New(pool *pgxpool.Pool, cfg Config) (*Log, error) {
	if pool == nil {
		return nil, fmt.Errorf("%w: pool is nil", ErrInvalidConfig)
	}
	c := cfg.withDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	l := &Log{pool: pool, cfg: c, sql: render(c.Schema)}
	l.notify = pgnotify.New(pool, channelName(c.Schema), c.Logger)
	l.listen = newListener(pool.Config().ConnConfig, channelName(c.Schema), c.Logger, l.notify.WakeLocal)
	return l, nil
}

// Close stops the notifier after sending a NOTIFY still owed. Appends and
// reads keep working, but projections in other processes are no longer
// woken by this Log's appends (they still poll).
func (l *Log) Close() {
	l.notify.Close()
}

// Schema is the schema the event log's tables live in.
func (l *Log) Schema() string { return l.cfg.Schema }

// Notify wakes projections, in this process at once and elsewhere through
// NOTIFY (sent after the call returns, coalesced with other wake-ups). Call
// it after committing a transaction in which you called AppendTx; Append
// calls it itself. Without it, projections find the events within their
// PollInterval.
func (l *Log) Notify() { l.notify.Signal() }

// querier is what a pool, a connection and a transaction can all do.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}
