package console_test

import (
	"context"
	"html"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/console"
	"github.com/wharfhq/wharf/dlq"
)

// actions enables replay, discard, pause and resume.
func actions(c *console.Config) { c.AllowActions = true }

// Read-only (the default): no button or form, no token, and every POST is
// refused with 403 before it is read, even one with a token from a console
// that allows actions.
func TestReadOnlyRefusesEveryAction(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	invoices, _ := seedDead(e)
	id := itoa(invoices[0])

	pg := get(t, e.srv, "/dlq/"+id)
	require.Equal(t, http.StatusOK, pg.Status)
	require.NotContains(t, pg.Body, "<form method=\"post\"")
	require.NotContains(t, pg.Body, `name="csrf"`)
	require.NotContains(t, get(t, e.srv, "/dlq").Body, `id="bulk-replay"`)

	key := make([]byte, console.MinCSRFKeyBytes)
	other, err := console.New(console.Config{Pipeline: e.p, AllowActions: true, CSRFKey: key})
	require.NoError(t, err)
	tok := token(t, get(t, serve(t, other), "/dlq/"+id))
	require.NotContains(t, get(t, e.srv, "/").Body, `id="pause-form"`)
	for _, path := range []string{"/dlq/" + id + "/replay", "/dlq/" + id + "/discard", "/dlq/replay", "/pauses", "/pauses/resume"} {
		res := post(t, e.srv, path, form("csrf", tok, "kind", "source", "name", "stripe"))
		require.Equal(t, http.StatusForbidden, res.Status, path)
		require.Contains(t, res.Body, "this console is read-only", path)
	}
	require.Equal(t, http.StatusForbidden, get(t, e.srv, "/dlq/replay").Status, "no confirmation page either")
	require.Equal(t, http.StatusMethodNotAllowed, get(t, e.srv, "/dlq/"+id+"/replay").Status, "a GET never acts")
	for _, inv := range invoices {
		require.Equal(t, "dead", e.status(inv))
	}
	require.Empty(t, e.pauses(), "nothing paused")
}

func TestCSRFRefusesForgedPosts(t *testing.T) {
	t.Parallel()
	e := newEnv(t, actions)
	invoices, _ := seedDead(e)
	id := itoa(invoices[0])
	tok := token(t, get(t, e.srv, "/dlq/"+id))

	other, err := console.New(console.Config{Pipeline: e.p, AllowActions: true})
	require.NoError(t, err)
	foreign := token(t, get(t, serve(t, other), "/dlq/"+id))

	path := "/dlq/" + id + "/replay"
	for name, res := range map[string]page{
		"no token":                 post(t, e.srv, path, url.Values{}),
		"empty token":              post(t, e.srv, path, form("csrf", "")),
		"garbage token":            post(t, e.srv, path, form("csrf", "1700000000.AAAA")),
		"token of another console": post(t, e.srv, path, form("csrf", foreign)),
		"tampered timestamp":       post(t, e.srv, path, form("csrf", "9"+tok)),
		"token in the query, not the form": do(t, e.srv, http.MethodPost, path+"?csrf="+url.QueryEscape(tok), nil,
			http.Header{"Sec-Fetch-Site": {"same-origin"}}),
		"cross-site browser": do(t, e.srv, http.MethodPost, path, form("csrf", tok),
			http.Header{"Sec-Fetch-Site": {"cross-site"}}),
		"same-site, other origin": do(t, e.srv, http.MethodPost, path, form("csrf", tok),
			http.Header{"Sec-Fetch-Site": {"same-site"}}),
		"foreign Origin": do(t, e.srv, http.MethodPost, path, form("csrf", tok),
			http.Header{"Origin": {"https://evil.example"}}),
	} {
		require.Equal(t, http.StatusForbidden, res.Status, name)
		require.Contains(t, res.Body, "cross-site request refused", name)
	}
	require.Equal(t, "dead", e.status(invoices[0]), "nothing was replayed")
	require.Zero(t, e.queued("evt_inv_0"))

	// The real form, from the console's own origin, goes through.
	res := post(t, e.srv, path, form("csrf", tok))
	require.Equal(t, http.StatusSeeOther, res.Status, res.Body)
	require.Equal(t, "replayed", e.status(invoices[0]))
}

