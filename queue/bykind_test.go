package queue_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/queue"
)

// eventsOfKind returns n valid events of source and type typ, with ids
// "<typ>-<i>".
func eventsOfKind(source, typ string, n int) []queue.NewEvent {
	evs := make([]queue.NewEvent, n)
	for i := range evs {
		evs[i] = event(source, fmt.Sprintf("%s-%d", typ, i))
		evs[i].Type = typ
	}
	return evs
}

// The count a Consumer chooses its fetch by: of the first n due events,
// those a walking fetch would read past, because their kind is not one it
// takes, is excluded, or their source is paused.
func TestSkippedCountsWhatAWalkWouldReadPast(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, _ := newQueue(t, queue.Config{})
	evs := append(eventsOfKind("s", "a", 30), eventsOfKind("s", "b", 20)...)
	evs = append(evs, eventsOfKind("paused", "a", 10)...)
	scheduled := event("s", "later")
	scheduled.Type = "b"
	scheduled.RunAt = time.Now().Add(time.Hour)
	leaseEnqueue(t, q, append(evs, scheduled)...)
	require.NoError(t, q.Pause(ctx, queue.PauseTarget{Source: "paused"}, "test"))

	a, b := queue.Kind{Source: "s", Type: "a"}, queue.Kind{Source: "s", Type: "b"}
	for _, tc := range []struct {
		name          string
		n             int
		only, exclude []queue.Kind
		want          int
	}{
		{"every kind: only the paused source's", 1000, nil, nil, 10},
		{"only one kind", 1000, []queue.Kind{a}, nil, 30},
		{"only a source, one type excluded", 1000, []queue.Kind{{Source: "s", Type: queue.AnyType}}, []queue.Kind{a}, 40},
		{"one kind excluded", 1000, nil, []queue.Kind{b}, 30},
		{"only the first n due events", 25, []queue.Kind{b}, nil, 25},
	} {
		got, err := queue.Skipped(ctx, q, tc.n, tc.only, tc.exclude)
		require.NoError(t, err, tc.name)
		require.Equal(t, tc.want, got, tc.name)
	}
}

// A Consumer behind a backlog of kinds it skips fetches by kind; one with
// nothing to skip walks. Both take what is theirs and nothing else.
func TestConsumerFetchesByKindBehindASkippedBacklog(t *testing.T) {
	t.Parallel()
	q, pool := newQueue(t, queue.Config{})
	leaseEnqueue(t, q, append(eventsOfKind("s", "backlog", 600), eventsOfKind("s", "wanted", 3)...)...)

	// consume starts a consumer of one type; handled counts its events.
	consume := func(typ string) (c *queue.Consumer, handled *atomic.Int64) {
		handled = new(atomic.Int64)
		c, err := queue.NewConsumer(q, queue.ConsumerConfig{
			Only:         []queue.Kind{{Source: "s", Type: typ}},
			PollInterval: 100 * time.Millisecond,
			Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
				if ev.Type != typ {
					return fmt.Errorf("fetched %s, a kind this consumer does not take", ev.Type)
				}
				handled.Add(1)
				return nil
			},
		})
		require.NoError(t, err)
		runConsumer(t, c)
		return c, handled
	}

	wanted, handledWanted := consume("wanted")
	dbtest.Eventually(t, 30*time.Second, "wanted events handled", func() bool { return handledWanted.Load() == 3 })
	dbtest.Eventually(t, 30*time.Second, "a fetch by kind, with 600 of the first 603 due events skipped", wanted.FetchesByKind)
	require.Equal(t, 600, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue WHERE state = 'available' AND attempt = 0`))

	// Another consumer takes the backlog: it walks, and once the backlog
	// is gone the first one walks again (at its next probe, 5 s on).
	backlog, handledBacklog := consume("backlog")
	dbtest.Eventually(t, 30*time.Second, "backlog handled and committed", func() bool {
		return dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue`) == 0
	})
	require.Equal(t, int64(600), handledBacklog.Load())
	require.False(t, backlog.FetchesByKind(), "nothing is skipped ahead of the backlog")
	dbtest.Eventually(t, 30*time.Second, "a walk again, with nothing skipped", func() bool { return !wanted.FetchesByKind() })
	require.Equal(t, int64(3), handledWanted.Load())
}

