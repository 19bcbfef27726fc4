package main

import (
	"context"
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/dlq"
	"github.com/wharfhq/wharf/idempotency"
	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/queue"
)

// dlqPage is the JSON of dlq ls.
type dlqPage struct {
	Entries []entryOutput `json:"entries"`
	Next    *string       `json:"next"`
}

func listDLQ(t *testing.T, url string, args ...string) dlqPage {
	t.Helper()
	var page dlqPage
	require.NoError(t, json.Unmarshal([]byte(mustRun(t, url, "", append([]string{"dlq", "ls", "--json"}, args...)...)), &page))
	return page
}

func TestDLQ(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	for _, id := range []string{"evt_1", "evt_2", "evt_3", "evt_4", "evt_5"} {
		f.send(t, "invoice.paid", id)
	}
	f.deadLetter(t, 5)

	// ls: filters and pages.
	require.Len(t, listDLQ(t, f.url).Entries, 5)
	require.Len(t, listDLQ(t, f.url, "--error", "CONNECTION refused", "--handler", "stripe/invoice.paid", "--since", "1h").Entries, 5)
	require.Empty(t, listDLQ(t, f.url, "--error", "timeout").Entries)
	require.Empty(t, listDLQ(t, f.url, "--source", "github").Entries)
	require.Empty(t, listDLQ(t, f.url, "--until", "1h").Entries)
	require.Empty(t, listDLQ(t, f.url, "--status", "replayed").Entries)
	first := listDLQ(t, f.url, "--limit", "3")
	require.Len(t, first.Entries, 3)
	require.NotNil(t, first.Next)
	rest := listDLQ(t, f.url, "--limit", "3", "--after", *first.Next)
	require.Len(t, rest.Entries, 2)
	require.Nil(t, rest.Next)
	require.Equal(t, "evt_1", rest.Entries[1].EventID, "newest first")
	require.Equal(t, []string{masked}, first.Entries[0].Headers["Stripe-Signature"])
	code, out, stderr := opsRun(ctx, f.url, "", "dlq", "ls", "--limit", "3")
	require.Equal(t, exitOK, code, stderr)
	require.Regexp(t, `stripe\s+invoice\.paid\s+evt_5\s+stripe/invoice\.paid\s+1\s+dead\s+billing api: connection refused`, out)
	require.Contains(t, stderr, "more entries: add --after "+*first.Next)

	ids := map[string]int64{}
	for _, en := range append(first.Entries, rest.Entries...) {
		ids[en.EventID] = en.ID
	}
	id := func(event string) string { return strconv.FormatInt(ids[event], 10) }

	// show: secrets masked, JSON indented.
	en, err := f.p.DLQ().Get(ctx, ids["evt_1"])
	require.NoError(t, err)
	signature := en.Headers.Get("Stripe-Signature")
	require.NotEmpty(t, signature)
	out = mustRun(t, f.url, "", "dlq", "show", id("evt_1"))
	require.Contains(t, out, "Stripe-Signature: [masked]")
	require.NotContains(t, out, signature)
	require.Contains(t, out, "Content-Type: application/json")
	require.Contains(t, out, "\n  \"id\": \"evt_1\",\n")
	require.Regexp(t, `1\s+\S+ \S+\s+\S+\s+billing api: connection refused`, out)
	var shown struct {
		entryOutput
		Body string `json:"body"`
	}
	require.NoError(t, json.Unmarshal([]byte(mustRun(t, f.url, "", "dlq", "show", "--json", id("evt_1"))), &shown))
	require.Equal(t, string(en.Body), shown.Body, "the body as stored")
	require.Equal(t, []string{masked}, shown.Headers["Stripe-Signature"])
	code, _, stderr = opsRun(ctx, f.url, "", "dlq", "show", "999999")
	require.Equal(t, exitFailure, code)
	require.Contains(t, stderr, "dead-letter entry 999999 not found")

	// replay by id: back in the queue, marked replayed, recorded in the
	// delivery's audit trail.
	require.Contains(t, mustRun(t, f.url, "", "dlq", "replay", id("evt_1")), "replayed 1\n")
	var queued int
	require.NoError(t, f.pool.QueryRow(ctx, `SELECT count(*) FROM wharf.queue WHERE source = 'stripe' AND event_id = 'evt_1' AND attempt = 0`).Scan(&queued))
	require.Equal(t, 1, queued)
	en, err = f.p.DLQ().Get(ctx, ids["evt_1"])
	require.NoError(t, err)
	require.Equal(t, dlq.StatusReplayed, en.Status)
	trail, err := f.p.AuditLog().ReadStream(ctx, wharf.DeliveryStream("stripe", "evt_1"), 0, 0)
	require.NoError(t, err)
	last := trail[len(trail)-1]
	require.Equal(t, wharf.AuditReplayed, last.Type)
	require.Equal(t, "wharf dlq replay", last.Metadata.Extra["via"])
	require.Contains(t, mustRun(t, f.url, "", "dlq", "replay", id("evt_1")), "replayed 0, skipped 1")
	code, _, stderr = opsRun(ctx, f.url, "", "dlq", "replay", "999999")
	require.Equal(t, exitFailure, code)
	require.Contains(t, stderr, "dead-letter entry 999999 not found")

	// discard.
	require.Contains(t, mustRun(t, f.url, "", "dlq", "discard", id("evt_2")), "discarded 1\n")
	en, err = f.p.DLQ().Get(ctx, ids["evt_2"])
	require.NoError(t, err)
	require.Equal(t, dlq.StatusDiscarded, en.Status)

	// bulk replay: above --confirm-above it needs a yes.
	code, out, stderr = opsRun(ctx, f.url, "", "dlq", "replay", "--confirm-above", "2", "--source", "stripe")
	require.Equal(t, exitFailure, code, out)
	require.Contains(t, stderr, "replay 3 dead-letter entries into the queue? [y/N]")
	require.Contains(t, stderr, "not confirmed; nothing replayed")
	code, _, stderr = opsRun(ctx, f.url, "n\n", "dlq", "replay", "--confirm-above", "2", "--source", "stripe")
	require.Equal(t, exitFailure, code)
	require.Len(t, listDLQ(t, f.url).Entries, 3, "nothing replayed: %s", stderr)
	code, out, stderr = opsRun(ctx, f.url, "y\n", "dlq", "replay", "--confirm-above", "2", "--source", "stripe", "--batch", "2", "--rate", "1000")
	require.Equal(t, exitOK, code, stderr)
	require.Contains(t, out, "replayed 3\n")
	require.Contains(t, stderr, "replayed 2 of 3\nreplayed 3 of 3\n")
	require.Empty(t, listDLQ(t, f.url).Entries)
	require.NoError(t, f.pool.QueryRow(ctx, `SELECT count(*) FROM wharf.queue WHERE event_id IN ('evt_3', 'evt_4', 'evt_5')`).Scan(&queued))
	require.Equal(t, 3, queued)
	require.Contains(t, mustRun(t, f.url, "", "dlq", "replay", "--all", "--yes"), "no dead entries match")

	// purge: replayed and discarded entries older than the duration.
	require.Contains(t, mustRun(t, f.url, "", "dlq", "purge", "--older-than", "720h"), "purged 0 ")
	require.Contains(t, mustRun(t, f.url, "", "dlq", "purge", "--older-than", "1ns"), "purged 5 ")
	require.Empty(t, listDLQ(t, f.url, "--status", "replayed").Entries)
	require.Empty(t, listDLQ(t, f.url, "--status", "discarded").Entries)
}

