package eventlog_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/eventlog"
	"github.com/wharfhq/wharf/internal/dbtest"
)

// Each benchmark measures the event log and a raw-SQL baseline in the same
// run and reports both rates and their ratio (x-baseline), because
// absolute numbers on a shared machine drift. Run them with, for example:
//
//	go test ./eventlog -run '^$' -bench . -benchtime 20000x
//
// -benchtime sizes BenchmarkAppend (events in all); BenchmarkReadAll and
// BenchmarkLoad do a fixed amount of work.

// benchData is a typical event body, about 200 bytes of JSON.
var benchData = []byte(`{"order_id": "ord_1NG8xAbCdEfGhIjK", "customer": "cus_9s6XKzkNRiz8i3", "amount": 1250, ` +
	`"currency": "eur", "lines": [{"sku": "SKU-123", "qty": 2}, {"sku": "SKU-456", "qty": 1}], "paid": true}`)

var benchMeta = eventlog.Metadata{CorrelationID: "corr_1NG8xAbCdEfGhIjK", SourceEventID: "evt_1NG8xAbCdEfGhIjK", Actor: "stripe"}

// baselineTable is what a hand-written audit log would insert into: a row
// comparable to an event_log row, without streams, versions or the
// transaction id.
const baselineTable = `
CREATE TABLE bench_baseline (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream      text NOT NULL,
    event_type  text NOT NULL,
    data        jsonb NOT NULL,
    metadata    jsonb NOT NULL DEFAULT '{}',
    recorded_at timestamptz NOT NULL DEFAULT now()
)`

