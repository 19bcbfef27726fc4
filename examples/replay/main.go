// Command replay rebuilds a projection from wharf's event log. Orders are
// recorded as events in streams ("order-1": placed, item added, paid), and
// a projection keeps the table replay_order_totals up to date from them.
// Then a "bug" corrupts the table, and Projection.Rebuild empties it and
// replays the log through the projection: the table is restored, because
// the log, append-only in the database, still holds everything that
// happened.
//
// With PostgreSQL on localhost (DATABASE_URL overrides the default
// postgres://postgres@127.0.0.1:5432/postgres):
//
//	go run ./examples/replay
//
// It creates the schema "wharf" (wharf.Migrate) and the table
// replay_order_totals. Run it again: the orders are already in the log,
// and the rebuild restores the table just the same.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/eventlog"
)

func main() {
	databaseURL := cmp.Or(os.Getenv("DATABASE_URL"), "postgres://postgres@127.0.0.1:5432/postgres")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, databaseURL, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "replay:", err)
		os.Exit(1)
	}
}

// orders are what happened, one stream per order.
var orders = map[string][]eventlog.NewEvent{
	"order-1": {
		{Type: "order.placed", Data: []byte(`{"customer": "ada", "total_cents": 1250}`)},
		{Type: "order.item_added", Data: []byte(`{"price_cents": 300}`)},
		{Type: "order.paid", Data: []byte(`{}`)},
	},
	"order-2": {
		{Type: "order.placed", Data: []byte(`{"customer": "grace", "total_cents": 4000}`)},
		{Type: "order.cancelled", Data: []byte(`{}`)},
	},
	"order-3": {
		{Type: "order.placed", Data: []byte(`{"customer": "linus", "total_cents": 990}`)},
		{Type: "order.paid", Data: []byte(`{}`)},
	},
}

