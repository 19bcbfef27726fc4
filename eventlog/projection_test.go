package eventlog_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
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

// projectionTables are a test projection's tables: applied counts how
// many times each event was applied (exactly once, if all is well), and
// totals is the fold: per stream, the number of events and the sum of
// their data's n.
const projectionTables = `
CREATE TABLE applied (position bigint PRIMARY KEY, times int NOT NULL);
CREATE TABLE totals (stream text PRIMARY KEY, events int NOT NULL, sum bigint NOT NULL)`

// applyEvents is the test projection's function.
func applyEvents(ctx context.Context, tx pgx.Tx, events []eventlog.Event) error {
	for _, e := range events {
		var d struct{ N int64 }
		if err := json.Unmarshal(e.Data, &d); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `
INSERT INTO applied (position, times) VALUES ($1, 1)
ON CONFLICT (position) DO UPDATE SET times = applied.times + 1`, e.Position); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `
INSERT INTO totals (stream, events, sum) VALUES ($1, 1, $2)
ON CONFLICT (stream) DO UPDATE SET events = totals.events + 1, sum = totals.sum + excluded.sum`, e.Stream, d.N); err != nil {
			return err
		}
	}
	return nil
}

// resetTables is the test projection's reset.
func resetTables(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `DELETE FROM applied; DELETE FROM totals`)
	return err
}

type total struct {
	Stream string
	Events int
	Sum    int64
}

// totalsIn reads the projection's fold.
func totalsIn(t testing.TB, pool *pgxpool.Pool) []total {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT stream, events, sum FROM totals ORDER BY stream`)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[total])
	require.NoError(t, err)
	return out
}

// appendNumbered appends n events with data {"n": i} round-robin to
// streams prefix-0 .. prefix-(streams-1), and returns the expected fold.
func appendNumbered(t testing.TB, l *eventlog.Log, prefix string, streams, n int, expected map[string]total) {
	t.Helper()
	for i := range n {
		stream := fmt.Sprintf("%s%d", prefix, i%streams)
		_, err := l.Append(context.Background(), stream, eventlog.AnyVersion, ev("numbered", i))
		require.NoError(t, err)
		tot := expected[stream]
		tot.Stream, tot.Events, tot.Sum = stream, tot.Events+1, tot.Sum+int64(i)
		expected[stream] = tot
	}
}

func sortedTotals(m map[string]total) []total {
	var out []total
	for _, v := range m {
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b total) int { return strings.Compare(a.Stream, b.Stream) })
	return out
}

// appliedExactlyOnce asserts that exactly want events were applied, each
// once, and, when want is the whole log, that they are the log's events.
func appliedExactlyOnce(t testing.TB, pool *pgxpool.Pool, want int) {
	t.Helper()
	require.Equal(t, want, dbtest.Count(t, pool, `SELECT count(*) FROM applied`))
	require.Zero(t, dbtest.Count(t, pool, `SELECT count(*) FROM applied WHERE times <> 1`), "an event was applied twice")
	if dbtest.Count(t, pool, `SELECT count(*) FROM wharf.event_log`) == want {
		require.Zero(t, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.event_log e WHERE NOT EXISTS (SELECT 1 FROM applied a WHERE a.position = e.position)`))
	}
}

// newProjectionDB returns a log on a fresh database with the test
// projection's tables.
func newProjectionDB(t testing.TB, cfg eventlog.Config) (*eventlog.Log, *pgxpool.Pool) {
	t.Helper()
	l, pool := newLog(t, 8, cfg)
	_, err := pool.Exec(context.Background(), projectionTables)
	require.NoError(t, err)
	return l, pool
}

// run starts p.Run and returns a stop function (also run at cleanup) that
// cancels it and waits for it to return nil.
func run(t testing.TB, p *eventlog.Projection) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			require.NoError(t, <-done)
		})
	}
	t.Cleanup(stop)
	return stop
}

