package queue_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/queue"
)

// The hooks a composing layer (the Pipeline) relies on: a handler name
// carried by each event, extra duplicate conditions evaluated inside the
// insert, and permanent failures.

func TestHandlerIsStoredAndFetched(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, _ := newQueue(t, queue.Config{})
	ev := event("s", "1")
	ev.Handler = "billing.mark-paid"
	_, err := q.Enqueue(ctx, ev)
	require.NoError(t, err)
	evs, err := q.Fetch(ctx, queue.FetchParams{Limit: 1})
	require.NoError(t, err)
	require.Len(t, evs, 1)
	require.Equal(t, "billing.mark-paid", evs[0].Handler)

	bad := event("s", "2")
	bad.Handler = "a\x00b"
	_, err = q.Enqueue(ctx, bad)
	var invalid *queue.InvalidEventError
	require.ErrorAs(t, err, &invalid)
	require.Equal(t, "handler", invalid.Field)
}

func TestDuplicateIfRefusesInsideTheInsert(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := dbtest.Pool(t)
	_, err := pool.Exec(ctx, `CREATE TABLE done (handler text, event_id text)`)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `INSERT INTO done VALUES ('h', 'old')`)
	require.NoError(t, err)
	q, err := queue.New(pool, queue.Config{
		DuplicateIf: `EXISTS (SELECT 1 FROM done d WHERE d.handler = t.handler AND d.event_id = t.event_id)`,
	})
	require.NoError(t, err)
	t.Cleanup(q.Close)

	old := event("s", "old")
	old.Handler = "h"
	res, err := q.Enqueue(ctx, old)
	require.NoError(t, err)
	require.True(t, res.Duplicate, "the condition marks it a duplicate")

	other := event("s", "old")
	other.Handler = "someone-else"
	results, err := q.EnqueueBatch(ctx, []queue.NewEvent{old, event("s", "new")})
	require.NoError(t, err)
	require.True(t, results[0].Duplicate)
	require.False(t, results[1].Duplicate)
	res, err = q.Enqueue(ctx, other)
	require.NoError(t, err)
	require.False(t, res.Duplicate, "the condition sees the row's handler")
	require.Equal(t, 2, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue`))
	require.Equal(t, 2, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue_payloads`), "a refused event leaves no payload")
}

// With a DuplicateIf, EnqueueTx refuses a transaction that is not READ
// COMMITTED and stores nothing, even when the caller commits: its recheck
// would reuse the insert's snapshot and miss an event removed while the
// insert waited. READ UNCOMMITTED, which Postgres runs as READ COMMITTED,
// is taken; so is any level by a queue without a condition, which has no
// recheck.
func TestDuplicateIfNeedsReadCommitted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := dbtest.Pool(t)
	deduplicating, err := queue.New(pool, queue.Config{DuplicateIf: `t.event_id = 'refused'`})
	require.NoError(t, err)
	t.Cleanup(deduplicating.Close)
	plain, err := queue.New(pool, queue.Config{})
	require.NoError(t, err)
	t.Cleanup(plain.Close)

	// enqueueIn stores id with EnqueueTx and id-batch with EnqueueBatchTx
	// in one transaction of level iso, commits it whatever they return,
	// and returns their errors.
	enqueueIn := func(q *queue.Queue, iso pgx.TxIsoLevel, id string) (single, batch error) {
		tx, err := pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: iso})
		require.NoError(t, err)
		_, single = q.EnqueueTx(ctx, tx, event("s", id))
		_, batch = q.EnqueueBatchTx(ctx, tx, []queue.NewEvent{event("s", id+"-batch")})
		require.NoError(t, tx.Commit(ctx))
		return single, batch
	}
	for _, iso := range []pgx.TxIsoLevel{pgx.RepeatableRead, pgx.Serializable} {
		single, batch := enqueueIn(deduplicating, iso, "r-"+string(iso))
		for _, err := range []error{single, batch} {
			require.ErrorIs(t, err, queue.ErrNotReadCommitted, iso)
			require.ErrorContains(t, err, string(iso), "the error names the level")
		}
	}
	require.Zero(t, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue`), "nothing stored")
	require.Zero(t, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue_payloads`), "no payload either")

	for _, iso := range []pgx.TxIsoLevel{pgx.ReadCommitted, pgx.ReadUncommitted} {
		single, batch := enqueueIn(deduplicating, iso, "ok-"+string(iso))
		require.NoError(t, single, iso)
		require.NoError(t, batch, iso)
	}
	single, batch := enqueueIn(plain, pgx.RepeatableRead, "plain")
	require.NoError(t, single)
	require.NoError(t, batch)
	require.Equal(t, 6, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue`))
}

// A queue notices a pool whose transactions default to another isolation
// level, by its first group commit or its first fetch, and its own
// transactions run READ COMMITTED from then on; at Postgres's default
// they send nothing more.
func TestQueueNoticesTheDefaultIsolation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, iso := range []string{"read committed", "repeatable read"} {
		cfg, err := pgxpool.ParseConfig(dbtest.Database(t, dbtest.Options{}))
		require.NoError(t, err)
		cfg.ConnConfig.RuntimeParams["default_transaction_isolation"] = iso
		var notices atomic.Int32
		cfg.ConnConfig.OnNotice = func(*pgconn.PgConn, *pgconn.Notice) { notices.Add(1) }
		pool, err := pgxpool.NewWithConfig(ctx, cfg)
		require.NoError(t, err)
		t.Cleanup(pool.Close)
		newQueue := func(c queue.Config) *queue.Queue {
			q, err := queue.New(pool, c)
			require.NoError(t, err)
			t.Cleanup(q.Close)
			return q
		}
		other := iso != "read committed"

		// A queue without a condition notices it at its first group commit.
		plain := newQueue(queue.Config{})
		_, err = plain.Enqueue(ctx, event("s", "1"))
		require.NoError(t, err)
		require.Equal(t, other, plain.SetsReadCommitted(), "%s: noticed by the insert", iso)

		// A deduplicating queue whose first statement is a fetch notices
		// it there; its inserts then pass its READ COMMITTED check, which
		// they would fail if the transaction kept the pool's level.
		deduplicating := newQueue(queue.Config{DuplicateIf: `t.event_id = 'never'`})
		evs, err := deduplicating.Fetch(ctx, queue.FetchParams{Limit: 10})
		require.NoError(t, err)
		require.Len(t, evs, 1)
		require.Equal(t, other, deduplicating.SetsReadCommitted(), "%s: noticed by the fetch", iso)
		require.NoError(t, deduplicating.Complete(ctx, evs[0]))
		_, err = deduplicating.EnqueueBatch(ctx, []queue.NewEvent{event("s", "2")})
		require.NoError(t, err)
		_, err = deduplicating.Enqueue(ctx, event("s", "3"))
		require.NoError(t, err)
		evs, err = deduplicating.Fetch(ctx, queue.FetchParams{Limit: 10})
		require.NoError(t, err)
		require.Len(t, evs, 2)
		require.Zero(t, notices.Load(), "%s: a warning reached the client", iso)
	}
}

func TestPermanentFailureExhaustsAtOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, pool := newQueue(t, queue.Config{})
	ev := event("s", "bad")
	ev.MaxAttempts = 5
	_, err := q.Enqueue(ctx, ev)
	require.NoError(t, err)

	runs := make(chan int, 5)
	c, err := queue.NewConsumer(q, queue.ConsumerConfig{Workers: 1, PollInterval: 20 * time.Millisecond,
		Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
			runs <- ev.Attempt
			return queue.Permanent(errors.New("schema version 0 is not supported"))
		}})
	require.NoError(t, err)
	runConsumer(t, c)
	dbtest.Eventually(t, 10*time.Second, "the event exhausted", func() bool {
		return dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue WHERE state = 'exhausted'`) == 1
	})
	require.Equal(t, 1, <-runs)
	require.Len(t, runs, 0, "no second attempt")
	require.Equal(t, 1, dbtest.Count(t, pool, `SELECT jsonb_array_length(errors) FROM wharf.queue`))
	var msg string
	require.NoError(t, pool.QueryRow(ctx, `SELECT errors->0->>'error' FROM wharf.queue`).Scan(&msg))
	require.Contains(t, msg, "schema version 0 is not supported")
}