// TestOpsUsageErrors: bad command lines exit 2 and change nothing.
func TestOpsUsageErrors(t *testing.T) {
	t.Parallel()
	url := "postgres://postgres@127.0.0.1:1/none" // never reached
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"dlq", "replay"}, "wharf dlq replay: give entry ids, filter flags, or --all"},
		{[]string{"dlq", "replay", "--source", "stripe", "7"}, "wharf dlq replay: give entry ids or filter flags (or --all), not both"},
		{[]string{"dlq", "replay", "seven"}, `wharf dlq replay: "seven" is not an entry id`},
		{[]string{"dlq", "replay", "--all", "--rate", "-1"}, "wharf dlq replay: -rate -1: want 0 (no cap) or more"},
		{[]string{"dlq", "ls", "--status", "gone"}, `wharf dlq ls: invalid value "gone" for flag -status: want dead, replayed or discarded`},
		{[]string{"dlq", "ls", "--since", "yesterday"}, `wharf dlq ls: invalid value "yesterday" for flag -since`},
		{[]string{"dlq", "ls", "--after", "x"}, `wharf dlq ls: invalid value "x" for flag -after`},
		{[]string{"dlq", "ls", "--limit", "0"}, "wharf dlq ls: -limit 0: want 1 to 1000"},
		// An empty filter would match every entry: a replay of some must
		// not become a replay of all through an unset variable.
		{[]string{"dlq", "replay", "--handler", "", "--yes"}, `wharf dlq replay: invalid value "" for flag -handler: is empty`},
		{[]string{"dlq", "ls", "--source="}, `wharf dlq ls: invalid value "" for flag -source: is empty`},
		{[]string{"dlq", "show"}, "wharf dlq show: want one entry id"},
		{[]string{"dlq", "discard"}, "wharf dlq discard: want at least one entry id"},
		{[]string{"dlq", "purge"}, "wharf dlq purge: -older-than 0s: want a positive duration"},
		{[]string{"queue", "ls", "--state", "asleep"}, `wharf queue ls: invalid value "asleep" for flag -state`},
		{[]string{"queue", "stats", "--schema", "Wharf"}, `wharf queue stats: invalid value "Wharf" for flag -schema`},
		{[]string{"pause"}, "wharf pause: want exactly one of --source and --handler"},
		{[]string{"resume", "--source", "a", "--handler", "b"}, "wharf resume: want exactly one of --source and --handler"},
		{[]string{"log", "stream"}, "wharf log stream: want one stream name"},
		{[]string{"send", "--secret", "s", "--type", "t", "http://x"}, "wharf send: -provider is required"},
		{[]string{"send", "--provider", "paypal"}, `wharf send: invalid value "paypal" for flag -provider`},
		{[]string{"send", "--provider", "stripe", "--secret", "s", "http://x"}, "wharf send: -type is required without -body"},
		{[]string{"send", "--provider", "stripe", "--secret", "s", "--type", "t"}, "wharf send: want the endpoint's URL"},
		{[]string{"queue", "ls", "--limit", "0"}, "wharf queue ls: -limit 0: want at least 1"},
		{[]string{"dlq", "ls", "--since", "1h", "--until", "2h"}, "wharf dlq ls: -since "},
		{[]string{"dlq", "replay", "--since", "2024-05-02T00:00:00Z", "--until", "2024-05-01T00:00:00Z"},
			"wharf dlq replay: -since 2024-05-02T00:00:00Z is not before -until 2024-05-01T00:00:00Z (a duration means that long ago"},
		{[]string{"dlq", "show", "1", "--json"}, `wharf dlq show: flag "--json" after an argument (flags go before arguments)`},
		{[]string{"dlq", "replay", "1", "2", "-yes"}, `wharf dlq replay: flag "-yes" after an argument (flags go before arguments)`},
		{[]string{"send", "http://x", "--provider", "stripe"}, `wharf send: flag "--provider" after an argument (flags go before arguments)`},
		{[]string{"log", "stream", "x", "--from", "3"}, `wharf log stream: flag "--from" after an argument (flags go before arguments)`},
	} {
		code, stdout, stderr := opsRun(context.Background(), url, "", tc.args...)
		require.Equal(t, exitUsage, code, "%q: %s", tc.args, stderr)
		require.Contains(t, stderr, tc.want, "%q", tc.args)
		require.Empty(t, stdout, "%q", tc.args)
	}
	_, _, stderr := opsRun(context.Background(), url, "", "dlq", "ls", "--since", "1h", "--until", "2h")
	rfc3339 := `\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)`
	require.Regexp(t, "-since "+rfc3339+" is not before -until "+rfc3339+" ", stderr)
}

