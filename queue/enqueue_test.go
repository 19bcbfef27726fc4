package queue_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/queue"
)

// Helpers of this file are prefixed "enq" so they cannot collide with those
// of the other test files of the package.

// enqRows counts the rows of wharf.queue and wharf.queue_payloads.
func enqRows(t testing.TB, pool *pgxpool.Pool) (rows, payloads int) {
	t.Helper()
	return dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue`),
		dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue_payloads`)
}

// enqRequireEmpty asserts that nothing at all was written.
func enqRequireEmpty(t testing.TB, pool *pgxpool.Pool) {
	t.Helper()
	rows, payloads := enqRows(t, pool)
	require.Zero(t, rows, "rows in wharf.queue")
	require.Zero(t, payloads, "rows in wharf.queue_payloads")
}

// enqQueueID returns the id of the stored row for (source, id), or 0.
func enqQueueID(t testing.TB, pool *pgxpool.Pool, source, id string) int64 {
	t.Helper()
	var qid int64
	err := pool.QueryRow(context.Background(),
		`SELECT coalesce((SELECT id FROM wharf.queue WHERE source = $1 AND event_id = $2), 0)`, source, id).Scan(&qid)
	require.NoError(t, err)
	return qid
}

// enqGateKey is the advisory lock the gate trigger waits for.
const enqGateKey = 0x656e715f67617465 // "enq_gate"

// enqInstallTriggers installs a BEFORE INSERT row trigger on wharf.queue
// that (a) makes the insert of event id "gate" wait for the advisory lock
// enqGateKey, so a test can hold a committer inside a write, and (b) raises
// for event id "poison" after counting the attempt in the sequence
// public.poison_seen (sequences are not rolled back, so the count survives
// the failed statement).
func enqInstallTriggers(t testing.TB, pool *pgxpool.Pool) {
	t.Helper()
	_, err := pool.Exec(context.Background(), fmt.Sprintf(`
CREATE SEQUENCE public.poison_seen;
CREATE FUNCTION public.enq_before_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.event_id = 'gate' THEN
        PERFORM pg_advisory_xact_lock_shared(%d);
    END IF;
    IF NEW.event_id = 'poison' THEN
        PERFORM nextval('public.poison_seen');
        RAISE EXCEPTION 'enq test trigger rejects poison';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER enq_before_insert BEFORE INSERT ON wharf.queue
    FOR EACH ROW EXECUTE FUNCTION public.enq_before_insert();`, int64(enqGateKey)))
	require.NoError(t, err)
}

// enqCloseGate takes the gate lock in a transaction of its own; the
// returned func opens the gate again.
func enqCloseGate(t testing.TB, pool *pgxpool.Pool) (open func()) {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(enqGateKey))
	require.NoError(t, err)
	var once sync.Once
	open = func() { once.Do(func() { require.NoError(t, tx.Rollback(ctx)) }) }
	t.Cleanup(open)
	return open
}

// enqWaitGateBlocked waits until a session of this database waits for the
// gate lock.
func enqWaitGateBlocked(t testing.TB, pool *pgxpool.Pool) {
	t.Helper()
	dbtest.Eventually(t, 20*time.Second, "an insert waiting at the gate", func() bool {
		return dbtest.Count(t, pool, `
SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND NOT granted
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`) == 1
	})
}

// enqGoroutines counts the goroutines whose traceback header shows state
// (e.g. "select"; "" for any) and whose stack contains every one of frames.
// Tests name their own function (or their goroutine, as in "created by ...
// in goroutine N") in frames, so goroutines of other tests running in
// parallel are not counted. It lets a test wait, without sleeping, until
// callers are parked inside the committer's hand-over.
func enqGoroutines(state string, frames ...string) int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var n int
next:
	for _, g := range strings.Split(string(buf), "\n\n") {
		header, _, _ := strings.Cut(g, "\n")
		if !strings.Contains(header, "["+state) {
			continue
		}
		for _, f := range frames {
			if !strings.Contains(g, f) {
				continue next
			}
		}
		n++
	}
	return n
}

// enqSyncOffPool returns a pool on a fresh database whose default
// synchronous_commit is off, with a probe trigger that records, for every
// row inserted into wharf.queue, the synchronous_commit setting the
// inserting transaction ran with.
func enqSyncOffPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	ctx := context.Background()
	setup := dbtest.Pool(t)
	var db string
	require.NoError(t, setup.QueryRow(ctx, `SELECT current_database()`).Scan(&db))
	_, err := setup.Exec(ctx, `ALTER DATABASE `+pgx.Identifier{db}.Sanitize()+` SET synchronous_commit = off`)
	require.NoError(t, err)
	_, err = setup.Exec(ctx, `
CREATE TABLE public.sync_probe (event_id text NOT NULL, setting text NOT NULL);
CREATE FUNCTION public.sync_probe() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.sync_probe VALUES (NEW.event_id, current_setting('synchronous_commit'));
    RETURN NULL;
END $$;
CREATE TRIGGER sync_probe AFTER INSERT ON wharf.queue
    FOR EACH ROW EXECUTE FUNCTION public.sync_probe();`)
	require.NoError(t, err)

	// setup's connections predate the ALTER; new ones get the new default.
	pool, err := pgxpool.New(ctx, setup.Config().ConnString())
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	var setting string
	require.NoError(t, pool.QueryRow(ctx, `SHOW synchronous_commit`).Scan(&setting))
	require.Equal(t, "off", setting, "the test database must default to synchronous_commit off")
	return pool
}