func TestRetryWithPermanentExhausts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, pool := newQueue(t, queue.Config{})
	ev := event("s", "bad")
	ev.MaxAttempts = 5
	_, err := q.Enqueue(ctx, ev)
	require.NoError(t, err)
	evs, err := q.Fetch(ctx, queue.FetchParams{Limit: 1})
	require.NoError(t, err)
	require.Len(t, evs, 1)
	exhausted, err := q.Retry(ctx, evs[0], queue.Permanent(errors.New("never parses")))
	require.NoError(t, err)
	require.True(t, exhausted, "four attempts were left")
	require.Equal(t, 1, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue WHERE state = 'exhausted' AND attempt = 1`))
	require.Nil(t, queue.Permanent(nil))
}

func TestRetryInOverridesTheBackoff(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, pool := newQueue(t, queue.Config{Backoff: queue.Backoff{Initial: time.Hour, Max: time.Hour, Jitter: queue.NoJitter}})
	_, err := q.Enqueue(ctx, event("s", "later"))
	require.NoError(t, err)
	evs, err := q.Fetch(ctx, queue.FetchParams{Limit: 1})
	require.NoError(t, err)
	require.Len(t, evs, 1)
	_, err = q.Retry(ctx, evs[0], queue.RetryIn(2*time.Minute, errors.New("come back in two minutes")))
	require.NoError(t, err)
	require.Equal(t, 1, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue
		WHERE run_at BETWEEN now() + interval '110 seconds' AND now() + interval '130 seconds'`), "two minutes, not the one-hour backoff")
	require.Equal(t, 1, dbtest.Count(t, pool, `SELECT attempt FROM wharf.queue`), "the attempt counts")
	require.Nil(t, queue.RetryIn(time.Second, nil))
}

// A retry due sooner than the next poll wakes the consumer itself.
func TestShortRetryDoesNotWaitForThePoll(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, _ := newQueue(t, queue.Config{Backoff: queue.Backoff{Initial: 20 * time.Millisecond, Max: 20 * time.Millisecond}})
	_, err := q.Enqueue(ctx, event("s", "again"))
	require.NoError(t, err)
	done := make(chan int, 1)
	c, err := queue.NewConsumer(q, queue.ConsumerConfig{Workers: 1, PollInterval: time.Hour,
		Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
			if ev.Attempt == 1 {
				return errors.New("once")
			}
			done <- ev.Attempt
			return nil
		}})
	require.NoError(t, err)
	runConsumer(t, c)
	select {
	case attempt := <-done:
		require.Equal(t, 2, attempt)
	case <-time.After(30 * time.Second): // the poll interval is an hour: only the wake-up can deliver it
		t.Fatal("the retry waited for the poll")
	}
}
