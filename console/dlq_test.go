package console_test

import (
	"context"
	"html"
	"net/http"
	"net/url"
	"regexp"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/console"
	"github.com/wharfhq/wharf/dlq"
	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/queue"
	"github.com/wharfhq/wharf/wharftest"
)

var (
	entryRE = regexp.MustCompile(`class="entry-link">(\d+)<`)
	nextRE  = regexp.MustCompile(`href="([^"]+)" id="next"`)
	totalRE = regexp.MustCompile(`<strong id="total">(\d+)</strong>`)
)

// listed returns the entry ids on a list page, and its total.
func listed(t *testing.T, pg page) (ids []int64, total int) {
	t.Helper()
	require.Equal(t, http.StatusOK, pg.Status, pg.Body)
	for _, m := range entryRE.FindAllStringSubmatch(pg.Body, -1) {
		id, err := strconv.ParseInt(m[1], 10, 64)
		require.NoError(t, err)
		ids = append(ids, id)
	}
	m := totalRE.FindStringSubmatch(pg.Body)
	require.NotNil(t, m, pg.Body)
	total, err := strconv.Atoi(m[1])
	require.NoError(t, err)
	return ids, total
}

// seedDead dead-letters three invoice.paid and two customer.created events,
// then stops the workers: an entry a test replays waits in the queue until
// the test drains it, instead of being fetched and failed again (the
// handlers still failing) before the test looks at it.
func seedDead(e *env) (invoices, customers []int64) {
	e.t.Helper()
	for i := range 3 {
		e.send("evt_inv_"+strconv.Itoa(i), "invoice.paid", nil)
	}
	for i := range 2 {
		e.send("evt_cus_"+strconv.Itoa(i), "customer.created", nil)
	}
	e.h.Drain()
	e.h.Stop()
	for i := range 3 {
		invoices = append(invoices, e.deadID("evt_inv_"+strconv.Itoa(i)))
	}
	for i := range 2 {
		customers = append(customers, e.deadID("evt_cus_"+strconv.Itoa(i)))
	}
	return invoices, customers
}

func TestDLQListFilters(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	invoices, customers := seedDead(e)
	cus, err := e.p.DLQ().Get(context.Background(), customers[0])
	require.NoError(t, err)
	_, err = e.p.DLQ().Discard(context.Background(), customers[1])
	require.NoError(t, err)
	past := time.Now().Add(-time.Hour).UTC()
	future := time.Now().Add(time.Hour).UTC()

	for _, tc := range []struct {
		query string
		want  []int64 // in any order
	}{
		{"", append([]int64{customers[0]}, invoices...)},
		{"type=invoice.paid", invoices},
		{"source=stripe&type=customer.created", customers[:1]},
		{"source=github", nil},
		{"handler=" + url.QueryEscape(cus.Handler), customers[:1]},
		{"error=DUPLICATE", customers[:1]}, // case-insensitive, any attempt
		{"error=account+locked&type=invoice.paid", invoices},
		{"status=discarded", customers[1:]},
		{"status=replayed", nil},
		{"since=" + past.Format("2006-01-02T15:04"), append([]int64{customers[0]}, invoices...)},
		{"since=" + future.Format(time.RFC3339), nil},
		{"until=" + past.Format("2006-01-02"), nil},
		{"until=" + future.Format("2006-01-02T15:04:05") + "&type=invoice.paid", invoices},
	} {
		ids, total := listed(t, get(t, e.srv, "/dlq?"+tc.query))
		require.ElementsMatch(t, tc.want, ids, tc.query)
		require.Equal(t, len(tc.want), total, tc.query)
	}

	// The form keeps what was typed; the error text is escaped.
	pg := get(t, e.srv, "/dlq?error=%3Cb%3Edup&status=discarded")
	require.Contains(t, pg.Body, `name="error" value="&lt;b&gt;dup"`)
	require.Contains(t, pg.Body, `<option value="discarded" selected>`)
	require.Contains(t, pg.Body, "crm said: &lt;b&gt;duplicate&lt;/b&gt; customer")
	require.NotContains(t, pg.Body, "<b>duplicate</b>")

	for query, msg := range map[string]string{
		"status=zombie":                     `status &#34;zombie&#34; is not one of dead, replayed, discarded`,
		"since=yesterday":                   `since &#34;yesterday&#34; is not a time`,
		"until=2024-13-01":                  `until &#34;2024-13-01&#34; is not a time`,
		"since=2024-02-01&until=2024-01-01": `since (2024-02-01) must be before until (2024-01-01)`,
		"limit=0":                           `limit &#34;0&#34; is not a number from 1 to 200`,
		"limit=201":                         `limit &#34;201&#34; is not a number from 1 to 200`,
		"after=garbage":                     `after &#34;garbage&#34; is not a page cursor`,
		"after=12-x":                        `after &#34;12-x&#34; is not a page cursor`,
	} {
		pg := get(t, e.srv, "/dlq?"+query)
		require.Equal(t, http.StatusBadRequest, pg.Status, query)
		require.Contains(t, pg.Body, msg, query)
	}
}