// enqProbe returns the recorded synchronous_commit setting per event id.
func enqProbe(t testing.TB, pool *pgxpool.Pool) map[string]string {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT event_id, setting FROM public.sync_probe`)
	require.NoError(t, err)
	got := map[string]string{}
	var id, setting string
	_, err = pgx.ForEachRow(rows, []any{&id, &setting}, func() error {
		got[id] = setting
		return nil
	})
	require.NoError(t, err)
	return got
}

func TestEnqueueReportsNewAndDuplicate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, pool := newQueue(t, queue.Config{})

	first, err := q.Enqueue(ctx, event("stripe", "evt_1"))
	require.NoError(t, err)
	require.False(t, first.Duplicate)
	require.Positive(t, first.QueueID)
	require.Equal(t, first.QueueID, enqQueueID(t, pool, "stripe", "evt_1"))

	// Same key, different body and type: a duplicate, and nothing changes.
	again := event("stripe", "evt_1")
	again.Type = "other.type"
	again.Body = []byte(`{"changed":true}`)
	dup, err := q.Enqueue(ctx, again)
	require.NoError(t, err)
	require.True(t, dup.Duplicate)
	require.Zero(t, dup.QueueID)
	rows, payloads := enqRows(t, pool)
	require.Equal(t, 1, rows)
	require.Equal(t, 1, payloads)
	require.Equal(t, 1, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue q JOIN wharf.queue_payloads p ON p.queue_id = q.id
		WHERE q.event_type = 'test.event' AND p.body = '{"id":"evt_1"}'::bytea`), "the first event's row must be left as it was")

	// The key is (source, event id): the same id from another source is new.
	other, err := q.Enqueue(ctx, event("github", "evt_1"))
	require.NoError(t, err)
	require.False(t, other.Duplicate)
	require.Positive(t, other.QueueID)
	require.NotEqual(t, first.QueueID, other.QueueID)
	require.Equal(t, other.QueueID, enqQueueID(t, pool, "github", "evt_1"))
	rows, payloads = enqRows(t, pool)
	require.Equal(t, 2, rows)
	require.Equal(t, 2, payloads)
	noOrphans(t, pool)
}

