package eventlog_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/eventlog"
	"github.com/wharfhq/wharf/internal/dbtest"
)

func TestReadAllPagesInCommitSafeOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, _ := newLog(t, 4, eventlog.Config{})
	var positions []int64
	for i := range 25 {
		res, err := l.Append(ctx, fmt.Sprintf("s-%d", i%4), eventlog.AnyVersion, ev("a", i), ev("b", i))
		require.NoError(t, err)
		positions = append(positions, res.Positions...)
	}
	all := readAllUntil(t, l, 50)

	// Paging with the returned cursor returns the same events, once each.
	var paged []eventlog.Event
	var cursor eventlog.Cursor
	for {
		events, next, err := l.ReadAll(ctx, cursor, 7)
		require.NoError(t, err)
		if len(events) == 0 {
			require.Equal(t, cursor, next, "no events: the cursor stays")
			break
		}
		require.LessOrEqual(t, len(events), 7)
		require.Equal(t, events[len(events)-1].Cursor(), next)
		paged, cursor = append(paged, events...), next
	}
	require.Equal(t, all, paged)
	got := make([]int64, len(all))
	for i, e := range all {
		got[i] = e.Position
		if i > 0 {
			prev := all[i-1]
			require.True(t, prev.TxID < e.TxID || prev.TxID == e.TxID && prev.Position < e.Position, "ordered by (tx id, position)")
		}
	}
	require.ElementsMatch(t, positions, got)

	// A cursor survives a round trip through its string form.
	parsed, err := eventlog.ParseCursor(cursor.String())
	require.NoError(t, err)
	require.Equal(t, cursor, parsed)
	events, _, err := l.ReadAll(ctx, parsed, 0)
	require.NoError(t, err)
	require.Empty(t, events)
}

func TestCursorAndLimitArguments(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, _ := newLog(t, 2, eventlog.Config{})
	c, err := eventlog.ParseCursor("")
	require.NoError(t, err)
	require.True(t, c.IsZero())
	c, err = eventlog.ParseCursor("18446744073709551615/42")
	require.NoError(t, err)
	require.Equal(t, eventlog.Cursor{TxID: 1<<64 - 1, Position: 42}, c)
	for _, bad := range []string{"1", "x/1", "1/x", "1/-1", "-1/1", "1/2/3"} {
		_, err := eventlog.ParseCursor(bad)
		require.ErrorIs(t, err, eventlog.ErrInvalidArgument, bad)
	}
	_, _, err = l.ReadAll(ctx, eventlog.Cursor{}, -1)
	require.ErrorIs(t, err, eventlog.ErrInvalidArgument)
	_, _, err = l.ReadAll(ctx, eventlog.Cursor{}, eventlog.MaxReadLimit+1)
	require.ErrorIs(t, err, eventlog.ErrInvalidArgument)
	_, err = l.ReadStream(ctx, "s", 1, -5)
	require.ErrorIs(t, err, eventlog.ErrInvalidArgument)
	_, err = l.ReadStream(ctx, "", 1, 0)
	require.ErrorIs(t, err, eventlog.ErrInvalidStream)
	_, _, err = l.ReadCategory(ctx, "", eventlog.Cursor{}, 0)
	require.ErrorIs(t, err, eventlog.ErrInvalidArgument)
}

// naiveRead is the reader the horizon exists to replace: events after the
// last position seen, in position order.
func naiveRead(ctx context.Context, pool *pgxpool.Pool, after int64) ([]int64, error) {
	rows, err := pool.Query(ctx, `SELECT position FROM wharf.event_log WHERE position > $1 ORDER BY position LIMIT 1000`, after)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[int64])
}

