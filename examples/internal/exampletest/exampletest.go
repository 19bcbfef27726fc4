// Package exampletest holds what the examples' tests share: an output
// buffer that an example's goroutines may write to while the test reads
// it, and waits that poll with a deadline.
package exampletest

import (
	"context"
	"regexp"
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