func TestEnqueueBatchOrderDuplicatesAndVerbatimPayloads(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, pool := newQueue(t, queue.Config{})

	binary := []byte{0x00, 0xff, 0xfe, 0x80, 0xc3, 0x28, '\n', 0x00, 0x1b, 0x7f}
	headers := http.Header{
		"X-Multi":          {"one", "two", "two", ""},
		"Content-Type":     {"application/octet-stream"},
		"x-lower-case":     {`quotes " and \ backslash`, "<html> & ünïcødé ✓"},
		"Stripe-Signature": {"t=1,v1=abc"},
	}
	zFirst := queue.NewEvent{Source: "s", ID: "z", Type: "bin", Body: binary, Headers: headers}
	empty := queue.NewEvent{Source: "s", ID: "a", Type: "empty", Body: []byte{}}
	mid := event("s", "m")
	zAgain := queue.NewEvent{Source: "s", ID: "z", Type: "later", Body: []byte("second z")}
	otherSource := event("t", "a")

	// Input order is not key order, so a result in key order would show.
	evs := []queue.NewEvent{zFirst, empty, mid, zAgain, otherSource}
	res, err := q.EnqueueBatch(ctx, evs)
	require.NoError(t, err)
	require.Len(t, res, len(evs))
	for i, want := range []bool{false, false, false, true, false} {
		require.Equal(t, want, res[i].Duplicate, "result %d (%s/%s)", i, evs[i].Source, evs[i].ID)
	}
	require.Zero(t, res[3].QueueID)
	for _, i := range []int{0, 1, 2, 4} {
		require.Equal(t, enqQueueID(t, pool, evs[i].Source, evs[i].ID), res[i].QueueID,
			"result %d must carry the id of %s/%s", i, evs[i].Source, evs[i].ID)
	}
	rows, payloads := enqRows(t, pool)
	require.Equal(t, 4, rows)
	require.Equal(t, 4, payloads)

	fetched, err := q.Fetch(ctx, queue.FetchParams{Limit: 100})
	require.NoError(t, err)
	require.Len(t, fetched, 4)
	byKey := map[string]*queue.Event{}
	for _, ev := range fetched {
		byKey[ev.Source+"/"+ev.ID] = ev
	}

	z := byKey["s/z"]
	require.NotNil(t, z)
	require.Equal(t, "bin", z.Type, "a key repeated in a batch stores its first occurrence")
	require.True(t, bytes.Equal(binary, z.Body), "binary body must come back byte for byte: got %x", z.Body)
	require.Equal(t, headers, z.Headers)

	a := byKey["s/a"]
	require.NotNil(t, a)
	require.NotNil(t, a.Body, "an empty body is not a missing one")
	require.Empty(t, a.Body)
	require.Empty(t, a.Headers)
	require.Equal(t, 1, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue_payloads WHERE queue_id = $1 AND body IS NOT NULL AND octet_length(body) = 0`, res[1].QueueID))

	require.Equal(t, []byte(`{"id":"m"}`), byKey["s/m"].Body)
	require.Equal(t, []byte(`{"id":"a"}`), byKey["t/a"].Body)
	require.Equal(t, res[4].QueueID, byKey["t/a"].QueueID)

	// One invalid event fails the whole batch and writes nothing.
	bad := event("s", "bad")
	bad.Type = ""
	res, err = q.EnqueueBatch(ctx, []queue.NewEvent{event("s", "ok-1"), bad, event("s", "ok-2")})
	require.ErrorIs(t, err, queue.ErrInvalidEvent)
	var ie *queue.InvalidEventError
	require.ErrorAs(t, err, &ie)
	require.Equal(t, "type", ie.Field)
	require.Equal(t, "bad", ie.ID)
	require.Nil(t, res)
	rows, payloads = enqRows(t, pool)
	require.Equal(t, 4, rows, "an invalid batch must write no row")
	require.Equal(t, 4, payloads, "an invalid batch must write no payload")
	require.Zero(t, enqQueueID(t, pool, "s", "ok-1"))
	require.Zero(t, enqQueueID(t, pool, "s", "ok-2"))
}

func TestEnqueueTxVisibleOnlyAfterCommit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, pool := newQueue(t, queue.Config{})

	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	res, err := q.EnqueueTx(ctx, tx, event("s", "committed"))
	require.NoError(t, err)
	require.False(t, res.Duplicate)
	require.Positive(t, res.QueueID)
	var inside int
	require.NoError(t, tx.QueryRow(ctx, `SELECT count(*) FROM wharf.queue WHERE event_id = 'committed'`).Scan(&inside))
	require.Equal(t, 1, inside, "the caller's own transaction sees the row")
	enqRequireEmpty(t, pool) // nobody else does yet
	require.NoError(t, tx.Commit(ctx))
	require.Equal(t, res.QueueID, enqQueueID(t, pool, "s", "committed"))
	rows, payloads := enqRows(t, pool)
	require.Equal(t, 1, rows)
	require.Equal(t, 1, payloads)

	tx, err = pool.Begin(ctx)
	require.NoError(t, err)
	res, err = q.EnqueueTx(ctx, tx, event("s", "rolled-back"))
	require.NoError(t, err)
	require.False(t, res.Duplicate)
	require.NoError(t, tx.Rollback(ctx))
	require.Zero(t, enqQueueID(t, pool, "s", "rolled-back"))
	rows, payloads = enqRows(t, pool)
	require.Equal(t, 1, rows, "a rolled-back EnqueueTx leaves no row")
	require.Equal(t, 1, payloads, "a rolled-back EnqueueTx leaves no payload")

	// A duplicate inside a transaction is reported as one.
	tx, err = pool.Begin(ctx)
	require.NoError(t, err)
	res, err = q.EnqueueTx(ctx, tx, event("s", "committed"))
	require.NoError(t, err)
	require.True(t, res.Duplicate)
	require.NoError(t, tx.Commit(ctx))
	rows, _ = enqRows(t, pool)
	require.Equal(t, 1, rows)
	noOrphans(t, pool)
}

func TestEnqueueTxSetsSynchronousCommit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := enqSyncOffPool(t)
	q, err := queue.New(pool, queue.Config{})
	require.NoError(t, err)
	t.Cleanup(q.Close)

	conn, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer conn.Release()
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	var setting string
	require.NoError(t, tx.QueryRow(ctx, `SELECT current_setting('synchronous_commit')`).Scan(&setting))
	require.Equal(t, "off", setting, "the caller's transaction starts with synchronous_commit off")
	_, err = q.EnqueueTx(ctx, tx, event("s", "tx"))
	require.NoError(t, err)
	require.NoError(t, tx.QueryRow(ctx, `SELECT current_setting('synchronous_commit')`).Scan(&setting))
	require.Equal(t, "on", setting, "EnqueueTx must turn synchronous_commit on for the caller's transaction")
	require.NoError(t, tx.Commit(ctx))

	// The setting is the transaction's only: the session keeps its own.
	require.NoError(t, conn.QueryRow(ctx, `SHOW synchronous_commit`).Scan(&setting))
	require.Equal(t, "off", setting, "EnqueueTx must not change the session's setting")
	require.Equal(t, map[string]string{"tx": "on"}, enqProbe(t, pool))
}

func TestEnqueueAndBatchWriteWithSynchronousCommit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := enqSyncOffPool(t)
	q, err := queue.New(pool, queue.Config{})
	require.NoError(t, err)
	t.Cleanup(q.Close)

	// A single Enqueue, then concurrent ones that share group commits.
	_, err = q.Enqueue(ctx, event("s", "single"))
	require.NoError(t, err)
	want := map[string]string{"single": "on"}
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for i := range 32 {
		id := fmt.Sprintf("group-%02d", i)
		want[id] = "on"
		wg.Go(func() {
			_, err := q.Enqueue(ctx, event("s", id))
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}

	var batch []queue.NewEvent
	for i := range 10 {
		id := fmt.Sprintf("batch-%02d", i)
		want[id] = "on"
		batch = append(batch, event("s", id))
	}
	_, err = q.EnqueueBatch(ctx, batch)
	require.NoError(t, err)

	require.Equal(t, want, enqProbe(t, pool), "every row must be written by a transaction with synchronous_commit on")
	rows, _ := enqRows(t, pool)
	require.Equal(t, len(want), rows)
}

func TestEnqueueRejectsInvalidEvents(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, pool := newQueue(t, queue.Config{})

	with := func(f func(ev *queue.NewEvent)) queue.NewEvent {
		ev := event("src", "evt")
		f(&ev)
		return ev
	}
	cases := []struct {
		name  string
		ev    queue.NewEvent
		field string
	}{
		{"empty source", with(func(ev *queue.NewEvent) { ev.Source = "" }), "source"},
		{"empty id", with(func(ev *queue.NewEvent) { ev.ID = "" }), "id"},
		{"empty type", with(func(ev *queue.NewEvent) { ev.Type = "" }), "type"},
		{"NUL in source", with(func(ev *queue.NewEvent) { ev.Source = "s\x00rc" }), "source"},
		{"NUL in id", with(func(ev *queue.NewEvent) { ev.ID = "e\x00vt" }), "id"},
		{"NUL in type", with(func(ev *queue.NewEvent) { ev.Type = "t\x00" }), "type"},
		{"NUL in ordering key", with(func(ev *queue.NewEvent) { ev.OrderingKey = "\x00" }), "ordering key"},
		{"NUL in header name", with(func(ev *queue.NewEvent) { ev.Headers = http.Header{"X-\x00": {"v"}} }), "headers"},
		{"NUL in header value", with(func(ev *queue.NewEvent) { ev.Headers = http.Header{"X-A": {"ok", "a\x00b"}} }), "headers"},
		{"invalid UTF-8 in source", with(func(ev *queue.NewEvent) { ev.Source = "src\xff" }), "source"},
		{"invalid UTF-8 in id", with(func(ev *queue.NewEvent) { ev.ID = "\xc3\x28" }), "id"},
		{"invalid UTF-8 in type", with(func(ev *queue.NewEvent) { ev.Type = "t\x80" }), "type"},
		{"invalid UTF-8 in ordering key", with(func(ev *queue.NewEvent) { ev.OrderingKey = "k\xfe" }), "ordering key"},
		{"invalid UTF-8 in header name", with(func(ev *queue.NewEvent) { ev.Headers = http.Header{"X-\xff": {"v"}} }), "headers"},
		{"invalid UTF-8 in header value", with(func(ev *queue.NewEvent) { ev.Headers = http.Header{"X-A": {"\xff"}} }), "headers"},
		{"id too long", with(func(ev *queue.NewEvent) { ev.ID = strings.Repeat("i", queue.MaxIDLen+1) }), "id"},
		{"source too long", with(func(ev *queue.NewEvent) { ev.Source = strings.Repeat("s", queue.MaxSourceLen+1) }), "source"},
		{"type too long", with(func(ev *queue.NewEvent) { ev.Type = strings.Repeat("t", queue.MaxTypeLen+1) }), "type"},
		{"ordering key too long", with(func(ev *queue.NewEvent) { ev.OrderingKey = strings.Repeat("k", queue.MaxOrderingKeyLen+1) }), "ordering key"},
		{"nil body", with(func(ev *queue.NewEvent) { ev.Body = nil }), "body"},
		{"type is AnyType", with(func(ev *queue.NewEvent) { ev.Type = queue.AnyType }), "type"},
		{"negative max attempts", with(func(ev *queue.NewEvent) { ev.MaxAttempts = -1 }), "max attempts"},
		{"max attempts over the limit", with(func(ev *queue.NewEvent) { ev.MaxAttempts = queue.MaxMaxAttempts + 1 }), "max attempts"},
	}
	check := func(t *testing.T, err error, tc struct {
		name  string
		ev    queue.NewEvent
		field string
	}) {
		t.Helper()
		require.ErrorIs(t, err, queue.ErrInvalidEvent)
		var ie *queue.InvalidEventError
		require.ErrorAs(t, err, &ie)
		require.Equal(t, tc.field, ie.Field, "error: %v", err)
		require.Equal(t, tc.ev.ID, ie.ID)
		require.Equal(t, tc.ev.Source, ie.Source)
		require.NotEmpty(t, ie.Reason)
		enqRequireEmpty(t, pool)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res, err := q.Enqueue(ctx, tc.ev)
			require.Zero(t, res)
			check(t, err, tc)

			tx, err := pool.Begin(ctx)
			require.NoError(t, err)
			_, err = q.EnqueueTx(ctx, tx, tc.ev)
			check(t, err, tc)
			// The caller's transaction is left usable: nothing was sent.
			require.NoError(t, tx.Commit(ctx))
			enqRequireEmpty(t, pool)

			valid := event("src", "valid-neighbour")
			_, err = q.EnqueueBatch(ctx, []queue.NewEvent{valid, tc.ev})
			check(t, err, tc)
		})
	}

	// The limits themselves are accepted: no off-by-one.
	atLimit := queue.NewEvent{
		Source:      strings.Repeat("s", queue.MaxSourceLen),
		ID:          strings.Repeat("i", queue.MaxIDLen),
		Type:        strings.Repeat("t", queue.MaxTypeLen),
		OrderingKey: strings.Repeat("k", queue.MaxOrderingKeyLen),
		Body:        []byte{},
		MaxAttempts: queue.MaxMaxAttempts,
	}
	res, err := q.Enqueue(ctx, atLimit)
	require.NoError(t, err)
	require.False(t, res.Duplicate)
	require.Equal(t, 1, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue WHERE max_attempts = $1`, queue.MaxMaxAttempts))
}