func TestProjectionFollowsTheLog(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, pool := newProjectionDB(t, eventlog.Config{})
	p, err := l.NewProjection(eventlog.ProjectionConfig{Name: "totals", Handler: applyEvents, BatchSize: 7, PollInterval: time.Hour})
	require.NoError(t, err)
	expected := map[string]total{}
	appendNumbered(t, l, "acct-", 3, 20, expected)
	run(t, p)
	// Appends while it runs wake it (PollInterval is an hour).
	appendNumbered(t, l, "acct-", 3, 20, expected)
	dbtest.Eventually(t, 30*time.Second, "the projection to apply 40 events", func() bool {
		return dbtest.Count(t, pool, `SELECT count(*) FROM applied`) == 40
	})
	appliedExactlyOnce(t, pool, 40)
	require.Equal(t, sortedTotals(expected), totalsIn(t, pool))

	all := readAllUntil(t, l, 40)
	dbtest.Eventually(t, 10*time.Second, "the checkpoint to reach the last event", func() bool {
		c, err := p.Checkpoint(ctx)
		require.NoError(t, err)
		return c == all[39].Cursor()
	})

	// AppendTx plus Notify wakes it too.
	tx := begin(t, pool)
	_, err = l.AppendTx(ctx, tx, "acct-0", eventlog.AnyVersion, ev("numbered", 100))
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))
	l.Notify()
	dbtest.Eventually(t, 30*time.Second, "the projection to apply the AppendTx event", func() bool {
		return dbtest.Count(t, pool, `SELECT count(*) FROM applied`) == 41
	})
	appliedExactlyOnce(t, pool, 41)
}

// A projection in another process learns of appends through LISTEN/NOTIFY:
// here, a second Log on its own pool.
func TestProjectionWakesOnNotifyFromAnotherLog(t *testing.T) {
	t.Parallel()
	l, pool := newProjectionDB(t, eventlog.Config{})
	other, err := eventlog.New(pool, eventlog.Config{})
	require.NoError(t, err)
	defer other.Close()
	p, err := other.NewProjection(eventlog.ProjectionConfig{Name: "totals", Handler: applyEvents, PollInterval: time.Hour})
	require.NoError(t, err)
	run(t, p)
	// The listener may connect after this append; it wakes the projection
	// once connected anyway, so either way the append is found without a
	// poll.
	appendNumbered(t, l, "s-", 1, 3, map[string]total{})
	dbtest.Eventually(t, 30*time.Second, "the projection to apply 3 events", func() bool {
		return dbtest.Count(t, pool, `SELECT count(*) FROM applied`) == 3
	})
}

func TestProjectionCategory(t *testing.T) {
	t.Parallel()
	l, pool := newProjectionDB(t, eventlog.Config{})
	p, err := l.NewProjection(eventlog.ProjectionConfig{Name: "orders", Category: "order-", Handler: applyEvents, BatchSize: 3})
	require.NoError(t, err)
	expected := map[string]total{}
	appendNumbered(t, l, "order-", 2, 10, expected)
	appendNumbered(t, l, "invoice-", 2, 10, map[string]total{})
	appendNumbered(t, l, "orderly-", 2, 10, map[string]total{})
	readAllUntil(t, l, 30)
	n, err := catchUp(t, p, 10)
	require.NoError(t, err)
	require.Equal(t, 10, n)
	require.Equal(t, sortedTotals(expected), totalsIn(t, pool))
}

// catchUp runs CatchUp until the projection has applied want events in all
// (the tail may be held back for a moment by other tests' transactions).
func catchUp(t testing.TB, p *eventlog.Projection, want int) (int, error) {
	t.Helper()
	applied := 0
	var err error
	dbtest.Eventually(t, 30*time.Second, fmt.Sprintf("CatchUp to apply %d events", want), func() bool {
		var n int
		n, err = p.CatchUp(context.Background())
		applied += n
		return err != nil || applied >= want
	})
	return applied, err
}

