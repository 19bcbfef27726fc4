package eventlog_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/eventlog"
	"github.com/wharfhq/wharf/internal/dbtest"
)

func TestAppendAndReadStream(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, _ := newLog(t, 4, eventlog.Config{})

	meta := eventlog.Metadata{
		CorrelationID: "corr-1", CausationID: "cause-1", SourceEventID: "evt_1", Actor: "stripe",
		Extra: map[string]string{"ip": "10.0.0.1"},
	}
	res, err := l.Append(ctx, "order-1", eventlog.NoStream,
		eventlog.NewEvent{Type: "order.placed", Data: []byte(`{"total": 1250, "items": ["a"]}`), Metadata: meta},
		ev("order.line", 1), ev("order.line", 2))
	require.NoError(t, err)
	require.Equal(t, int64(3), res.Version)
	require.Len(t, res.Positions, 3)
	require.NotZero(t, res.TxID)
	require.Less(t, res.Positions[0], res.Positions[1])
	require.Less(t, res.Positions[1], res.Positions[2])

	res2, err := l.Append(ctx, "order-1", 3, ev("order.paid", 4))
	require.NoError(t, err)
	require.Equal(t, int64(4), res2.Version)
	require.Greater(t, res2.Positions[0], res.Positions[2])

	events, err := l.ReadStream(ctx, "order-1", 0, 0)
	require.NoError(t, err)
	require.Len(t, events, 4)
	for i, e := range events {
		require.Equal(t, int64(i+1), e.Version)
		require.Equal(t, "order-1", e.Stream)
	}
	require.Equal(t, "order.placed", events[0].Type)
	require.JSONEq(t, `{"total": 1250, "items": ["a"]}`, string(events[0].Data))
	require.Equal(t, meta, events[0].Metadata)
	require.Equal(t, eventlog.Metadata{}, events[1].Metadata)
	require.Equal(t, res.Positions[0], events[0].Position)
	require.Equal(t, res.TxID, events[0].TxID)
	require.Equal(t, res2.TxID, events[3].TxID)
	require.False(t, events[0].RecordedAt.IsZero())

	// From a version, with a limit.
	events, err = l.ReadStream(ctx, "order-1", 2, 2)
	require.NoError(t, err)
	require.Len(t, events, 2)
	require.Equal(t, []int64{2, 3}, []int64{events[0].Version, events[1].Version})

	version, err := l.StreamVersion(ctx, "order-1")
	require.NoError(t, err)
	require.Equal(t, int64(4), version)
	version, err = l.StreamVersion(ctx, "order-none")
	require.NoError(t, err)
	require.Zero(t, version)
	events, err = l.ReadStream(ctx, "order-none", 1, 10)
	require.NoError(t, err)
	require.Empty(t, events)
}

// The metadata keys are a documented format that other tools read with SQL.
func TestMetadataIsStoredUnderItsDocumentedKeys(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, pool := newLog(t, 4, eventlog.Config{})
	_, err := l.Append(ctx, "s", eventlog.AnyVersion, eventlog.NewEvent{Type: "t", Data: []byte(`{}`), Metadata: eventlog.Metadata{
		CorrelationID: "c", CausationID: "k", SourceEventID: "evt", Actor: "me", Extra: map[string]string{"x": "y"},
	}})
	require.NoError(t, err)
	var meta string
	require.NoError(t, pool.QueryRow(ctx, `SELECT metadata::text FROM wharf.event_log`).Scan(&meta))
	require.JSONEq(t, `{"correlation_id": "c", "causation_id": "k", "source_event_id": "evt", "actor": "me", "extra": {"x": "y"}}`, meta)
}