var noticeRE = regexp.MustCompile(`id="notice">([^<]+)<`)

func TestReplayAndDiscardOneEntry(t *testing.T) {
	t.Parallel()
	e := newEnv(t, actions)
	invoices, customers := seedDead(e)
	replayed, discarded := invoices[0], customers[0]

	pg := get(t, e.srv, "/dlq/"+itoa(replayed))
	require.Contains(t, pg.Body, `id="replay"`)
	require.Contains(t, pg.Body, `id="discard"`)
	require.Contains(t, pg.Body, `action="/wharf/dlq/`+itoa(replayed)+`/replay"`)
	tok := token(t, pg)

	res := post(t, e.srv, "/dlq/"+itoa(replayed)+"/replay", form("csrf", tok))
	require.Equal(t, http.StatusSeeOther, res.Status, res.Body)
	require.Equal(t, "/wharf/dlq/"+itoa(replayed)+"?done=replayed", res.Location)
	require.Equal(t, "replayed", e.status(replayed))
	require.Equal(t, 1, e.queued("evt_inv_0"), "back in the queue")

	// Fixed downstream: the replayed event is processed; the page shows
	// the replay and the processing in its trail.
	e.fixed.Store(true)
	e.h.Drain()
	e.h.RequireProcessedOnce("stripe", "evt_inv_0")
	e.h.RequireTrail("stripe", "evt_inv_0", wharf.AuditReceived, wharf.AuditAttemptFailed, wharf.AuditAttemptFailed,
		wharf.AuditDeadLettered, wharf.AuditReplayed, wharf.AuditReceived, wharf.AuditProcessed)
	pg = get(t, e.srv, "/dlq/"+itoa(replayed)+"?done=replayed")
	require.Equal(t, "Replayed: the event is back in the queue, attempts reset.", noticeRE.FindStringSubmatch(pg.Body)[1])
	require.Contains(t, pg.Body, `id="status">replayed<`)
	require.Regexp(t, `(?s)<tr class="trail-replayed">.*<tr class="trail-processed">`, pg.Body)
	require.NotContains(t, pg.Body, `id="replay"`, "only a dead entry has buttons")

	// A second replay of the same entry does nothing, and says so.
	res = post(t, e.srv, "/dlq/"+itoa(replayed)+"/replay", form("csrf", tok))
	require.Equal(t, http.StatusSeeOther, res.Status)
	require.Equal(t, "/wharf/dlq/"+itoa(replayed)+"?done=skipped", res.Location)
	require.Contains(t, get(t, e.srv, "/dlq/"+itoa(replayed)+"?done=skipped").Body, "Nothing done: the entry was no longer dead")
	e.h.RequireProcessedOnce("stripe", "evt_inv_0")

	res = post(t, e.srv, "/dlq/"+itoa(discarded)+"/discard", form("csrf", tok))
	require.Equal(t, http.StatusSeeOther, res.Status, res.Body)
	require.Equal(t, "/wharf/dlq/"+itoa(discarded)+"?done=discarded", res.Location)
	require.Equal(t, "discarded", e.status(discarded))
	require.Zero(t, e.queued("evt_cus_0"), "a discarded entry is not queued")
	require.Contains(t, get(t, e.srv, "/dlq/"+itoa(discarded)).Body, `id="status">discarded<`)

	// The untouched entries are still dead; an unknown id is 404.
	require.Equal(t, "dead", e.status(invoices[1]))
	require.Equal(t, "dead", e.status(customers[1]))
	require.Equal(t, http.StatusNotFound, post(t, e.srv, "/dlq/424242/replay", form("csrf", tok)).Status)
	require.Equal(t, http.StatusNotFound, post(t, e.srv, "/dlq/x/discard", form("csrf", tok)).Status)
}

