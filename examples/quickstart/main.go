// Command quickstart runs wharf in one process: an HTTP endpoint that
// verifies Standard Webhooks signatures and stores each event in
// PostgreSQL before it answers, and workers that process each event once,
// in a transaction that also writes the business effect (a row in
// quickstart_payments).
//
// With PostgreSQL on localhost (DATABASE_URL overrides the default
// postgres://postgres@127.0.0.1:5432/postgres):
//
//	go run ./examples/quickstart -send
//
// sends itself a signed test webhook, shows it stored, processed once, and
// its redelivery answered as a duplicate, and exits. Without -send it keeps
// serving http://127.0.0.1:8080/webhooks/billing (-addr changes the
// address) and prints a signed curl command to send it a webhook yourself;
// Ctrl-C stops it gracefully.
//
// It creates the schema "wharf" (wharf.Migrate) and the table
// quickstart_payments. The signing secret is a demo one unless
// WEBHOOK_SECRET holds yours ("whsec_" and a base64 key, as Standard
// Webhooks providers give it); without it, it listens on loopback
// addresses only.
package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
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
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/queue"
)

// demoSecret signs and verifies the test webhooks. Never use it for real.
const demoSecret = "whsec_d2hhcmYtcXVpY2tzdGFydC1kZW1vLXNlY3JldC0zMmI="

type options struct {
	addr   string // where to listen; "127.0.0.1:0" picks a free port
	secret string // the source's signing secret
	send   bool   // send a test webhook to ourselves and exit once it is processed
}

func main() {
	var o options
	flag.StringVar(&o.addr, "addr", "127.0.0.1:8080", "address to listen on")
	flag.BoolVar(&o.send, "send", false, "send a signed test webhook to this process, wait until it is processed, and exit")
	flag.Parse()
	secret, err := signingSecret(o.addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(2)
	}
	o.secret = secret
	databaseURL := cmp.Or(os.Getenv("DATABASE_URL"), "postgres://postgres@127.0.0.1:5432/postgres")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	context.AfterFunc(ctx, stop) // a second Ctrl-C ends the process at once
	if err := run(ctx, databaseURL, os.Stdout, o); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
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
	fmt.Fprintln(os.Stderr, "quickstart: WEBHOOK_SECRET is not set; using the public demo secret, which anyone can sign with. Never deploy this.")
	return demoSecret, nil
}