// A runner whose connection is killed in the middle of a batch loses that
// batch, all of it; a new runner resumes from the checkpoint the last
// committed batch left, and every event ends up applied exactly once.
func TestProjectionKilledMidBatchResumes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, pool := newProjectionDB(t, eventlog.Config{})
	expected := map[string]total{}
	appendNumbered(t, l, "s-", 4, 50, expected)
	all := readAllUntil(t, l, 50)

	batches := 0
	killed := false
	handler := func(ctx context.Context, tx pgx.Tx, events []eventlog.Event) error {
		batches++
		if batches != 3 {
			return applyEvents(ctx, tx, events)
		}
		// Half the batch, then the connection dies under it.
		if err := applyEvents(ctx, tx, events[:5]); err != nil {
			return err
		}
		var pid int
		if err := tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
			return err
		}
		if _, err := pool.Exec(ctx, `SELECT pg_terminate_backend($1, 10000)`, pid); err != nil {
			return err
		}
		killed = true
		return applyEvents(ctx, tx, events[5:])
	}
	first, err := l.NewProjection(eventlog.ProjectionConfig{Name: "totals", Handler: handler, BatchSize: 10})
	require.NoError(t, err)
	n, err := first.CatchUp(ctx)
	require.True(t, killed)
	require.Error(t, err)
	require.Equal(t, 20, n, "two batches committed before the kill")
	appliedExactlyOnce(t, pool, 20)
	var firstTwenty []int64
	for _, e := range all[:20] {
		firstTwenty = append(firstTwenty, e.Position)
	}
	rows, err := pool.Query(ctx, `SELECT position FROM applied`)
	require.NoError(t, err)
	appliedPositions, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	require.ElementsMatch(t, firstTwenty, appliedPositions, "the two committed batches, none of the killed one")
	checkpoint, err := first.Checkpoint(ctx)
	require.NoError(t, err)
	require.Equal(t, all[19].Cursor(), checkpoint)

	second, err := l.NewProjection(eventlog.ProjectionConfig{Name: "totals", Handler: applyEvents, BatchSize: 10})
	require.NoError(t, err)
	n, err = catchUp(t, second, 30)
	require.NoError(t, err)
	require.Equal(t, 30, n)
	appliedExactlyOnce(t, pool, 50)
	require.Equal(t, sortedTotals(expected), totalsIn(t, pool))
}

// A function that panics (or fails) half way through a batch rolls the
// whole batch back; Run retries it and applies it once.
func TestProjectionPanicMidBatchIsRetried(t *testing.T) {
	t.Parallel()
	l, pool := newProjectionDB(t, eventlog.Config{})
	expected := map[string]total{}
	appendNumbered(t, l, "s-", 3, 30, expected)

	var calls atomic.Int64
	handler := func(ctx context.Context, tx pgx.Tx, events []eventlog.Event) error {
		switch calls.Add(1) {
		case 2:
			if err := applyEvents(ctx, tx, events[:4]); err != nil {
				return err
			}
			panic("projection bug")
		case 3:
			if err := applyEvents(ctx, tx, events[:4]); err != nil {
				return err
			}
			return errors.New("downstream unavailable")
		}
		return applyEvents(ctx, tx, events)
	}
	failed := make(chan string, 10)
	logger := slog.New(&signalHandler{match: "batch failed", ch: failed})
	p, err := l.NewProjection(eventlog.ProjectionConfig{Name: "totals", Handler: handler, BatchSize: 10, RetryDelay: time.Millisecond, Logger: logger})
	require.NoError(t, err)
	run(t, p)
	dbtest.Eventually(t, 30*time.Second, "30 events applied", func() bool {
		return dbtest.Count(t, pool, `SELECT count(*) FROM applied`) == 30
	})
	appliedExactlyOnce(t, pool, 30)
	require.Equal(t, sortedTotals(expected), totalsIn(t, pool))
	require.GreaterOrEqual(t, calls.Load(), int64(5), "two failed attempts, then three batches")
	require.Len(t, failed, 2, "each failure was logged")
}

// The function cannot end the transaction the projection commits with its
// checkpoint.
func TestProjectionOwnsItsTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, pool := newProjectionDB(t, eventlog.Config{})
	appendNumbered(t, l, "s-", 1, 3, map[string]total{})
	readAllUntil(t, l, 3)
	var commitErr, rollbackErr error
	p, err := l.NewProjection(eventlog.ProjectionConfig{Name: "p", Handler: func(ctx context.Context, tx pgx.Tx, events []eventlog.Event) error {
		commitErr, rollbackErr = tx.Commit(ctx), tx.Rollback(ctx)
		return applyEvents(ctx, tx, events)
	}})
	require.NoError(t, err)
	n, err := p.CatchUp(ctx)
	require.NoError(t, err)
	require.Equal(t, 3, n)
	require.ErrorIs(t, commitErr, eventlog.ErrTxOwned)
	require.ErrorIs(t, rollbackErr, eventlog.ErrTxOwned)
	appliedExactlyOnce(t, pool, 3)

	// A function that returns nil over a failed statement fails the batch.
	appendNumbered(t, l, "s-", 1, 1, map[string]total{})
	readAllUntil(t, l, 4)
	bad, err := l.NewProjection(eventlog.ProjectionConfig{Name: "p", Handler: func(ctx context.Context, tx pgx.Tx, events []eventlog.Event) error {
		_, _ = tx.Exec(ctx, `SELECT 1/0`)
		return nil
	}})
	require.NoError(t, err)
	_, err = bad.CatchUp(ctx)
	require.ErrorContains(t, err, "transaction is not usable")
	appliedExactlyOnce(t, pool, 3)
}

