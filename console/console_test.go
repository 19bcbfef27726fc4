package console_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/breaker"
	"github.com/wharfhq/wharf/console"
	"github.com/wharfhq/wharf/dlq"
	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/queue"
)

func TestNewRejectsConfigsThatCannotWork(t *testing.T) {
	t.Parallel()
	pool := dbtest.Pool(t)
	p, err := wharf.New(pool, wharf.Config{})
	require.NoError(t, err)
	t.Cleanup(p.Close)
	d, err := dlq.New(pool, dlq.Config{})
	require.NoError(t, err)
	reg, err := breaker.New(breaker.Config{})
	require.NoError(t, err)
	elsewhere, err := queue.New(pool, queue.Config{Schema: "elsewhere"})
	require.NoError(t, err)
	t.Cleanup(elsewhere.Close)

	for _, tc := range []struct {
		name  string
		cfg   console.Config
		field string
	}{
		{"nothing to show", console.Config{}, "Pipeline"},
		{"pipeline and pieces", console.Config{Pipeline: p, DLQ: d}, "Pipeline"},
		{"actions without a queue to replay into", console.Config{DLQ: d, AllowActions: true}, "Queue"},
		{"actions with a queue in another schema than the DLQ's", console.Config{DLQ: d, Queue: elsewhere, AllowActions: true}, "Queue"},
		{"short key", console.Config{Pipeline: p, CSRFKey: []byte("short")}, "CSRFKey"},
		{"short token ttl", console.Config{Pipeline: p, TokenTTL: 1}, "TokenTTL"},
		{"too many minutes", console.Config{Pipeline: p, ThroughputMinutes: 100000}, "ThroughputMinutes"},
		{"negative minutes", console.Config{Pipeline: p, ThroughputMinutes: -1}, "ThroughputMinutes"},
		{"bad trusted origin", console.Config{Pipeline: p, TrustedOrigins: []string{"not an origin"}}, "TrustedOrigins"},
		{"empty mask header", console.Config{Pipeline: p, MaskHeaders: []string{""}}, "MaskHeaders"},
	} {
		c, err := console.New(tc.cfg)
		require.ErrorIs(t, err, console.ErrInvalidConfig, tc.name)
		var ce *console.ConfigError
		require.ErrorAs(t, err, &ce, tc.name)
		require.Equal(t, tc.field, ce.Field, tc.name)
		require.Nil(t, c, tc.name)
	}

	_, err = console.New(console.Config{DLQ: d, Queue: elsewhere, AllowActions: true})
	require.ErrorContains(t, err, `the queue's schema "elsewhere" is not the DLQ's "wharf"`, "it names both schemas")

	// Pieces alone are enough, read-only or (with the queue) with actions.
	_, err = console.New(console.Config{Breakers: reg})
	require.NoError(t, err)
	_, err = console.New(console.Config{DLQ: d, Queue: p.Queue(), AllowActions: true, CSRFKey: make([]byte, console.MinCSRFKeyBytes)})
	require.NoError(t, err)
}

