package benchkit

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/idempotency"
)

// Tables creates, in a database migrated with wharf.Migrate (schema
// "wharf"), the baselines' events table (what a plain webhook endpoint
// inserts into and a plain worker deletes from), the baseline's copy of
// the idempotency table (same columns, keys and indexes), and the
// business tables both sides write to: bench_orders for wharf's handler,
// bench_orders_baseline for the baseline.
const Tables = `
CREATE TABLE bench_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source      text NOT NULL,
    event_id    text NOT NULL,
    event_type  text NOT NULL,
    body        bytea NOT NULL,
    headers     jsonb,
    received_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source, event_id)
);
CREATE TABLE bench_processed_events (LIKE wharf.processed_events INCLUDING ALL);
CREATE TABLE bench_orders (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source     text NOT NULL,
    event_id   text NOT NULL,
    event_type text NOT NULL,
    size       integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE bench_orders_baseline (LIKE bench_orders INCLUDING ALL);`

// businessInsert is the realistic handler's one write.
const businessInsert = `INSERT INTO bench_orders (source, event_id, event_type, size) VALUES ($1, $2, $3, $4)`

// The handlers a bench Pipeline can run (NewPipeline).
const (
	// HandlerInsert does one INSERT into bench_orders in the event's
	// transaction: the realistic handler.
	HandlerInsert = "insert"
	// HandlerBatch is registered with HandleBatch and writes the
	// bench_orders rows of all the events of a call in one INSERT.
	HandlerBatch = "batch"
	// HandlerNoop does nothing (the Pipeline still claims the event).
	HandlerNoop = "noop"
)

// ValidHandler reports whether name is one of the handlers above.
func ValidHandler(name string) bool {
	return name == HandlerInsert || name == HandlerBatch || name == HandlerNoop
}

// NewPipeline returns a Pipeline on pool with cfg, the Standard Webhooks
// source Source signed with Secret, and a handler for Type (HandlerInsert,
// HandlerBatch or HandlerNoop). onEvent, when not nil, is called first for
// each event the handler gets.
func NewPipeline(pool *pgxpool.Pool, cfg wharf.Config, handler string, onEvent func(wharf.Event)) (*wharf.Pipeline, error) {
	if !ValidHandler(handler) {
		return nil, fmt.Errorf("benchkit: unknown handler %q", handler)
	}
	p, err := wharf.New(pool, cfg)
	if err != nil {
		return nil, err
	}
	if err := p.Source(Source, wharf.StandardWebhooks(Secret)); err != nil {
		p.Close()
		return nil, err
	}
	if handler == HandlerBatch {
		err = p.HandleBatch(Source, Type, func(ctx context.Context, tx pgx.Tx, evs []wharf.Event) error {
			var rows businessRows
			for _, ev := range evs {
				if onEvent != nil {
					onEvent(ev)
				}
				rows.add(ev.Source, ev.ID, ev.Type, len(ev.Body))
			}
			return rows.insert(ctx, tx, "bench_orders")
		})
	} else {
		err = p.Handle(Source, Type, func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
			if onEvent != nil {
				onEvent(ev)
			}
			if handler == HandlerNoop {
				return nil
			}
			_, err := tx.Exec(ctx, businessInsert, ev.Source, ev.ID, ev.Type, len(ev.Body))
			return err
		})
	}
	if err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// Preload queues n events with ids msg_<first> to msg_<first+n-1> at once,
// both in the Pipeline's queue (as its HTTP ingest stores them, handler
// column set, so deduplication and claims behave as in production) and in
// the baseline's bench_events, then vacuums and analyzes the tables so
// both sides start from the same state. One statement each: a preload of
// 100,000 takes seconds, not minutes.
func Preload(ctx context.Context, pool *pgxpool.Pool, first, n int) error {
	if _, err := pool.Exec(ctx, `
INSERT INTO bench_events (source, event_id, event_type, body, headers)
SELECT $1, 'msg_' || g, $2, $3, $4 FROM generate_series($5::int, $5::int + $6::int - 1) g`,
		Source, Type, Body, storedHeaders, first, n); err != nil {
		return fmt.Errorf("benchkit: preload %d events into bench_events: %w", n, err)
	}
	if _, err := pool.Exec(ctx, `
WITH ins AS (
    INSERT INTO wharf.queue (source, event_id, event_type, handler, max_attempts)
    SELECT $1, 'msg_' || g, $2, $7, 8 FROM generate_series($5::int, $5::int + $6::int - 1) g
    RETURNING id, source, event_id)
INSERT INTO wharf.queue_payloads (queue_id, source, event_id, body, headers) SELECT id, source, event_id, $3, $4 FROM ins`,
		Source, Type, Body, storedHeaders, first, n, Handler); err != nil {
		return fmt.Errorf("benchkit: preload %d events into the queue: %w", n, err)
	}
	_, err := pool.Exec(ctx, `VACUUM ANALYZE bench_events, bench_processed_events, bench_orders, bench_orders_baseline,
		wharf.queue, wharf.queue_payloads, wharf.processed_events`)
	return err
}

