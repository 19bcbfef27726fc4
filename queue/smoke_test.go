package queue_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/queue"
)

func TestSmoke(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, pool := newQueue(t, queue.Config{})
	res, err := q.Enqueue(ctx, event("s", "1"))
	require.NoError(t, err)
	require.False(t, res.Duplicate)
	res, err = q.Enqueue(ctx, event("s", "1"))
	require.NoError(t, err)
	require.True(t, res.Duplicate)
	evs, err := q.Fetch(ctx, queue.FetchParams{Limit: 10})
	require.NoError(t, err)
	require.Len(t, evs, 1)
	require.Equal(t, `{"id":"1"}`, string(evs[0].Body))
	require.NoError(t, q.Complete(ctx, evs[0]))
	require.Equal(t, 0, count(t, pool, `SELECT count(*) FROM wharf.queue`))
	noOrphans(t, pool)

	var got []string
	done := make(chan struct{}, 10)
	c, err := queue.NewConsumer(q, queue.ConsumerConfig{Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
		got = append(got, ev.ID)
		done <- struct{}{}
		return nil
	}, Workers: 1})
	require.NoError(t, err)
	runConsumer(t, c)
	_, err = q.Enqueue(ctx, event("s", "2"))
	require.NoError(t, err)
	<-done
	eventually(t, 5e9, "queue empty", func() bool { return count(t, pool, `SELECT count(*) FROM wharf.queue`) == 0 })
	require.Equal(t, []string{"2"}, got)
}