var countRE = regexp.MustCompile(`<strong id="count">(\d+)</strong>`)

var hiddenRE = regexp.MustCompile(`<input type="hidden" name="([^"]+)" value="([^"]*)">`)

// hiddenFields returns the hidden fields of the form in body, to submit it
// as it is.
func hiddenFields(body string) url.Values {
	fields := url.Values{}
	for _, f := range hiddenRE.FindAllStringSubmatch(body, -1) {
		fields.Set(f[1], f[2])
	}
	return fields
}

// Bulk replay: a confirmation page with the count (changing nothing),
// then the replay of exactly the filtered dead entries.
func TestBulkReplayOfAFilteredSet(t *testing.T) {
	t.Parallel()
	e := newEnv(t, actions)
	invoices, customers := seedDead(e)
	_, err := e.p.DLQ().Discard(context.Background(), invoices[2])
	require.NoError(t, err)

	list := get(t, e.srv, "/dlq?type=invoice.paid")
	m := regexp.MustCompile(`href="([^"]+)" id="bulk-replay"`).FindStringSubmatch(list.Body)
	require.NotNil(t, m, list.Body)
	require.Equal(t, "/wharf/dlq/replay?type=invoice.paid", m[1])

	confirm := get(t, e.srv, "/dlq/replay?type=invoice.paid")
	require.Equal(t, http.StatusOK, confirm.Status, confirm.Body)
	require.Equal(t, "2", countRE.FindStringSubmatch(confirm.Body)[1], "two dead invoices (the third is discarded)")
	require.Contains(t, confirm.Body, `<input type="hidden" name="type" value="invoice.paid">`)
	newest := e.newestDead("invoice.paid")
	require.Contains(t, confirm.Body, `<input type="hidden" name="upto" value="`+newest+`">`,
		"the set is pinned to the newest entry counted, by its time of death in the database")
	for _, id := range invoices[:2] {
		require.Equal(t, "dead", e.status(id), "the confirmation changes nothing")
	}

	// Submit the confirmation form as it is.
	res := post(t, e.srv, "/dlq/replay", hiddenFields(confirm.Body))
	require.Equal(t, http.StatusSeeOther, res.Status, res.Body)
	require.Equal(t, "/wharf/dlq?replayed=2&skipped=0&status=replayed&type=invoice.paid&upto="+newest, res.Location)
	done := get(t, e.srv, res.Location[len("/wharf"):])
	require.Equal(t, "Replayed 2 entries.", noticeRE.FindStringSubmatch(done.Body)[1])
	ids, _ := listed(t, done)
	require.ElementsMatch(t, invoices[:2], ids)

	for _, id := range invoices[:2] {
		require.Equal(t, "replayed", e.status(id))
	}
	require.Equal(t, "discarded", e.status(invoices[2]))
	for _, id := range customers {
		require.Equal(t, "dead", e.status(id), "outside the filter")
	}
	n, err := e.p.DLQ().Count(context.Background(), dlq.Filter{Type: "invoice.paid"})
	require.NoError(t, err)
	require.Zero(t, n)

	// Nothing left: the confirmation says so and offers no button.
	empty := get(t, e.srv, "/dlq/replay?type=invoice.paid")
	require.Contains(t, empty.Body, `id="count-zero"`)
	require.NotContains(t, empty.Body, `id="confirm"`)
	require.Equal(t, http.StatusBadRequest, get(t, e.srv, "/dlq/replay?since=soon").Status)
}

// newestDead returns the bound a bulk replay of the dead entries of type
// typ pins (dlq.Cursor's String of the newest), read from the table.
func (e *env) newestDead(typ string) string {
	e.t.Helper()
	var c dlq.Cursor
	require.NoError(e.t, e.pool.QueryRow(context.Background(), `SELECT dead_at, id FROM wharf.dead_letters
		WHERE status = 'dead' AND event_type = $1 ORDER BY dead_at DESC, id DESC LIMIT 1`, typ).Scan(&c.DeadAt, &c.ID))
	return c.String()
}