func TestNewRejectsInvalidConfig(t *testing.T) {
	t.Parallel()
	pool := dbtest.Pool(t)

	_, err := queue.New(nil, queue.Config{})
	require.ErrorIs(t, err, queue.ErrInvalidConfig, "nil pool")

	for name, cfg := range map[string]queue.Config{
		"schema with upper case and dash": {Schema: "Bad-Name"},
		"schema with a quote":             {Schema: `wharf"; DROP TABLE x; --`},
		"schema with pg_ prefix":          {Schema: "pg_wharf"},
		"schema too long":                 {Schema: strings.Repeat("s", 64)},
		"negative MaxAttempts":            {MaxAttempts: -1},
		"MaxAttempts over the limit":      {MaxAttempts: queue.MaxMaxAttempts + 1},
		"LeaseDuration under 1s":          {LeaseDuration: 500 * time.Millisecond},
		"negative LeaseDuration":          {LeaseDuration: -time.Minute},
		"negative MaxCommitBatch":         {MaxCommitBatch: -1},
		"MaxCommitBatch over the limit":   {MaxCommitBatch: 10_001},
		"negative Committers":             {Committers: -1},
		"Committers over the limit":       {Committers: 65},
		"Backoff Initial over Max":        {Backoff: queue.Backoff{Initial: 2 * time.Hour, Max: time.Hour}},
		"Backoff Multiplier under 1":      {Backoff: queue.Backoff{Multiplier: 0.5}},
		"Backoff Jitter over 1":           {Backoff: queue.Backoff{Jitter: 1.5}},
	} {
		q, err := queue.New(pool, cfg)
		require.ErrorIs(t, err, queue.ErrInvalidConfig, name)
		require.Nil(t, q, name)
	}

	// And the zero Config is valid.
	q, err := queue.New(pool, queue.Config{})
	require.NoError(t, err)
	q.Close()
}

