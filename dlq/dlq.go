package dlq

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wharfhq/wharf/queue"
)

// DLQ is a dead letter queue. It is safe for concurrent use.
type DLQ struct {
	pool *pgxpool.Pool
	cfg  Config
	sql  statements
}

// New returns the dead letter queue in cfg.Schema. It does no I/O.
func New(pool *pgxpool.Pool, cfg Config) (*DLQ, error) {
	if pool == nil {
		return nil, fmt.Errorf("%w: pool is nil", ErrInvalidConfig)
	}
	c := cfg.withDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &DLQ{pool: pool, cfg: c, sql: render(c.Schema)}, nil
}

// Schema is the schema the dead_letters table lives in, which is also the
// schema of any queue the DLQ replays into (Replay refuses another).
func (d *DLQ) Schema() string { return d.cfg.Schema }

// Move records events that used their last attempt, in tx: the transaction
// in which the queue removes them, so each event lands in exactly one
// place. It is a queue.ExhaustFunc:
//
//	dead, _ := dlq.New(pool, dlq.Config{})
//	q, _ := queue.New(pool, queue.Config{OnExhausted: dead.Move})
func (d *DLQ) Move(ctx context.Context, tx pgx.Tx, evs []*queue.Event) error {
	if len(evs) == 0 {
		return nil
	}
	n := len(evs)
	var (
		sources, ids, types, keys = make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		bodies                    = make([][]byte, n)
		headers, histories        = make([][]byte, n), make([][]byte, n)
		received                  = make([]time.Time, n)
		attempts, maxAttempts     = make([]int32, n), make([]int32, n)
		lastErrors, handlers      = make([]string, n), make([]string, n)
	)
	for i, ev := range evs {
		sources[i], ids[i], types[i], keys[i] = ev.Source, ev.ID, ev.Type, ev.OrderingKey
		bodies[i] = ev.Body
		if bodies[i] == nil {
			bodies[i] = []byte{}
		}
		if ev.Headers != nil {
			b, err := json.Marshal(ev.Headers)
			if err != nil {
				return fmt.Errorf("dlq: event %q from %q: encode headers: %w", ev.ID, ev.Source, err)
			}
			headers[i] = b
		}
		history := ev.Errors
		if history == nil {
			history = []queue.AttemptError{}
		}
		b, err := json.Marshal(history)
		if err != nil {
			return fmt.Errorf("dlq: event %q from %q: encode error history: %w", ev.ID, ev.Source, err)
		}
		histories[i] = b
		if len(history) > 0 {
			lastErrors[i] = history[len(history)-1].Error
		}
		received[i] = ev.ReceivedAt
		attempts[i], maxAttempts[i] = int32(ev.Attempt), int32(ev.MaxAttempts)
		handlers[i] = d.cfg.HandlerName(ev)
	}
	if _, err := tx.Exec(ctx, d.sql.move, sources, ids, types, keys, bodies, headers, received,
		attempts, maxAttempts, histories, lastErrors, handlers); err != nil {
		return fmt.Errorf("dlq: move %d event(s): %w", n, err)
	}
	return nil
}

// Status is where an entry stands.
type Status string

// Entry statuses.
const (
	StatusDead      Status = "dead"      // waiting for inspection; counts as dead
	StatusReplayed  Status = "replayed"  // sent back to the queue; kept for audit
	StatusDiscarded Status = "discarded" // set aside by an operator; kept for audit
)

// Entry is one dead letter: the event as received and what happened to it.
type Entry struct {
	ID          int64
	Source      string
	EventID     string
	Type        string
	OrderingKey string
	Body        []byte
	Headers     http.Header
	ReceivedAt  time.Time
	// Attempts is how many times it ran (summed over every death of it).
	Attempts    int
	MaxAttempts int
	// Errors is every failed attempt, oldest first.
	Errors         []queue.AttemptError
	Handler        string
	DeadAt         time.Time
	Status         Status
	ReplayCount    int
	LastReplayedAt *time.Time
	DiscardedAt    *time.Time
}

// Cursor marks a position in a listing; pass Page.After to continue after
// the last entry of a page.
type Cursor struct {
	DeadAt time.Time
	ID     int64
}

func scanEntry(row pgx.CollectableRow) (Entry, error) {
	var e Entry
	var headers, errors []byte
	var status string
	err := row.Scan(&e.ID, &e.Source, &e.EventID, &e.Type, &e.OrderingKey, &e.Body, &headers,
		&e.ReceivedAt, &e.Attempts, &e.MaxAttempts, &errors, &e.Handler, &e.DeadAt, &status,
		&e.ReplayCount, &e.LastReplayedAt, &e.DiscardedAt)
	if err != nil {
		return e, err
	}
	e.Status = Status(status)
	if len(headers) > 0 {
		if err := json.Unmarshal(headers, &e.Headers); err != nil {
			return e, fmt.Errorf("entry %d: decode headers: %w", e.ID, err)
		}
	}
	if err := json.Unmarshal(errors, &e.Errors); err != nil {
		return e, fmt.Errorf("entry %d: decode error history: %w", e.ID, err)
	}
	return e, nil
}