func TestExpectedVersion(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, pool := newLog(t, 4, eventlog.Config{})

	first, err := l.Append(ctx, "s", eventlog.NoStream, ev("a", 1))
	require.NoError(t, err)
	require.Equal(t, int64(1), first.Version)

	conflict := func(expected, actual int64, err error) {
		t.Helper()
		require.ErrorIs(t, err, eventlog.ErrVersionConflict)
		var vc *eventlog.VersionConflictError
		require.ErrorAs(t, err, &vc)
		require.Equal(t, eventlog.VersionConflictError{Stream: "s", Expected: expected, Actual: actual}, *vc)
	}
	// NoStream and 0 on an existing stream.
	_, err = l.Append(ctx, "s", eventlog.NoStream, ev("a", 2))
	conflict(eventlog.NoStream, 1, err)
	require.Contains(t, err.Error(), `stream "s": version conflict: expected no stream, found version 1`)
	_, err = l.Append(ctx, "s", 0, ev("a", 2))
	conflict(0, 1, err)
	// An exact version behind and ahead.
	_, err = l.Append(ctx, "s", 2, ev("a", 2))
	conflict(2, 1, err)
	// An exact version on a stream that does not exist.
	_, err = l.Append(ctx, "t", 1, ev("a", 2))
	require.ErrorIs(t, err, eventlog.ErrVersionConflict)
	var vc *eventlog.VersionConflictError
	require.ErrorAs(t, err, &vc)
	require.Zero(t, vc.Actual)
	require.Zero(t, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.event_streams WHERE stream = 't'`))

	// None of the conflicts wrote an event or drew a position: the next
	// append takes the position right after the first's.
	require.Equal(t, 1, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.event_log`))
	second, err := l.Append(ctx, "s", 1, ev("a", 2))
	require.NoError(t, err)
	require.Equal(t, int64(2), second.Version)
	require.Equal(t, first.Positions[0]+1, second.Positions[0], "a conflict drew a position")

	// AnyVersion: on an existing stream and on a new one.
	res, err := l.Append(ctx, "s", eventlog.AnyVersion, ev("a", 3), ev("a", 4))
	require.NoError(t, err)
	require.Equal(t, int64(4), res.Version)
	res, err = l.Append(ctx, "u", eventlog.AnyVersion, ev("a", 1))
	require.NoError(t, err)
	require.Equal(t, int64(1), res.Version)
	// 0 creates a stream like NoStream.
	res, err = l.Append(ctx, "v", 0, ev("a", 1))
	require.NoError(t, err)
	require.Equal(t, int64(1), res.Version)

	versions := func(stream string) []int64 {
		events, err := l.ReadStream(ctx, stream, 1, 0)
		require.NoError(t, err)
		var vs []int64
		for _, e := range events {
			vs = append(vs, e.Version)
		}
		return vs
	}
	require.Equal(t, []int64{1, 2, 3, 4}, versions("s"))
	require.Equal(t, []int64{1}, versions("u"))
	require.Equal(t, 4, dbtest.Count(t, pool, `SELECT version FROM wharf.event_streams WHERE stream = 's'`))
}

// Twenty appenders expect the same version at the same moment: exactly one
// wins, the others get the version it left, and their transactions go on.
func TestConcurrentAppendsOneWinner(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		prefill  int
		expected int64
	}{
		{"exact version", 3, 3},
		{"no stream", 0, eventlog.NoStream},
	} {
		// Not parallel to each other: each holds 20 connections at once.
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			const appenders = 20
			l, pool := newLog(t, appenders+4, eventlog.Config{})
			for i := range tc.prefill {
				_, err := l.Append(ctx, "hot", eventlog.AnyVersion, ev("pre", i))
				require.NoError(t, err)
			}

			start := make(chan struct{})
			var wg sync.WaitGroup
			results := make([]error, appenders)
			for i := range appenders {
				tx := begin(t, pool)
				wg.Go(func() {
					<-start
					_, err := l.AppendTx(ctx, tx, "hot", tc.expected, ev("race", i), ev("race", i))
					results[i] = err
					if err == nil {
						require.NoError(t, tx.Commit(ctx))
						return
					}
					// The loser's transaction is still usable: it appends
					// elsewhere and commits.
					_, err = l.AppendTx(ctx, tx, fmt.Sprintf("loser-%d", i), eventlog.NoStream, ev("after", i))
					require.NoError(t, err)
					require.NoError(t, tx.Commit(ctx))
				})
			}
			close(start)
			wg.Wait()

			winners := 0
			for _, err := range results {
				if err == nil {
					winners++
					continue
				}
				var vc *eventlog.VersionConflictError
				require.ErrorAs(t, err, &vc)
				require.Equal(t, int64(tc.prefill+2), vc.Actual, "the actual version is the winner's")
				require.Equal(t, tc.expected, vc.Expected)
			}
			require.Equal(t, 1, winners)
			require.Equal(t, appenders-1, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.event_streams WHERE stream LIKE 'loser-%'`))
			var versions []int64
			rows, err := pool.Query(ctx, `SELECT version FROM wharf.event_log WHERE stream = 'hot' ORDER BY version`)
			require.NoError(t, err)
			versions, err = pgx.CollectRows(rows, pgx.RowTo[int64])
			require.NoError(t, err)
			want := make([]int64, tc.prefill+2)
			for i := range want {
				want[i] = int64(i + 1)
			}
			require.Equal(t, want, versions, "versions are gapless")
		})
	}
}

// A conflict in AppendTx is not a failed statement: the caller's
// transaction keeps its earlier writes and can commit them.
func TestAppendTxConflictKeepsTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, pool := newLog(t, 4, eventlog.Config{})
	_, err := l.Append(ctx, "s", eventlog.NoStream, ev("a", 1))
	require.NoError(t, err)

	tx := begin(t, pool)
	_, err = l.AppendTx(ctx, tx, "other", eventlog.NoStream, ev("a", 1))
	require.NoError(t, err)
	_, err = l.AppendTx(ctx, tx, "s", eventlog.NoStream, ev("a", 2))
	require.ErrorIs(t, err, eventlog.ErrVersionConflict)
	_, err = l.AppendTx(ctx, tx, "s", 5, ev("a", 2))
	require.ErrorIs(t, err, eventlog.ErrVersionConflict)
	require.NoError(t, tx.Commit(ctx))
	require.Equal(t, 2, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.event_log`))

	// Rolled back: nothing, and the stream's version rolls back with it.
	tx = begin(t, pool)
	_, err = l.AppendTx(ctx, tx, "s", 1, ev("a", 2))
	require.NoError(t, err)
	require.NoError(t, tx.Rollback(ctx))
	res, err := l.Append(ctx, "s", 1, ev("a", 2))
	require.NoError(t, err)
	require.Equal(t, int64(2), res.Version)
}

func TestBadInputWritesNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, pool := newLog(t, 4, eventlog.Config{})
	ok := ev("ok", 1)
	data := func(s string) eventlog.NewEvent { return eventlog.NewEvent{Type: "t", Data: []byte(s)} }
	for _, tc := range []struct {
		name     string
		stream   string
		expected int64
		events   []eventlog.NewEvent
		want     error
	}{
		{"empty stream", "", eventlog.AnyVersion, []eventlog.NewEvent{ok}, eventlog.ErrInvalidStream},
		{"NUL in stream", "a\x00b", eventlog.AnyVersion, []eventlog.NewEvent{ok}, eventlog.ErrInvalidStream},
		{"stream not UTF-8", "a\xffb", eventlog.AnyVersion, []eventlog.NewEvent{ok}, eventlog.ErrInvalidStream},
		{"stream too long", strings.Repeat("s", eventlog.MaxStreamLen+1), eventlog.AnyVersion, []eventlog.NewEvent{ok}, eventlog.ErrInvalidStream},
		{"expected -2", "s", -2, []eventlog.NewEvent{ok}, eventlog.ErrInvalidArgument},
		{"expected far below", "s", -1 << 40, []eventlog.NewEvent{ok}, eventlog.ErrInvalidArgument},
		{"no events", "s", eventlog.AnyVersion, nil, eventlog.ErrInvalidEvent},
		{"empty type", "s", eventlog.AnyVersion, []eventlog.NewEvent{{Data: []byte(`{}`)}}, eventlog.ErrInvalidEvent},
		{"NUL in type", "s", eventlog.AnyVersion, []eventlog.NewEvent{{Type: "a\x00", Data: []byte(`{}`)}}, eventlog.ErrInvalidEvent},
		{"type not UTF-8", "s", eventlog.AnyVersion, []eventlog.NewEvent{{Type: "\xc3", Data: []byte(`{}`)}}, eventlog.ErrInvalidEvent},
		{"nil data", "s", eventlog.AnyVersion, []eventlog.NewEvent{{Type: "t"}}, eventlog.ErrInvalidEvent},
		{"data not JSON", "s", eventlog.AnyVersion, []eventlog.NewEvent{data(`{"a": }`)}, eventlog.ErrInvalidEvent},
		{"data two values", "s", eventlog.AnyVersion, []eventlog.NewEvent{data(`{} {}`)}, eventlog.ErrInvalidEvent},
		{"data not UTF-8", "s", eventlog.AnyVersion, []eventlog.NewEvent{data("\"\xff\"")}, eventlog.ErrInvalidEvent},
		{`data with \u0000`, "s", eventlog.AnyVersion, []eventlog.NewEvent{data(`{"a": "x\u0000y"}`)}, eventlog.ErrInvalidEvent},
		{"data with a lone high surrogate", "s", eventlog.AnyVersion, []eventlog.NewEvent{data(`["\ud83d"]`)}, eventlog.ErrInvalidEvent},
		{"data with a lone low surrogate", "s", eventlog.AnyVersion, []eventlog.NewEvent{data(`["\ude00x"]`)}, eventlog.ErrInvalidEvent},
		{"metadata with NUL", "s", eventlog.AnyVersion, []eventlog.NewEvent{{Type: "t", Data: []byte(`{}`), Metadata: eventlog.Metadata{Actor: "a\x00"}}}, eventlog.ErrInvalidEvent},
		{"metadata extra not UTF-8", "s", eventlog.AnyVersion, []eventlog.NewEvent{{Type: "t", Data: []byte(`{}`), Metadata: eventlog.Metadata{Extra: map[string]string{"k": "\xff"}}}}, eventlog.ErrInvalidEvent},
		{"one bad event of several", "s", eventlog.AnyVersion, []eventlog.NewEvent{ok, data(`nope`), ok}, eventlog.ErrInvalidEvent},
		{"number beyond jsonb", "s", eventlog.AnyVersion, []eventlog.NewEvent{data(`1e1000000`)}, eventlog.ErrInvalidEvent},
	} {
		_, err := l.Append(ctx, tc.stream, tc.expected, tc.events...)
		require.ErrorIs(t, err, tc.want, tc.name)
		if tc.want == eventlog.ErrInvalidEvent {
			var ie *eventlog.InvalidEventError
			require.ErrorAs(t, err, &ie, tc.name)
		}

		// In a transaction: refused before anything reaches the database,
		// so the transaction goes on (except for data only Postgres can
		// judge, which aborts it like any failed statement).
		tx := begin(t, pool)
		_, err = l.AppendTx(ctx, tx, tc.stream, tc.expected, tc.events...)
		require.ErrorIs(t, err, tc.want, tc.name)
		if tc.name != "number beyond jsonb" {
			var one int
			require.NoError(t, tx.QueryRow(ctx, `SELECT 1`).Scan(&one), tc.name)
		}
		require.NoError(t, tx.Rollback(ctx))
	}
	require.Zero(t, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.event_log`))
	require.Zero(t, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.event_streams`))

	// Valid escapes pass: a surrogate pair, an escaped backslash before u0000.
	res, err := l.Append(ctx, "s", eventlog.NoStream, data(`["\ud83d\ude00", "\\u0000", "\u00e9"]`))
	require.NoError(t, err)
	events, err := l.ReadStream(ctx, "s", 1, 1)
	require.NoError(t, err)
	var got []string
	require.NoError(t, json.Unmarshal(events[0].Data, &got))
	require.Equal(t, []string{"😀", `\u0000`, "é"}, got)
	require.Equal(t, int64(1), res.Version)

	_, err = l.AppendTx(ctx, nil, "s", eventlog.AnyVersion, ok)
	require.ErrorIs(t, err, eventlog.ErrInvalidArgument)
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	l, pool := newLog(t, 2, eventlog.Config{})
	_, err := eventlog.New(nil, eventlog.Config{})
	require.ErrorIs(t, err, eventlog.ErrInvalidConfig)
	_, err = eventlog.New(pool, eventlog.Config{Schema: "Bad-Schema"})
	require.ErrorIs(t, err, eventlog.ErrInvalidConfig)
	require.Equal(t, "wharf", l.Schema())

	handler := func(context.Context, pgx.Tx, []eventlog.Event) error { return nil }
	for _, cfg := range []eventlog.ProjectionConfig{
		{Handler: handler},
		{Name: "p"},
		{Name: "p\x00", Handler: handler},
		{Name: "p", Handler: handler, BatchSize: -1},
		{Name: "p", Handler: handler, BatchSize: eventlog.MaxReadLimit + 1},
		{Name: "p", Handler: handler, PollInterval: -1},
		{Name: "p", Handler: handler, RetryDelay: 2 * eventlog.MaxRetryDelay},
		{Name: "p", Handler: handler, Category: "a\xff"},
	} {
		_, err := l.NewProjection(cfg)
		require.ErrorIs(t, err, eventlog.ErrInvalidConfig, "%+v", cfg)
	}
	p, err := l.NewProjection(eventlog.ProjectionConfig{Name: "p", Handler: handler})
	require.NoError(t, err)
	require.Equal(t, "p", p.Name())
}