// TestOpsNoServer: an unreachable database is a failure (exit 1) with a
// hint, for every command that needs one.
func TestOpsNoServer(t *testing.T) {
	t.Parallel()
	url := "postgres://postgres@127.0.0.1:1/postgres?connect_timeout=5"
	for _, args := range [][]string{{"migrate", "status"}, {"queue", "stats"}, {"dlq", "ls"}, {"pause", "--source", "s"}, {"log", "stream", "s"},
		{"log", "stream", "--", "-s"}} { // after "--", an argument may start with '-'

		code, stdout, stderr := opsRun(context.Background(), url, "", args...)
		require.Equal(t, exitFailure, code, "%q: %s", args, stderr)
		require.Contains(t, stderr, "(is PostgreSQL running at 127.0.0.1:1? set --database-url or $DATABASE_URL)", "%q", args)
		require.Empty(t, stdout)
	}
	code, _, stderr := opsRun(context.Background(), "", "", "queue", "stats", "--database-url", url)
	require.Equal(t, exitFailure, code)
	require.Contains(t, stderr, "is PostgreSQL running at 127.0.0.1:1?")
}

// A CLI replay of an event that its handler processed since it died (a
// redelivery that raced the dead-lettering) queues nothing: the same
// duplicate check as the service's own enqueues.
func TestDLQReplayOfAProcessedEventQueuesNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	f.send(t, "invoice.paid", "evt_done")
	f.deadLetter(t, 1)
	entries, _, err := f.p.DLQ().List(ctx, dlq.Filter{}, dlq.Page{Limit: 10})
	require.NoError(t, err)
	require.Len(t, entries, 1)
	require.NoError(t, pgx.BeginFunc(ctx, f.pool, func(tx pgx.Tx) error {
		_, err := f.p.Idempotency().Claim(ctx, tx, "stripe/invoice.paid", idempotency.Key("stripe", "evt_done"))
		return err
	}))

	mustRun(t, f.url, "", "dlq", "replay", strconv.FormatInt(entries[0].ID, 10))
	var queued int
	require.NoError(t, f.pool.QueryRow(ctx, `SELECT count(*) FROM wharf.queue WHERE event_id = 'evt_done'`).Scan(&queued))
	require.Zero(t, queued, "a processed event is not queued again")
}

