package browsertest

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/console"
	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/queue"
	"github.com/wharfhq/wharf/wharftest"
)

const stripeSecret = "whsec_browser_test"

// chromiumPath finds the browser: $WHARF_CHROMIUM, or chromium on PATH.
// Without one the test fails, saying how to install it.
func chromiumPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("WHARF_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("the browser test needs Chromium: apt-get install -y chromium (Debian), " +
		"or point WHARF_CHROMIUM at a Chrome or Chromium binary; .ci/browser installs it")
	return ""
}

// browser starts a headless Chromium with a fresh profile, stopped when the
// test ends, and returns the context to run actions in, which bounds them
// all to a minute.
func browser(t *testing.T) context.Context {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	// The first run starts the browser; it must not carry a timeout.
	require.NoError(t, chromedp.Do(ctx), "start Chromium")
	tctx, cancelT := context.WithTimeout(ctx, 60*time.Second)
	t.Cleanup(cancelT)
	return tctx
}

// screenshot saves the page as dir/console-<name>.png when
// $WHARF_SCREENSHOTS names a directory.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	dir := os.Getenv("WHARF_SCREENSHOTS")
	if dir == "" {
		return
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "console-"+name+".png"), png, 0o644))
}

// text returns the text of the element sel selects.
func text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel), chromedp.NodeVisible))
	require.NoError(t, err, sel)
	return s
}

