// Command quickstart stores a few webhook events in a PostgreSQL queue and
// consumes them, each exactly once, in a transaction that also writes the
// business effect. It needs only a local PostgreSQL:
//
//	go run ./examples/quickstart
//
// DATABASE_URL overrides the default postgres://postgres@127.0.0.1:5432/postgres.
// It creates the schema "wharf" and a table "quickstart_invoices" there.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/queue"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	url := os.Getenv("DATABASE_URL")
	if url == "" {
		url = "postgres://postgres@127.0.0.1:5432/postgres"
	}
	if err := run(ctx, url, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, url string, out io.Writer) error {
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := wharf.Migrate(ctx, pool); err != nil {
		return fmt.Errorf("migrate (is PostgreSQL running at %s?): %w", url, err)
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS quickstart_invoices (
		invoice_id text PRIMARY KEY, paid_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return err
	}

	q, err := queue.New(pool, queue.Config{})
	if err != nil {
		return err
	}
	defer q.Close()

	// The endpoint's half: store each event before acknowledging it. A
	// provider that retries gets "duplicate", and nothing is stored twice.
	run := time.Now().UnixNano()
	for i := range 5 {
		ev := queue.NewEvent{
			Source: "billing",
			ID:     fmt.Sprintf("evt_%d_%d", run, i),
			Type:   "invoice.paid",
			Body:   fmt.Appendf(nil, `{"invoice":"in_%d_%d"}`, run, i),
		}
		res, err := q.Enqueue(ctx, ev)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "stored %s (duplicate: %v)\n", ev.ID, res.Duplicate)
		if i == 0 { // a provider retry
			res, err = q.Enqueue(ctx, ev)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "stored %s again (duplicate: %v)\n", ev.ID, res.Duplicate)
		}
	}

	// The worker's half: each event runs in a transaction that also
	// completes it, so the invoice is marked paid exactly once.
	processed := make(chan string)
	consumer, err := queue.NewConsumer(q, queue.ConsumerConfig{
		Workers: 2,
		Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
			_, err := tx.Exec(ctx, `INSERT INTO quickstart_invoices (invoice_id) VALUES ($1::jsonb->>'invoice')`, ev.Body)
			if err == nil {
				select {
				case processed <- ev.ID:
				case <-ctx.Done():
				}
			}
			return err
		},
	})
	if err != nil {
		return err
	}
	runCtx, stopConsumer := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- consumer.Run(runCtx) }()
	for range 5 {
		select {
		case id := <-processed:
			fmt.Fprintf(out, "processed %s\n", id)
		case <-ctx.Done():
			stopConsumer()
			return errors.Join(ctx.Err(), <-done)
		}
	}
	stopConsumer()
	if err := <-done; err != nil {
		return err
	}

	var paid int
	err = pool.QueryRow(ctx, `SELECT count(*) FROM quickstart_invoices WHERE invoice_id LIKE $1`,
		fmt.Sprintf("in_%d_%%", run)).Scan(&paid)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "invoices paid: %d\n", paid)
	return nil
}