// PlainHandler is the ingest baseline: a plain webhook endpoint that reads
// the body as the Pipeline does, verifies the same Standard Webhooks
// signature, reads the type from the body, and stores the event in
// bench_events with one INSERT, committed before it answers (202, or 200
// for a duplicate). synchronous_commit must be on on the server, its
// default.
func PlainHandler(pool *pgxpool.Pool) http.Handler {
	return endpoint(func(ctx context.Context, id, typ string, body []byte) (bool, error) {
		tag, err := pool.Exec(ctx, `INSERT INTO bench_events (source, event_id, event_type, body) VALUES ($1, $2, $3, $4)
			ON CONFLICT (source, event_id) DO NOTHING`, Source, id, typ, body)
		return tag.RowsAffected() > 0, err
	})
}

// NullHandler is PlainHandler without the store: it reads, verifies and
// parses the request, then answers 202 with nothing written. No endpoint
// that stores events can serve the same senders faster, so its rate is the
// ceiling of an ingest run on the machine, what the HTTP work alone allows.
func NullHandler() http.Handler {
	return endpoint(func(context.Context, string, string, []byte) (bool, error) { return true, nil })
}

// endpoint is a plain webhook endpoint that hands each verified event to
// store, which reports whether it was new.
func endpoint(store func(ctx context.Context, id, typ string, body []byte) (stored bool, err error)) http.Handler {
	v := wharf.StandardWebhooks(Secret)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, wharf.DefaultMaxBodyBytes))
		if err != nil {
			http.Error(w, "cannot read body", http.StatusBadRequest)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), wharf.DefaultAckDeadline)
		defer cancel()
		if err := v.Verify(ctx, r.Header, body); err != nil {
			http.Error(w, "invalid signature", http.StatusUnauthorized)
			return
		}
		var payload struct {
			Type string `json:"type"`
		}
		id := r.Header.Get("Webhook-Id")
		if err := json.Unmarshal(body, &payload); err != nil || payload.Type == "" || id == "" {
			http.Error(w, "no id or type", http.StatusBadRequest)
			return
		}
		stored, err := store(ctx, id, payload.Type, body)
		switch {
		case err != nil:
			http.Error(w, "temporarily unavailable", http.StatusServiceUnavailable)
		case !stored:
			w.WriteHeader(http.StatusOK)
			_, _ = io.WriteString(w, "duplicate\n")
		default:
			w.WriteHeader(http.StatusAccepted)
			_, _ = io.WriteString(w, "accepted\n")
		}
	})
}

// DefaultBaselineBatch and DefaultBaselinePoll are BaselineDrain's defaults.
const (
	DefaultBaselineBatch = 100
	DefaultBaselinePoll  = 5 * time.Millisecond
)

// BaselineDrain is the drain baseline, the hand-written worker loop: on
// each of Conns connections, per batch, one transaction of DELETE ... FOR
// UPDATE SKIP LOCKED ... RETURNING from bench_events, the claims (one
// INSERT ... ON CONFLICT DO NOTHING for the batch into
// bench_processed_events), the business INSERT into bench_orders_baseline
// for the claimed events (unless Noop; one for the batch unless
// InsertPerEvent), COMMIT. It keeps no lease and no
// attempt count: a crash mid-batch just rolls the batch back.
type BaselineDrain struct {
	Pool *pgxpool.Pool
	// Conns is how many connections run the loop. Defaults to 4.
	Conns int
	// Batch is the most events one transaction takes. Defaults to 100.
	Batch int
	// Noop leaves out the business INSERT.
	Noop bool
	// InsertPerEvent sends the business INSERT once per event, a round
	// trip each, as a handler does, instead of once for the batch.
	InsertPerEvent bool
	// Follow keeps each loop polling an empty table every PollInterval
	// until the context ends, for sustained runs; without it Run returns
	// once the table is empty.
	Follow bool
	// PollInterval is how long a following loop waits after finding the
	// table empty. Defaults to 5ms: a plain worker has no wake-up.
	PollInterval time.Duration
	// OnEvent, when not nil, is called for each event after its batch's
	// DELETE returned, with the time its row was inserted.
	OnEvent func(receivedAt time.Time)

	processed atomic.Int64
}

// Processed returns how many events the loops have committed.
func (d *BaselineDrain) Processed() int64 { return d.processed.Load() }

// Run runs the loops until the table is empty (or, with Follow, until ctx
// ends) and returns the time they took.
func (d *BaselineDrain) Run(ctx context.Context) (time.Duration, error) {
	conns := cmp.Or(d.Conns, 4)
	return Parallel(conns, conns, func(int) error {
		for {
			n, err := d.batch(ctx)
			switch {
			case d.Follow && ctx.Err() != nil:
				return nil
			case err != nil:
				return err
			case n > 0:
				continue
			case !d.Follow:
				return nil
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(cmp.Or(d.PollInterval, DefaultBaselinePoll)):
			}
		}
	})
}