// TestDLQReadsNoBodiesItDoesNotShow: dlq ls shows no bodies, and discard
// only needs to know that its ids exist, so neither may load bodies (20
// entries of 5 MB once took ls 117 MB). Not parallel: it measures the
// process's allocations while no other test runs.
func TestDLQReadsNoBodiesItDoesNotShow(t *testing.T) {
	ctx := context.Background()
	url := dbtest.Database(t, dbtest.Options{})
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)
	const entries, bodyBytes = 20, 1 << 20
	_, err = conn.Exec(ctx, `INSERT INTO wharf.dead_letters (source, event_id, event_type, body, received_at,
		attempts, max_attempts, errors, last_error, handler)
		SELECT 'stripe', 'evt_' || g, 'invoice.paid', convert_to(repeat('x', $2), 'UTF8'), now(), 1, 1, '[]', 'boom', 'stripe/invoice.paid'
		FROM generate_series(1, $1) g`, entries, bodyBytes)
	require.NoError(t, err)

	requireFewAllocations := func(what string, run func()) {
		t.Helper()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		run()
		runtime.ReadMemStats(&after)
		allocated := after.TotalAlloc - before.TotalAlloc
		require.Less(t, allocated, uint64(entries*bodyBytes/2), "%s allocated %d MiB for %d MiB of bodies it does not show", what, allocated>>20, entries*bodyBytes>>20)
	}
	var page dlqPage
	requireFewAllocations("dlq ls", func() { page = listDLQ(t, url, "--limit", strconv.Itoa(entries)) })
	require.Len(t, page.Entries, entries)
	discard := []string{"dlq", "discard"}
	for _, en := range page.Entries {
		discard = append(discard, strconv.FormatInt(en.ID, 10))
	}
	requireFewAllocations("dlq discard", func() {
		require.Equal(t, "discarded 20\n", mustRun(t, url, "", discard...))
	})
}

// A replay by filter replays the entries it counted and asked about, not
// those that die while the question waits.
func TestDLQReplayByFilterReplaysWhatWasConfirmed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	for _, id := range []string{"evt_1", "evt_2", "evt_3"} {
		f.send(t, "invoice.paid", id)
	}
	f.deadLetter(t, 3)

	stdin := &answerAfter{answer: "y\n", meanwhile: func() error {
		return f.moveToDLQ(ctx, deadEvent("stripe", "evt_late1", "invoice.paid"), deadEvent("stripe", "evt_late2", "invoice.paid"))
	}}
	code, out, stderr := opsRunWith(ctx, f.url, stdin, "dlq", "replay", "--confirm-above", "1", "--source", "stripe")
	require.NoError(t, stdin.err)
	require.Equal(t, exitOK, code, stderr)
	require.Contains(t, stderr, "replay 3 dead-letter entries into the queue? [y/N]")
	require.Contains(t, out, "replayed 3\n")
	require.Contains(t, stderr, "replayed 3 of 3\n")
	left := listDLQ(t, f.url)
	require.Len(t, left.Entries, 2, "the entries that died while the question waited are still dead")
	for _, en := range left.Entries {
		require.Contains(t, []string{"evt_late1", "evt_late2"}, en.EventID)
	}
}

