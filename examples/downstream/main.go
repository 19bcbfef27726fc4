// Command downstream shows a handler whose work is a call to another
// service, through a circuit breaker. While that downstream is down, the
// breaker opens and the events bound to it wait in the queue without
// spending attempts (so an outage never fills the dead letter queue); once
// it is back, they drain.
//
// With PostgreSQL on localhost (DATABASE_URL overrides the default
// postgres://postgres@127.0.0.1:5432/postgres):
//
//	go run ./examples/downstream
//
// It starts its own flaky downstream, a local HTTP server that answers 503
// to its first 4 calls, sends itself 10 signed order.paid webhooks, prints
// the breaker's state changes and the queue while the events wait, and
// exits once every order is delivered. Each event may run only once
// (MaxAttempts 1): had the outage cost an attempt, its event would be in
// the dead letter queue. None is.
//
// It creates the schema "wharf" (wharf.Migrate) and the table
// downstream_deliveries.
package main

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/breaker"
	"github.com/wharfhq/wharf/dlq"
	"github.com/wharfhq/wharf/queue"
)

const (
	secret      = "whsec_d2hhcmYtZG93bnN0cmVhbS1kZW1vLXNlY3JldC0zMmI=" // a demo secret; never use it for real
	orders      = 10                                                   // webhooks to send
	outageCalls = 4                                                    // the downstream fails this many calls
	breakerName = "fulfilment"                                         // the breaker's name
)

func main() {
	databaseURL := cmp.Or(os.Getenv("DATABASE_URL"), "postgres://postgres@127.0.0.1:5432/postgres")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	context.AfterFunc(ctx, stop) // a second Ctrl-C ends the process at once
	if err := run(ctx, databaseURL, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "downstream:", err)
		os.Exit(1)
	}
}

// run plays the whole story and returns once every order is delivered.
// out must be safe for concurrent use (os.Stdout is).
func run(ctx context.Context, databaseURL string, out io.Writer) error {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return err
	}
	cfg.MaxConns = max(cfg.MaxConns, 12) // 4 workers + 2, 3 for the endpoint, this function's queries
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
	if _, err := pool.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('downstream_deliveries'));
	CREATE TABLE IF NOT EXISTS downstream_deliveries (
		event_id text PRIMARY KEY,
		attempt  int  NOT NULL,
		delivered_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return err
	}

	down, err := startFlakyDownstream(out)
	if err != nil {
		return err
	}
	defer down.Close()

	opened := make(chan struct{}, 1)
	p, err := wharf.New(pool, wharf.Config{
		// Errors only: the outage's deferrals, which this demo provokes,
		// are warnings.
		Logger: slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelError})),
		// One attempt per event: a single attempt spent on the outage
		// would dead-letter its event. (A real service keeps the default,
		// 8, for the failures that are the event's own.)
		MaxAttempts: 1,
		// After a failure the breaker counts, an event waits a backoff
		// before its next try, with its attempt given back.
		Backoff: queue.Backoff{Initial: 100 * time.Millisecond, Max: time.Second},
		Breakers: breaker.Config{
			Breakers: map[string]breaker.Settings{breakerName: {
				Trip:                breaker.TripOnConsecutiveFailures,
				ConsecutiveFailures: 3,                      // 3 failed calls in a row open it
				OpenTimeout:         500 * time.Millisecond, // then it turns calls away this long
				HalfOpenProbes:      1,                      // and lets one probe through
				HalfOpenWait:        200 * time.Millisecond,
			}},
			OnStateChange: func(c breaker.StateChange) {
				fmt.Fprintf(out, "breaker %s: %s -> %s\n", c.Breaker, c.From, c.To)
				if c.To == breaker.StateOpen {
					select {
					case opened <- struct{}{}:
					default:
					}
				}
			},
		},
	})
	if err != nil {
		return err
	}
	defer p.Close()
	if err := p.Source("shop", wharf.StandardWebhooks(secret)); err != nil {
		return err
	}
	client := &http.Client{Timeout: 5 * time.Second}
	// Downstream names the breaker: the handler runs inside it, and its
	// events are left in the queue while it is open.
	if err := p.Handle("shop", "order.paid", deliver(client, down.URL), wharf.Downstream(breakerName)); err != nil {
		return err
	}

	endpoint, stopEndpoint, err := serve(p)
	if err != nil {
		return err
	}
	defer stopEndpoint()
	batch := fmt.Sprintf("evt_%d_", time.Now().UnixNano()) // this run's event ids start with it
	for i := 1; i <= orders; i++ {
		if err := sendOrder(ctx, endpoint, batch, i); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "stored %d order.paid webhooks\n", orders)

	workCtx, stopWorkers := context.WithCancel(ctx)
	workersDone := make(chan struct{})
	var runErr error
	go func() {
		defer close(workersDone)
		runErr = p.Run(workCtx)
	}()
	err = waitForDeliveries(ctx, pool, p, batch, opened, workersDone, out)
	if err == nil {
		fmt.Fprintf(out, "the downstream accepted %d orders\n", down.acceptedCount())
	}
	stopWorkers()
	<-workersDone
	return errors.Join(err, runErr)
}

