package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/dlq"
	"github.com/wharfhq/wharf/eventlog"
	"github.com/wharfhq/wharf/idempotency"
	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/internal/testio"
	"github.com/wharfhq/wharf/queue"
)

// opsRun runs a command line in-process against the database at url
// (given as $DATABASE_URL), with stdin, and returns its exit code, stdout
// and stderr.
func opsRun(ctx context.Context, url, stdin string, args ...string) (int, string, string) {
	return opsRunWith(ctx, url, strings.NewReader(stdin), args...)
}

// opsRunWith is opsRun with any stdin.
func opsRunWith(ctx context.Context, url string, stdin io.Reader, args ...string) (int, string, string) {
	var stdout, stderr testio.Buffer
	getenv := func(k string) string {
		if k == "DATABASE_URL" {
			return url
		}
		return ""
	}
	code := run(ctx, args, &env{stdout: &stdout, stderr: &stderr, stdin: stdin, getenv: getenv})
	return code, stdout.String(), stderr.String()
}

// runInBackground starts a command line in-process, for a test to watch its
// output while it runs and to interrupt it by ending ctx. Its exit code
// comes on the channel.
func runInBackground(ctx context.Context, stdin io.Reader, args ...string) (<-chan int, *testio.Buffer, *testio.Buffer) {
	var stdout, stderr testio.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, args, &env{stdout: &stdout, stderr: &stderr, stdin: stdin, getenv: func(string) string { return "" }})
	}()
	return done, &stdout, &stderr
}

// answerAfter is a stdin that, when first read (a confirmation question
// waits for its answer), runs meanwhile, then answers answer.
type answerAfter struct {
	meanwhile func() error
	answer    string
	once      sync.Once
	err       error // meanwhile's
	rest      io.Reader
}

func (r *answerAfter) Read(p []byte) (int, error) {
	r.once.Do(func() {
		r.err = r.meanwhile()
		r.rest = strings.NewReader(r.answer)
	})
	return r.rest.Read(p)
}

// mustRun is opsRun that requires exit code 0 and returns stdout.
func mustRun(t *testing.T, url, stdin string, args ...string) string {
	t.Helper()
	code, stdout, stderr := opsRun(context.Background(), url, stdin, args...)
	require.Equal(t, exitOK, code, "%q: %s", args, stderr)
	return stdout
}

// fixture is a migrated database with a real Pipeline behind an HTTP
// server: stripe's invoice.paid always fails (one attempt, so it is
// dead-lettered at once), every other registered type succeeds, and
// stripe's customer.created has no handler.
type fixture struct {
	url  string
	pool *pgxpool.Pool
	p    *wharf.Pipeline
	srv  *httptest.Server
}

const (
	stripeSecret = "whsec_stripe_test"
	swSecret     = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
)

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{url: dbtest.Database(t, dbtest.Options{})}
	var err error
	f.pool, err = pgxpool.New(context.Background(), f.url)
	require.NoError(t, err)
	t.Cleanup(f.pool.Close)
	f.p, err = wharf.New(f.pool, wharf.Config{MaxAttempts: 1, Audit: true, PollInterval: 50 * time.Millisecond,
		AckDeadline: 30 * time.Second})
	require.NoError(t, err)
	t.Cleanup(f.p.Close)
	mux := http.NewServeMux()
	for name, v := range map[string]wharf.Verifier{
		"stripe": wharf.Stripe(stripeSecret), "standard-webhooks": wharf.StandardWebhooks(swSecret),
		"github": wharf.GitHub("gh"), "shopify": wharf.Shopify("shop"), "slack": wharf.Slack("sl"),
	} {
		require.NoError(t, f.p.Source(name, v))
		mux.Handle("POST /"+name, f.p.Handler(name))
	}
	ok := func(context.Context, pgx.Tx, wharf.Event) error { return nil }
	require.NoError(t, f.p.Handle("stripe", "invoice.paid", func(context.Context, pgx.Tx, wharf.Event) error {
		return errors.New("billing api: connection refused")
	}))
	require.NoError(t, f.p.Handle("github", "push", ok))
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

// send sends a stripe event with wharf send and requires a 202.
func (f *fixture) send(t *testing.T, eventType, id string) {
	t.Helper()
	out := mustRun(t, f.url, "", "send", "--provider", "stripe", "--secret", stripeSecret, "--type", eventType, "--id", id, f.srv.URL+"/stripe")
	require.Contains(t, out, "202 Accepted", id)
}