// Data over jsonb's size limit is an invalid event, refused before it is
// sent: Append writes nothing, and AppendTx leaves the caller's
// transaction usable. (Postgres would refuse it with SQLSTATE 54000 and
// abort the transaction.)
func TestDataOverJSONBLimitIsInvalid(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, pool := newLog(t, 4, eventlog.Config{})
	big := make([]byte, eventlog.MaxDataLen+1) // a JSON string one byte over
	for i := range big {
		big[i] = 'a'
	}
	big[0], big[len(big)-1] = '"', '"'
	event := eventlog.NewEvent{Type: "big", Data: big}

	_, err := l.Append(ctx, "s", eventlog.AnyVersion, event)
	var ie *eventlog.InvalidEventError
	require.ErrorAs(t, err, &ie)
	require.Equal(t, "data", ie.Field)

	tx := begin(t, pool)
	_, err = l.AppendTx(ctx, tx, "s", eventlog.AnyVersion, event)
	require.ErrorIs(t, err, eventlog.ErrInvalidEvent)
	var one int
	require.NoError(t, tx.QueryRow(ctx, `SELECT 1`).Scan(&one), "the transaction is still usable")
	require.NoError(t, tx.Rollback(ctx))
	require.Zero(t, dbtest.Count(t, pool, `SELECT count(*) FROM wharf.event_log`))
}
