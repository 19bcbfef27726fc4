package queue_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/queue"
)

// newQueue returns a queue on a fresh database, closed at cleanup.
func newQueue(t testing.TB, cfg queue.Config) (*queue.Queue, *pgxpool.Pool) {
	t.Helper()
	pool := dbtest.Pool(t)
	q, err := queue.New(pool, cfg)
	require.NoError(t, err)
	t.Cleanup(q.Close)
	return q, pool
}

// event returns a valid event with a small JSON body.
func event(source, id string) queue.NewEvent {
	return queue.NewEvent{
		Source: source,
		ID:     id,
		Type:   "test.event",
		Body:   []byte(fmt.Sprintf(`{"id":%q}`, id)),
	}
}

// runConsumer starts c in the background and stops it at cleanup (or when
// the returned stop is called), failing the test if Run errs.
func runConsumer(t testing.TB, c *queue.Consumer) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var stopped bool
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		require.NoError(t, <-done)
	}
	t.Cleanup(stop)
	return stop
}

// noOrphans asserts that every payload and ordering lock belongs to a row.
func noOrphans(t testing.TB, pool *pgxpool.Pool) {
	t.Helper()
	require.Zero(t, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue_payloads p WHERE NOT EXISTS (SELECT 1 FROM wharf.queue q WHERE q.id = p.queue_id)`), "orphan payloads")
	require.Zero(t, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue_ordering_locks l WHERE NOT EXISTS (SELECT 1 FROM wharf.queue q WHERE q.id = l.queue_id AND q.state = 'running')`), "stale ordering locks")
}
