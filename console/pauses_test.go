package console_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/queue"
)

// pauses lists what the queue has paused, as targets and reasons.
func (e *env) pauses() map[queue.PauseTarget]string {
	e.t.Helper()
	ps, err := e.p.Queue().Pauses(context.Background())
	require.NoError(e.t, err)
	got := map[queue.PauseTarget]string{}
	for _, p := range ps {
		got[p.PauseTarget] = p.Reason
	}
	return got
}

// The overview lists what is paused (reasons escaped like any text) and
// the types waiting without a handler, read-only: no form, no button.
func TestOverviewShowsPausesAndUnhandledTypes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.send("evt_refund_1", "refund.created", nil)
	e.send("evt_refund_2", "refund.created", nil)
	e.send("evt_dispute_1", "dispute.opened", nil)
	ctx := context.Background()
	require.NoError(t, e.p.Queue().Pause(ctx, queue.PauseTarget{Source: "stripe"}, "incident <b>42</b>"))
	require.NoError(t, e.p.Queue().Pause(ctx, queue.PauseTarget{Handler: "stripe/invoice.paid"}, ""))

	pg := get(t, e.srv, "/")
	require.Equal(t, http.StatusOK, pg.Status)
	b := pg.Body
	require.Contains(t, b, `<td>stripe <span class="tag">paused</span></td><td class="num">3</td>`, "the paused source is marked")
	require.Regexp(t, `(?s)<tr class="pause">\s*<td>source <strong>stripe</strong></td>\s*<td class="text">incident &lt;b&gt;42&lt;/b&gt;</td>`, b)
	require.Regexp(t, `(?s)<tr class="pause">\s*<td>handler <strong>stripe/invoice.paid</strong></td>\s*<td class="text">—</td>`, b)
	require.NotContains(t, b, `id="no-pauses"`)
	require.Contains(t, b, `<tr><td>stripe</td><td>dispute.opened</td><td class="num">1</td></tr>`)
	require.Contains(t, b, `<tr><td>stripe</td><td>refund.created</td><td class="num">2</td></tr>`)
	require.Regexp(t, `(?s)<details id="by-kind">.*<td>stripe</td><td>refund.created</td><td class="num">2</td><td class="num">0</td>`, b)
	require.NotContains(t, b, `id="pause-form"`, "read-only: no pause form")
	require.NotContains(t, b, "Resume</button>", "read-only: no resume button")

	// Resumed and handled: the lists say nothing is waiting.
	_, err := e.p.Queue().Resume(ctx, queue.PauseTarget{Source: "stripe"})
	require.NoError(t, err)
	_, err = e.p.Queue().Resume(ctx, queue.PauseTarget{Handler: "stripe/invoice.paid"})
	require.NoError(t, err)
	_, err = e.pool.Exec(ctx, `DELETE FROM wharf.queue`)
	require.NoError(t, err)
	b = get(t, e.srv, "/").Body
	require.Contains(t, b, `id="no-pauses">Nothing is paused.<`)
	require.Contains(t, b, "None: every waiting event was stored with a handler.")
	require.NotContains(t, b, `class="tag"`)
}

// Pause and resume through the overview's forms: each answers 303 back
// to the list of pauses with a notice, and the queue holds what the form
// said.
func TestPauseAndResumeFromTheOverview(t *testing.T) {
	t.Parallel()
	e := newEnv(t, actions)
	e.send("evt_inv_1", "invoice.paid", nil) // the names paused below are in use: no warning
	ov := get(t, e.srv, "/")
	require.Contains(t, ov.Body, `action="/wharf/pauses" id="pause-form"`)
	require.Contains(t, ov.Body, `id="no-pauses"`)
	tok := token(t, ov)

	res := post(t, e.srv, "/pauses", form("csrf", tok, "kind", "source", "name", "stripe", "reason", "  billing API down  "))
	require.Equal(t, http.StatusSeeOther, res.Status, res.Body)
	require.Equal(t, "/wharf/?done=paused#pauses", res.Location)
	res = post(t, e.srv, "/pauses", form("csrf", tok, "kind", "handler", "name", "stripe/invoice.paid", "reason", "crm migration"))
	require.Equal(t, http.StatusSeeOther, res.Status, res.Body)
	require.Equal(t, map[queue.PauseTarget]string{
		{Source: "stripe"}:               "billing API down",
		{Handler: "stripe/invoice.paid"}: "crm migration",
	}, e.pauses())

	pg := get(t, e.srv, "/?done=paused")
	require.Contains(t, noticeRE.FindStringSubmatch(pg.Body)[1], "Paused (listed below): from their next fetch, workers on every replica leave its events in the queue")
	require.Regexp(t, `(?s)<td>source <strong>stripe</strong></td>\s*<td class="text">billing API down</td>`, pg.Body)
	require.Contains(t, pg.Body, `<input type="hidden" name="kind" value="source"><input type="hidden" name="name" value="stripe"><button type="submit" class="plain resume">Resume</button>`)
	require.Contains(t, pg.Body, `<input type="hidden" name="kind" value="handler"><input type="hidden" name="name" value="stripe/invoice.paid"><button`)

	res = post(t, e.srv, "/pauses/resume", form("csrf", tok, "kind", "source", "name", "stripe"))
	require.Equal(t, http.StatusSeeOther, res.Status, res.Body)
	require.Equal(t, "/wharf/?done=resumed#pauses", res.Location)
	require.Equal(t, map[queue.PauseTarget]string{{Handler: "stripe/invoice.paid"}: "crm migration"}, e.pauses())
	require.Equal(t, "Resumed: idle workers take the waiting events at their next poll.",
		noticeRE.FindStringSubmatch(get(t, e.srv, "/?done=resumed").Body)[1])

	// Resuming what is not paused changes nothing, and says so.
	res = post(t, e.srv, "/pauses/resume", form("csrf", tok, "kind", "source", "name", "stripe"))
	require.Equal(t, http.StatusSeeOther, res.Status, res.Body)
	require.Equal(t, "/wharf/?done=skipped#pauses", res.Location)
	require.Contains(t, get(t, e.srv, "/?done=skipped").Body, `<p class="notice warn" id="notice">Nothing done: it was not paused`)
	require.NotContains(t, get(t, e.srv, "/?done=whatever").Body, `id="notice"`, "an unknown notice is ignored")
	require.Len(t, e.pauses(), 1)
}