// Ctrl-C at the confirmation question ends the command (exit 130) without
// waiting for stdin, and replays nothing.
func TestDLQReplayInterruptedAtTheQuestion(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for _, id := range []string{"evt_1", "evt_2", "evt_3"} {
		f.send(t, "invoice.paid", id)
	}
	f.deadLetter(t, 3)

	stdin, neverAnswered := io.Pipe()
	t.Cleanup(func() { neverAnswered.Close() })
	ctx, interrupt := context.WithCancel(context.Background())
	defer interrupt()
	done, stdout, stderr := runInBackground(ctx, stdin, "dlq", "replay", "--confirm-above", "1", "--source", "stripe", "--database-url", f.url)
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(stderr.String(), "[y/N]") {
		require.True(t, time.Now().Before(deadline), "no question within 20s: %s", stderr.String())
		time.Sleep(10 * time.Millisecond) // polling the command's output with a deadline
	}
	interrupt()
	select {
	case code := <-done:
		require.Equal(t, exitInterrupted, code, stderr.String())
	case <-time.After(10 * time.Second):
		t.Fatal("the question still waits for stdin 10s after Ctrl-C")
	}
	require.Contains(t, stderr.String(), "wharf: interrupted: no answer: context canceled; nothing replayed")
	require.Empty(t, stdout.String())
	require.Len(t, listDLQ(t, f.url).Entries, 3, "nothing replayed")
}

// dlq show masks every credential-like header, in text and in JSON.
func TestDLQShowMasksSecrets(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	secrets := http.Header{
		"X-Api-Key": {"sk_live_apikey"}, "Authorization": {"Bearer sk_live_bearer"}, "X-Auth-User": {"sk_live_user"},
		"X-Db-Password": {"sk_live_password"}, "Stripe-Signature": {"t=1,v1=sk_live_sig"}, "X-Gitlab-Token": {"sk_live_token"},
		"Set-Cookie": {"session=sk_live_cookie"}, "X_Client_Secret": {"sk_live_secret"}, "Paypal-Transmission-Sig": {"sk_live_paypal"},
		"Verif-Hash": {"sk_live_flutterwave"}, "X-Trello-Webhook": {"sk_live_trello"}, "Cf-Access-Jwt-Assertion": {"sk_live_jwt"},
	}
	public := http.Header{
		"Content-Type": {"application/json"}, "X-Request-Id": {"req_1"}, "Webhook-Timestamp": {"1700000000"},
		"X-Github-Event": {"push"}, "Cf-Access-Client-Id": {"client_1"},
	}
	ev := deadEvent("stripe", "evt_1", "invoice.paid")
	ev.Headers = secrets.Clone()
	maps.Copy(ev.Headers, public)
	require.NoError(t, f.moveToDLQ(ctx, ev))
	id := strconv.FormatInt(listDLQ(t, f.url).Entries[0].ID, 10)

	out := mustRun(t, f.url, "", "dlq", "show", id)
	require.NotContains(t, out, "sk_live")
	for name := range secrets {
		require.Contains(t, out, name+": [masked]")
	}
	for name, values := range public {
		require.Contains(t, out, name+": "+values[0], "not a secret")
	}
	asJSON := mustRun(t, f.url, "", "dlq", "show", "--json", id)
	require.NotContains(t, asJSON, "sk_live")
	var shown struct{ Headers http.Header }
	require.NoError(t, json.Unmarshal([]byte(asJSON), &shown))
	for name := range secrets {
		require.Equal(t, []string{masked}, shown.Headers[name], name)
	}
	for name, values := range public {
		require.Equal(t, values, shown.Headers[name], name)
	}
}