// Keyset pages: every entry once, newest first, whatever the page size.
func TestDLQListPagination(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	invoices, customers := seedDead(e)
	all, total := listed(t, get(t, e.srv, "/dlq"))
	require.Equal(t, 5, total)
	require.ElementsMatch(t, append(invoices, customers...), all)

	var seen []int64
	path := "/dlq?limit=2"
	for pages := 1; ; pages++ {
		pg := get(t, e.srv, path)
		ids, total := listed(t, pg)
		require.Equal(t, 5, total, "the total is of the whole filter, on every page")
		seen = append(seen, ids...)
		if pages > 1 {
			require.Contains(t, pg.Body, `id="first"`)
		} else {
			require.NotContains(t, pg.Body, `id="first"`)
		}
		m := nextRE.FindStringSubmatch(pg.Body)
		if m == nil {
			require.Equal(t, 3, pages)
			require.Len(t, ids, 1)
			break
		}
		require.Len(t, ids, 2)
		next := html.UnescapeString(m[1])
		require.Contains(t, next, "/wharf/dlq?")
		require.Contains(t, next, "limit=2")
		path = next[len("/wharf"):]
	}
	require.Equal(t, all, seen, "the pages, in order, are the whole list")

	// A filter is kept across pages.
	pg := get(t, e.srv, "/dlq?type=invoice.paid&limit=2")
	m := nextRE.FindStringSubmatch(pg.Body)
	require.NotNil(t, m)
	ids, total := listed(t, get(t, e.srv, html.UnescapeString(m[1])[len("/wharf"):]))
	require.Equal(t, 3, total)
	require.Len(t, ids, 1)
	require.Contains(t, invoices, ids[0])
}

