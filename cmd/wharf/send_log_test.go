package main

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/eventlog"
)

// TestSend: each provider's signed test webhook is stored by a real
// Pipeline endpoint (202), and the same id again is a duplicate (200).
func TestSend(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for provider, secret := range map[string]string{
		"stripe": stripeSecret, "standard-webhooks": swSecret, "github": "gh", "shopify": "shop", "slack": "sl",
	} {
		args := []string{"send", "--provider", provider, "--secret", secret, "--type", "push", "--id", "evt_" + provider, f.srv.URL + "/" + provider}
		require.Contains(t, mustRun(t, f.url, "", args...), "202 Accepted", provider)
		require.Contains(t, mustRun(t, f.url, "", args...), "200 OK", provider)
	}
	st, err := f.p.Queue().Stats(context.Background())
	require.NoError(t, err)
	require.Equal(t, int64(5), st.Due+st.Running, "one event per provider")

	// A body from stdin, verbatim.
	out := mustRun(t, f.url, `{"id": "evt_stdin", "type": "invoice.paid"}`, "send", "--provider", "stripe", "--secret", stripeSecret, "--body", "-", f.srv.URL+"/stripe")
	require.Contains(t, out, "202 Accepted")
	// An answer other than 2xx (a wrong secret's 401, a wrong path's 404)
	// is printed and fails.
	code, out, stderr := opsRun(context.Background(), f.url, "", "send", "--provider", "stripe", "--secret", "wrong", "--type", "invoice.paid", "--id", "evt_bad", f.srv.URL+"/stripe")
	require.Equal(t, exitFailure, code, stderr)
	require.Contains(t, out, "401 Unauthorized\ninvalid signature")
	require.Contains(t, stderr, "wharf: event evt_bad: the endpoint answered 401 Unauthorized, not 2xx")
	code, out, stderr = opsRun(context.Background(), f.url, "", "send", "--provider", "stripe", "--secret", stripeSecret, "--type", "invoice.paid", f.srv.URL+"/nowhere")
	require.Equal(t, exitFailure, code, stderr)
	require.Contains(t, out, "404 Not Found")
	require.Contains(t, stderr, "the endpoint answered 404 Not Found")
	code, _, stderr = opsRun(context.Background(), f.url, "", "send", "--provider", "standard-webhooks", "--secret", "whsec_!!", "--type", "x", f.srv.URL)
	require.Equal(t, exitFailure, code)
	require.Contains(t, stderr, "wharf: sign: ")
}

func TestLogStreamAndTail(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.send(t, "invoice.paid", "evt_1")
	f.deadLetter(t, 1)

	out := mustRun(t, f.url, "", "log", "stream", wharf.DeliveryStream("stripe", "evt_1"))
	require.Regexp(t, `(?s)^\d+ delivery:stripe:evt_1 1 received \S+ \{.*\n\d+ delivery:stripe:evt_1 2 attempt_failed \S+ \{.*"error":\s*"billing api: connection refused".*\n\d+ delivery:stripe:evt_1 3 dead_lettered `, out)
	code, _, stderr := opsRun(context.Background(), f.url, "", "log", "stream", "nobody")
	require.Equal(t, exitFailure, code)
	require.Contains(t, stderr, `stream "nobody" has no events`)

	// tail from now: the events appended before it started are not
	// printed, those appended after are, in order; Ctrl-C ends it (exit 0).
	log, err := eventlog.New(f.pool, eventlog.Config{})
	require.NoError(t, err)
	t.Cleanup(log.Close)
	_, err = log.Append(context.Background(), "order-0", eventlog.NoStream, eventlog.NewEvent{Type: "placed", Data: []byte(`{}`)})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done, stdout, stderrBuf := runInBackground(ctx, strings.NewReader(""), "log", "tail", "--category", "order-", "--poll", "20ms", "--database-url", f.url)
	// The tail starts at the head of the log when it has connected, which
	// the test cannot see: append until one event shows, then two more.
	appended := 0
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(stdout.String(), " order-1 ") {
		require.True(t, time.Now().Before(deadline), "the tail printed nothing within 20s: %s", stderrBuf.String())
		appended++
		_, err := log.Append(context.Background(), "order-1", eventlog.AnyVersion, eventlog.NewEvent{Type: "placed", Data: []byte(`{"n": 1}`)})
		require.NoError(t, err)
		time.Sleep(20 * time.Millisecond) // polling the tail's output with a deadline
	}
	_, err = log.Append(context.Background(), "order-2", eventlog.NoStream, eventlog.NewEvent{Type: "paid", Data: []byte(`{"total": 1250}`)})
	require.NoError(t, err)
	_, err = log.Append(context.Background(), "invoice-9", eventlog.NoStream, eventlog.NewEvent{Type: "sent", Data: []byte(`{}`)})
	require.NoError(t, err)
	for !strings.Contains(stdout.String(), " order-2 ") {
		require.True(t, time.Now().Before(deadline), "order-2 not printed within 20s: %s", stdout.String())
		time.Sleep(20 * time.Millisecond) // polling the tail's output with a deadline
	}
	cancel()
	require.Equal(t, exitOK, <-done, stderrBuf.String())
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	require.Regexp(t, regexp.MustCompile(`^\d+ order-2 1 paid \S+ \{"total": ?1250\}$`), lines[len(lines)-1])
	versions := map[string]bool{}
	for _, l := range lines[:len(lines)-1] {
		fields := strings.Fields(l)
		require.Equal(t, "order-1", fields[1], l)
		versions[fields[2]] = true
	}
	require.NotEmpty(t, versions)
	require.LessOrEqual(t, len(versions), appended)
	require.NotContains(t, stdout.String(), "delivery:", "the category filters the audit trail out")
	require.NotContains(t, stdout.String(), "invoice-9")
	require.NotContains(t, stdout.String(), " order-0 ", "appended before the tail started")

	out = mustRun(t, f.url, "", "log", "stream", "order-2")
	require.Contains(t, out, " order-2 1 paid ")
}