func TestEnqueueInvalidEventFailsOnlyItsCaller(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, pool := newQueue(t, queue.Config{})

	const n = 64
	const badIndex = 17
	start := make(chan struct{})
	results := make([]queue.EnqueueResult, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		ev := event("s", fmt.Sprintf("e%02d", i))
		if i == badIndex {
			ev.Headers = http.Header{"X-Bad": {"\x00"}}
		}
		wg.Go(func() {
			<-start
			results[i], errs[i] = q.Enqueue(ctx, ev)
		})
	}
	close(start)
	wg.Wait()

	ids := map[int64]bool{}
	for i := range n {
		if i == badIndex {
			require.ErrorIs(t, errs[i], queue.ErrInvalidEvent)
			continue
		}
		require.NoError(t, errs[i], "event %d", i)
		require.False(t, results[i].Duplicate)
		require.Equal(t, enqQueueID(t, pool, "s", fmt.Sprintf("e%02d", i)), results[i].QueueID)
		ids[results[i].QueueID] = true
	}
	require.Len(t, ids, n-1)
	rows, payloads := enqRows(t, pool)
	require.Equal(t, n-1, rows)
	require.Equal(t, n-1, payloads)
	require.Zero(t, enqQueueID(t, pool, "s", fmt.Sprintf("e%02d", badIndex)))
}