func run(ctx context.Context, databaseURL string, out io.Writer) error {
	pool, err := pgxpool.New(ctx, databaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := wharf.Migrate(ctx, pool); err != nil && !errors.Is(err, wharf.ErrSchemaNewer) {
		return fmt.Errorf("migrate (is PostgreSQL running at %s:%d?): %w", pool.Config().ConnConfig.Host, pool.Config().ConnConfig.Port, err)
	}
	// CREATE TABLE IF NOT EXISTS is not atomic: replicas starting at once
	// can both find the table missing, and all but one fail. The lock
	// serialises them (one Exec without arguments is one transaction).
	if _, err := pool.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('replay_order_totals'));
	CREATE TABLE IF NOT EXISTS replay_order_totals (
		order_id    text   PRIMARY KEY,
		customer    text   NOT NULL,
		total_cents bigint NOT NULL,
		status      text   NOT NULL)`); err != nil {
		return err
	}
	log, err := eventlog.New(pool, eventlog.Config{})
	if err != nil {
		return err
	}
	defer log.Close()

	// Record the orders. NoStream: each stream must be new, so a second
	// run finds them there and appends nothing.
	var last eventlog.Cursor // where the projection must get to
	for _, stream := range slices.Sorted(maps.Keys(orders)) {
		_, err := log.Append(ctx, stream, eventlog.NoStream, orders[stream]...)
		switch {
		case errors.Is(err, eventlog.ErrVersionConflict):
			fmt.Fprintf(out, "%s is in the log already (an earlier run)\n", stream)
		case err != nil:
			return err
		default:
			fmt.Fprintf(out, "appended %d events to %s\n", len(orders[stream]), stream)
		}
		events, err := log.ReadStream(ctx, stream, 1, 0)
		if err != nil {
			return err
		}
		if c := events[len(events)-1].Cursor(); later(c, last) {
			last = c
		}
	}

	proj, err := log.NewProjection(eventlog.ProjectionConfig{
		Name:     "order-totals",
		Category: "order-", // the streams order-1, order-2, ...
		Handler:  applyOrders,
	})
	if err != nil {
		return err
	}
	// A service runs the projection with go proj.Run(ctx); here it runs on
	// demand.
	if err := catchUp(ctx, log, proj, last, out); err != nil {
		return err
	}
	before, err := totals(ctx, pool)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "\nthe projection:\n%s", before)

	// A bad deploy corrupts the read model...
	if _, err := pool.Exec(ctx, `UPDATE replay_order_totals SET total_cents = 0 WHERE order_id = '1'`); err != nil {
		return err
	}
	if _, err := pool.Exec(ctx, `DELETE FROM replay_order_totals WHERE order_id = '3'`); err != nil {
		return err
	}
	corrupted, err := totals(ctx, pool)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "\nafter a bug zeroed order 1 and deleted order 3:\n%s", corrupted)
	// ...but cannot touch the log: the database refuses.
	_, err = pool.Exec(ctx, `UPDATE wharf.event_log SET data = '{}'`)
	fmt.Fprintf(out, "\nand the log itself? UPDATE wharf.event_log: %v\n", err)

	// Rebuild: empty the table and move the checkpoint back to the start
	// in one transaction, then replay the log into the table.
	fmt.Fprintln(out)
	err = proj.Rebuild(ctx, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `TRUNCATE replay_order_totals`)
		return err
	}, func(done, total int64) {
		fmt.Fprintf(out, "rebuild: %d of %d events replayed\n", done, total)
	})
	if err != nil {
		return err
	}
	if err := catchUp(ctx, log, proj, last, out); err != nil {
		return err
	}
	after, err := totals(ctx, pool)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "\nafter the rebuild:\n%s", after)
	if after != before {
		return errors.New("the rebuilt table differs from the projection before the bug")
	}
	fmt.Fprintln(out, "\nrestored: the table is what it was before the bug")
	return nil
}

// applyOrders is the projection: it folds a batch of order events into
// replay_order_totals, in the transaction that moves its checkpoint, so
// each event counts exactly once.
func applyOrders(ctx context.Context, tx pgx.Tx, events []eventlog.Event) error {
	for _, ev := range events {
		id := strings.TrimPrefix(ev.Stream, "order-")
		var data struct {
			Customer   string `json:"customer"`
			TotalCents int64  `json:"total_cents"`
			PriceCents int64  `json:"price_cents"`
		}
		if err := json.Unmarshal(ev.Data, &data); err != nil {
			return fmt.Errorf("%s v%d: %w", ev.Stream, ev.Version, err)
		}
		var err error
		switch ev.Type {
		case "order.placed":
			_, err = tx.Exec(ctx, `INSERT INTO replay_order_totals VALUES ($1, $2, $3, 'placed')`, id, data.Customer, data.TotalCents)
		case "order.item_added":
			_, err = tx.Exec(ctx, `UPDATE replay_order_totals SET total_cents = total_cents + $2 WHERE order_id = $1`, id, data.PriceCents)
		case "order.paid":
			_, err = tx.Exec(ctx, `UPDATE replay_order_totals SET status = 'paid' WHERE order_id = $1`, id)
		case "order.cancelled":
			_, err = tx.Exec(ctx, `UPDATE replay_order_totals SET status = 'cancelled' WHERE order_id = $1`, id)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// catchUp runs the projection until it has applied the event at cursor
// last. CatchUp stops at the log's horizon: events of transactions that
// may still commit before them are not read yet. Any write transaction of
// the cluster running at that moment holds it back, so try again until
// the checkpoint gets there, and say who holds it if that takes long.
func catchUp(ctx context.Context, log *eventlog.Log, proj *eventlog.Projection, last eventlog.Cursor, out io.Writer) error {
	start := time.Now()
	deadline := start.Add(30 * time.Second)
	reported := false
	for {
		if _, err := proj.CatchUp(ctx); err != nil && !errors.Is(err, eventlog.ErrHeldOff) {
			return err
		}
		at, err := proj.Checkpoint(ctx)
		if err != nil {
			return err
		}
		if !later(last, at) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("projection %s stuck at %s, before %s (see Log.TailLag)", proj.Name(), at, last)
		}
		if !reported && time.Since(start) > time.Second {
			reported = true
			if lag, err := log.TailLag(ctx); err == nil && lag.HolderPID != 0 {
				fmt.Fprintf(out, "waiting for the transaction of backend %d, running for %s, which holds the log's horizon\n",
					lag.HolderPID, lag.HolderAge.Round(time.Second))
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// later reports whether a comes after b in the log's read order.
func later(a, b eventlog.Cursor) bool {
	return a.TxID > b.TxID || a.TxID == b.TxID && a.Position > b.Position
}

// totals formats replay_order_totals, one order a line.
func totals(ctx context.Context, pool *pgxpool.Pool) (string, error) {
	rows, err := pool.Query(ctx, `SELECT order_id, customer, total_cents, status FROM replay_order_totals ORDER BY order_id`)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	var id, customer, status string
	var cents int64
	_, err = pgx.ForEachRow(rows, []any{&id, &customer, &cents, &status}, func() error {
		fmt.Fprintf(&b, "  order %s  %-6s %6.2f  %s\n", id, customer, float64(cents)/100, status)
		return nil
	})
	return b.String(), err
}
