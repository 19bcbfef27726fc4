package queue_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/queue"
)

// Prepare writes once per transaction, outside the events' savepoints;
// Unprepare is told exactly the events the transaction did not complete,
// so that only completed events keep what Prepare wrote.
func TestPrepareAndUnprepare(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, pool := newQueue(t, queue.Config{Backoff: queue.Backoff{Initial: time.Hour, Max: time.Hour}})
	_, err := pool.Exec(ctx, `CREATE TABLE prepared (event_id text PRIMARY KEY)`)
	require.NoError(t, err)
	ids := []string{"ok-1", "fail-1", "ok-2", "defer-1", "ok-3"}
	for _, id := range ids {
		_, err := q.Enqueue(ctx, event("s", id))
		require.NoError(t, err)
	}

	var mu sync.Mutex
	var prepared, undone []string
	handled := make(chan string, len(ids))
	c, err := queue.NewConsumer(q, queue.ConsumerConfig{
		Workers:       1,
		TxBatch:       len(ids),
		MaxTxDuration: time.Hour, // no event is left for a later transaction
		Prepare: func(ctx context.Context, tx pgx.Tx, evs []*queue.Event) error {
			for _, ev := range evs {
				mu.Lock()
				prepared = append(prepared, ev.ID)
				mu.Unlock()
				if _, err := tx.Exec(ctx, `INSERT INTO prepared VALUES ($1)`, ev.ID); err != nil {
					return err
				}
				ev.Prepared = "for " + ev.ID
			}
			return nil
		},
		Unprepare: func(ctx context.Context, tx pgx.Tx, evs []*queue.Event) error {
			for _, ev := range evs {
				mu.Lock()
				undone = append(undone, ev.ID)
				mu.Unlock()
				if _, err := tx.Exec(ctx, `DELETE FROM prepared WHERE event_id = $1`, ev.ID); err != nil {
					return err
				}
			}
			return nil
		},
		Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
			defer func() { handled <- ev.ID }()
			if ev.Prepared != "for "+ev.ID {
				return queue.Permanent(fmt.Errorf("Prepared is %v", ev.Prepared))
			}
			if _, err := tx.Exec(ctx, `SELECT 1`); err != nil { // a savepoint of its own
				return err
			}
			switch ev.ID[:2] {
			case "fa":
				return errors.New("boom")
			case "de":
				return queue.Defer(time.Now().Add(time.Hour), errors.New("later"))
			}
			return nil
		},
	})
	require.NoError(t, err)
	stop := runConsumer(t, c)
	for range ids {
		<-handled
	}
	dbtest.Eventually(t, 10*time.Second, "the transaction to commit", func() bool {
		st, err := q.Stats(ctx)
		require.NoError(t, err)
		return st.Scheduled == 2
	})
	stop()

	mu.Lock()
	defer mu.Unlock()
	require.ElementsMatch(t, ids, prepared, "each event prepared once")
	require.ElementsMatch(t, []string{"fail-1", "defer-1"}, undone)
	var kept []string
	rows, err := pool.Query(ctx, `SELECT event_id FROM prepared ORDER BY event_id`)
	require.NoError(t, err)
	kept, err = pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Equal(t, []string{"ok-1", "ok-2", "ok-3"}, kept, "only completed events keep Prepare's writes")
}

// A failing Prepare releases the transaction's events unrun, attempts
// given back.
func TestFailingPrepareReleasesEvents(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, pool := newQueue(t, queue.Config{})
	_, err := q.Enqueue(ctx, event("s", "e1"))
	require.NoError(t, err)
	var calls sync.WaitGroup
	calls.Add(1)
	var once sync.Once
	ran := make(chan int, 1)
	c, err := queue.NewConsumer(q, queue.ConsumerConfig{
		Workers:      1,
		PollInterval: 20 * time.Millisecond,
		Prepare: func(ctx context.Context, tx pgx.Tx, evs []*queue.Event) error {
			var err error
			once.Do(func() { err = errors.New("prepare failed"); calls.Done() })
			return err
		},
		Unprepare: func(context.Context, pgx.Tx, []*queue.Event) error { return nil },
		Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
			ran <- ev.Attempt
			return nil
		},
	})
	require.NoError(t, err)
	runConsumer(t, c)
	calls.Wait()
	select {
	case attempt := <-ran:
		require.Equal(t, 1, attempt, "the released event got its attempt back")
	case <-time.After(10 * time.Second):
		t.Fatal("the released event was not run again")
	}
	require.Zero(t, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue WHERE errors <> '[]'::jsonb`), "no failure recorded")
}

func TestPrepareNeedsUnprepare(t *testing.T) {
	t.Parallel()
	q, _ := newQueue(t, queue.Config{})
	handler := func(context.Context, pgx.Tx, *queue.Event) error { return nil }
	_, err := queue.NewConsumer(q, queue.ConsumerConfig{Handler: handler,
		Prepare: func(context.Context, pgx.Tx, []*queue.Event) error { return nil }})
	require.ErrorIs(t, err, queue.ErrInvalidConfig)
	_, err = queue.NewConsumer(q, queue.ConsumerConfig{Handler: handler,
		Unprepare: func(context.Context, pgx.Tx, []*queue.Event) error { return nil }})
	require.ErrorIs(t, err, queue.ErrInvalidConfig)
}

// Events a transaction prepared but did not reach (MaxTxDuration) are
// unprepared, and prepared again by the transaction that runs them.
func TestUnprepareEventsLeftForTheNextTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, pool := newQueue(t, queue.Config{})
	_, err := pool.Exec(ctx, `CREATE TABLE prepared (event_id text PRIMARY KEY)`)
	require.NoError(t, err)
	const n = 6
	evs := make([]queue.NewEvent, n)
	for i := range evs {
		evs[i] = event("s", fmt.Sprint("e", i))
	}
	_, err = q.EnqueueBatch(ctx, evs)
	require.NoError(t, err)
	done := make(chan string, n)
	c, err := queue.NewConsumer(q, queue.ConsumerConfig{
		Workers:       1,
		TxBatch:       n,
		MaxTxDuration: time.Nanosecond, // one event per transaction; the rest wait
		Prepare: func(ctx context.Context, tx pgx.Tx, evs []*queue.Event) error {
			for _, ev := range evs {
				// The primary key fails a second Prepare of an event whose
				// first was not undone.
				if _, err := tx.Exec(ctx, `INSERT INTO prepared VALUES ($1)`, ev.ID); err != nil {
					return err
				}
			}
			return nil
		},
		Unprepare: func(ctx context.Context, tx pgx.Tx, evs []*queue.Event) error {
			for _, ev := range evs {
				if _, err := tx.Exec(ctx, `DELETE FROM prepared WHERE event_id = $1`, ev.ID); err != nil {
					return err
				}
			}
			return nil
		},
		Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
			done <- ev.ID
			return nil
		},
	})
	require.NoError(t, err)
	runConsumer(t, c)
	for range n {
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatal("events left for a later transaction were not run")
		}
	}
	dbtest.Eventually(t, 10*time.Second, "the last commit", func() bool {
		return dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue`) == 0
	})
	require.Equal(t, n, dbtest.Count(t, pool, `SELECT count(*) FROM prepared`))
	require.Zero(t, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue WHERE errors <> '[]'::jsonb`))
}