// run serves webhooks and processes them until ctx ends or, with o.send,
// until its test webhook is processed. out must be safe for concurrent use
// (os.Stdout is).
func run(ctx context.Context, databaseURL string, out io.Writer, o options) error {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return err
	}
	// The workers need one connection each (4 by default) plus 2, the
	// endpoint 3 (group commit and notifications): more than pgxpool's
	// default on a small machine.
	cfg.MaxConns = max(cfg.MaxConns, 12)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := wharf.Migrate(ctx, pool); err != nil && !errors.Is(err, wharf.ErrSchemaNewer) {
		return fmt.Errorf("migrate (is PostgreSQL running at %s:%d?): %w", pool.Config().ConnConfig.Host, pool.Config().ConnConfig.Port, err)
	}
	// No unique constraint on event_id, on purpose: one row per event is
	// wharf's doing, however often the provider delivers it.
	// CREATE TABLE IF NOT EXISTS is not atomic: replicas starting at once
	// can both find the table missing, and all but one fail. The lock
	// serialises them (one Exec without arguments is one transaction).
	if _, err := pool.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('quickstart_payments'));
	CREATE TABLE IF NOT EXISTS quickstart_payments (
		id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
		event_id     text   NOT NULL,
		invoice      text   NOT NULL,
		amount_cents bigint NOT NULL,
		paid_at      timestamptz NOT NULL DEFAULT now())`); err != nil {
		return err
	}

	logger := slog.New(slog.NewTextHandler(out, nil))
	p, err := wharf.New(pool, wharf.Config{Logger: logger})
	if err != nil {
		return err
	}
	defer p.Close()
	if err := p.Source("billing", wharf.StandardWebhooks(o.secret)); err != nil {
		return err
	}
	if err := p.Handle("billing", "invoice.paid", recordPayment(logger)); err != nil {
		return err
	}

	// The endpoint: it answers 202 only once the event is committed.
	mux := http.NewServeMux()
	mux.Handle("POST /webhooks/billing", p.Handler("billing"))
	mux.Handle("GET /readyz", p.HealthHandler())
	ln, err := net.Listen("tcp", o.addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute}
	go srv.Serve(ln) //nolint:errcheck // returns http.ErrServerClosed at Shutdown

	// The workers. Cancelling their context stops them gracefully: running
	// handlers finish, fetched events go back to the queue.
	workCtx, stopWorkers := context.WithCancel(ctx)
	workersDone := make(chan struct{})
	var runErr error
	go func() {
		defer close(workersDone)
		runErr = p.Run(workCtx)
	}()

	url := "http://" + ln.Addr().String() + "/webhooks/billing"
	hook := newTestWebhook(o.secret)
	fmt.Fprintf(out, "listening on %s\n\n", url)
	fmt.Fprintf(out, "send it a signed test webhook (the signature is good for 5 minutes):\n\n  %s\n\n", hook.curl(url))

	if o.send {
		err = sendToSelf(ctx, pool, url, hook, out, workersDone)
	} else {
		select {
		case <-ctx.Done():
		case <-workersDone: // Run returns early only when misconfigured
		}
	}

	// Stop taking webhooks first, then let the workers finish.
	// A request may take BodyReadTimeout (10 s) and AckDeadline (2 s).
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if shutdownErr := srv.Shutdown(shutdownCtx); shutdownErr != nil {
		err = errors.Join(err, shutdownErr, srv.Close())
	}
	stopWorkers()
	<-workersDone
	return errors.Join(err, runErr)
}

// recordPayment is the handler of invoice.paid. It runs in the transaction
// that records the event as processed and removes it from the queue, so
// its INSERT commits exactly once per event, whatever the retries.
func recordPayment(logger *slog.Logger) wharf.HandlerFunc {
	return func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		var body struct {
			Data struct {
				Invoice     string `json:"invoice"`
				AmountCents int64  `json:"amount_cents"`
			} `json:"data"`
		}
		if err := json.Unmarshal(ev.Body, &body); err != nil || body.Data.Invoice == "" {
			// Retrying cannot fix a bad body: dead-letter it at once.
			return queue.Permanent(fmt.Errorf("invoice.paid %s: no invoice in the body (%v)", ev.ID, err))
		}
		_, err := tx.Exec(ctx, `INSERT INTO quickstart_payments (event_id, invoice, amount_cents) VALUES ($1, $2, $3)`,
			ev.ID, body.Data.Invoice, body.Data.AmountCents)
		if err == nil {
			logger.Info("payment recorded", "invoice", body.Data.Invoice, "event", ev.ID, "attempt", ev.Attempt)
		}
		return err // an error rolls the INSERT back and retries the event later
	}
}

// sendToSelf plays the provider: it sends the test webhook, waits for its
// payment row, and sends it again as a provider's retry would.
func sendToSelf(ctx context.Context, pool *pgxpool.Pool, url string, hook testWebhook, out io.Writer, workersDone <-chan struct{}) error {
	status, answer, err := hook.post(ctx, url)
	if err != nil {
		return err
	}
	if status != http.StatusAccepted {
		return fmt.Errorf("sent %s: %d %s", hook.id, status, answer)
	}
	fmt.Fprintf(out, "stored %s (%d %s)\n", hook.id, status, answer)

	// The 202 means the event is durable; the workers process it shortly.
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	poll := time.NewTicker(20 * time.Millisecond)
	defer poll.Stop()
	var payments int
	for payments == 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-workersDone:
			return errors.New("the workers stopped")
		case <-deadline.C:
			return fmt.Errorf("%s was not processed within 10s", hook.id)
		case <-poll.C:
		}
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM quickstart_payments WHERE event_id = $1`, hook.id).Scan(&payments); err != nil {
			return err
		}
	}
	if payments != 1 {
		return fmt.Errorf("%s made %d payment rows", hook.id, payments)
	}
	fmt.Fprintf(out, "processed %s once (1 payment row)\n", hook.id)

	status, answer, err = hook.post(ctx, url)
	if err != nil {
		return err
	}
	if status != http.StatusOK {
		return fmt.Errorf("redelivered %s: %d %s, want 200 duplicate", hook.id, status, answer)
	}
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM quickstart_payments WHERE event_id = $1`, hook.id).Scan(&payments); err != nil {
		return err
	}
	if payments != 1 {
		return fmt.Errorf("the redelivery of %s made %d payment rows", hook.id, payments)
	}
	fmt.Fprintf(out, "a redelivery of %s answered %d %s; still 1 payment row\n", hook.id, status, answer)
	return nil
}

// testWebhook is a signed Standard Webhooks request, as a provider sends it.
type testWebhook struct {
	id     string
	body   []byte
	header http.Header
}

func newTestWebhook(secret string) testWebhook {
	suffix := strings.ToLower(rand.Text()[:12])
	id := "msg_" + suffix
	body := fmt.Appendf(nil, `{"type":"invoice.paid","data":{"invoice":"in_%s","amount_cents":1250}}`, suffix)
	return testWebhook{id: id, body: body, header: wharf.SignStandardWebhooks(secret, id, time.Now(), body)}
}

// curl is a shell command that sends the webhook to url.
func (w testWebhook) curl(url string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "curl -i %s", url)
	for _, name := range []string{"webhook-id", "webhook-timestamp", "webhook-signature"} {
		fmt.Fprintf(&b, " -H '%s: %s'", name, w.header.Get(name))
	}
	fmt.Fprintf(&b, " -H 'content-type: application/json' --data-binary '%s'", w.body)
	return b.String()
}

func (w testWebhook) post(ctx context.Context, url string) (status int, answer string, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(w.body))
	if err != nil {
		return 0, "", err
	}
	req.Header = w.header.Clone()
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b)), err
}