func TestEnqueueRowRejectedByDatabaseFailsOnlyItsCaller(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, pool := newQueue(t, queue.Config{Committers: 1, MaxCommitBatch: 256})
	enqInstallTriggers(t, pool)

	// Hold the only committer inside the write of "gate", so the 64 calls
	// below all queue up and are gathered into one batch when it returns.
	open := enqCloseGate(t, pool)
	gateDone := make(chan error, 1)
	go func() {
		_, err := q.Enqueue(ctx, event("s", "gate"))
		gateDone <- err
	}()
	enqWaitGateBlocked(t, pool)

	const n = 64
	ids := make([]string, n)
	for i := range n - 1 {
		ids[i] = fmt.Sprintf("e%02d", i)
	}
	ids[n-1] = "poison" // passes Go validation; the trigger rejects it
	rand.Shuffle(n, func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	start := make(chan struct{})
	results := make([]queue.EnqueueResult, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			results[i], errs[i] = q.Enqueue(ctx, event("s", ids[i]))
		})
	}
	close(start)
	// Submit blocks in a select: the n callers handing over their event and
	// the gate's caller waiting for its reply (no other can be received
	// while the only committer is held).
	dbtest.Eventually(t, 20*time.Second, "all callers waiting to hand over their event", func() bool {
		return enqGoroutines("select", "(*committer).submit", "TestEnqueueRowRejectedByDatabaseFailsOnlyItsCaller.") == n+1
	})
	open()
	wg.Wait()
	require.NoError(t, <-gateDone)

	stored := map[int64]bool{}
	for i, id := range ids {
		if id == "poison" {
			require.Error(t, errs[i])
			require.ErrorContains(t, errs[i], "enq test trigger rejects poison")
			require.NotErrorIs(t, errs[i], queue.ErrInvalidEvent)
			continue
		}
		require.NoError(t, errs[i], "event %s", id)
		require.False(t, results[i].Duplicate, "event %s", id)
		require.Positive(t, results[i].QueueID, "event %s", id)
		require.Equal(t, enqQueueID(t, pool, "s", id), results[i].QueueID, "event %s", id)
		stored[results[i].QueueID] = true
	}
	require.Len(t, stored, n-1)
	rows, payloads := enqRows(t, pool)
	require.Equal(t, n, rows, "the 63 good events and the gate are stored")
	require.Equal(t, n, payloads)
	require.Zero(t, enqQueueID(t, pool, "s", "poison"))
	noOrphans(t, pool)

	// The poison row was tried twice: once in the shared batch that failed,
	// once alone when the committer fell back to row-by-row.
	require.Equal(t, 2, dbtest.Count(t, pool, `SELECT last_value FROM public.poison_seen`),
		"the poison row must have shared a batch that failed and been retried alone")
}

func TestEnqueueBatchOverlappingKeysDoNotDeadlock(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, pool := newQueue(t, queue.Config{})

	const (
		workers   = 8
		calls     = 20
		batchSize = 50
		poolSize  = 200
	)
	var (
		mu      sync.Mutex
		newHits = map[string]int{}
		seen    = map[string]bool{}
		qids    = map[int64]string{}
	)
	start := make(chan struct{})
	errs := make(chan error, workers*calls)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			<-start
			for range calls {
				evs := make([]queue.NewEvent, batchSize)
				for i, k := range rand.Perm(poolSize)[:batchSize] {
					evs[i] = event("s", fmt.Sprintf("id-%03d", k))
				}
				res, err := q.EnqueueBatch(ctx, evs)
				if err != nil {
					errs <- err
					continue
				}
				mu.Lock()
				for i, r := range res {
					seen[evs[i].ID] = true
					if !r.Duplicate {
						newHits[evs[i].ID]++
						qids[r.QueueID] = evs[i].ID
					}
				}
				mu.Unlock()
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err, "no batch may fail (a deadlock surfaces as SQLSTATE 40P01)")
	}

	require.Len(t, seen, poolSize, "the random draws cover every id")
	rows, payloads := enqRows(t, pool)
	require.Equal(t, poolSize, rows)
	require.Equal(t, poolSize, payloads)
	require.Len(t, newHits, poolSize)
	for id, n := range newHits {
		require.Equal(t, 1, n, "id %s reported new %d times", id, n)
	}
	require.Len(t, qids, poolSize)
	for qid, id := range qids {
		require.Equal(t, qid, enqQueueID(t, pool, "s", id))
	}
}

func TestEnqueueAfterClose(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, pool := newQueue(t, queue.Config{})

	_, err := q.Enqueue(ctx, event("s", "before"))
	require.NoError(t, err)
	q.Close()
	_, err = q.Enqueue(ctx, event("s", "after"))
	require.ErrorIs(t, err, queue.ErrClosed)
	require.Zero(t, enqQueueID(t, pool, "s", "after"))
	q.Close() // twice is fine

	// A queue closed before its first Enqueue.
	q2, err := queue.New(pool, queue.Config{})
	require.NoError(t, err)
	q2.Close()
	_, err = q2.Enqueue(ctx, event("s", "never"))
	require.ErrorIs(t, err, queue.ErrClosed)
	rows, payloads := enqRows(t, pool)
	require.Equal(t, 1, rows)
	require.Equal(t, 1, payloads)
}

// enqWaitAll waits for wg, failing (instead of hanging) if it takes absurdly
// long: a hang is the bug being tested for.
func enqWaitAll(t testing.TB, wg *sync.WaitGroup, what string) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatalf("%s hung", what)
	}
}