// A fetch by kind keeps the rules that span kinds: an ordering key is one
// queue whatever the types of its events, and a rescued event is fetched
// alone.
func TestFetchByKindKeepsOrderingKeysAndRescuedAlone(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, pool := newQueue(t, queue.Config{})
	typed := func(ev queue.NewEvent, typ string) queue.NewEvent {
		ev.Type = typ
		return ev
	}
	ids := leaseEnqueue(t, q,
		typed(leaseKeyed("s", "first", "k"), "t1"),
		typed(leaseKeyed("s", "second", "k"), "t2"),
		typed(event("s", "free"), "t2"),
	)
	byKind := queue.FetchParams{Only: []queue.Kind{{Source: "s", Type: "t2"}, {Source: "s", Type: "t1"}}, ByKind: true}

	evs := leaseFetch(t, q, byKind)
	require.Equal(t, []string{"first", "free"}, leaseIDs(evs), "the key's second event waits for its first, of another type")
	for _, ev := range evs {
		if ev.ID == "first" {
			require.NoError(t, q.Complete(ctx, ev))
			continue
		}
		leaseExpire(t, pool, ev.QueueID) // its worker died
	}
	n, err := q.Rescue(ctx, 100)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	leaseMakeDue(t, pool, ids[2])

	evs = leaseFetch(t, q, byKind)
	require.Equal(t, []string{"free"}, leaseIDs(evs), "a rescued event comes alone")
	require.True(t, evs[0].Rescued)
	require.NoError(t, q.Complete(ctx, evs[0]))
	evs = leaseFetch(t, q, byKind)
	require.Equal(t, []string{"second"}, leaseIDs(evs))
}

// A fetch by kind locks only the events it claims: a fetcher that runs
// beside it (another process's, its transaction not yet committed) takes
// the rest, as it would beside a walk, instead of skipping the events of
// each kind that the other fetch locked and then left unclaimed.
func TestFetchByKindLeavesTheRestToConcurrentFetchers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, pool := newQueue(t, queue.Config{})
	var only []queue.Kind
	var evs []queue.NewEvent
	for i := range 4 {
		for _, typ := range []string{"a", "b", "c"} {
			ev := event("s", fmt.Sprintf("%s-%d", typ, i))
			ev.Type = typ
			evs = append(evs, ev)
			if i == 0 {
				only = append(only, queue.Kind{Source: "s", Type: typ})
			}
		}
	}
	leaseEnqueue(t, q, evs...)

	for _, byKind := range []bool{false, true} {
		p := queue.FetchParams{Limit: 6, Only: only, ByKind: byKind}
		tx, err := pool.Begin(ctx)
		require.NoError(t, err)
		t.Cleanup(func() { _ = tx.Rollback(ctx) })
		sql, args := queue.FetchStatement(q, p)
		rows, err := tx.Query(ctx, sql, args...)
		require.NoError(t, err)
		var first []string
		for rows.Next() {
			vals, err := rows.Values()
			require.NoError(t, err)
			first = append(first, vals[2].(string))
		}
		require.NoError(t, rows.Err())
		require.ElementsMatch(t, []string{"a-0", "b-0", "c-0", "a-1", "b-1", "c-1"}, first, "by kind: %v", byKind)

		second := leaseFetch(t, q, p)
		require.Equal(t, []string{"a-2", "a-3", "b-2", "b-3", "c-2", "c-3"}, leaseIDs(second),
			"by kind: %v: the events the first fetch, not yet committed, did not claim", byKind)
		require.NoError(t, tx.Rollback(ctx))
		require.NoError(t, q.Release(ctx, second...))
	}
}

// A fetch by kind takes the oldest due events of each kind across all of
// its handler names (none, plain ones, ones with odd bytes), as a walk
// would, and leaves out only a paused handler's: the kind's handler names
// are listed one after another, not only the first.
func TestFetchByKindTakesEveryHandlerNameOfAKind(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, pool := newQueue(t, queue.Config{})
	start := time.Now().Add(-time.Hour)
	var evs []queue.NewEvent
	for i, e := range []struct{ id, typ, handler string }{
		{"held-1", "t", "held"}, {"none-1", "t", ""}, {"b-1", "t", "b"}, {"a-1", "t", "a"},
		{"odd-1", "t", "\x01é "}, {"other-1", "u", "a"}, {"none-2", "t", ""}, {"a-2", "t", "a"},
	} {
		ev := event("s", e.id)
		ev.Type, ev.Handler, ev.RunAt = e.typ, e.handler, start.Add(time.Duration(i)*time.Minute)
		evs = append(evs, ev)
	}
	leaseEnqueue(t, q, evs...)
	require.NoError(t, q.Pause(ctx, queue.PauseTarget{Handler: "held"}, "test"))
	_, err := pool.Exec(ctx, `ANALYZE wharf.queue`)
	require.NoError(t, err)

	t4, u := queue.Kind{Source: "s", Type: "t"}, queue.Kind{Source: "s", Type: "u"}
	// Listed kinds, then kinds read off the queue.
	got := leaseFetch(t, q, queue.FetchParams{Limit: 4, Only: []queue.Kind{t4}, ByKind: true})
	require.Equal(t, []string{"a-1", "b-1", "none-1", "odd-1"}, leaseIDs(got), "the 4 oldest of the kind, whatever their handler names")
	got = leaseFetch(t, q, queue.FetchParams{Limit: 10, Only: []queue.Kind{{Source: "s", Type: queue.AnyType}}, Exclude: []queue.Kind{u}, ByKind: true})
	require.Equal(t, []string{"a-2", "none-2"}, leaseIDs(got), "the rest of the kind, but the paused handler's")
}