// moveToDLQ dead-letters evs directly, as the queue does with an event
// out of attempts. It returns its error rather than failing the test, for
// use where the test's goroutine is not at hand (a stdin's read).
func (f *fixture) moveToDLQ(ctx context.Context, evs ...*queue.Event) error {
	return pgx.BeginFunc(ctx, f.pool, func(tx pgx.Tx) error { return f.p.DLQ().Move(ctx, tx, evs) })
}

// deadEvent is an event that used its one attempt, for moveToDLQ.
func deadEvent(source, id, eventType string) *queue.Event {
	return &queue.Event{Source: source, ID: id, Type: eventType, Body: []byte(`{}`), ReceivedAt: time.Now(), Attempt: 1, MaxAttempts: 1}
}

// deadLetter runs the pipeline until n entries are dead, then stops it,
// so that replayed events stay in the queue for the test to see.
func (f *fixture) deadLetter(t *testing.T, n int64) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.p.Run(ctx) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		count, err := f.p.DLQ().Count(context.Background(), dlq.Filter{})
		require.NoError(t, err)
		if count >= n {
			break
		}
		require.True(t, time.Now().Before(deadline), "%d of %d entries dead after 20s", count, n)
		time.Sleep(20 * time.Millisecond) // polling the database with a deadline
	}
	cancel()
	require.NoError(t, <-done)
}

func TestMigrateStatusAndUp(t *testing.T) {
	t.Parallel()
	url := dbtest.Database(t, dbtest.Options{Empty: true})

	out := mustRun(t, url, "", "migrate", "status")
	require.Contains(t, out, `schema "wharf" is not migrated: run wharf migrate up`)
	require.Regexp(t, `1\s+queue\s+pending`, out)

	code, _, stderr := opsRun(context.Background(), url, "", "queue", "stats")
	require.Equal(t, exitFailure, code)
	require.Contains(t, stderr, `schema "wharf" is not migrated: run wharf migrate up`)

	require.Contains(t, mustRun(t, url, "", "migrate", "up"), `schema "wharf": applied migration(s) [1 2 3`)
	require.Contains(t, mustRun(t, url, "", "migrate", "up"), `schema "wharf" is up to date`)
	out = mustRun(t, url, "", "migrate", "status")
	require.Contains(t, out, `schema "wharf" is up to date (version `)
	require.NotContains(t, out, "pending")

	statusJSON := mustRun(t, url, "", "migrate", "status", "--json")
	var keys map[string]any
	require.NoError(t, json.Unmarshal([]byte(statusJSON), &keys))
	require.ElementsMatch(t, []string{"schema", "current", "latest", "applied", "pending"}, slices.Collect(maps.Keys(keys)),
		"the JSON names its fields like the CLI's other --json output")
	var st wharf.MigrationStatus
	require.NoError(t, json.Unmarshal([]byte(statusJSON), &st))
	require.Equal(t, st.Latest, st.Current)
	require.Len(t, st.Applied, st.Latest)
	require.Empty(t, st.Pending)

	// Another schema of the same database is still empty.
	require.Contains(t, mustRun(t, url, "", "migrate", "status", "--schema", "webhooks"), `schema "webhooks" is not migrated`)
}