// batch processes one batch and returns its size.
func (d *BaselineDrain) batch(ctx context.Context) (int, error) {
	var n int
	err := pgx.BeginFunc(ctx, d.Pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `
DELETE FROM bench_events WHERE id IN (
    SELECT id FROM bench_events ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
RETURNING source, event_id, event_type, body, headers, received_at`, cmp.Or(d.Batch, DefaultBaselineBatch))
		if err != nil {
			return err
		}
		var business businessRows
		var keys []string
		for rows.Next() {
			var source, id, typ string
			var body, headers []byte
			var received time.Time
			if err := rows.Scan(&source, &id, &typ, &body, &headers, &received); err != nil {
				rows.Close()
				return err
			}
			if d.OnEvent != nil {
				d.OnEvent(received)
			}
			business.add(source, id, typ, len(body))
			keys = append(keys, idempotency.Key(source, id))
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if n = len(keys); n == 0 {
			return nil
		}
		claimed, err := tx.Query(ctx, `
INSERT INTO bench_processed_events (consumer, key, mode)
SELECT $1, k, 'tx' FROM unnest($2::text[]) k
ON CONFLICT (consumer, key) DO NOTHING
RETURNING key`, Handler, keys)
		if err != nil {
			return err
		}
		won, err := pgx.CollectRows(claimed, pgx.RowTo[string])
		if err != nil {
			return err
		}
		if len(won) != n {
			return fmt.Errorf("benchkit: baseline: %d of %d claims won, every key is new", len(won), n)
		}
		if d.Noop {
			return nil
		}
		if d.InsertPerEvent {
			return business.insertEach(ctx, tx, "bench_orders_baseline")
		}
		return business.insert(ctx, tx, "bench_orders_baseline")
	})
	if err == nil {
		d.processed.Add(int64(n))
	}
	return n, err
}

// businessRows are the business table columns of several events.
type businessRows struct {
	sources, ids, types []string
	sizes               []int32
}

func (r *businessRows) add(source, id, typ string, size int) {
	r.sources, r.ids, r.types = append(r.sources, source), append(r.ids, id), append(r.types, typ)
	r.sizes = append(r.sizes, int32(size))
}

// insert writes the rows into table (bench_orders or
// bench_orders_baseline) with one INSERT.
func (r *businessRows) insert(ctx context.Context, tx pgx.Tx, table string) error {
	_, err := tx.Exec(ctx, `INSERT INTO `+table+` (source, event_id, event_type, size)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[])`, r.sources, r.ids, r.types, r.sizes)
	return err
}

// insertEach writes the rows into table with one INSERT each, a round trip
// each, as a per-event handler does.
func (r *businessRows) insertEach(ctx context.Context, tx pgx.Tx, table string) error {
	for i := range r.ids {
		_, err := tx.Exec(ctx, `INSERT INTO `+table+` (source, event_id, event_type, size) VALUES ($1, $2, $3, $4)`,
			r.sources[i], r.ids[i], r.types[i], r.sizes[i])
		if err != nil {
			return err
		}
	}
	return nil
}

// Poll calls done every millisecond until it returns true or an error. It
// returns early with the first value from failed (workers that stopped:
// nil is an error too, they stopped too soon), or with ctx's error.
func Poll(ctx context.Context, failed <-chan error, done func() (bool, error)) error {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		ok, err := done()
		if ok || err != nil {
			return err
		}
		select {
		case err := <-failed:
			if err == nil {
				err = errors.New("benchkit: the workers stopped before the work was done")
			}
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// WaitDrained polls until handled() reaches target and then until
// wharf.queue is empty (the last transactions commit after their handlers
// return); see Poll for failed.
func WaitDrained(ctx context.Context, pool *pgxpool.Pool, handled func() int64, target int64, failed <-chan error) error {
	return Poll(ctx, failed, func() (bool, error) {
		if handled() < target {
			return false, nil
		}
		var empty bool
		err := pool.QueryRow(ctx, `SELECT NOT EXISTS (SELECT 1 FROM wharf.queue)`).Scan(&empty)
		return empty, err
	})
}

// PipelineDrain runs p until handled() has reached target and the queue
// is empty, stops it, and returns the time it took.
func PipelineDrain(ctx context.Context, pool *pgxpool.Pool, p *wharf.Pipeline, handled func() int64, target int64) (time.Duration, error) {
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- p.Run(runCtx) }()
	err := WaitDrained(ctx, pool, handled, target, done)
	elapsed := time.Since(start)
	if err != nil {
		return elapsed, err
	}
	stop()
	return elapsed, <-done
}