// confirmTwoOfThreeInvoices dead-letters the events of seedDead, discards
// the third invoice, and loads the bulk replay confirmation of the dead
// invoices, requiring it to count two; it returns the invoices' entry ids
// and the confirmation form's fields.
func confirmTwoOfThreeInvoices(e *env) (invoices []int64, fields url.Values) {
	e.t.Helper()
	invoices, _ = seedDead(e)
	_, err := e.p.DLQ().Discard(context.Background(), invoices[2])
	require.NoError(e.t, err)
	confirm := get(e.t, e.srv, "/dlq/replay?type=invoice.paid")
	require.Equal(e.t, "2", countRE.FindStringSubmatch(confirm.Body)[1])
	return invoices, hiddenFields(confirm.Body)
}

// A bulk replay replays nothing when the pinned set no longer holds the
// count its confirmation showed (here an entry back to dead; in life, a
// dead-lettering that began before the page was loaded and committed
// after): the confirmation comes back with the new count, and replaying
// from it replays them all.
func TestBulkReplayRefusesAChangedCount(t *testing.T) {
	t.Parallel()
	e := newEnv(t, actions)
	invoices, fields := confirmTwoOfThreeInvoices(e)
	ctx := context.Background()
	require.Equal(t, "2", fields.Get("count"), "the form carries the count shown")

	// Dead again, dated before the newest entry counted, as a
	// dead-lettering that began before the page was loaded is.
	_, err := e.pool.Exec(ctx, `UPDATE wharf.dead_letters SET status = 'dead', discarded_at = NULL, dead_at = dead_at - interval '1 hour'
		WHERE id = $1`, invoices[2])
	require.NoError(t, err)
	again := post(t, e.srv, "/dlq/replay", fields)
	require.Equal(t, http.StatusConflict, again.Status, again.Body)
	require.Contains(t, noticeRE.FindStringSubmatch(again.Body)[1], "Nothing replayed: 3 dead letters match now, not the 2 this page showed.")
	require.Equal(t, "3", countRE.FindStringSubmatch(again.Body)[1])
	for _, id := range invoices {
		require.Equal(t, "dead", e.status(id), "nothing replayed")
	}

	res := post(t, e.srv, "/dlq/replay", hiddenFields(again.Body))
	require.Equal(t, http.StatusSeeOther, res.Status, res.Body)
	require.Contains(t, res.Location, "replayed=3&skipped=0")

	delete(fields, "count")
	require.Equal(t, http.StatusBadRequest, post(t, e.srv, "/dlq/replay", fields).Status, "a form without the count")
}

// The set a bulk replay counts is pinned by the database's clock, not the
// web server's: an entry dated ahead of the web server (its clock behind)
// is counted and replayed like the list shows it, and the list the
// confirmation links to shows the pinned set.
func TestBulkReplayCountsWhatTheListShows(t *testing.T) {
	t.Parallel()
	e := newEnv(t, actions)
	invoices, _ := seedDead(e)
	_, err := e.pool.Exec(context.Background(), `UPDATE wharf.dead_letters SET dead_at = now() + interval '1 hour' WHERE id = $1`, invoices[0])
	require.NoError(t, err)

	_, total := listed(t, get(t, e.srv, "/dlq?type=invoice.paid"))
	require.Equal(t, 3, total)
	confirm := get(t, e.srv, "/dlq/replay?type=invoice.paid")
	require.Equal(t, http.StatusOK, confirm.Status, confirm.Body)
	require.Equal(t, "3", countRE.FindStringSubmatch(confirm.Body)[1], "the count is the list's")
	require.Contains(t, confirm.Body, `<dd id="newest">entry `+itoa(invoices[0])+`, died `)
	cancel := regexp.MustCompile(`<a href="([^"]+)">Cancel</a>`).FindStringSubmatch(confirm.Body)
	require.NotNil(t, cancel, confirm.Body)
	pinned := get(t, e.srv, strings.TrimPrefix(html.UnescapeString(cancel[1]), "/wharf"))
	ids, total := listed(t, pinned)
	require.Equal(t, 3, total)
	require.ElementsMatch(t, invoices, ids)
	require.Contains(t, pinned.Body, `<p id="upto">Up to entry `+itoa(invoices[0])+`, which died `)
	require.Contains(t, pinned.Body, `<a href="/wharf/dlq?type=invoice.paid">Without this bound</a>`)

	res := post(t, e.srv, "/dlq/replay", hiddenFields(confirm.Body))
	require.Equal(t, http.StatusSeeOther, res.Status, res.Body)
	require.Contains(t, res.Location, "replayed=3&skipped=0")
	for _, id := range invoices {
		require.Equal(t, "replayed", e.status(id))
	}
}