func TestQueueStatsListAndPause(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.send(t, "invoice.paid", "evt_1")
	f.send(t, "invoice.paid", "evt_2")
	f.send(t, "customer.created", "evt_3") // no handler

	var st statsOutput
	require.NoError(t, json.Unmarshal([]byte(mustRun(t, f.url, "", "queue", "stats", "--json")), &st))
	require.Equal(t, int64(3), st.Due)
	require.Equal(t, counts{Due: 3}, st.BySource["stripe"])
	require.Equal(t, []kindCounts{
		{Source: "stripe", Type: "customer.created", counts: counts{Due: 1}},
		{Source: "stripe", Type: "invoice.paid", counts: counts{Due: 2}},
	}, st.ByKind)
	require.Equal(t, []unhandledKind{{Source: "stripe", Type: "customer.created", Waiting: 1}}, st.Unhandled)
	require.Empty(t, st.Paused)
	require.Positive(t, st.OldestDueAgeSeconds)

	out := mustRun(t, f.url, "", "queue", "stats")
	require.Contains(t, out, "due 3, scheduled 0, running 0, exhausted 0")
	require.Regexp(t, `stripe\s+invoice\.paid\s+2\s+0\s+0\s+0`, out)
	require.Contains(t, out, "UNHANDLED")

	var events []queuedEvent
	require.NoError(t, json.Unmarshal([]byte(mustRun(t, f.url, "", "queue", "ls", "--json", "--type", "invoice.paid")), &events))
	require.Len(t, events, 2)
	require.Equal(t, "evt_1", events[0].EventID)
	require.Equal(t, "stripe/invoice.paid", events[0].Handler)
	require.Equal(t, "due", events[0].State)
	require.Positive(t, events[0].BodyBytes)
	require.NoError(t, json.Unmarshal([]byte(mustRun(t, f.url, "", "queue", "ls", "--json", "--limit", "1", "--after", strconv.FormatInt(events[0].ID, 10))), &events))
	require.Len(t, events, 1)
	require.Equal(t, "evt_2", events[0].EventID)
	require.NoError(t, json.Unmarshal([]byte(mustRun(t, f.url, "", "queue", "ls", "--json", "--state", "scheduled")), &events))
	require.Empty(t, events)
	_, err := f.pool.Exec(context.Background(), `UPDATE wharf.queue SET deferrals = 7 WHERE event_id = 'evt_2'`)
	require.NoError(t, err)
	out = mustRun(t, f.url, "", "queue", "ls", "--handler", "stripe/invoice.paid")
	require.Contains(t, out, "DEFERRALS")
	require.Regexp(t, `evt_2\s+invoice\.paid\s+stripe/invoice\.paid\s+due\s+0/\d+\s+7\s`, out)
	require.NotContains(t, out, "evt_3")
	require.NoError(t, json.Unmarshal([]byte(mustRun(t, f.url, "", "queue", "ls", "--json", "--type", "invoice.paid")), &events))
	require.Len(t, events, 2)
	require.Equal(t, []int{0, 7}, []int{events[0].Deferrals, events[1].Deferrals})

	require.Contains(t, mustRun(t, f.url, "", "pause", "--handler", "stripe/invoice.paid", "--reason", "incident 42"), `paused handler "stripe/invoice.paid"`)
	require.Contains(t, mustRun(t, f.url, "", "pause", "--source", "github"), `paused source "github"`)
	pauses, err := f.p.Queue().Pauses(context.Background())
	require.NoError(t, err)
	require.Len(t, pauses, 2)
	require.Equal(t, queue.PauseTarget{Handler: "stripe/invoice.paid"}, pauses[0].PauseTarget)
	require.Equal(t, "incident 42", pauses[0].Reason)
	require.Regexp(t, `handler "stripe/invoice.paid"\s+\S+ \S+\s+incident 42`, mustRun(t, f.url, "", "queue", "stats"))

	require.Contains(t, mustRun(t, f.url, "", "resume", "--handler", "stripe/invoice.paid"), `resumed handler "stripe/invoice.paid"`)
	require.Contains(t, mustRun(t, f.url, "", "resume", "--handler", "stripe/invoice.paid"), "was not paused")
	require.NoError(t, json.Unmarshal([]byte(mustRun(t, f.url, "", "queue", "stats", "--json")), &st))
	require.Len(t, st.Paused, 1)
	require.Equal(t, "github", st.Paused[0].Source)
	require.True(t, pauses[1].PausedAt.Equal(st.Paused[0].PausedAt))
}

// TestPauseWarnsAboutAnUnknownName: a source or handler that no queued
// event, dead letter or processed event has is paused, with a warning.
func TestPauseWarnsAboutAnUnknownName(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	f.send(t, "invoice.paid", "evt_1") // queued: stripe, stripe/invoice.paid
	require.NoError(t, pgx.BeginFunc(ctx, f.pool, func(tx pgx.Tx) error {
		_, err := f.p.Idempotency().Claim(ctx, tx, "github/push", idempotency.Key("github", "evt_9")) // processed: github, github/push
		return err
	}))
	dead := deadEvent("slack", "evt_7", "message")
	dead.Handler = "slack/message"
	require.NoError(t, f.moveToDLQ(ctx, dead)) // dead: slack, slack/message

	for _, args := range [][]string{
		{"--source", "stripe"}, {"--source", "github"}, {"--source", "slack"},
		{"--handler", "stripe/invoice.paid"}, {"--handler", "github/push"}, {"--handler", "slack/message"},
	} {
		code, out, stderr := opsRun(ctx, f.url, "", append([]string{"pause"}, args...)...)
		require.Equal(t, exitOK, code, "%q: %s", args, stderr)
		require.Contains(t, out, "paused ", "%q", args)
		require.Empty(t, stderr, "%q", args)
	}
	for _, tc := range []struct{ args []string }{
		{[]string{"--source", "Stripe"}},
		{[]string{"--source", "githu"}}, // a prefix of a processed event's source
		{[]string{"--handler", "invoice.paid"}},
	} {
		code, out, stderr := opsRun(ctx, f.url, "", append([]string{"pause"}, tc.args...)...)
		require.Equal(t, exitOK, code, "%q: %s", tc.args, stderr)
		require.Contains(t, out, "paused ", "%q", tc.args)
		require.Contains(t, stderr, "wharf pause: warning: no queued event, dead letter or processed event has ", "%q", tc.args)
		require.Contains(t, stderr, "is it misspelled?", "%q", tc.args)
	}
	pauses, err := f.p.Queue().Pauses(ctx)
	require.NoError(t, err)
	require.Len(t, pauses, 9, "paused with a warning all the same")
}