// An append that draws a lower position but commits after another: a
// position-ordered reader has moved past it and loses it; ReadAll waits
// for it and returns both.
func TestReadAllDoesNotSkipLateCommit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, pool := newLog(t, 4, eventlog.Config{})

	late := begin(t, pool)
	lateRes, err := l.AppendTx(ctx, late, "late", eventlog.NoStream, ev("late", 1))
	require.NoError(t, err)
	earlyRes, err := l.Append(ctx, "early", eventlog.NoStream, ev("early", 2))
	require.NoError(t, err)
	require.Less(t, lateRes.Positions[0], earlyRes.Positions[0], "the late commit drew the lower position")

	naive, err := naiveRead(ctx, pool, 0)
	require.NoError(t, err)
	require.Equal(t, []int64{earlyRes.Positions[0]}, naive)
	events, cursor, err := l.ReadAll(ctx, eventlog.Cursor{}, 0)
	require.NoError(t, err)
	require.Empty(t, events, "the committed event waits behind the open transaction")
	require.True(t, cursor.IsZero())
	lag, err := l.TailLag(ctx)
	require.NoError(t, err)
	require.GreaterOrEqual(t, lag.Events, int64(1))

	require.NoError(t, late.Commit(ctx))
	naive, err = naiveRead(ctx, pool, naive[0])
	require.NoError(t, err)
	require.Empty(t, naive, "the naive reader lost the late event")

	all := readAllUntil(t, l, 2)
	require.Equal(t, []int64{lateRes.Positions[0], earlyRes.Positions[0]}, []int64{all[0].Position, all[1].Position})
}