func TestCloseAnswersWaitingEnqueues(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, pool := newQueue(t, queue.Config{Committers: 1})
	enqInstallTriggers(t, pool)

	// The committer is held inside the write of "gate" while n callers wait
	// to hand over their events and Close is called.
	open := enqCloseGate(t, pool)
	var wg sync.WaitGroup
	var gateErr error
	wg.Go(func() { _, gateErr = q.Enqueue(ctx, event("s", "gate")) })
	enqWaitGateBlocked(t, pool)

	const n = 100
	errs := make([]error, n)
	results := make([]queue.EnqueueResult, n)
	for i := range n {
		wg.Go(func() { results[i], errs[i] = q.Enqueue(ctx, event("s", fmt.Sprintf("w%03d", i))) })
	}
	const me = "TestCloseAnswersWaitingEnqueues."
	// As in TestEnqueueRowRejectedByDatabaseFailsOnlyItsCaller: n callers
	// handing over their event, and the gate's caller waiting for its reply.
	dbtest.Eventually(t, 20*time.Second, "all callers waiting", func() bool {
		return enqGoroutines("select", "(*committer).submit", me) == n+1
	})
	var closeWG sync.WaitGroup
	closeWG.Go(func() { q.Close() })
	dbtest.Eventually(t, 20*time.Second, "Close waiting for the callers", func() bool {
		return enqGoroutines("", "(*committer).close", me) == 1
	})
	open()
	enqWaitAll(t, &closeWG, "Close")
	// Close returned: every write it waited for is committed.
	require.Equal(t, n+1, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue`))
	enqWaitAll(t, &wg, "Enqueue")
	require.NoError(t, gateErr)
	for i := range n {
		require.NoError(t, errs[i], "caller %d was waiting when Close was called", i)
		require.False(t, results[i].Duplicate)
		require.Equal(t, enqQueueID(t, pool, "s", fmt.Sprintf("w%03d", i)), results[i].QueueID)
	}
	_, err := q.Enqueue(ctx, event("s", "late"))
	require.ErrorIs(t, err, queue.ErrClosed)
	rows, payloads := enqRows(t, pool)
	require.Equal(t, n+1, rows)
	require.Equal(t, n+1, payloads)
}

func TestCloseRacingEnqueues(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, pool := newQueue(t, queue.Config{})

	const n = 200
	start := make(chan struct{})
	errs := make([]error, n)
	results := make([]queue.EnqueueResult, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			results[i], errs[i] = q.Enqueue(ctx, event("s", fmt.Sprintf("r%03d", i)))
		})
	}
	wg.Go(func() {
		<-start
		q.Close()
	})
	close(start)
	enqWaitAll(t, &wg, "Enqueue racing Close")

	var ok int
	for i := range n {
		id := fmt.Sprintf("r%03d", i)
		if errs[i] != nil {
			require.ErrorIs(t, errs[i], queue.ErrClosed, "event %s", id)
			require.Zero(t, enqQueueID(t, pool, "s", id), "event %s failed but was stored", id)
			continue
		}
		ok++
		require.False(t, results[i].Duplicate)
		require.Positive(t, results[i].QueueID)
		require.Equal(t, results[i].QueueID, enqQueueID(t, pool, "s", id), "event %s reported stored", id)
	}
	rows, payloads := enqRows(t, pool)
	require.Equal(t, ok, rows)
	require.Equal(t, ok, payloads)
}

// Close racing the first Enqueue of a queue, the one that starts the
// committers: Close must not wait for committers that a concurrent first
// Enqueue may still be starting, a WaitGroup misuse that the race detector
// reports (run with -race). Every call still gets a true answer.
func TestCloseRacingTheFirstEnqueue(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := dbtest.Pool(t)
	for round := range 50 {
		q, err := queue.New(pool, queue.Config{})
		require.NoError(t, err)
		start := make(chan struct{})
		const n = 4
		errs := make([]error, n)
		results := make([]queue.EnqueueResult, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				<-start
				results[i], errs[i] = q.Enqueue(ctx, event("s", fmt.Sprintf("f%02d-%d", round, i)))
			})
		}
		wg.Go(func() {
			<-start
			q.Close()
		})
		close(start)
		enqWaitAll(t, &wg, "the first Enqueue racing Close")
		for i := range n {
			id := fmt.Sprintf("f%02d-%d", round, i)
			if errs[i] != nil {
				require.ErrorIs(t, errs[i], queue.ErrClosed, "event %s", id)
				require.Zero(t, enqQueueID(t, pool, "s", id), "event %s failed but was stored", id)
				continue
			}
			require.Equal(t, results[i].QueueID, enqQueueID(t, pool, "s", id), "event %s reported stored", id)
		}
	}
}

// enqGoroutineID returns the calling goroutine's id, as tracebacks print it.
func enqGoroutineID() string {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	id, _, _ := strings.Cut(strings.TrimPrefix(string(buf), "goroutine "), " ")
	return id
}

func TestEnqueueWithCancelledContext(t *testing.T) {
	t.Parallel()
	q, pool := newQueue(t, queue.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()

	// Before the committers have started.
	_, err := q.Enqueue(ctx, event("s", "first"))
	require.ErrorIs(t, err, context.Canceled)
	_, err = q.EnqueueBatch(ctx, []queue.NewEvent{event("s", "batch")})
	require.ErrorIs(t, err, context.Canceled)
	enqRequireEmpty(t, pool)

	res, err := q.Enqueue(context.Background(), event("s", "live-1"))
	require.NoError(t, err)
	require.False(t, res.Duplicate)

	// With both committers waiting for work, Enqueue may hand the event
	// over before it notices the cancellation (select picks at random), or
	// not: repeat so both paths run. Neither may store the event.
	me := enqGoroutineID()
	dbtest.Eventually(t, 20*time.Second, "both committers idle", func() bool {
		return enqGoroutines("chan receive", "(*committer).run", "in goroutine "+me+"\n") == queue.DefaultCommitters
	})
	for i := range 100 {
		_, err := q.Enqueue(ctx, event("s", fmt.Sprintf("c%03d", i)))
		require.ErrorIs(t, err, context.Canceled)
	}

	// The queue still works afterwards.
	res, err = q.Enqueue(context.Background(), event("s", "live-2"))
	require.NoError(t, err)
	require.False(t, res.Duplicate)
	// Close waits for every write a committer has started, so a cancelled
	// event written late would be in the table by now.
	q.Close()
	rows, payloads := enqRows(t, pool)
	require.Equal(t, 2, rows)
	require.Equal(t, 2, payloads)
	require.Equal(t, 2, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.queue WHERE event_id IN ('live-1', 'live-2')`))
}

