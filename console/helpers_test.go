package console_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/console"
	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/queue"
	"github.com/wharfhq/wharf/wharftest"
)

const stripeSecret = "whsec_console_test"

// env is a Pipeline on a fresh database, its workers' harness, and a
// console mounted at /wharf/ on a real HTTP server.
type env struct {
	t       *testing.T
	pool    *pgxpool.Pool
	p       *wharf.Pipeline
	h       *wharftest.Harness
	stripe  wharftest.Signer
	fixed   *atomic.Bool // when true the failing handlers succeed
	srv     *httptest.Server
	console *console.Console
}

// newEnv builds the pipeline: "invoice.paid" (through the billing-api
// breaker) and "customer.created" fail until fixed is set, "charge.ok"
// always succeeds, and "refund.created" has no handler. cfg, if given,
// adjusts the console's Config (Pipeline is set).
func newEnv(t *testing.T, cfg func(*console.Config)) *env {
	t.Helper()
	pool := dbtest.Pool(t)
	p, err := wharf.New(pool, wharf.Config{
		MaxAttempts:  2,
		Audit:        true,
		PollInterval: 20 * time.Millisecond,
		Backoff:      queue.Backoff{Initial: 10 * time.Millisecond, Max: 20 * time.Millisecond},
	})
	require.NoError(t, err)
	t.Cleanup(p.Close)
	e := &env{t: t, pool: pool, p: p, stripe: wharftest.Stripe(stripeSecret), fixed: &atomic.Bool{}}
	require.NoError(t, p.Source("stripe", wharf.Stripe(stripeSecret)))
	failing := func(msg string) wharf.HandlerFunc {
		return func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
			if e.fixed.Load() {
				return nil
			}
			return fmt.Errorf("%s (event %s)", msg, ev.ID)
		}
	}
	require.NoError(t, p.Handle("stripe", "invoice.paid", failing("billing said: account locked"), wharf.Downstream("billing-api")))
	require.NoError(t, p.Handle("stripe", "customer.created", failing("crm said: <b>duplicate</b> customer")))
	require.NoError(t, p.Handle("stripe", "charge.ok", func(context.Context, pgx.Tx, wharf.Event) error { return nil }))
	e.h = wharftest.New(t, pool, p)

	c := console.Config{Pipeline: p}
	if cfg != nil {
		cfg(&c)
	}
	e.console, err = console.New(c)
	require.NoError(t, err)
	e.srv = serve(t, e.console)
	return e
}

// serve mounts the console at /wharf/ on a test server.
func serve(t *testing.T, c http.Handler) *httptest.Server {
	mux := http.NewServeMux()
	mux.Handle("/wharf/", http.StripPrefix("/wharf", c))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// send stores one webhook and requires it accepted; it returns its id.
func (e *env) send(id, typ string, header http.Header) string {
	e.t.Helper()
	res := e.h.Send("stripe", e.stripe, wharftest.Webhook{ID: id, Type: typ, Header: header})
	require.Equal(e.t, http.StatusAccepted, res.StatusCode, res.Body)
	return res.EventID
}

// deadID returns the dead letter id of an event, requiring it dead.
func (e *env) deadID(id string) int64 {
	e.t.Helper()
	st := e.h.Status("stripe", id)
	require.True(e.t, st.Dead, "%s", st)
	return st.DeadLetterID
}

// status reads a dead letter's status from its table.
func (e *env) status(id int64) string {
	e.t.Helper()
	var s string
	require.NoError(e.t, e.pool.QueryRow(context.Background(), `SELECT status FROM wharf.dead_letters WHERE id = $1`, id).Scan(&s))
	return s
}

// queued counts the queue rows of an event.
func (e *env) queued(id string) int {
	e.t.Helper()
	var n int
	require.NoError(e.t, e.pool.QueryRow(context.Background(), `SELECT count(*) FROM wharf.queue_payloads WHERE source = 'stripe' AND event_id = $1`, id).Scan(&n))
	return n
}

// page is one answer of the console.
type page struct {
	Status   int
	Body     string
	Location string
	Header   http.Header
}

// client never follows redirects, so tests see the 303s.
var client = &http.Client{
	Timeout:       30 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// get fetches path (under /wharf) from the console.
func get(t *testing.T, srv *httptest.Server, path string) page {
	t.Helper()
	return do(t, srv, http.MethodGet, path, nil, nil)
}

// post submits form to path the way a same-origin browser form does.
func post(t *testing.T, srv *httptest.Server, path string, form url.Values) page {
	t.Helper()
	return do(t, srv, http.MethodPost, path, form, http.Header{"Sec-Fetch-Site": {"same-origin"}, "Origin": {srv.URL}})
}

func do(t *testing.T, srv *httptest.Server, method, path string, form url.Values, header http.Header) page {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, srv.URL+"/wharf"+path, body)
	require.NoError(t, err)
	for k, v := range header {
		req.Header[k] = v
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	res, err := client.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	return page{Status: res.StatusCode, Body: string(b), Location: res.Header.Get("Location"), Header: res.Header}
}

var tokenRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// token returns the CSRF token of the forms on a page.
func token(t *testing.T, pg page) string {
	t.Helper()
	m := tokenRE.FindStringSubmatch(pg.Body)
	require.NotNil(t, m, "no form token on the page:\n%s", pg.Body)
	return m[1]
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// form builds url.Values from key, value pairs.
func form(kv ...string) url.Values {
	v := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		v.Add(kv[i], kv[i+1])
	}
	return v
}
