package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/examples/internal/exampletest"
	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/internal/testio"
	"github.com/wharfhq/wharf/wharftest"
)

const secret = "test-github-secret"

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

func TestExistingRouter(t *testing.T) {
	t.Parallel()
	url := dbtest.Database(t, dbtest.Options{Empty: true})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out testio.Buffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, url, &out, "127.0.0.1:0", secret) }()
	base := exampletest.Match(t, &out, regexp.MustCompile(`listening on (http://\S+)`))[1]

	// The service's own routes work beside the webhook endpoint.
	status, body := get(t, base+"/healthz")
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, "ok\n", body)
	status, body = get(t, base+"/readyz")
	require.Equal(t, http.StatusOK, status, "wharf's readiness: database up, schema migrated")
	require.Equal(t, "ok\n", body)
	status, body = get(t, base+"/api/pushes")
	require.Equal(t, http.StatusOK, status)
	require.JSONEq(t, `[]`, body)

	github := wharftest.GitHub(secret)
	hooks := base + "/webhooks/github"
	delivery := github.Sign(t, wharftest.Webhook{ID: "d-1", Type: "push", Body: []byte(
		`{"ref":"refs/heads/main","repository":{"full_name":"wharfhq/wharf"},"commits":[{"id":"a"},{"id":"b"}]}`)})
	require.Equal(t, http.StatusAccepted, delivery.Send(t, hooks).StatusCode)
	ping := github.Send(t, hooks, wharftest.Webhook{ID: "d-ping", Type: "ping", Body: []byte(`{"zen":"Keep it logically awesome."}`)})
	require.Equal(t, http.StatusAccepted, ping.StatusCode)

	var pushes []push
	exampletest.Eventually(t, "the push in the API", func() bool {
		status, body := get(t, base+"/api/pushes")
		require.Equal(t, http.StatusOK, status)
		require.NoError(t, json.Unmarshal([]byte(body), &pushes))
		return len(pushes) > 0
	})
	require.Len(t, pushes, 1)
	require.Equal(t, "d-1", pushes[0].Delivery)
	require.Equal(t, "wharfhq/wharf", pushes[0].Repo)
	require.Equal(t, "refs/heads/main", pushes[0].Ref)
	require.Equal(t, 2, pushes[0].Commits)

	pool := exampletest.Pool(t, url)
	exampletest.Eventually(t, "the ping completed as unhandled", func() bool {
		return exampletest.Count(t, pool, `SELECT count(*) FROM wharf.queue`) == 0
	})
	require.Zero(t, exampletest.Count(t, pool, `SELECT count(*) FROM router_pushes WHERE delivery = 'd-ping'`))

	// GitHub's redelivery (the same delivery id and body) of the processed
	// push is a duplicate: 200, nothing stored, the push recorded once.
	res := delivery.Send(t, hooks)
	require.Equal(t, http.StatusOK, res.StatusCode)
	require.Equal(t, "duplicate\n", res.Body)
	require.Zero(t, exampletest.Count(t, pool, `SELECT count(*) FROM wharf.queue`))
	require.Equal(t, 1, exampletest.Count(t, pool, `SELECT count(*) FROM router_pushes`))

	// The router's patterns and wharf's answers.
	status, _ = get(t, hooks)
	require.Equal(t, http.StatusMethodNotAllowed, status, "POST only, by the ServeMux pattern")
	forged := wharftest.GitHub("not-the-secret").Send(t, hooks, wharftest.Webhook{Type: "push"})
	require.Equal(t, http.StatusUnauthorized, forged.StatusCode)
	require.Zero(t, exampletest.Count(t, pool, `SELECT count(*) FROM wharf.queue_payloads`), "a forged request stores nothing")
	status, _ = get(t, base+"/nowhere")
	require.Equal(t, http.StatusNotFound, status)

	cancel()
	require.NoError(t, <-done)
}

// Without GITHUB_WEBHOOK_SECRET the public demo secret serves only a loopback address.
func TestDemoSecretOnlyOnLoopback(t *testing.T) {
	exampletest.DemoSecretOnlyOnLoopback(t, "GITHUB_WEBHOOK_SECRET", demoSecret, signingSecret)
}