// Replicas running the same projection take turns: each event is applied
// once.
func TestProjectionReplicasApplyEachEventOnce(t *testing.T) {
	t.Parallel()
	l, pool := newProjectionDB(t, eventlog.Config{})
	for range 3 {
		p, err := l.NewProjection(eventlog.ProjectionConfig{Name: "totals", Handler: applyEvents, BatchSize: 5, PollInterval: 10 * time.Millisecond})
		require.NoError(t, err)
		run(t, p)
	}
	expected := map[string]total{}
	appendNumbered(t, l, "s-", 5, 150, expected)
	dbtest.Eventually(t, 30*time.Second, "150 events applied", func() bool {
		return dbtest.Count(t, pool, `SELECT count(*) FROM applied`) == 150
	})
	appliedExactlyOnce(t, pool, 150)
	require.Equal(t, sortedTotals(expected), totalsIn(t, pool))
}

// Run returns after the batch in flight commits: the shutdown signal does
// not cancel the function's context or its statements.
func TestRunFinishesTheBatchInFlight(t *testing.T) {
	t.Parallel()
	l, pool := newProjectionDB(t, eventlog.Config{})
	appendNumbered(t, l, "s-", 1, 5, map[string]total{})
	readAllUntil(t, l, 5) // so that the first batch holds all five
	entered := make(chan struct{})
	release := make(chan struct{})
	var ctxErr error
	p, err := l.NewProjection(eventlog.ProjectionConfig{Name: "p", Handler: func(ctx context.Context, tx pgx.Tx, events []eventlog.Event) error {
		close(entered)
		<-release
		ctxErr = ctx.Err()
		return applyEvents(ctx, tx, events)
	}})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	<-entered
	require.ErrorIs(t, p.Run(context.Background()), eventlog.ErrAlreadyRunning)
	cancel()
	select {
	case err := <-done:
		t.Fatalf("Run returned (%v) while its batch was in flight", err)
	default:
	}
	close(release)
	require.NoError(t, <-done)
	require.NoError(t, ctxErr, "the function's context was cancelled by the shutdown")
	appliedExactlyOnce(t, pool, 5)
	cancelled, cancelNow := context.WithCancel(context.Background())
	cancelNow()
	require.NoError(t, p.Run(cancelled), "Run may run again once it returned")
}

// Rebuild replays the log into the projection and restores exactly the
// state the live projection had built, after a "bug" corrupted it, while
// the live projection keeps running.
func TestRebuildRestoresLiveState(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, pool := newProjectionDB(t, eventlog.Config{})
	p, err := l.NewProjection(eventlog.ProjectionConfig{Name: "totals", Handler: applyEvents, RebuildBatchSize: 64, PollInterval: 10 * time.Millisecond})
	require.NoError(t, err)
	expected := map[string]total{}
	appendNumbered(t, l, "acct-", 7, 200, expected)
	run(t, p)
	dbtest.Eventually(t, 30*time.Second, "the live projection to apply 200 events", func() bool {
		return dbtest.Count(t, pool, `SELECT count(*) FROM applied`) == 200
	})
	live := totalsIn(t, pool)
	require.Equal(t, sortedTotals(expected), live)

	_, err = pool.Exec(ctx, `UPDATE totals SET sum = sum * 7 WHERE stream = 'acct-1'; DELETE FROM totals WHERE stream = 'acct-2'; DELETE FROM applied WHERE position % 3 = 0`)
	require.NoError(t, err)
	require.NotEqual(t, live, totalsIn(t, pool))

	type step struct{ done, total int64 }
	var steps []step
	require.NoError(t, p.Rebuild(ctx, resetTables, func(done, total int64) { steps = append(steps, step{done, total}) }))
	require.Equal(t, live, totalsIn(t, pool))
	appliedExactlyOnce(t, pool, 200)
	require.Equal(t, []step{{0, 200}, {64, 200}, {128, 200}, {192, 200}, {200, 200}}, steps)

	// The live projection goes on from where the rebuild stopped.
	appendNumbered(t, l, "acct-", 7, 10, expected)
	dbtest.Eventually(t, 30*time.Second, "the live projection to apply 10 more", func() bool {
		return dbtest.Count(t, pool, `SELECT count(*) FROM applied`) == 210
	})
	appliedExactlyOnce(t, pool, 210)
	require.Equal(t, sortedTotals(expected), totalsIn(t, pool))

	require.ErrorIs(t, p.Rebuild(ctx, nil, nil), eventlog.ErrInvalidArgument)
}