func TestOverviewShowsQueueDLQBreakersAndThroughput(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.send("evt_inv_1", "invoice.paid", nil)
	e.send("evt_cus_1", "customer.created", nil)
	for _, id := range []string{"evt_ok_1", "evt_ok_2", "evt_ok_3"} {
		e.send(id, "charge.ok", nil)
	}
	e.h.Drain()
	e.send("evt_refund_1", "refund.created", nil) // no handler: stays due
	discarded := e.deadID("evt_cus_1")
	_, err := e.p.DLQ().Discard(context.Background(), discarded)
	require.NoError(t, err)

	pg := get(t, e.srv, "/")
	require.Equal(t, http.StatusOK, pg.Status)
	b := pg.Body
	require.Contains(t, b, `<td>stripe</td><td class="num">1</td>`, "one due event of stripe (the unhandled refund)")
	require.Contains(t, b, `id="queue-due">1<`)
	require.Contains(t, b, `id="dlq-dead">1<`)
	require.Contains(t, b, `id="dlq-discarded">1<`)
	require.Contains(t, b, `id="dlq-replayed">0<`)
	require.Contains(t, b, `<td>billing-api</td><td class="state-closed">closed</td>`)
	require.Contains(t, b, `id="throughput-total">3<`, "three charges processed")
	require.Contains(t, b, `href="/wharf/dlq?status=dead"`, "links keep the mount prefix")
	require.Contains(t, b, `href="/wharf/static/console.css"`)
	require.NotContains(t, b, "<form method=\"post\"", "read-only: no action form")
	require.Contains(t, b, "read-only")

	// The security headers are on every answer.
	require.Contains(t, pg.Header.Get("Content-Security-Policy"), "frame-ancestors 'none'")
	require.Equal(t, "no-store", pg.Header.Get("Cache-Control"))

	// Automatic reload: only the offered intervals.
	require.Contains(t, get(t, e.srv, "/?refresh=15").Body, `<meta http-equiv="refresh" content="15">`)
	bad := get(t, e.srv, "/?refresh=1")
	require.Equal(t, http.StatusBadRequest, bad.Status)
	require.Contains(t, bad.Body, `refresh &#34;1&#34; is not one of [5 15 60]`)

	css := get(t, e.srv, "/static/console.css")
	require.Equal(t, http.StatusOK, css.Status)
	require.Contains(t, css.Header.Get("Content-Type"), "text/css")
	require.Contains(t, css.Body, "{")
	for _, path := range []string{"/nowhere", "/static", "/static/", "/static/nope.css"} {
		pg := get(t, e.srv, path)
		require.Equal(t, http.StatusNotFound, pg.Status, path)
		require.Equal(t, "no-store", pg.Header.Get("Cache-Control"), path)
	}
}

// A service that uses only the dlq and queue packages gets their pages;
// the overview leaves the rest out, and the audit lookup is not there.
func TestPiecesWithoutAPipeline(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.send("evt_inv_1", "invoice.paid", nil)
	e.h.Drain()
	e.h.Stop() // the replayed entry must wait in the queue, not fail again
	entry := e.deadID("evt_inv_1")

	d, err := dlq.New(e.pool, dlq.Config{})
	require.NoError(t, err)
	q, err := queue.New(e.pool, queue.Config{})
	require.NoError(t, err)
	t.Cleanup(q.Close)
	c, err := console.New(console.Config{DLQ: d, Queue: q, AllowActions: true})
	require.NoError(t, err)
	srv := serve(t, c)

	ov := get(t, srv, "/")
	require.Equal(t, http.StatusOK, ov.Status)
	require.Contains(t, ov.Body, `id="dlq-dead">1<`)
	require.NotContains(t, ov.Body, `id="breakers"`)
	require.NotContains(t, ov.Body, `id="throughput"`)
	require.Equal(t, http.StatusNotFound, get(t, srv, "/events?source=stripe&id=evt_inv_1").Status)

	pg := get(t, srv, "/dlq/"+itoa(entry))
	require.Equal(t, http.StatusOK, pg.Status)
	require.NotContains(t, pg.Body, `id="trail"`, "no audit log, no trail")
	res := post(t, srv, "/dlq/"+itoa(entry)+"/replay", form("csrf", token(t, pg)))
	require.Equal(t, http.StatusSeeOther, res.Status, res.Body)
	require.Equal(t, "replayed", e.status(entry))
	require.Equal(t, 1, e.queued("evt_inv_1"), "replayed into the queue")

	// Only breakers: no dead-letter pages at all.
	reg, err := breaker.New(breaker.Config{})
	require.NoError(t, err)
	c, err = console.New(console.Config{Breakers: reg})
	require.NoError(t, err)
	only := serve(t, c)
	require.Equal(t, http.StatusNotFound, get(t, only, "/dlq").Status)
	require.Equal(t, http.StatusNotFound, post(t, only, "/pauses", form("kind", "source", "name", "stripe")).Status, "no queue to pause")
	require.False(t, strings.Contains(get(t, only, "/").Body, `href="/wharf/dlq"`), "no link to pages that are not there")
}