// An entry that dies after the newest one counted is not in the set,
// even when another entry of the set left it meanwhile (the count alone
// would not see the swap) and even when the web server's clock runs ahead
// of its time of death: the replay is refused with the new count, and
// replaying from there leaves the newcomer dead.
func TestBulkReplayLeavesOutEntriesThatDieAfterTheCount(t *testing.T) {
	t.Parallel()
	e := newEnv(t, actions)
	invoices, fields := confirmTwoOfThreeInvoices(e)
	ctx := context.Background()

	// invoices[2] dies again a microsecond after the newest entry counted,
	// before the web server's clock at the count; invoices[0] is
	// discarded: two dead invoices still, one of them not counted.
	_, err := e.pool.Exec(ctx, `UPDATE wharf.dead_letters SET status = 'dead', discarded_at = NULL,
		dead_at = (SELECT max(dead_at) FROM wharf.dead_letters WHERE id = ANY($2)) + interval '1 microsecond'
		WHERE id = $1`, invoices[2], invoices[:2])
	require.NoError(t, err)
	_, err = e.p.DLQ().Discard(ctx, invoices[0])
	require.NoError(t, err)

	again := post(t, e.srv, "/dlq/replay", fields)
	require.Equal(t, http.StatusConflict, again.Status, again.Body)
	require.Contains(t, noticeRE.FindStringSubmatch(again.Body)[1], "Nothing replayed: 1 dead letters match now, not the 2 this page showed.")
	require.Equal(t, "dead", e.status(invoices[2]), "nothing replayed")

	res := post(t, e.srv, "/dlq/replay", hiddenFields(again.Body))
	require.Equal(t, http.StatusSeeOther, res.Status, res.Body)
	require.Contains(t, res.Location, "replayed=1&skipped=0")
	require.Equal(t, "replayed", e.status(invoices[1]))
	require.Equal(t, "dead", e.status(invoices[2]), "died after the newest counted: not replayed")

	delete(fields, "upto")
	require.Equal(t, http.StatusBadRequest, post(t, e.srv, "/dlq/replay", fields).Status, "a form that pins nothing")
	require.Equal(t, http.StatusBadRequest, get(t, e.srv, "/dlq?upto=soon").Status, "an unreadable bound")
}

func TestAuditLookupByEventID(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.send("evt_ok_1", "charge.ok", nil)
	e.h.Drain()

	pg := get(t, e.srv, "/events?source=stripe&id=evt_ok_1")
	require.Equal(t, http.StatusOK, pg.Status)
	require.Contains(t, pg.Body, "delivery:stripe:evt_ok_1")
	require.Regexp(t, `(?s)<tr class="trail-received">.*<tr class="trail-processed">`, pg.Body)

	require.Equal(t, http.StatusOK, get(t, e.srv, "/events").Status, "the empty form")
	missing := get(t, e.srv, "/events?source=stripe&id=evt_never")
	require.Equal(t, http.StatusNotFound, missing.Status)
	require.Contains(t, missing.Body, "No audit record for this delivery")
	bad := get(t, e.srv, "/events?source=stripe")
	require.Equal(t, http.StatusBadRequest, bad.Status)
	require.Contains(t, bad.Body, "needs both a source and an event id")
}
