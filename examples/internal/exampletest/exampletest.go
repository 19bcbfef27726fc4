// Package exampletest holds what the examples' tests share: waits that
// poll with a deadline, and the check of an example's signing secret.
package exampletest

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wharfhq/wharf/internal/testio"
)

// Timeout bounds every wait.
const Timeout = 20 * time.Second

// Eventually polls cond until it holds, failing the test after Timeout.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(Timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", Timeout, what)
		}
		<-tick.C
	}
}

// Match waits until out holds a match of re and returns its submatches.
func Match(t testing.TB, out *testio.Buffer, re *regexp.Regexp) []string {
	t.Helper()
	var m []string
	Eventually(t, "output matching "+re.String(), func() bool {
		m = re.FindStringSubmatch(out.String())
		return m != nil
	})
	return m
}

// Pool connects to databaseURL for the test's own queries.
func Pool(t testing.TB, databaseURL string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), databaseURL)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// Count runs a query returning one number.
func Count(t testing.TB, pool *pgxpool.Pool, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// DemoSecretOnlyOnLoopback checks an example's signingSecret: without the
// secret in env, the public demo secret serves only a loopback address,
// because an endpoint that others can reach must not accept what anyone
// can sign; with it, the secret is used wherever the example listens.
// The test must not be parallel (it sets env).
func DemoSecretOnlyOnLoopback(t *testing.T, env, demoSecret string, signingSecret func(addr string) (string, error)) {
	t.Helper()
	t.Setenv(env, "")
	for _, addr := range []string{"127.0.0.1:8080", "[::1]:0", "localhost:8080"} {
		secret, err := signingSecret(addr)
		if err != nil || secret != demoSecret {
			t.Errorf("signingSecret(%q) = %q, %v; want the demo secret", addr, secret, err)
		}
	}
	for _, addr := range []string{":8080", "0.0.0.0:8080", "10.0.0.7:8080", "example.com:443", "no-port"} {
		if _, err := signingSecret(addr); err == nil || !strings.Contains(err.Error(), env+" is not set") {
			t.Errorf("signingSecret(%q) error = %v; want one saying %s is not set", addr, err, env)
		}
	}
	t.Setenv(env, "mine")
	if secret, err := signingSecret(":8080"); err != nil || secret != "mine" {
		t.Errorf("signingSecret(\":8080\") with %s set = %q, %v; want %q", env, secret, err, "mine")
	}
}