// An operator's night: the overview shows dead letters and a handler is
// paused from it, the list is filtered down to one type, an entry is
// opened and replayed, after the fix the page shows it processed, and the
// handler is resumed.
func TestOperatorFiltersOpensAndReplaysADeadLetter(t *testing.T) {
	t.Parallel()
	pool := dbtest.Pool(t)
	p, err := wharf.New(pool, wharf.Config{
		MaxAttempts: 2, Audit: true, PollInterval: 20 * time.Millisecond,
		Backoff: queue.Backoff{Initial: 10 * time.Millisecond, Max: 20 * time.Millisecond},
	})
	require.NoError(t, err)
	t.Cleanup(p.Close)
	require.NoError(t, p.Source("stripe", wharf.Stripe(stripeSecret)))
	var fixed atomic.Bool
	failing := func(msg string) wharf.HandlerFunc {
		return func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
			if fixed.Load() {
				return nil
			}
			return fmt.Errorf("%s (event %s)", msg, ev.ID)
		}
	}
	require.NoError(t, p.Handle("stripe", "invoice.paid", failing("billing-api: 503 Service Unavailable"), wharf.Downstream("billing-api")))
	require.NoError(t, p.Handle("stripe", "customer.created", failing("crm: duplicate customer")))
	require.NoError(t, p.Handle("stripe", "charge.succeeded", func(context.Context, pgx.Tx, wharf.Event) error { return nil }))
	h := wharftest.New(t, pool, p)
	stripe := wharftest.Stripe(stripeSecret)
	send := func(id, typ string) {
		res := h.Send("stripe", stripe, wharftest.Webhook{ID: id, Type: typ, Header: http.Header{"X-Request-Id": {"req-" + id}}})
		require.Equal(t, http.StatusAccepted, res.StatusCode, res.Body)
	}
	for i := range 3 {
		send("evt_invoice_"+strconv.Itoa(i), "invoice.paid")
	}
	for i := range 2 {
		send("evt_customer_"+strconv.Itoa(i), "customer.created")
	}
	for i := range 12 {
		send("evt_charge_"+strconv.Itoa(i), "charge.succeeded")
	}
	h.Drain()
	send("evt_refund_0", "refund.created") // no handler: waits in the queue

	c, err := console.New(console.Config{Pipeline: p, AllowActions: true})
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.Handle("/wharf/", http.StripPrefix("/wharf", c))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)

	ctx := browser(t)

	// The overview.
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(srv.URL+"/wharf/"), chromedp.WaitVisible(chromedp.CSS("#dlq"))))
	require.Equal(t, "5", text(t, ctx, "#dlq-dead"))
	require.Equal(t, "1", text(t, ctx, "#queue-due"))
	require.Equal(t, "12", text(t, ctx, "#throughput-total"))
	require.Contains(t, text(t, ctx, "#breakers"), "billing-api")
	require.Contains(t, text(t, ctx, "#unhandled"), "refund.created")

	// The crm is being migrated: pause its handler from the overview.
	require.NoError(t, chromedp.Do(ctx,
		chromedp.SetValue(chromedp.CSS(`#pause-form select[name="kind"]`), "handler"),
		chromedp.SendKeys(chromedp.CSS(`#pause-form input[name="name"]`), "stripe/customer.created"),
		chromedp.SendKeys(chromedp.CSS(`#pause-form input[name="reason"]`), "crm migration, until 04:00 UTC"),
		chromedp.Click(chromedp.CSS(`#pause-form button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS("#notice")),
	))
	require.Contains(t, text(t, ctx, "#notice"), "Paused")
	pauses := text(t, ctx, "#pauses")
	require.Contains(t, pauses, "handler stripe/customer.created")
	require.Contains(t, pauses, "crm migration, until 04:00 UTC")
	paused, err := p.Queue().Pauses(context.Background())
	require.NoError(t, err)
	require.Len(t, paused, 1)
	require.Equal(t, queue.PauseTarget{Handler: "stripe/customer.created"}, paused[0].PauseTarget)
	screenshot(t, ctx, "overview")

	// The list, filtered by type through the form.
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`header a[href="/wharf/dlq"]`)),
		chromedp.WaitVisible(chromedp.CSS("#filters")),
	))
	require.Equal(t, "5", text(t, ctx, "#total"))
	require.NoError(t, chromedp.Do(ctx,
		chromedp.SendKeys(chromedp.CSS(`#filters input[name="type"]`), "invoice.paid"),
		chromedp.Click(chromedp.CSS(`#filters button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#filters input[name="type"][value="invoice.paid"]`)),
	))
	require.Equal(t, "3", text(t, ctx, "#total"))
	loc, err := chromedp.Run(ctx, chromedp.Location())
	require.NoError(t, err)
	require.Contains(t, loc, "type=invoice.paid")
	screenshot(t, ctx, "dlq")

	// One entry: its errors, masked signature, body.
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS("a.entry-link")),
		chromedp.WaitVisible(chromedp.CSS("#body")),
	))
	require.Equal(t, "dead", text(t, ctx, "#status"))
	require.Contains(t, text(t, ctx, "#errors"), "billing-api: 503 Service Unavailable")
	headers := text(t, ctx, "#headers")
	require.Contains(t, headers, "Stripe-Signature")
	require.Contains(t, headers, "•••• masked")
	require.NotContains(t, headers, "v1=")
	require.Contains(t, text(t, ctx, "#body"), `"type": "invoice.paid"`)
	screenshot(t, ctx, "entry")

	// The fix is deployed; replay it.
	fixed.Store(true)
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS("#replay")),
		chromedp.WaitVisible(chromedp.CSS("#notice")),
	))
	require.Contains(t, text(t, ctx, "#notice"), "Replayed")
	require.Equal(t, "replayed", text(t, ctx, "#status"))
	gone, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.getElementById("replay") === null`))
	require.NoError(t, err)
	require.True(t, gone, "a replayed entry has no replay button")
	h.Drain() // the workers process the replayed event
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Reload(),
		chromedp.WaitVisible(chromedp.CSS("tr.trail-processed")),
	))
	require.Contains(t, text(t, ctx, "#trail"), "replayed")

	// Back on the overview: one dead letter fewer, one replayed.
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(srv.URL+"/wharf/"), chromedp.WaitVisible(chromedp.CSS("#dlq"))))
	require.Equal(t, "4", text(t, ctx, "#dlq-dead"))
	require.Equal(t, "1", text(t, ctx, "#dlq-replayed"))

	// The migration is over: resume the crm's handler.
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS("#pauses button.resume")),
		chromedp.WaitVisible(chromedp.CSS("#notice")),
	))
	require.Contains(t, text(t, ctx, "#notice"), "Resumed")
	require.Equal(t, "Nothing is paused.", text(t, ctx, "#no-pauses"))
	paused, err = p.Queue().Pauses(context.Background())
	require.NoError(t, err)
	require.Empty(t, paused)
}
