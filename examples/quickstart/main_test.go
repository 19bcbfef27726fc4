package main

import (
	"bytes"
	"context"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/examples/internal/exampletest"
	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/internal/testio"
)

var storedRE = regexp.MustCompile(`stored (msg_[a-z0-9]+) \(202 accepted\)`)

func TestQuickstartSend(t *testing.T) {
	t.Parallel()
	url := dbtest.Database(t, dbtest.Options{Empty: true})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var out testio.Buffer
	require.NoError(t, run(ctx, url, &out, options{addr: "127.0.0.1:0", secret: demoSecret, send: true}), out.String())
	got := out.String()
	m := storedRE.FindStringSubmatch(got)
	require.NotNil(t, m, got)
	id := m[1]
	require.Contains(t, got, "processed "+id+" once (1 payment row)")
	require.Contains(t, got, "a redelivery of "+id+" answered 200 duplicate; still 1 payment row")
	require.Contains(t, got, "curl -i http://127.0.0.1:", "the curl line is printed in -send mode too")

	pool := exampletest.Pool(t, url)
	require.Equal(t, 1, exampletest.Count(t, pool, `SELECT count(*) FROM quickstart_payments WHERE event_id = $1 AND amount_cents = 1250`, id))
	require.Zero(t, exampletest.Count(t, pool, `SELECT count(*) FROM wharf.queue`), "nothing left queued")
	require.Zero(t, exampletest.Count(t, pool, `SELECT count(*) FROM wharf.dead_letters`))
	require.Equal(t, 1, exampletest.Count(t, pool, `SELECT count(*) FROM wharf.processed_events WHERE consumer = 'billing/invoice.paid'`),
		"the handler's claim committed with its payment")

	// Running it again on the same database works: the migrations are a
	// no-op, and the new test webhook is a new event.
	var again testio.Buffer
	require.NoError(t, run(ctx, url, &again, options{addr: "127.0.0.1:0", secret: demoSecret, send: true}), again.String())
	m2 := storedRE.FindStringSubmatch(again.String())
	require.NotNil(t, m2, again.String())
	require.NotEqual(t, id, m2[1])
	require.Equal(t, 2, exampletest.Count(t, pool, `SELECT count(*) FROM quickstart_payments`))
}

// TestQuickstartCurlLineWorks sends exactly what the printed curl command
// would, to the server the quickstart runs.
func TestQuickstartCurlLineWorks(t *testing.T) {
	t.Parallel()
	url := dbtest.Database(t, dbtest.Options{Empty: true})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out testio.Buffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, url, &out, options{addr: "127.0.0.1:0", secret: demoSecret}) }()

	line := exampletest.Match(t, &out, regexp.MustCompile(`(?m)^  (curl .*)$`))[1]
	endpoint, header, body := parseCurl(t, line)
	require.Equal(t, exampletest.Match(t, &out, regexp.MustCompile(`listening on (\S+)`))[1], endpoint)
	require.NotContains(t, out.String(), "stored ", "without -send it sends nothing itself")

	post := func(body []byte) int {
		req, err := http.NewRequest(http.MethodPost, endpoint, bytes.NewReader(body))
		require.NoError(t, err)
		req.Header = header.Clone()
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	tampered := bytes.Replace(body, []byte("1250"), []byte("9999"), 1)
	require.Equal(t, http.StatusUnauthorized, post(tampered), "the signature covers the body")
	require.Equal(t, http.StatusAccepted, post(body), "the printed signature is valid")

	id := header.Get("webhook-id")
	pool := exampletest.Pool(t, url)
	exampletest.Eventually(t, "the payment row", func() bool {
		return exampletest.Count(t, pool, `SELECT count(*) FROM quickstart_payments WHERE event_id = $1`, id) == 1
	})
	exampletest.Match(t, &out, regexp.MustCompile(`msg="payment recorded" .*event=`+id))
	require.Equal(t, http.StatusOK, post(body), "running the curl line again is a duplicate")

	cancel()
	require.NoError(t, <-done, "Ctrl-C stops it cleanly")
	require.Equal(t, 1, exampletest.Count(t, pool, `SELECT count(*) FROM quickstart_payments WHERE event_id = $1`, id))
	require.Zero(t, exampletest.Count(t, pool, `SELECT count(*) FROM wharf.queue`))
}

// parseCurl reads the quickstart's curl command: curl -i URL, -H 'name:
// value' options, and --data-binary 'body'. Every argument but the URL is
// single-quoted, without quotes inside.
func parseCurl(t *testing.T, line string) (url string, header http.Header, body []byte) {
	t.Helper()
	var args []string
	for rest := line; rest != ""; {
		rest = strings.TrimLeft(rest, " ")
		if strings.HasPrefix(rest, "'") {
			end := strings.IndexByte(rest[1:], '\'')
			require.GreaterOrEqual(t, end, 0, "unterminated quote in %s", line)
			args = append(args, rest[1:1+end])
			rest = rest[2+end:]
			continue
		}
		word, after, _ := strings.Cut(rest, " ")
		args = append(args, word)
		rest = after
	}
	require.Equal(t, []string{"curl", "-i"}, args[:2], line)
	url, header = args[2], http.Header{}
	for i := 3; i < len(args); i += 2 {
		require.Less(t, i+1, len(args), line)
		switch args[i] {
		case "-H":
			name, value, ok := strings.Cut(args[i+1], ": ")
			require.True(t, ok, args[i+1])
			header.Add(name, value)
		case "--data-binary":
			body = []byte(args[i+1])
		default:
			t.Fatalf("unexpected curl option %q in %s", args[i], line)
		}
	}
	require.NotEmpty(t, body)
	return url, header, body
}

// Without WEBHOOK_SECRET the public demo secret serves only a loopback address.
func TestDemoSecretOnlyOnLoopback(t *testing.T) {
	exampletest.DemoSecretOnlyOnLoopback(t, "WEBHOOK_SECRET", demoSecret, signingSecret)
}
