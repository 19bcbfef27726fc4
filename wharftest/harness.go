package wharftest

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wharfhq/wharf"
)

// DefaultTimeout is how long Drain waits for the queue to drain before it
// fails the test, when Harness.Timeout is zero.
const DefaultTimeout = 30 * time.Second

// pollInterval is how often Drain looks at the queue.
const pollInterval = 10 * time.Millisecond

// queryTimeout bounds each of the Harness's own queries.
const queryTimeout = 10 * time.Second

// Harness runs a Pipeline's workers in a test and reports where its events
// are. Build it with New.
type Harness struct {
	// Timeout bounds Drain. Defaults to DefaultTimeout.
	Timeout time.Duration

	t      testing.TB
	pool   *pgxpool.Pool
	p      *wharf.Pipeline
	tables tables
	srv    *httptest.Server

	cancel      context.CancelFunc // stops the running workers
	done        chan error         // Run's result; nil when not running
	stopOnClean bool               // Stop is registered with t.Cleanup
}

// New returns a Harness for p, whose tables are reached through pool (the
// pool p was built on, or another on the same database). It fails the
// test when the database cannot be reached or has not been migrated
// (wharf.Migrate, or a wharf.Migrator for Config.Schema).
//
// New starts nothing: the workers start with Start or Drain, the HTTP
// server with URL or Send, and both stop when the test ends. Register
// t.Cleanup(p.Close) before calling them, so that cleanups, which run
// last-registered first, stop the workers before the Pipeline closes.
func New(t testing.TB, pool *pgxpool.Pool, p *wharf.Pipeline) *Harness {
	t.Helper()
	if pool == nil || p == nil {
		t.Fatalf("wharftest: New needs a pool and a Pipeline")
	}
	h := &Harness{t: t, pool: pool, p: p, tables: tablesIn(p.Queue().Schema())}
	ctx, cancel := context.WithTimeout(context.Background(), queryTimeout)
	defer cancel()
	var migrated bool
	err := pool.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL AND to_regclass($3) IS NOT NULL`,
		h.tables.queue, h.tables.processed, h.tables.dead).Scan(&migrated)
	if err != nil {
		t.Fatalf("wharftest: cannot query the test database (is DATABASE_URL pointing at a running PostgreSQL?): %v", err)
	}
	if !migrated {
		t.Fatalf("wharftest: schema %q lacks wharf's tables: run wharf.Migrate(ctx, pool) (or a wharf.Migrator for Config.Schema) first",
			p.Queue().Schema())
	}
	return h
}

// tables are the quoted names of the tables the Harness reads.
type tables struct{ queue, processed, dead string }

func tablesIn(schema string) tables {
	return tables{
		queue:     pgx.Identifier{schema, "queue"}.Sanitize(),
		processed: pgx.Identifier{schema, "processed_events"}.Sanitize(),
		dead:      pgx.Identifier{schema, "dead_letters"}.Sanitize(),
	}
}

// URL returns the address of source's endpoint (Pipeline.Handler) on an
// HTTP server that the Harness starts on first use and closes when the
// test ends.
func (h *Harness) URL(source string) string {
	if h.srv == nil {
		mux := http.NewServeMux()
		mux.HandleFunc("/{source}", func(w http.ResponseWriter, r *http.Request) {
			h.p.Handler(r.PathValue("source")).ServeHTTP(w, r)
		})
		h.srv = httptest.NewServer(mux)
		h.t.Cleanup(h.srv.Close)
	}
	return h.srv.URL + "/" + url.PathEscape(source)
}

// Send signs w with s and posts it to source's endpoint (see URL).
func (h *Harness) Send(source string, s Signer, w Webhook) Response {
	h.t.Helper()
	return s.Sign(h.t, w).Send(h.t, h.URL(source))
}

// Start runs the Pipeline's workers (Pipeline.Run) in the background, if
// they are not running yet. They stop when the test ends, or at Stop.
func (h *Harness) Start() {
	h.t.Helper()
	if h.done != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.p.Run(ctx) }()
	h.cancel, h.done = cancel, done
	if !h.stopOnClean {
		h.stopOnClean = true
		h.t.Cleanup(h.Stop)
	}
}

// Stop shuts the workers down gracefully and waits for them (up to the
// Pipeline's ShutdownTimeout); it fails the test if Run returned an error.
// It does nothing when they are not running.
func (h *Harness) Stop() {
	h.t.Helper()
	if h.done == nil {
		return
	}
	h.cancel()
	err := <-h.done
	h.done = nil
	if err != nil {
		h.t.Errorf("wharftest: Pipeline.Run: %v", err)
	}
}

// Drain starts the workers if they are not running, and waits until the
// queue holds no event that a handler takes: every one was processed or
// dead-lettered. Retries wait for the Pipeline's Backoff, and events of a
// downstream whose breaker is open wait for it to close; Drain waits for
// them too. Events stored while no handler took their type are waited for
// only when the Pipeline's Config.Unhandled completes or dead-letters them;
// by default they stay queued for a later deploy, and Drain leaves them.
//
// It fails the test, listing what is still queued, when that takes longer
// than Timeout, and at once if the workers stop with an error.
func (h *Harness) Drain() {
	h.t.Helper()
	h.Start()
	timeout := cmp.Or(h.Timeout, DefaultTimeout)
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		pending, err := h.pending()
		if err != nil {
			h.t.Fatalf("wharftest: read the queue: %v", err)
		}
		if len(pending) == 0 {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("wharftest: the queue did not drain within %s (Harness.Timeout); still queued:\n%s",
				timeout, strings.Join(pending, "\n"))
		}
		select {
		case err := <-h.done:
			h.done = nil
			h.cancel()
			h.t.Fatalf("wharftest: the workers stopped before the queue drained: %v", err)
		case <-tick.C:
		}
	}
}

// maxListed caps the events a Drain failure lists.
const maxListed = 10

// pending describes the queued events the workers will take (those with
// a handler, and those without when Config.Unhandled takes them), at most
// maxListed of them and a line saying how many more.
func (h *Harness) pending() ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), queryTimeout)
	defer cancel()
	rows, err := h.pool.Query(ctx, `
SELECT source, event_id, event_type, coalesce(handler, ''), state, attempt, run_at, errors, count(*) OVER ()
FROM `+h.tables.queue+`
WHERE (handler IS NOT NULL OR $2) AND state <> 'exhausted'
ORDER BY id
LIMIT $1`, maxListed, h.p.UnhandledPolicy() != wharf.LeaveUnhandled)
	if err != nil {
		return nil, err
	}
	var (
		out   []string
		total int
	)
	for rows.Next() {
		var q queued
		if err := rows.Scan(&q.source, &q.id, &q.typ, &q.handler, &q.state, &q.attempt, &q.runAt, &q.errors, &total); err != nil {
			rows.Close()
			return nil, err
		}
		out = append(out, "  "+q.String())
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if total > len(out) {
		out = append(out, fmt.Sprintf("  ... and %d more", total-len(out)))
	}
	return out, nil
}

// queued is a queue row, for messages.
type queued struct {
	source, id, typ, handler, state string
	attempt                         int
	runAt                           time.Time
	errors                          attemptErrors
}

func (q queued) String() string {
	s := fmt.Sprintf("%s/%s (%s, handler %s): %s, %d attempts spent", q.source, q.id, q.typ, q.handler, q.state, q.attempt)
	if wait := time.Until(q.runAt); q.state == "available" && wait > 0 {
		s += fmt.Sprintf(", next run in %s", wait.Round(time.Millisecond))
	}
	if last := q.errors.last(); last != "" {
		s += ", last error: " + last
	}
	return s
}