// perWorker runs fn(worker, i) for i in [0, n) on each of workers
// goroutines and returns the elapsed time.
func perWorker(b *testing.B, workers, n int, fn func(worker, i int) error) time.Duration {
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	start := time.Now()
	for w := range workers {
		wg.Go(func() {
			for i := range n {
				if err := fn(w, i); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	return elapsed
}

// BenchmarkAppend: 32 concurrent appenders, each to its own stream with
// the exact expected version, one event per transaction. Baseline: the
// same transaction shape by hand, BEGIN; one INSERT of a comparable row
// into a plain table; COMMIT. A second baseline sends the INSERT alone
// (autocommit, one round trip), as Append does.
func BenchmarkAppend(b *testing.B) {
	const appenders = 32
	ctx := context.Background()
	pool := dbtest.PoolWith(b, dbtest.Options{MaxConns: appenders + 4})
	_, err := pool.Exec(ctx, baselineTable)
	require.NoError(b, err)
	l, err := eventlog.New(pool, eventlog.Config{})
	require.NoError(b, err)
	defer l.Close()
	meta, err := json.Marshal(benchMeta)
	require.NoError(b, err)

	perAppender := max(b.N, 3200) / appenders / 2
	versions := make([]int64, appenders)
	const insert = `INSERT INTO bench_baseline (stream, event_type, data, metadata) VALUES ($1, $2, $3, $4)`
	variants := []func(w, i int) error{
		func(w, i int) error { // baseline
			return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				_, err := tx.Exec(ctx, insert, fmt.Sprintf("bench-%d", w), "order.paid", benchData, meta)
				return err
			})
		},
		func(w, i int) error { // autocommit
			_, err := pool.Exec(ctx, insert, fmt.Sprintf("bench-%d", w), "order.paid", benchData, meta)
			return err
		},
		func(w, i int) error { // wharf
			res, err := l.Append(ctx, fmt.Sprintf("bench-%d", w), versions[w],
				eventlog.NewEvent{Type: "order.paid", Data: benchData, Metadata: benchMeta})
			versions[w] = res.Version
			return err
		},
	}
	// Warm up, untimed: the pool's connections opened (TLS,
	// authentication) and every variant's statements prepared on each,
	// which would otherwise land in the first timed round of whichever
	// variant runs first.
	for _, v := range variants {
		perWorker(b, appenders, 10, v)
	}
	var elapsed [3]time.Duration // baseline, autocommit, wharf
	// Two rounds each, interleaved, so drift on a shared machine hits all.
	for range 2 {
		for k, v := range variants {
			elapsed[k] += perWorker(b, appenders, perAppender, v)
		}
	}
	baseline, autocommit, wharf := elapsed[0], elapsed[1], elapsed[2]
	events := float64(2 * appenders * perAppender)
	b.ReportMetric(events/baseline.Seconds(), "baseline-events/s")
	b.ReportMetric(events/autocommit.Seconds(), "autocommit-events/s")
	b.ReportMetric(events/wharf.Seconds(), "events/s")
	b.ReportMetric(baseline.Seconds()/wharf.Seconds(), "x-baseline")
	b.ReportMetric(autocommit.Seconds()/wharf.Seconds(), "x-autocommit")
	b.ReportMetric(0, "ns/op")
}

// preloadLog writes n events in batches of 1,000 (one transaction each, so
// the events carry 100 transaction ids for 100,000), into streams of 1,000
// events, straight into the table.
func preloadLog(b *testing.B, pool *pgxpool.Pool, n int) {
	ctx := context.Background()
	meta, err := json.Marshal(benchMeta)
	require.NoError(b, err)
	for start := 0; start < n; start += 1000 {
		_, err := pool.Exec(ctx, `
INSERT INTO wharf.event_log (stream, version, event_type, data, metadata)
SELECT 'bench-' || (g / 1000), g % 1000 + 1, 'order.paid', $1, $2
FROM generate_series($3::int, $3::int + 999) g`, benchData, meta, start)
		require.NoError(b, err)
	}
	_, err = pool.Exec(ctx, `VACUUM ANALYZE wharf.event_log`)
	require.NoError(b, err)
}

// BenchmarkReadAll: read 100,000 events from the start with ReadAll in
// pages of MaxReadLimit. Baseline: the naive position-ordered query
// (WHERE position > $1 ORDER BY position LIMIT 10000), scanning the same
// columns, with no horizon and no metadata decoding.
func BenchmarkReadAll(b *testing.B) {
	const events = 100_000
	ctx := context.Background()
	pool := dbtest.PoolWith(b, dbtest.Options{MaxConns: 4})
	l, err := eventlog.New(pool, eventlog.Config{})
	require.NoError(b, err)
	defer l.Close()
	preloadLog(b, pool, events)

	readWharf := func() int {
		n := 0
		var cursor eventlog.Cursor
		for {
			page, next, err := l.ReadAll(ctx, cursor, eventlog.MaxReadLimit)
			require.NoError(b, err)
			if len(page) == 0 {
				return n
			}
			n, cursor = n+len(page), next
		}
	}
	readBaseline := func() int {
		n := 0
		var last int64
		for {
			rows, err := pool.Query(ctx, `
SELECT position, stream, version, event_type, data, metadata, recorded_at
FROM wharf.event_log WHERE position > $1 ORDER BY position LIMIT 10000`, last)
			require.NoError(b, err)
			page := 0
			for rows.Next() {
				var e eventlog.Event
				var data, meta []byte
				require.NoError(b, rows.Scan(&e.Position, &e.Stream, &e.Version, &e.Type, &data, &meta, &e.RecordedAt))
				e.Data = data
				last = e.Position
				page++
			}
			require.NoError(b, rows.Err())
			if page == 0 {
				return n
			}
			n += page
		}
	}
	require.Equal(b, events, readWharf()) // warm up, and check
	// A fixed number of rounds, whatever b.N: one round reads 200,000
	// events, and b.N is sized for the other benchmarks' -benchtime.
	const rounds = 3
	var baseline, wharf time.Duration
	b.ResetTimer()
	for range rounds {
		start := time.Now()
		require.Equal(b, events, readBaseline())
		baseline += time.Since(start)
		start = time.Now()
		require.Equal(b, events, readWharf())
		wharf += time.Since(start)
	}
	total := float64(events * rounds)
	b.ReportMetric(total/baseline.Seconds(), "baseline-events/s")
	b.ReportMetric(total/wharf.Seconds(), "events/s")
	b.ReportMetric(baseline.Seconds()/wharf.Seconds(), "x-baseline")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkLoad: fold a 1,000-event stream with Load (the apply function
// decodes each event's data). Baseline: the same query by hand, scanning
// the same columns and decoding the same data.
func BenchmarkLoad(b *testing.B) {
	ctx := context.Background()
	pool := dbtest.PoolWith(b, dbtest.Options{MaxConns: 4})
	l, err := eventlog.New(pool, eventlog.Config{})
	require.NoError(b, err)
	defer l.Close()
	preloadLog(b, pool, 100_000) // the stream among 99 others

	type order struct {
		Amount int
		Events int
	}
	apply := func(o order, e eventlog.Event) (order, error) {
		var d struct{ Amount int }
		if err := json.Unmarshal(e.Data, &d); err != nil {
			return o, err
		}
		o.Amount += d.Amount
		o.Events++
		return o, nil
	}
	loadBaseline := func() order {
		rows, err := pool.Query(ctx, `
SELECT position, stream, version, event_type, data, metadata, recorded_at, tx_id
FROM wharf.event_log WHERE stream = $1 ORDER BY version`, "bench-42")
		require.NoError(b, err)
		var o order
		for rows.Next() {
			var e eventlog.Event
			var data, meta []byte
			require.NoError(b, rows.Scan(&e.Position, &e.Stream, &e.Version, &e.Type, &data, &meta, &e.RecordedAt, &e.TxID))
			e.Data = data
			o, err = apply(o, e)
			require.NoError(b, err)
		}
		require.NoError(b, rows.Err())
		return o
	}
	loadWharf := func() order {
		o, version, err := eventlog.Load(ctx, l, "bench-42", order{}, apply)
		require.NoError(b, err)
		require.Equal(b, int64(1000), version)
		return o
	}
	require.Equal(b, order{Amount: 1250 * 1000, Events: 1000}, loadWharf())
	const n = 300 // loads of each, whatever b.N
	var baseline, wharf time.Duration
	b.ResetTimer()
	for range n {
		start := time.Now()
		loadBaseline()
		baseline += time.Since(start)
		start = time.Now()
		loadWharf()
		wharf += time.Since(start)
	}
	b.ReportMetric(float64(baseline.Microseconds())/float64(n)/1000, "baseline-ms/load")
	b.ReportMetric(float64(wharf.Microseconds())/float64(n)/1000, "ms/load")
	b.ReportMetric(baseline.Seconds()/wharf.Seconds(), "x-baseline")
	b.ReportMetric(0, "ns/op")
}