// While a rebuild runs, the live projection does not apply anything: the
// rebuild is paused between two batches, events are appended, the live
// runner is seen trying (its "held off" log records) and failing to apply
// them; once the rebuild ends, every event is applied exactly once.
func TestRebuildHoldsOffLiveProjection(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, pool := newProjectionDB(t, eventlog.Config{})
	var paused atomic.Bool
	var appliedWhilePaused atomic.Int64
	handler := func(ctx context.Context, tx pgx.Tx, events []eventlog.Event) error {
		if paused.Load() {
			// The rebuild is stopped in its progress callback, so this
			// call is the live runner's.
			appliedWhilePaused.Add(int64(len(events)))
		}
		return applyEvents(ctx, tx, events)
	}
	heldOff := make(chan string, 100)
	p, err := l.NewProjection(eventlog.ProjectionConfig{
		Name: "totals", Handler: handler, RebuildBatchSize: 10, PollInterval: 5 * time.Millisecond,
		Logger: slog.New(&signalHandler{match: "held off", ch: heldOff}),
	})
	require.NoError(t, err)
	expected := map[string]total{}
	appendNumbered(t, l, "acct-", 3, 30, expected)
	run(t, p)
	dbtest.Eventually(t, 30*time.Second, "the live projection to apply 30 events", func() bool {
		return dbtest.Count(t, pool, `SELECT count(*) FROM applied`) == 30
	})

	atPause := make(chan struct{})
	resume := make(chan struct{})
	rebuilt := make(chan error, 1)
	go func() {
		first := true
		rebuilt <- p.Rebuild(ctx, resetTables, func(done, total int64) {
			if done > 0 && first {
				first = false
				paused.Store(true)
				close(atPause)
				<-resume
				paused.Store(false)
			}
		})
	}()
	<-atPause
	checkpoint, err := p.Checkpoint(ctx)
	require.NoError(t, err)
	require.Equal(t, 10, dbtest.Count(t, pool, `SELECT count(*) FROM applied`), "the rebuild's first batch")

	appendNumbered(t, l, "acct-", 3, 5, expected) // wakes the live runner
	for len(heldOff) > 0 {
		<-heldOff
	}
	// Two records after the drain: the second comes from an attempt that
	// began after the first was logged, so after the append had committed.
	for range 2 {
		select {
		case <-heldOff:
		case <-time.After(30 * time.Second):
			t.Fatal("the live runner never tried to run during the rebuild")
		}
	}
	require.Zero(t, appliedWhilePaused.Load(), "the live projection ran during the rebuild")
	require.Equal(t, 10, dbtest.Count(t, pool, `SELECT count(*) FROM applied`))
	after, err := p.Checkpoint(ctx)
	require.NoError(t, err)
	require.Equal(t, checkpoint, after)

	close(resume)
	require.NoError(t, <-rebuilt)
	dbtest.Eventually(t, 30*time.Second, "35 events applied", func() bool {
		return dbtest.Count(t, pool, `SELECT count(*) FROM applied`) == 35
	})
	appliedExactlyOnce(t, pool, 35)
	require.Equal(t, sortedTotals(expected), totalsIn(t, pool))
}

// beforeTxRead is a pgx tracer that calls inject, once, when a
// transaction is about to send a batch that reads the log after
// pg_stat_activity (the read of a projection's batch).
type beforeTxRead struct {
	armed  atomic.Bool
	inject func(context.Context)
}

func (b *beforeTxRead) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	return ctx
}
func (b *beforeTxRead) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData)     {}
func (b *beforeTxRead) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (b *beforeTxRead) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}
func (b *beforeTxRead) TraceBatchStart(ctx context.Context, conn *pgx.Conn, data pgx.TraceBatchStartData) context.Context {
	q := data.Batch.QueuedQueries
	if conn.PgConn().TxStatus() == 'T' && len(q) == 2 && strings.Contains(q[0].SQL, "pg_stat_activity") &&
		strings.Contains(q[1].SQL, "event_log") && b.armed.CompareAndSwap(true, false) {
		b.inject(ctx)
	}
	return ctx
}

