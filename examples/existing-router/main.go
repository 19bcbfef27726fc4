// Command existing-router shows wharf inside a service that already has
// an HTTP router: Pipeline.Handler is mounted in a net/http ServeMux, with
// Go 1.22 method patterns, beside the service's own routes, and the
// workers run in the same process.
//
//	go run ./examples/existing-router
//
// serves on 127.0.0.1:8080 (-addr changes it):
//
//	GET  /healthz          the service's health check
//	GET  /readyz           wharf's readiness (database and schema)
//	GET  /api/pushes       the service's API: the pushes recorded so far
//	POST /webhooks/github  GitHub's webhooks, through wharf
//
// Point a GitHub webhook (content type application/json, the secret in
// GITHUB_WEBHOOK_SECRET) at /webhooks/github: each push is recorded once
// in the table router_pushes, whatever GitHub redelivers. DATABASE_URL
// overrides the default postgres://postgres@127.0.0.1:5432/postgres.
// Without GITHUB_WEBHOOK_SECRET it uses a public demo secret, and listens
// on loopback addresses only.
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

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address to listen on")
	flag.Parse()
	databaseURL := cmp.Or(os.Getenv("DATABASE_URL"), "postgres://postgres@127.0.0.1:5432/postgres")
	secret, err := signingSecret(*addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "existing-router:", err)
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	context.AfterFunc(ctx, stop) // a second Ctrl-C ends the process at once
	if err := run(ctx, databaseURL, os.Stdout, *addr, secret); err != nil {
		fmt.Fprintln(os.Stderr, "existing-router:", err)
		os.Exit(1)
	}
}

// signingSecret is GITHUB_WEBHOOK_SECRET or, for an endpoint listening on a loopback
// address only, the public demo secret: an endpoint that others can reach
// must never accept webhooks that anyone can sign.
func signingSecret(addr string) (string, error) {
	if s := os.Getenv("GITHUB_WEBHOOK_SECRET"); s != "" {
		return s, nil
	}
	host, _, err := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); err != nil || host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return "", fmt.Errorf("GITHUB_WEBHOOK_SECRET is not set, and the public demo secret serves only a loopback -addr, not %q", addr)
	}
	fmt.Fprintln(os.Stderr, "existing-router: GITHUB_WEBHOOK_SECRET is not set; using the public demo secret, which anyone can sign with. Never deploy this.")
	return demoSecret, nil
}

// demoSecret signs the demo's webhooks. Never use it for real.
const demoSecret = "demo-github-secret"

// run serves until ctx ends. out must be safe for concurrent use.
func run(ctx context.Context, databaseURL string, out io.Writer, addr, githubSecret string) error {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return err
	}
	cfg.MaxConns = max(cfg.MaxConns, 12) // 4 workers + 2, 3 for the endpoint, the API's queries
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
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
	if _, err := pool.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('router_pushes'));
	CREATE TABLE IF NOT EXISTS router_pushes (
		delivery text PRIMARY KEY,
		repo     text NOT NULL,
		ref      text NOT NULL,
		commits  int  NOT NULL,
		pushed_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return err
	}

	// GitHub sends every event type the webhook subscribes to (and a
	// "ping" when it is created); this service handles only pushes, so it
	// completes the others rather than keep them queued for a later
	// version that would handle them.
	p, err := wharf.New(pool, wharf.Config{Unhandled: wharf.CompleteUnhandled, Logger: slog.New(slog.NewTextHandler(out, nil))})
	if err != nil {
		return err
	}
	defer p.Close()
	if err := p.Source("github", wharf.GitHub(githubSecret)); err != nil {
		return err
	}
	if err := p.Handle("github", "push", recordPush); err != nil {
		return err
	}

	// The service's router, with wharf's endpoint as one more route.
	// Middleware that reads or rewrites request bodies (body loggers,
	// decompression) must leave the webhook route alone: the signature
	// covers the raw bytes.
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := pool.Ping(r.Context()); err != nil {
			http.Error(w, "database unreachable", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("GET /readyz", p.HealthHandler()) // wharf's readiness: database and schema
	mux.HandleFunc("GET /api/pushes", listPushes(pool))
	mux.Handle("POST /webhooks/github", p.Handler("github"))

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute}
	go srv.Serve(ln) //nolint:errcheck // returns http.ErrServerClosed at Shutdown

	workCtx, stopWorkers := context.WithCancel(ctx)
	workersDone := make(chan struct{})
	var runErr error
	go func() {
		defer close(workersDone)
		runErr = p.Run(workCtx)
	}()
	fmt.Fprintf(out, "listening on http://%s (GET /healthz, GET /readyz, GET /api/pushes, POST /webhooks/github)\n", ln.Addr())

	select {
	case <-ctx.Done():
	case <-workersDone: // Run returns early only when misconfigured
	}
	// Stop taking requests, then stop the workers. A request may take
	// BodyReadTimeout (10 s) and AckDeadline (2 s).
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err = srv.Shutdown(shutdownCtx); err != nil {
		err = errors.Join(err, srv.Close())
	}
	stopWorkers()
	<-workersDone
	return errors.Join(err, runErr)
}

// recordPush handles GitHub's push events, in the transaction that marks
// the delivery processed.
func recordPush(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
	var body struct {
		Ref        string `json:"ref"`
		Repository struct {
			FullName string `json:"full_name"`
		} `json:"repository"`
		Commits []json.RawMessage `json:"commits"`
	}
	if err := json.Unmarshal(ev.Body, &body); err != nil {
		return queue.Permanent(fmt.Errorf("push %s: %w", ev.ID, err))
	}
	_, err := tx.Exec(ctx, `INSERT INTO router_pushes (delivery, repo, ref, commits) VALUES ($1, $2, $3, $4)`,
		ev.ID, body.Repository.FullName, body.Ref, len(body.Commits))
	return err
}

// push is one row of the API's answer.
type push struct {
	Delivery string    `json:"delivery"`
	Repo     string    `json:"repo"`
	Ref      string    `json:"ref"`
	Commits  int       `json:"commits"`
	PushedAt time.Time `json:"pushed_at"`
}

// listPushes is an ordinary route of the service, reading what the
// webhook handler wrote.
func listPushes(pool *pgxpool.Pool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rows, err := pool.Query(r.Context(), `SELECT delivery, repo, ref, commits, pushed_at FROM router_pushes ORDER BY pushed_at, delivery`)
		if err != nil {
			http.Error(w, "database unreachable", http.StatusServiceUnavailable)
			return
		}
		pushes, err := pgx.CollectRows(rows, pgx.RowToStructByPos[push])
		if err != nil {
			http.Error(w, "database unreachable", http.StatusServiceUnavailable)
			return
		}
		if pushes == nil {
			pushes = []push{}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(pushes)
	}
}
