package wharftest_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/queue"
)

var swSecret = "whsec_" + base64.StdEncoding.EncodeToString([]byte("wharftest-secret-0123456789abcdef"))

// fastRetries makes failed attempts retry at once, so tests of failing
// handlers drain quickly.
var fastRetries = queue.Backoff{Initial: 5 * time.Millisecond, Max: 20 * time.Millisecond}

// setup returns a pool on a fresh database with an effects table, and a
// Pipeline with the Standard Webhooks source "acme".
func setup(t *testing.T, cfg wharf.Config) (*pgxpool.Pool, *wharf.Pipeline) {
	t.Helper()
	pool := dbtest.Pool(t)
	_, err := pool.Exec(context.Background(), `CREATE TABLE effects (event_id text PRIMARY KEY, n int NOT NULL)`)
	require.NoError(t, err)
	if cfg.Backoff == (queue.Backoff{}) {
		cfg.Backoff = fastRetries
	}
	if cfg.AckDeadline == 0 {
		// The tests expect 202s; a store can stall past the 2s default
		// on a loaded CI machine (see the package doc).
		cfg.AckDeadline = 30 * time.Second
	}
	p, err := wharf.New(pool, cfg)
	require.NoError(t, err)
	t.Cleanup(p.Close)
	require.NoError(t, p.Source("acme", wharf.StandardWebhooks(swSecret)))
	return pool, p
}

// writeEffect counts each committed run of the handler per event: n is 1
// for an event whose effects landed once.
func writeEffect(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
	_, err := tx.Exec(ctx, `INSERT INTO effects VALUES ($1, 1) ON CONFLICT (event_id) DO UPDATE SET n = effects.n + 1`, ev.ID)
	return err
}

func effects(t *testing.T, pool *pgxpool.Pool) map[string]int {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT event_id, n FROM effects`)
	require.NoError(t, err)
	out := map[string]int{}
	var id string
	var n int
	_, err = pgx.ForEachRow(rows, []any{&id, &n}, func() error { out[id] = n; return nil })
	require.NoError(t, err)
	return out
}

func queueRows(t *testing.T, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT count(*) FROM wharf.queue`).Scan(&n))
	return n
}

// fakeT records failures instead of failing the real test, so that tests
// can check that the helpers fail when they should. Fatalf ends the
// goroutine, as testing's does; cleanups go to the real test.
type fakeT struct {
	testing.TB
	mu   sync.Mutex
	msgs []string
}

func (f *fakeT) Helper() {}

func (f *fakeT) Errorf(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.msgs = append(f.msgs, fmt.Sprintf(format, args...))
}

func (f *fakeT) Fatalf(format string, args ...any) {
	f.Errorf(format, args...)
	runtime.Goexit()
}

func (f *fakeT) FailNow() {
	f.Errorf("FailNow")
	runtime.Goexit()
}

func (f *fakeT) report() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.msgs, "\n")
}

// mustFail runs fn with a fakeT on a goroutine of its own, requires that
// it failed, and returns what it reported.
func mustFail(t *testing.T, fn func(tb testing.TB)) string {
	t.Helper()
	f := &fakeT{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	<-done
	msg := f.report()
	require.NotEmpty(t, msg, "the helper should have failed the test")
	return msg
}