// The pause form's name is trimmed like its reason, and a name that no
// queued event, dead letter or processed event has is paused with the
// warning wharf pause gives: it is likely misspelled.
func TestPauseTrimsTheNameAndWarnsAboutAnUnusedOne(t *testing.T) {
	t.Parallel()
	e := newEnv(t, actions)
	e.send("evt_ok_1", "charge.ok", nil)
	e.h.Drain() // processed: stripe, stripe/charge.ok
	tok := token(t, get(t, e.srv, "/"))

	for _, tc := range []struct{ kind, name string }{{"source", " stripe "}, {"handler", "stripe/charge.ok\t"}} {
		res := post(t, e.srv, "/pauses", form("csrf", tok, "kind", tc.kind, "name", tc.name))
		require.Equal(t, http.StatusSeeOther, res.Status, res.Body)
		require.Equal(t, "/wharf/?done=paused#pauses", res.Location, "%q is in use once trimmed: no warning", tc.name)
	}
	require.Equal(t, map[queue.PauseTarget]string{{Source: "stripe"}: "", {Handler: "stripe/charge.ok"}: ""}, e.pauses(), "trimmed")

	for _, tc := range []struct{ kind, name, location, target string }{
		{"source", "Stripe ", "/wharf/?done=unused&kind=source&name=Stripe#pauses", `source &#34;Stripe&#34;`},
		{"handler", "charge.ok", "/wharf/?done=unused&kind=handler&name=charge.ok#pauses", `handler &#34;charge.ok&#34;`},
	} {
		res := post(t, e.srv, "/pauses", form("csrf", tok, "kind", tc.kind, "name", tc.name))
		require.Equal(t, http.StatusSeeOther, res.Status, res.Body)
		require.Equal(t, tc.location, res.Location)
		pg := get(t, e.srv, strings.TrimPrefix(res.Location, "/wharf"))
		require.Contains(t, pg.Body, `<p class="notice warn" id="notice">Paused (listed below), with a warning: no queued event, dead letter or processed event has `+tc.target+`: is it misspelled?`)
	}
	require.Len(t, e.pauses(), 4, "paused with a warning all the same")
}

// A target or reason the queue refuses is 400 with its message; nothing
// is paused or resumed.
func TestPauseRefusesInvalidTargets(t *testing.T) {
	t.Parallel()
	e := newEnv(t, actions)
	tok := token(t, get(t, e.srv, "/"))
	for _, tc := range []struct {
		path, kind, name, reason, msg string
	}{
		{"/pauses", "source", "", "", "queue: invalid pause target: set exactly one of Source and Handler"},
		{"/pauses", "source", strings.Repeat("s", queue.MaxSourceLen+1), "", "queue: invalid pause target: source is longer than 100 bytes"},
		{"/pauses", "handler", "h\x00", "", "queue: invalid pause target: handler contains a NUL byte"},
		{"/pauses", "source", "stripe", strings.Repeat("r", 1025), "queue: invalid pause target: reason is longer than 1024 bytes"},
		{"/pauses", "queue", "stripe", "", `kind &#34;queue&#34; is neither &#34;source&#34; nor &#34;handler&#34;`},
		{"/pauses/resume", "handler", "", "", "queue: invalid pause target: set exactly one of Source and Handler"},
		{"/pauses/resume", "", "stripe", "", `kind &#34;&#34; is neither`},
	} {
		res := post(t, e.srv, tc.path, form("csrf", tok, "kind", tc.kind, "name", tc.name, "reason", tc.reason))
		require.Equal(t, http.StatusBadRequest, res.Status, "%s %q %q", tc.path, tc.kind, tc.name)
		require.Contains(t, res.Body, tc.msg, "%s %q %q", tc.path, tc.kind, tc.name)
	}
	require.Empty(t, e.pauses())
}

// The pause forms are guarded like replay and discard: a POST without the
// form's token, or from another site, is refused and pauses nothing.
func TestCSRFRefusesForgedPauses(t *testing.T) {
	t.Parallel()
	e := newEnv(t, actions)
	tok := token(t, get(t, e.srv, "/"))
	require.NoError(t, e.p.Queue().Pause(context.Background(), queue.PauseTarget{Source: "github"}, "kept"))
	for _, path := range []string{"/pauses", "/pauses/resume"} {
		for name, res := range map[string]page{
			"no token": post(t, e.srv, path, form("kind", "source", "name", "github")),
			"cross-site browser": do(t, e.srv, http.MethodPost, path, form("csrf", tok, "kind", "source", "name", "github"),
				http.Header{"Sec-Fetch-Site": {"cross-site"}}),
			"foreign Origin": do(t, e.srv, http.MethodPost, path, form("csrf", tok, "kind", "source", "name", "github"),
				http.Header{"Origin": {"https://evil.example"}}),
		} {
			require.Equal(t, http.StatusForbidden, res.Status, "%s: %s", path, name)
			require.Contains(t, res.Body, "cross-site request refused", "%s: %s", path, name)
		}
	}
	require.Equal(t, map[queue.PauseTarget]string{{Source: "github"}: "kept"}, e.pauses(), "nothing paused or resumed")
}