// A projection whose function appends to the log sees those events in a
// later batch, even when an append with a newer transaction id commits
// between the batch taking its transaction id (locking the checkpoint) and
// reading the log. The batch's own id is never in its snapshot's list of
// running transactions, so the horizon must be capped at it: otherwise the
// batch read the newer event, moved its checkpoint past its own id, and
// skipped its own appends for good.
func TestProjectionSeesItsOwnAppends(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := dbtest.Database(t, dbtest.Options{})
	otherLog, _ := logOn(t, url, nil)

	tracer := &beforeTxRead{inject: func(ctx context.Context) {
		_, err := otherLog.Append(ctx, "order-2", eventlog.NoStream, ev("order.placed", 2))
		require.NoError(t, err)
	}}
	l, pool := logOn(t, url, func(cfg *pgxpool.Config) { cfg.ConnConfig.Tracer = tracer })

	var seen []string
	p, err := l.NewProjection(eventlog.ProjectionConfig{Name: "audit", Handler: func(ctx context.Context, tx pgx.Tx, events []eventlog.Event) error {
		for _, e := range events {
			seen = append(seen, fmt.Sprintf("%s/%d", e.Stream, e.Version))
			if e.Type == "order.placed" {
				if _, err := l.AppendTx(ctx, tx, "audit-"+e.Stream, eventlog.NoStream, ev("audited", 0)); err != nil {
					return err
				}
			}
		}
		return nil
	}})
	require.NoError(t, err)

	_, err = l.Append(ctx, "order-1", eventlog.NoStream, ev("order.placed", 1))
	require.NoError(t, err)
	readAllUntil(t, l, 1)
	tracer.armed.Store(true)
	dbtest.Eventually(t, 30*time.Second, "the projection to reach the head of a log of 4 events", func() bool {
		_, err := p.CatchUp(ctx)
		require.NoError(t, err)
		checkpoint, err := p.Checkpoint(ctx)
		require.NoError(t, err)
		head, err := l.Head(ctx)
		require.NoError(t, err)
		return dbtest.Count(t, pool, `SELECT count(*) FROM wharf.event_log`) == 4 && checkpoint == head
	})
	require.False(t, tracer.armed.Load(), "the append was injected")
	require.ElementsMatch(t, []string{"order-1/1", "order-2/1", "audit-order-1/1", "audit-order-2/1"}, seen)
}

// A running projection whose batch applies the events below the horizon,
// while a committed event waits beyond it (held back by an older
// transaction that appends nothing), looks again soon, as it does after an
// empty batch: the wake-ups for the waiting event came before that batch,
// and none comes when the holder ends. Before, it slept a whole
// PollInterval (an hour here) with the event known to be there.
func TestProjectionLooksAgainSoonAfterABatchThatReachedAHeldTail(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// PollOnly: no LISTEN connection, whose wake-up when it connects
	// would end the wait by chance.
	l, pool := newProjectionDB(t, eventlog.Config{PollOnly: true})
	p, err := l.NewProjection(eventlog.ProjectionConfig{Name: "totals", Handler: applyEvents, PollInterval: time.Hour})
	require.NoError(t, err)

	early := begin(t, pool) // its id is below the holder's
	_, err = early.Exec(ctx, `SELECT pg_current_xact_id()`)
	require.NoError(t, err)
	holder := begin(t, pool)
	_, err = holder.Exec(ctx, `SELECT pg_current_xact_id()`)
	require.NoError(t, err)
	_, err = l.AppendTx(ctx, early, "below", eventlog.NoStream, ev("e", 1))
	require.NoError(t, err)
	require.NoError(t, early.Commit(ctx))
	_, err = l.Append(ctx, "beyond", eventlog.NoStream, ev("e", 2)) // before Run: no wake-up reaches it
	require.NoError(t, err)

	run(t, p)
	dbtest.Eventually(t, 30*time.Second, "the event below the horizon applied", func() bool {
		return dbtest.Count(t, pool, `SELECT count(*) FROM applied`) == 1
	})
	require.NoError(t, holder.Rollback(ctx))
	dbtest.Eventually(t, 10*time.Second, "the held event applied once its holder ended, without a wake-up", func() bool {
		return dbtest.Count(t, pool, `SELECT count(*) FROM applied`) == 2
	})
	appliedExactlyOnce(t, pool, 2)
}