// An id given twice is one entry: replayed or discarded once, not once and
// then skipped.
func TestDLQRepeatedIDsCountOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	require.NoError(t, f.moveToDLQ(ctx, deadEvent("stripe", "evt_1", "invoice.paid"), deadEvent("stripe", "evt_2", "invoice.paid")))
	ids := map[string]string{}
	for _, en := range listDLQ(t, f.url).Entries {
		ids[en.EventID] = strconv.FormatInt(en.ID, 10)
	}
	require.Equal(t, "replayed 1\n", mustRun(t, f.url, "", "dlq", "replay", ids["evt_1"], ids["evt_1"], ids["evt_1"]))
	require.Equal(t, "discarded 1\n", mustRun(t, f.url, "", "dlq", "discard", ids["evt_2"], ids["evt_2"]))
	require.Equal(t, "replayed 0, skipped 1 (no longer dead: already replayed or discarded)\n", mustRun(t, f.url, "", "dlq", "replay", ids["evt_1"], ids["evt_1"]))
}

// purge deletes for good: --dry-run only counts, above --confirm-above it
// asks first, and it deletes the entries it counted, not those discarded
// while the question waits.
func TestDLQPurgeAsksFirst(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	events := []*queue.Event{}
	for _, id := range []string{"evt_1", "evt_2", "evt_3", "evt_late"} {
		events = append(events, deadEvent("stripe", id, "invoice.paid"))
	}
	require.NoError(t, f.moveToDLQ(ctx, events...))
	ids := map[string]int64{}
	for _, en := range listDLQ(t, f.url).Entries {
		ids[en.EventID] = en.ID
	}
	_, err := f.p.DLQ().Discard(ctx, ids["evt_1"], ids["evt_2"], ids["evt_3"])
	require.NoError(t, err)
	time.Sleep(5 * time.Millisecond) // the discards older than --older-than 1ms
	discarded := func() int { return len(listDLQ(t, f.url, "--status", "discarded").Entries) }

	out := mustRun(t, f.url, "", "dlq", "purge", "--older-than", "1ms", "--dry-run", "--confirm-above", "0")
	require.Regexp(t, `^would purge 3 entries replayed or discarded more than 1ms ago \(before \S+\); nothing deleted\n$`, out)
	require.Equal(t, 3, discarded())

	code, out, stderr := opsRun(ctx, f.url, "n\n", "dlq", "purge", "--older-than", "1ms", "--confirm-above", "2")
	require.Equal(t, exitFailure, code, out)
	require.Contains(t, stderr, "delete 3 replayed or discarded entries for good (a discarded entry's row is its event's only copy)? [y/N]")
	require.Contains(t, stderr, "3 entries not confirmed; nothing purged (--yes skips the question)")
	require.Equal(t, 3, discarded())

	stdin := &answerAfter{answer: "y\n", meanwhile: func() error {
		_, err := f.p.DLQ().Discard(ctx, ids["evt_late"])
		time.Sleep(5 * time.Millisecond) // older than --older-than 1ms when the purge runs
		return err
	}}
	code, out, stderr = opsRunWith(ctx, f.url, stdin, "dlq", "purge", "--older-than", "1ms", "--confirm-above", "2")
	require.NoError(t, stdin.err)
	require.Equal(t, exitOK, code, stderr)
	require.Equal(t, "purged 3 entries replayed or discarded more than 1ms ago\n", out)
	left := listDLQ(t, f.url, "--status", "discarded").Entries
	require.Len(t, left, 1, "the entry discarded while the question waited is kept")
	require.Equal(t, "evt_late", left[0].EventID)

	require.Equal(t, "purged 1 entries replayed or discarded more than 1ms ago\n",
		mustRun(t, f.url, "", "dlq", "purge", "--older-than", "1ms", "--confirm-above", "0", "--yes"))
}

// --rate caps the entries replayed in any second, also when fewer entries
// match than --batch: they go back a second's worth at a time (a progress
// line each), not all at once.
func TestDLQReplayRateBoundsEachBatch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	var events []*queue.Event
	for i := range 5 {
		events = append(events, deadEvent("stripe", "evt_"+strconv.Itoa(i), "invoice.paid"))
	}
	require.NoError(t, f.moveToDLQ(ctx, events...))

	code, out, stderr := opsRun(ctx, f.url, "", "dlq", "replay", "--all", "--rate", "2", "--yes")
	require.Equal(t, exitOK, code, stderr)
	require.Equal(t, "replayed 5\n", out)
	require.Equal(t, "replayed 2 of 5\nreplayed 4 of 5\nreplayed 5 of 5\n", stderr, "batches of the rate, under the default --batch 100")
}
