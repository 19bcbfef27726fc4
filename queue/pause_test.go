package queue_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/queue"
)

// A pause made through one Queue holds events back from the fetches of
// another (a replica on the same database) at once; ingestion keeps
// storing them; a resume lets them through.
func TestPauseHoldsBackSourceAndHandler(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	operator, pool := newQueue(t, queue.Config{})
	worker, err := queue.New(pool, queue.Config{})
	require.NoError(t, err)
	t.Cleanup(worker.Close)

	enqueue := func(source, id, handler string) {
		ev := event(source, id)
		ev.Handler = handler
		_, err := operator.Enqueue(ctx, ev)
		require.NoError(t, err)
	}
	enqueue("stripe", "s1", "billing")
	enqueue("github", "g1", "deploys")
	enqueue("github", "g2", "audit")

	require.NoError(t, operator.Pause(ctx, queue.PauseTarget{Source: "stripe"}, "stripe incident"))
	require.NoError(t, operator.Pause(ctx, queue.PauseTarget{Handler: "deploys"}, ""))
	enqueue("stripe", "s2", "billing") // still stored while paused

	evs := leaseFetch(t, worker, queue.FetchParams{})
	require.Equal(t, []string{"g2"}, leaseIDs(evs))
	require.NoError(t, worker.Complete(ctx, evs[0]))

	st, err := worker.Stats(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 3, st.Due, "paused events wait, due")
	require.Len(t, st.Paused, 2)
	require.Equal(t, queue.PauseTarget{Source: "stripe"}, st.Paused[0].PauseTarget)
	require.Equal(t, "stripe incident", st.Paused[0].Reason)
	require.Equal(t, queue.PauseTarget{Handler: "deploys"}, st.Paused[1].PauseTarget)
	require.Zero(t, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue WHERE attempt > 0 AND state = 'available'`), "no attempt spent on paused events")

	resumed, err := operator.Resume(ctx, queue.PauseTarget{Source: "stripe"})
	require.NoError(t, err)
	require.True(t, resumed)
	require.ElementsMatch(t, []string{"s1", "s2"}, leaseIDs(leaseFetch(t, worker, queue.FetchParams{})))

	resumed, err = operator.Resume(ctx, queue.PauseTarget{Handler: "deploys"})
	require.NoError(t, err)
	require.True(t, resumed)
	require.Equal(t, []string{"g1"}, leaseIDs(leaseFetch(t, worker, queue.FetchParams{})))

	resumed, err = operator.Resume(ctx, queue.PauseTarget{Handler: "deploys"})
	require.NoError(t, err)
	require.False(t, resumed, "resuming what is not paused reports false")
}

// A running consumer stops taking a paused source's events and, once it
// is resumed, processes them at its next poll.
func TestPausedConsumerResumes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, _ := newQueue(t, queue.Config{})
	require.NoError(t, q.Pause(ctx, queue.PauseTarget{Source: "held"}, "maintenance"))

	processed := make(chan string, 10)
	c, err := queue.NewConsumer(q, queue.ConsumerConfig{
		Workers:      1,
		PollInterval: 50 * time.Millisecond,
		Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
			processed <- ev.ID
			return nil
		},
	})
	require.NoError(t, err)
	runConsumer(t, c)

	_, err = q.Enqueue(ctx, event("held", "h1"))
	require.NoError(t, err)
	_, err = q.Enqueue(ctx, event("free", "f1"))
	require.NoError(t, err)
	require.Equal(t, "f1", <-processed, "the free source's event runs")
	// f2's fetch would have taken h1 first (older), had it not been paused.
	_, err = q.Enqueue(ctx, event("free", "f2"))
	require.NoError(t, err)
	require.Equal(t, "f2", <-processed)
	st, err := q.Stats(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 1, st.BySource["held"].Due)
	require.Empty(t, processed)

	_, err = q.Resume(ctx, queue.PauseTarget{Source: "held"})
	require.NoError(t, err)
	select {
	case id := <-processed:
		require.Equal(t, "h1", id)
	case <-time.After(10 * time.Second):
		t.Fatal("the resumed source's event did not run")
	}
}

func TestPauseRejectsBadTargets(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, _ := newQueue(t, queue.Config{})
	for name, target := range map[string]queue.PauseTarget{
		"neither":          {},
		"both":             {Source: "s", Handler: "h"},
		"NUL in source":    {Source: "s\x00"},
		"handler too long": {Handler: strings.Repeat("h", queue.MaxHandlerLen+1)},
		"invalid UTF-8":    {Source: "\xff"},
	} {
		require.ErrorIs(t, q.Pause(ctx, target, ""), queue.ErrInvalidPause, name)
		_, err := q.Resume(ctx, target)
		require.ErrorIs(t, err, queue.ErrInvalidPause, name)
	}
	require.ErrorIs(t, q.Pause(ctx, queue.PauseTarget{Source: "s"}, "bad\x00reason"), queue.ErrInvalidPause)
	pauses, err := q.Pauses(ctx)
	require.NoError(t, err)
	require.Empty(t, pauses, "nothing was written")
}

// Pausing twice keeps the first pause's time and takes the new reason.
func TestPauseAgainUpdatesReason(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, _ := newQueue(t, queue.Config{})
	target := queue.PauseTarget{Handler: "billing"}
	require.NoError(t, q.Pause(ctx, target, "first"))
	first, err := q.Pauses(ctx)
	require.NoError(t, err)
	require.NoError(t, q.Pause(ctx, target, "second"))
	again, err := q.Pauses(ctx)
	require.NoError(t, err)
	require.Len(t, again, 1)
	require.Equal(t, "second", again[0].Reason)
	require.True(t, first[0].PausedAt.Equal(again[0].PausedAt))
}