func TestStats(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, _ := newQueue(t, queue.Config{})

	ev := func(source, id, typ string, f func(*queue.NewEvent)) queue.NewEvent {
		e := event(source, id)
		e.Type = typ
		if f != nil {
			f(&e)
		}
		return e
	}
	later := func(e *queue.NewEvent) { e.RunAt = time.Now().Add(time.Hour) }
	once := func(e *queue.NewEvent) { e.MaxAttempts = 1 }
	_, err := q.EnqueueBatch(ctx, []queue.NewEvent{
		ev("a", "a-due-1", "due", nil),
		ev("a", "a-due-2", "due", nil),
		ev("a", "a-sched", "due", later),
		ev("a", "a-run", "run", nil),
		ev("a", "a-exh", "exh", once),
		ev("b", "b-due", "due", nil),
		ev("b", "b-sched-1", "due", later),
		ev("b", "b-sched-2", "run", later),
		ev("b", "b-run", "run", nil),
	})
	require.NoError(t, err)

	running, err := q.Fetch(ctx, queue.FetchParams{Limit: 10, Only: []queue.Kind{{Source: "a", Type: "run"}, {Source: "b", Type: "run"}}})
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"a-run", "b-run"}, enqIDs(running))

	exh, err := q.Fetch(ctx, queue.FetchParams{Limit: 10, Only: []queue.Kind{{Source: "a", Type: "exh"}}})
	require.NoError(t, err)
	require.Len(t, exh, 1)
	require.Equal(t, 1, exh[0].MaxAttempts)
	exhausted, err := q.Retry(ctx, exh[0], errors.New("boom"))
	require.NoError(t, err)
	require.True(t, exhausted)

	st, err := q.Stats(ctx)
	require.NoError(t, err)
	require.Equal(t, queue.SourceStats{Due: 3, Scheduled: 3, Running: 2, Exhausted: 1}, st.SourceStats)
	require.Equal(t, map[string]queue.SourceStats{
		"a": {Due: 2, Scheduled: 1, Running: 1, Exhausted: 1},
		"b": {Due: 1, Scheduled: 2, Running: 1, Exhausted: 0},
	}, st.BySource)
	require.Equal(t, map[queue.Kind]queue.SourceStats{
		{Source: "a", Type: "due"}: {Due: 2, Scheduled: 1},
		{Source: "a", Type: "run"}: {Running: 1},
		{Source: "a", Type: "exh"}: {Exhausted: 1},
		{Source: "b", Type: "due"}: {Due: 1, Scheduled: 1},
		{Source: "b", Type: "run"}: {Scheduled: 1, Running: 1},
	}, st.ByKind)
	require.Equal(t, map[queue.Kind]int64{
		{Source: "a", Type: "due"}: 3, {Source: "b", Type: "due"}: 2, {Source: "b", Type: "run"}: 1,
	}, st.Unhandled, "waiting events stored without a handler name")
	require.Positive(t, st.OldestDueAge)

	// Fetching everything returns the due events only: neither the
	// scheduled ones nor the exhausted one.
	all, err := q.Fetch(ctx, queue.FetchParams{Limit: 1000})
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"a-due-1", "a-due-2", "b-due"}, enqIDs(all))
	more, err := q.Fetch(ctx, queue.FetchParams{Limit: 1000})
	require.NoError(t, err)
	require.Empty(t, more)

	st, err = q.Stats(ctx)
	require.NoError(t, err)
	require.Equal(t, queue.SourceStats{Due: 0, Scheduled: 3, Running: 5, Exhausted: 1}, st.SourceStats)
	require.Equal(t, map[string]queue.SourceStats{
		"a": {Due: 0, Scheduled: 1, Running: 3, Exhausted: 1},
		"b": {Due: 0, Scheduled: 2, Running: 2, Exhausted: 0},
	}, st.BySource)
	require.Zero(t, st.OldestDueAge, "no event is due")
}

func enqIDs(evs []*queue.Event) []string {
	ids := make([]string, len(evs))
	for i, ev := range evs {
		ids[i] = ev.ID
	}
	return ids
}