// Eight appenders hold their transactions open for random moments and
// roll back some; a reader tails the log with ReadAll meanwhile. Once
// everything has committed, the reader has seen every committed event
// exactly once and no rolled-back one. A position-ordered reader running
// alongside loses events (at least the one appender 0 commits late on
// purpose), which shows the test can tell the two apart.
func TestTailingReaderSeesEveryCommittedEventOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const appenders = 8
	const txPerAppender = 30
	l, pool := newLog(t, appenders+4, eventlog.Config{})

	var (
		mu         sync.Mutex
		committed  = map[int64]bool{}
		rolledBack = map[int64]bool{}
		forcedLate int64 // the position appender 0 commits late on purpose
		naiveLast  atomic.Int64
		done       = make(chan struct{})
	)

	// The tailing reader and the naive one.
	var seen []eventlog.Event
	var naiveSeen []int64
	var readers sync.WaitGroup
	readerErr := make(chan error, 2)
	readers.Go(func() {
		var cursor eventlog.Cursor
		deadline := time.Now().Add(60 * time.Second)
		for {
			events, next, err := l.ReadAll(ctx, cursor, 100)
			if err != nil {
				readerErr <- err
				return
			}
			seen, cursor = append(seen, events...), next
			select {
			case <-done:
				mu.Lock()
				caughtUp := len(seen) >= len(committed)
				mu.Unlock()
				if caughtUp && len(events) == 0 {
					return
				}
			default:
			}
			if time.Now().After(deadline) {
				readerErr <- errors.New("the tailing reader did not catch up within 60s")
				return
			}
		}
	})
	readers.Go(func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			positions, err := naiveRead(ctx, pool, naiveLast.Load())
			if err != nil {
				readerErr <- err
				return
			}
			if len(positions) > 0 {
				naiveSeen = append(naiveSeen, positions...)
				naiveLast.Store(positions[len(positions)-1])
			}
		}
	})

	var wg sync.WaitGroup
	for a := range appenders {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(a), 7))
			for i := range txPerAppender {
				events := make([]eventlog.NewEvent, 1+rng.IntN(3))
				for j := range events {
					events[j] = ev("e", i)
				}
				tx := begin(t, pool)
				res, err := l.AppendTx(ctx, tx, fmt.Sprintf("stream-%d", a), eventlog.AnyVersion, events...)
				require.NoError(t, err)
				if a == 0 && i == 0 {
					// Commit only after the naive reader has moved past
					// this position (other appenders commit meanwhile).
					forcedLate = res.Positions[0]
					dbtest.Eventually(t, 20*time.Second, "the naive reader to pass the late position", func() bool {
						return naiveLast.Load() > forcedLate
					})
				} else {
					// Hold the transaction open a random moment: this is
					// the workload, not a wait for asynchronous work.
					time.Sleep(time.Duration(rng.IntN(1500)) * time.Microsecond)
				}
				rollback := a != 0 && i != 0 && rng.IntN(5) == 0
				if rollback {
					require.NoError(t, tx.Rollback(ctx))
				} else {
					require.NoError(t, tx.Commit(ctx))
				}
				mu.Lock()
				for _, p := range res.Positions {
					if rollback {
						rolledBack[p] = true
					} else {
						committed[p] = true
					}
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(done)
	readers.Wait()
	close(readerErr)
	for err := range readerErr {
		require.NoError(t, err)
	}

	// The table holds exactly what the appenders committed.
	rows, err := pool.Query(ctx, `SELECT position FROM wharf.event_log`)
	require.NoError(t, err)
	inTable, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	require.Len(t, inTable, len(committed))
	for _, p := range inTable {
		require.True(t, committed[p], "position %d in the table was not reported committed", p)
	}
	require.NotEmpty(t, rolledBack, "the workload rolled some appends back")

	// The tailing reader saw each committed event once, in order.
	seenOnce := map[int64]bool{}
	for i, e := range seen {
		require.False(t, seenOnce[e.Position], "position %d seen twice", e.Position)
		seenOnce[e.Position] = true
		require.False(t, rolledBack[e.Position], "position %d was rolled back", e.Position)
		if i > 0 {
			prev := seen[i-1]
			require.True(t, prev.TxID < e.TxID || prev.TxID == e.TxID && prev.Position < e.Position)
		}
	}
	require.Len(t, seenOnce, len(committed))

	// The naive reader lost events, the forced one at least.
	naiveSet := map[int64]bool{}
	for _, p := range naiveSeen {
		naiveSet[p] = true
	}
	var missed []int64
	for p := range committed {
		if !naiveSet[p] {
			missed = append(missed, p)
		}
	}
	slices.Sort(missed)
	t.Logf("%d committed events, %d rolled back; a position-ordered reader missed %d of them", len(committed), len(rolledBack), len(missed))
	require.Contains(t, missed, forcedLate)
}

func TestReadCategory(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, _ := newLog(t, 4, eventlog.Config{})
	for i, stream := range []string{"order-1", "order-2", "orders", "order_1", "orderX1", "invoice-1", "order-1", "a%b-1", "axb-1", `a\b-1`} {
		_, err := l.Append(ctx, stream, eventlog.AnyVersion, ev("t", i))
		require.NoError(t, err)
	}
	readAllUntil(t, l, 10) // every append is below the horizon

	streams := func(prefix string, limit int) []string {
		var out []string
		var cursor eventlog.Cursor
		for {
			events, next, err := l.ReadCategory(ctx, prefix, cursor, limit)
			require.NoError(t, err)
			if len(events) == 0 {
				return out
			}
			for _, e := range events {
				out = append(out, e.Stream)
			}
			cursor = next
		}
	}
	require.Equal(t, []string{"order-1", "order-2", "order-1"}, streams("order-", 2))
	require.Equal(t, []string{"order-1", "order-2", "orders", "order_1", "orderX1", "order-1"}, streams("order", 0))
	require.Equal(t, []string{"order_1"}, streams("order_", 0), "_ is not a wildcard")
	require.Equal(t, []string{"a%b-1"}, streams("a%", 0), "% is not a wildcard")
	require.Equal(t, []string{`a\b-1`}, streams(`a\`, 0), `\ is not an escape`)
	require.Empty(t, streams("nothing-", 0))
}

type account struct {
	Balance int
	Events  int
}

func TestLoad(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, _ := newLog(t, 4, eventlog.Config{})
	apply := func(a account, e eventlog.Event) (account, error) {
		var d struct{ N int }
		if err := jsonUnmarshal(e.Data, &d); err != nil {
			return a, err
		}
		switch e.Type {
		case "deposited":
			a.Balance += d.N
		case "withdrawn":
			a.Balance -= d.N
		default:
			return a, fmt.Errorf("unknown event type %q", e.Type)
		}
		a.Events++
		return a, nil
	}
	want := 0
	for i := range 30 {
		typ := "deposited"
		if i%3 == 2 {
			typ = "withdrawn"
			want -= i
		} else {
			want += i
		}
		_, err := l.Append(ctx, "acct-1", int64(i), ev(typ, i))
		require.NoError(t, err)
	}
	acct, version, err := eventlog.Load(ctx, l, "acct-1", account{Balance: 1000}, apply)
	require.NoError(t, err)
	require.Equal(t, int64(30), version)
	require.Equal(t, account{Balance: 1000 + want, Events: 30}, acct)

	// The version Load returns is the next append's expected version.
	_, err = l.Append(ctx, "acct-1", version, ev("deposited", 5))
	require.NoError(t, err)
	_, err = l.Append(ctx, "acct-1", version, ev("deposited", 5))
	require.ErrorIs(t, err, eventlog.ErrVersionConflict)

	// An empty stream: the initial state, version 0.
	acct, version, err = eventlog.Load(ctx, l, "acct-none", account{Balance: 7}, apply)
	require.NoError(t, err)
	require.Zero(t, version)
	require.Equal(t, account{Balance: 7}, acct)

	// apply's error stops the fold, with the state before the failing event.
	_, err = l.Append(ctx, "acct-1", 31, ev("frozen", 0))
	require.NoError(t, err)
	acct, version, err = eventlog.Load(ctx, l, "acct-1", account{}, apply)
	require.ErrorContains(t, err, `unknown event type "frozen"`)
	require.Equal(t, int64(31), version)
	require.Equal(t, 31, acct.Events)

	_, _, err = eventlog.Load(ctx, l, "", account{}, apply)
	require.ErrorIs(t, err, eventlog.ErrInvalidStream)
}

// TailLag names the transaction that holds the tail back.
func TestTailLag(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, pool := newLog(t, 4, eventlog.Config{})

	holder := begin(t, pool)
	_, err := l.AppendTx(ctx, holder, "held", eventlog.NoStream, ev("a", 1))
	require.NoError(t, err)
	var holderPID int
	require.NoError(t, holder.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&holderPID))
	for i := range 3 {
		_, err := l.Append(ctx, "behind", eventlog.AnyVersion, ev("b", i))
		require.NoError(t, err)
	}

	lag, err := l.TailLag(ctx)
	require.NoError(t, err)
	require.GreaterOrEqual(t, lag.Events, int64(3), "the three committed appends wait behind the holder")
	require.NotZero(t, lag.Horizon)
	if lag.HolderPID == holderPID { // another test's transaction may be older still
		require.Positive(t, lag.HolderAge)
		require.Contains(t, lag.HolderQuery, "pg_backend_pid")
	}
	events, _, err := l.ReadAll(ctx, eventlog.Cursor{}, 0)
	require.NoError(t, err)
	require.Empty(t, events)

	require.NoError(t, holder.Commit(ctx))
	readAllUntil(t, l, 4)
	dbtest.Eventually(t, 30*time.Second, "the lag to clear", func() bool {
		lag, err := l.TailLag(ctx)
		require.NoError(t, err)
		return lag.Events == 0
	})
}

// Metadata written around wharf that does not fit the struct comes back
// raw instead of failing every read: rows of the log cannot be corrected,
// so a bad one must not stop the readers behind it.
func TestUnparsedMetadataDoesNotStopReaders(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, pool := newLog(t, 4, eventlog.Config{})
	_, err := pool.Exec(ctx, `
INSERT INTO wharf.event_log (stream, version, event_type, data, metadata) VALUES
    ('by-hand', 1, 't', '{}', '{"actor": 5}'),
    ('by-hand', 2, 't', '{}', '[1, 2]'),
    ('by-hand', 3, 't', '{}', '{"actor": "ok", "extra": {"k": "v"}, "other": 1}')`)
	require.NoError(t, err)
	events := readAllUntil(t, l, 3)
	require.Equal(t, map[string]string{eventlog.UnparsedMetadataKey: `{"actor": 5}`}, events[0].Metadata.Extra)
	require.Equal(t, map[string]string{eventlog.UnparsedMetadataKey: `[1, 2]`}, events[1].Metadata.Extra)
	require.Equal(t, eventlog.Metadata{Actor: "ok", Extra: map[string]string{"k": "v"}}, events[2].Metadata)
}

// Head is where a tail "from now" starts: after every event readable now,
// and before an event a still-open transaction commits later, although
// that event drew a lower position than events read before it.
func TestHead(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, pool := newLog(t, 4, eventlog.Config{})

	head, err := l.Head(ctx)
	require.NoError(t, err)
	require.True(t, head.IsZero(), "an empty log's head is its start")

	_, err = l.Append(ctx, "before", eventlog.NoStream, ev("a", 1), ev("a", 2))
	require.NoError(t, err)
	held := begin(t, pool)
	_, err = l.AppendTx(ctx, held, "late", eventlog.NoStream, ev("late", 1))
	require.NoError(t, err)
	all := readAllUntil(t, l, 2)
	head, err = l.Head(ctx)
	require.NoError(t, err)
	require.Equal(t, all[len(all)-1].Cursor(), head)

	require.NoError(t, held.Commit(ctx))
	_, err = l.Append(ctx, "after", eventlog.NoStream, ev("b", 1))
	require.NoError(t, err)
	var streams []string
	cursor := head
	dbtest.Eventually(t, 30*time.Second, "the events after the head", func() bool {
		events, next, err := l.ReadAll(ctx, cursor, 0)
		require.NoError(t, err)
		for _, e := range events {
			streams = append(streams, e.Stream)
		}
		cursor = next
		return len(streams) >= 2
	})
	require.ElementsMatch(t, []string{"late", "after"}, streams)
}

// A stream's events are read in version order even when a transaction that
// got its id early appends after a newer transaction appended to the same
// stream: transaction ids are not commit order, so ReadAll, ReadCategory
// and projections order by a read key that never decreases along a stream.
func TestReadAllKeepsStreamVersionOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, pool := newLog(t, 8, eventlog.Config{})

	early := begin(t, pool)
	_, err := early.Exec(ctx, `SELECT pg_current_xact_id()`) // an id taken early, as by an idempotency claim
	require.NoError(t, err)
	late := begin(t, pool)
	_, err = l.AppendTx(ctx, late, "order-1", eventlog.NoStream, ev("order.placed", 1))
	require.NoError(t, err)
	require.NoError(t, late.Commit(ctx))
	res, err := l.AppendTx(ctx, early, "order-1", 1, ev("order.paid", 2))
	require.NoError(t, err)
	require.NoError(t, early.Commit(ctx))

	events := readAllUntil(t, l, 2)
	require.Equal(t, []int64{1, 2}, []int64{events[0].Version, events[1].Version})
	require.Less(t, events[1].TxID, events[0].TxID, "the second version's transaction has the lower id")
	require.Equal(t, res.ReadKey, events[1].ReadKey)
	require.Equal(t, events[1].Cursor(), eventlog.Cursor{TxID: res.ReadKey, Position: res.Positions[0]})

	var versions []int64
	p, err := l.NewProjection(eventlog.ProjectionConfig{Name: "orders", Category: "order-", Handler: func(_ context.Context, _ pgx.Tx, events []eventlog.Event) error {
		for _, e := range events {
			versions = append(versions, e.Version)
		}
		return nil
	}})
	require.NoError(t, err)
	dbtest.Eventually(t, 30*time.Second, "the projection to apply both events", func() bool {
		_, err := p.CatchUp(ctx)
		require.NoError(t, err)
		return len(versions) >= 2
	})
	require.Equal(t, []int64{1, 2}, versions)
}