// TestControlCharactersAreEscaped: ids, types, errors, headers and bodies
// come from outside; printed raw, a newline would split a table row and an
// escape sequence would reach the terminal. Tables and text escape them.
func TestControlCharactersAreEscaped(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	const (
		eventID   = "evt\n1\x1b[31m"
		eventType = "invoice\tpaid\u009b"
		lastError = "boom\x1b[2J\r\n\x07at line 2"
	)
	_, err := f.p.Queue().Enqueue(ctx, queue.NewEvent{Source: "stripe", ID: eventID, Type: eventType, Body: []byte(`{}`)})
	require.NoError(t, err)
	textBody := deadEvent("stripe", eventID, eventType)
	textBody.Body = []byte("hello\x1b]0;pwned\x07\n\tworld")
	textBody.Errors = []queue.AttemptError{{Attempt: 1, Error: lastError, At: time.Now(), Worker: "w\x1b"}}
	textBody.Headers = http.Header{"X-Note": {"a\x1bb"}}
	jsonBody := deadEvent("stripe", "evt_json", "invoice.paid")
	jsonBody.Body = []byte("{\"a\": \"\u009b31m\x7f\"}")
	require.NoError(t, f.moveToDLQ(ctx, textBody, jsonBody))
	log, err := eventlog.New(f.pool, eventlog.Config{})
	require.NoError(t, err)
	t.Cleanup(log.Close)
	_, err = log.Append(ctx, "order\x1b1", eventlog.NoStream, eventlog.NewEvent{Type: "placed\n", Data: []byte(`{"note": "\u001b[0m"}`)})
	require.NoError(t, err)

	// requireEscaped fails on any control character but the newlines that
	// end out's lines, of which it wants lines.
	requireEscaped := func(out string, lines int, args []string) {
		t.Helper()
		require.Equal(t, lines, strings.Count(out, "\n"), "%q: %s", args, out)
		require.False(t, strings.ContainsFunc(out, func(r rune) bool { return r != '\n' && r != '\t' && unicode.IsControl(r) }), "%q: %q", args, out)
	}
	for _, tc := range []struct {
		args  []string
		lines int
		want  []string
	}{
		{[]string{"queue", "ls"}, 2, []string{`evt\n1\x1b[31m`, `invoice\tpaid\u009b`}},
		{[]string{"queue", "stats"}, 9, []string{`invoice\tpaid\u009b`}},
		{[]string{"dlq", "ls"}, 3, []string{`evt\n1\x1b[31m`, `boom\x1b[2J \aat line 2`}},
		{[]string{"log", "stream", "order\x1b1"}, 1, []string{` order\x1b1 1 placed\n `, `\u001b[0m`}},
	} {
		out := mustRun(t, f.url, "", tc.args...)
		requireEscaped(out, tc.lines, tc.args)
		for _, w := range tc.want {
			require.Contains(t, out, w, "%q", tc.args)
		}
	}
	ids := map[string]string{}
	var page dlqPage
	require.NoError(t, json.Unmarshal([]byte(mustRun(t, f.url, "", "dlq", "ls", "--json")), &page))
	for _, en := range page.Entries {
		ids[en.EventID] = strconv.FormatInt(en.ID, 10)
	}
	require.Contains(t, ids, eventID, "JSON keeps the id as it is")

	out := mustRun(t, f.url, "", "dlq", "show", ids[eventID])
	require.False(t, strings.ContainsFunc(out, func(r rune) bool { return r != '\n' && r != '\t' && unicode.IsControl(r) }), "%q", out)
	for _, w := range []string{"event         evt\\n1\\x1b[31m\n", "type          invoice\\tpaid\\u009b\n",
		`w\x1b`, `boom\x1b[2J\r\n\aat line 2`, `X-Note: a\x1bb`, "hello\\x1b]0;pwned\\a\n\tworld\n"} {
		require.Contains(t, out, w)
	}
	out = mustRun(t, f.url, "", "dlq", "show", ids["evt_json"])
	require.False(t, strings.ContainsFunc(out, func(r rune) bool { return r != '\n' && unicode.IsControl(r) }), "%q", out)
	require.Contains(t, out, "{\n  \"a\": \"\\u009b31m\\x7f\"\n}\n", "the indentation kept, the controls escaped")
}