// deliver is the handler: it passes each paid order on to the downstream.
func deliver(client *http.Client, downstreamURL string) wharf.HandlerFunc {
	return func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, downstreamURL, bytes.NewReader(ev.Body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		// The call cannot roll back with the transaction: if the commit
		// fails after it, the event runs again, so the downstream
		// deduplicates on this key.
		req.Header.Set("Idempotency-Key", ev.ID)
		resp, err := client.Do(req)
		if err != nil {
			return err // a refused connection or a timeout: the breaker counts it
		}
		resp.Body.Close()
		if resp.StatusCode >= 400 {
			// 5xx and 429 count as the downstream's failures: the event
			// waits without spending an attempt. Other 4xx are the
			// event's fault: it spends one, as any error does.
			return &breaker.StatusError{Code: resp.StatusCode}
		}
		_, err = tx.Exec(ctx, `INSERT INTO downstream_deliveries (event_id, attempt) VALUES ($1, $2)`, ev.ID, ev.Attempt)
		return err
	}
}

// waitForDeliveries prints the queue when the breaker opens, and returns
// once every order is delivered and the queue is empty.
func waitForDeliveries(ctx context.Context, pool *pgxpool.Pool, p *wharf.Pipeline, batch string, opened, workersDone <-chan struct{}, out io.Writer) error {
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-workersDone:
			return errors.New("the workers stopped")
		case <-deadline.C:
			return errors.New("the orders were not all delivered within 30s")
		case <-opened:
			if err := printQueue(ctx, p, "while the breaker is open", out); err != nil {
				return err
			}
			continue
		case <-poll.C:
		}
		// The queue first: an event leaves it in the transaction that
		// records its delivery, so once the queue is seen empty every
		// delivery is there to count (counted first, the last one could
		// commit between the two reads).
		st, err := p.Queue().Stats(ctx)
		if err != nil {
			return err
		}
		if st.Due+st.Scheduled+st.Running > 0 {
			continue // still waiting
		}
		var delivered, firstAttempt int
		err = pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE attempt = 1) FROM downstream_deliveries WHERE starts_with(event_id, $1)`,
			batch).Scan(&delivered, &firstAttempt)
		if err != nil {
			return err
		}
		if err := printQueue(ctx, p, "after the outage", out); err != nil {
			return err
		}
		if delivered < orders {
			return fmt.Errorf("only %d of %d orders delivered: the others were dead-lettered", delivered, orders)
		}
		fmt.Fprintf(out, "all %d orders delivered, %d of them on their first attempt\n", delivered, firstAttempt)
		return nil
	}
}

func printQueue(ctx context.Context, p *wharf.Pipeline, when string, out io.Writer) error {
	st, err := p.Queue().Stats(ctx)
	if err != nil {
		return err
	}
	dead, err := p.DLQ().Count(ctx, dlq.Filter{Status: dlq.StatusDead})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "queue %s: %d events waiting, %d dead-lettered\n", when, st.Due+st.Scheduled+st.Running, dead)
	return nil
}

// flakyDownstream is the service the handler calls: it answers 503 to its
// first outageCalls calls, then accepts orders, once per Idempotency-Key.
type flakyDownstream struct {
	*http.Server
	URL string

	calls    atomic.Int32
	mu       sync.Mutex
	accepted map[string]bool
}

func (d *flakyDownstream) acceptedCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.accepted)
}

func startFlakyDownstream(out io.Writer) (*flakyDownstream, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	d := &flakyDownstream{URL: "http://" + ln.Addr().String() + "/orders", accepted: map[string]bool{}}
	d.Server = &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := d.calls.Add(1)
		if n <= outageCalls {
			fmt.Fprintf(out, "downstream: call %d -> 503\n", n)
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		d.mu.Lock()
		d.accepted[r.Header.Get("Idempotency-Key")] = true
		d.mu.Unlock()
		w.WriteHeader(http.StatusOK)
	})}
	go d.Serve(ln) //nolint:errcheck // returns http.ErrServerClosed at Close
	fmt.Fprintf(out, "downstream listening on %s, down for its first %d calls\n", d.URL, outageCalls)
	return d, nil
}

// serve runs the webhook endpoint on a free local port.
func serve(p *wharf.Pipeline) (url string, stop func(), err error) {
	mux := http.NewServeMux()
	mux.Handle("POST /webhooks/shop", p.Handler("shop"))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute}
	go srv.Serve(ln) //nolint:errcheck // returns http.ErrServerClosed at Shutdown
	stop = func() {
		// Let requests in flight be answered (BodyReadTimeout and
		// AckDeadline bound them) before the Pipeline closes.
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if srv.Shutdown(ctx) != nil {
			srv.Close()
		}
	}
	return "http://" + ln.Addr().String() + "/webhooks/shop", stop, nil
}

// sendOrder plays the provider: it posts one signed order.paid webhook.
func sendOrder(ctx context.Context, endpoint, batch string, i int) error {
	id := fmt.Sprintf("%s%d", batch, i)
	body := fmt.Appendf(nil, `{"type":"order.paid","data":{"order":"ord_%d"}}`, i)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header = wharf.SignStandardWebhooks(secret, id, time.Now(), body)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("sending %s: %s", id, resp.Status)
	}
	return nil
}
