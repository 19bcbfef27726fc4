// Command split runs wharf's two halves in separate processes against one
// database: ingest processes serve the webhook endpoint and only store
// events; worker processes only process them. Each side scales on its own
// (N ingest replicas behind a load balancer, M workers), and a slow
// handler never slows the endpoint down.
//
// With PostgreSQL on localhost (DATABASE_URL overrides the default
// postgres://postgres@127.0.0.1:5432/postgres), in two terminals:
//
//	go run ./examples/split -role ingest -addr 127.0.0.1:8080
//	go run ./examples/split -role worker
//
// Webhooks to http://127.0.0.1:8080/webhooks/shop (Standard Webhooks, the
// secret in WEBHOOK_SECRET) are stored by the first and processed by the
// second, into the table split_orders. Run several of either. Without
// WEBHOOK_SECRET the ingest role uses a public demo secret, and listens on
// loopback addresses only.
//
// Why one binary with a -role flag rather than two mains: both roles must
// register the same sources and handlers (setup below). The workers need
// them to run the events; the ingest side needs them too, because it
// records which handler takes each event and answers a redelivery of an
// event that handler already processed as a duplicate, without storing it
// again. One function used by both roles keeps them from drifting apart,
// and one image deploys both.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/queue"
)

// demoSecret signs and verifies the demo's webhooks. Never use it for real.
const demoSecret = "whsec_d2hhcmYtc3BsaXQtZGVtby1zZWNyZXQtMzItYnl0ZXM="

type options struct {
	role   string // "ingest" or "worker"
	addr   string // where the ingest role listens
	secret string
}

func main() {
	var o options
	flag.StringVar(&o.role, "role", "", `"ingest" (serve the endpoint) or "worker" (process events)`)
	flag.StringVar(&o.addr, "addr", "127.0.0.1:8080", "address the ingest role listens on")
	flag.Parse()
	// Only the ingest role verifies signatures; the worker's copy of the
	// source is never asked to.
	o.secret = cmp.Or(os.Getenv("WEBHOOK_SECRET"), demoSecret)
	if o.role == "ingest" {
		secret, err := signingSecret(o.addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "split:", err)
			os.Exit(2)
		}
		o.secret = secret
	}
	databaseURL := cmp.Or(os.Getenv("DATABASE_URL"), "postgres://postgres@127.0.0.1:5432/postgres")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	context.AfterFunc(ctx, stop) // a second Ctrl-C ends the process at once
	if err := run(ctx, databaseURL, os.Stdout, o); err != nil {
		fmt.Fprintln(os.Stderr, "split:", err)
		os.Exit(1)
	}
}

// signingSecret is WEBHOOK_SECRET or, for an endpoint listening on a loopback
// address only, the public demo secret: an endpoint that others can reach
// must never accept webhooks that anyone can sign.
func signingSecret(addr string) (string, error) {
	if s := os.Getenv("WEBHOOK_SECRET"); s != "" {
		return s, nil
	}
	host, _, err := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); err != nil || host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return "", fmt.Errorf("WEBHOOK_SECRET is not set, and the public demo secret serves only a loopback -addr, not %q", addr)
	}
	fmt.Fprintln(os.Stderr, "split: WEBHOOK_SECRET is not set; using the public demo secret, which anyone can sign with. Never deploy this.")
	return demoSecret, nil
}

// run plays o.role until ctx ends. out must be safe for concurrent use.
func run(ctx context.Context, databaseURL string, out io.Writer, o options) error {
	if o.role != "ingest" && o.role != "worker" {
		return fmt.Errorf(`-role must be "ingest" or "worker", not %q`, o.role)
	}
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return err
	}
	cfg.MaxConns = max(cfg.MaxConns, 10) // a worker: 4 workers + 2; an ingest: 3 for group commit and notifications
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	// Every replica of either role may migrate at start: one applies the
	// migrations, the others wait for it and find nothing to do. A schema
	// that a newer release already migrated is fine: migrations only add,
	// so an old replica restarting mid-rollout (or after a rollback) runs
	// on against it.
	if err := wharf.Migrate(ctx, pool); err != nil && !errors.Is(err, wharf.ErrSchemaNewer) {
		return fmt.Errorf("migrate (is PostgreSQL running at %s:%d?): %w", pool.Config().ConnConfig.Host, pool.Config().ConnConfig.Port, err)
	}
	// CREATE TABLE IF NOT EXISTS is not atomic: replicas starting at once
	// can both find the table missing, and all but one fail. The lock
	// serialises them (one Exec without arguments is one transaction).
	if _, err := pool.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('split_orders'));
	CREATE TABLE IF NOT EXISTS split_orders (
		order_id text PRIMARY KEY,
		event_id text NOT NULL,
		total_cents bigint NOT NULL)`); err != nil {
		return err
	}

	p, err := setup(pool, o.secret, out)
	if err != nil {
		return err
	}
	defer p.Close()
	if o.role == "worker" {
		fmt.Fprintln(out, "worker: processing events")
		return p.Run(ctx) // returns once ctx ends and running handlers finished
	}
	return serve(ctx, p, o.addr, out)
}

// setup registers what both roles must agree on: the sources, and the
// handlers with their names.
func setup(pool *pgxpool.Pool, secret string, out io.Writer) (*wharf.Pipeline, error) {
	p, err := wharf.New(pool, wharf.Config{Logger: slog.New(slog.NewTextHandler(out, nil))})
	if err != nil {
		return nil, err
	}
	if err := p.Source("shop", wharf.StandardWebhooks(secret)); err != nil {
		p.Close()
		return nil, err
	}
	if err := p.Handle("shop", "order.created", storeOrder(out), wharf.HandlerName("orders.store")); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// storeOrder is the handler; only the worker role runs it.
func storeOrder(out io.Writer) wharf.HandlerFunc {
	return func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		var body struct {
			Data struct {
				OrderID    string `json:"order_id"`
				TotalCents int64  `json:"total_cents"`
			} `json:"data"`
		}
		if err := json.Unmarshal(ev.Body, &body); err != nil || body.Data.OrderID == "" {
			return queue.Permanent(fmt.Errorf("order.created %s: no order_id (%v)", ev.ID, err))
		}
		_, err := tx.Exec(ctx, `INSERT INTO split_orders (order_id, event_id, total_cents) VALUES ($1, $2, $3)`,
			body.Data.OrderID, ev.ID, body.Data.TotalCents)
		if err == nil {
			fmt.Fprintf(out, "worker: stored order %s (event %s, attempt %d)\n", body.Data.OrderID, ev.ID, ev.Attempt)
		}
		return err
	}
}

// serve is the ingest role: the endpoint, and no workers.
func serve(ctx context.Context, p *wharf.Pipeline, addr string, out io.Writer) error {
	mux := http.NewServeMux()
	mux.Handle("POST /webhooks/shop", p.Handler("shop"))
	mux.Handle("GET /readyz", p.HealthHandler())
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	fmt.Fprintf(out, "ingest: listening on http://%s/webhooks/shop\n", ln.Addr())

	select {
	case <-ctx.Done():
	case err := <-served:
		return err
	}
	// A request may take BodyReadTimeout (10 s) and AckDeadline (2 s).
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err = srv.Shutdown(shutdownCtx); err != nil {
		err = errors.Join(err, srv.Close())
	}
	if serveErr := <-served; !errors.Is(serveErr, http.ErrServerClosed) {
		err = errors.Join(err, serveErr)
	}
	return err
}