func TestDLQEntryShowsHistoryMaskedHeadersBodyAndTrail(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *console.Config) { c.MaskHeaders = []string{"X-Tenant-Key"} })
	secret := "s3cr3t-value"
	header := map[string][]string{
		"X-Hub-Signature-256":   {"sha256=" + secret},
		"Webhook-Signature":     {"v1," + secret},
		"X-Slack-Signature":     {"v0=" + secret},
		"X-Shopify-Hmac-Sha256": {secret},
		"X-Vendor-Token":        {secret},
		"X-Tenant-Key":          {secret},
		"X-Request-Id":          {"req-visible-123"},
	}
	body := []byte(`{"id":"evt_body","type":"invoice.paid","data":{"note":"<script>alert(1)</script>","n":1}}`)
	res := e.h.Send("stripe", e.stripe, wharftest.Webhook{Body: body, Header: header})
	require.Equal(t, http.StatusAccepted, res.StatusCode, res.Body)
	// Authorization and Cookie never come through the endpoint (it drops
	// them); an event enqueued by other code may still hold them.
	_, err := e.p.Queue().Enqueue(context.Background(), queue.NewEvent{
		Source: "stripe", ID: "evt_direct", Type: "invoice.paid", Handler: "stripe/invoice.paid", Body: []byte("not json \x00\xff"),
		Headers: map[string][]string{"Authorization": {"Bearer " + secret}, "Cookie": {"session=" + secret}},
	})
	require.NoError(t, err)
	e.h.Drain()

	pg := get(t, e.srv, "/dlq/"+itoa(e.deadID("evt_body")))
	require.Equal(t, http.StatusOK, pg.Status)
	b := pg.Body
	require.NotContains(t, b, secret, "no secret is rendered")
	for _, h := range []string{"Stripe-Signature", "X-Hub-Signature-256", "Webhook-Signature", "X-Slack-Signature", "X-Shopify-Hmac-Sha256", "X-Vendor-Token", "X-Tenant-Key"} {
		require.Regexp(t, `<th>`+h+`</th><td><span class="masked">•••• masked</span>`, b, h)
	}
	require.Contains(t, b, "req-visible-123", "other headers are shown")
	require.Contains(t, b, `id="status">dead<`)
	require.Contains(t, b, "(JSON, ")
	require.Contains(t, b, "\n  &#34;data&#34;: {\n    &#34;note&#34;: &#34;&lt;script&gt;alert(1)&lt;/script&gt;&#34;,\n    &#34;n&#34;: 1\n  }", "indented, in the body's own order, escaped")
	require.NotContains(t, b, "<script>")
	// Both attempts' errors, oldest first, then the trail.
	require.Regexp(t, `(?s)<td class="num">1</td>.*billing said: account locked.*<td class="num">2</td>.*billing said: account locked`, b)
	require.Regexp(t, `(?s)<tr class="trail-received">.*<tr class="trail-attempt_failed">.*<tr class="trail-attempt_failed">.*<tr class="trail-dead_lettered">`, b)
	require.Contains(t, b, "delivery:stripe:evt_body")
	require.NotContains(t, b, `name="csrf"`, "read-only: no forms")
	require.NotContains(t, b, `id="replay"`)

	direct := get(t, e.srv, "/dlq/"+itoa(e.deadID("evt_direct")))
	require.NotContains(t, direct.Body, secret)
	require.Regexp(t, `<th>Authorization</th><td><span class="masked">`, direct.Body)
	require.Regexp(t, `<th>Cookie</th><td><span class="masked">`, direct.Body)
	require.Contains(t, direct.Body, "(binary, 11 bytes)")
	require.Contains(t, direct.Body, "6e 6f 74 20 6a 73 6f 6e  20 00 ff", "a hex dump")

	for _, bad := range []string{"abc", "0", "-3", "99999999", "1.5", "99999999999999999999"} {
		pg := get(t, e.srv, "/dlq/"+bad)
		require.Equal(t, http.StatusNotFound, pg.Status, bad)
		require.Contains(t, pg.Body, "no dead letter has the id", bad)
	}
}

// The list shows no bodies, so it reads none: a page of 20 entries of
// 1 MiB each must not load 20 MiB (nor 200 pages' worth at the largest
// page). Not parallel: it measures the process's allocations, the
// console's server included, while no other test runs.
func TestDLQListReadsNoBodies(t *testing.T) {
	ctx := context.Background()
	pool := dbtest.Pool(t)
	const entries, bodyBytes = 20, 1 << 20
	_, err := pool.Exec(ctx, `INSERT INTO wharf.dead_letters (source, event_id, event_type, body, received_at,
		attempts, max_attempts, errors, last_error, handler)
		SELECT 'stripe', 'evt_' || g, 'invoice.paid', convert_to(repeat('x', $2), 'UTF8'), now(), 1, 1,
			'[{"attempt": 1, "error": "boom"}]', 'boom', 'stripe/invoice.paid'
		FROM generate_series(1, $1) g`, entries, bodyBytes)
	require.NoError(t, err)
	d, err := dlq.New(pool, dlq.Config{})
	require.NoError(t, err)
	c, err := console.New(console.Config{DLQ: d})
	require.NoError(t, err)
	srv := serve(t, c)

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	pg := get(t, srv, "/dlq?limit="+strconv.Itoa(entries))
	runtime.ReadMemStats(&after)
	ids, total := listed(t, pg)
	require.Len(t, ids, entries)
	require.Equal(t, entries, total)
	require.Contains(t, pg.Body, "boom", "the last error is shown")
	allocated := after.TotalAlloc - before.TotalAlloc
	require.Less(t, allocated, uint64(entries*bodyBytes/2), "the list allocated %d MiB for %d MiB of bodies it does not show", allocated>>20, entries*bodyBytes>>20)
}
