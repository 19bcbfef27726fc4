package queue_test

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/internal/benchkit"
	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/queue"
)

// Each benchmark measures wharf and a raw-SQL baseline in the same run and
// reports both rates and their ratio (x-baseline), because absolute numbers
// on a shared machine drift. Run them with, for example:
//
//	go test ./queue -run '^$' -bench . -benchtime 20000x

// body1K is a 1 KB webhook body.
var body1K = func() []byte {
	b := make([]byte, 1024)
	for i := range b {
		b[i] = 'a' + byte(i%26)
	}
	return b
}()

// baselineTable is what a hand-written webhook endpoint would insert into.
const baselineTable = `
CREATE TABLE bench_baseline (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source      text NOT NULL,
    event_id    text NOT NULL,
    event_type  text NOT NULL,
    body        bytea NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source, event_id)
)`

// parallelFor runs fn(i) for i in [0, n) on workers goroutines and returns
// the elapsed time.
func parallelFor(b *testing.B, workers, n int, fn func(i int) error) time.Duration {
	elapsed, err := benchkit.Parallel(workers, n, fn)
	if err != nil {
		b.Fatal(err)
	}
	return elapsed
}

// BenchmarkIngest: concurrent callers, each waiting for its own durable
// commit of a 1 KB event. Baseline: one single-row INSERT per commit, from
// as many callers. 32 callers is the figure we quote; 64 shows how group
// commit scales where the baseline cannot.
func BenchmarkIngest(b *testing.B) {
	for _, callers := range []int{32, 64} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) { benchmarkIngest(b, callers) })
	}
}

func benchmarkIngest(b *testing.B, callers int) {
	ctx := context.Background()
	pool := dbtest.PoolWith(b, dbtest.Options{MaxConns: int32(callers + 4)})
	_, err := pool.Exec(ctx, baselineTable)
	require.NoError(b, err)
	q, err := queue.New(pool, queue.Config{})
	require.NoError(b, err)
	defer q.Close()

	plain := func(round string, n int) time.Duration {
		return parallelFor(b, callers, n, func(i int) error {
			_, err := pool.Exec(ctx, `INSERT INTO bench_baseline (source, event_id, event_type, body) VALUES ($1, $2, $3, $4)`,
				"bench", fmt.Sprintf("%s-%d", round, i), "bench.event", body1K)
			return err
		})
	}
	enqueue := func(round string, n int) time.Duration {
		return parallelFor(b, callers, n, func(i int) error {
			_, err := q.Enqueue(ctx, queue.NewEvent{Source: "bench", ID: fmt.Sprintf("%s-%d", round, i), Type: "bench.event", Body: body1K})
			return err
		})
	}
	// Warm up, untimed: the baseline's callers open their pool
	// connections (TLS, authentication) and both sides prepare their
	// statements, which would otherwise land in the first timed round.
	plain("warm", 4*callers)
	enqueue("warm", 4*callers)

	n := max(b.N, 1000)
	var baseline, wharf time.Duration
	// Two rounds each, interleaved, each round starting with the other
	// side, so drift on a shared machine hits both.
	for round := range 2 {
		r := fmt.Sprintf("r%d", round)
		if round%2 == 0 {
			baseline += plain(r, n/2)
			wharf += enqueue(r, n/2)
		} else {
			wharf += enqueue(r, n/2)
			baseline += plain(r, n/2)
		}
	}
	events := float64(2 * (n / 2))
	b.ReportMetric(events/baseline.Seconds(), "baseline-events/s")
	b.ReportMetric(events/wharf.Seconds(), "events/s")
	b.ReportMetric(baseline.Seconds()/wharf.Seconds(), "x-baseline")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkDrain: the consumer empties 100,000 queued 1 KB events with a
// no-op handler (fetch with lease, then complete). Baseline: a raw loop of
// DELETE ... FOR UPDATE SKIP LOCKED ... RETURNING in batches of 100, with
// the same number of connections. kinds=1: one event type, and a consumer
// of every kind (no Only); kinds=10: ten types, and a consumer that names
// them in Only, as the Pipeline's do, so that each fetch reads ten kinds.
// Both drain 400 events first, untimed (connections opened, statements
// prepared), then two rounds of half the events each, the first with the
// baseline first, the second with the consumer first.
func BenchmarkDrain(b *testing.B) {
	for _, kinds := range []int{1, 10} {
		b.Run(fmt.Sprintf("kinds=%d", kinds), func(b *testing.B) { benchmarkDrain(b, kinds) })
	}
}

func benchmarkDrain(b *testing.B, kinds int) {
	const events = 100_000
	const workers = 4
	const rounds = 2
	const warmup = 400
	ctx := context.Background()
	var only []queue.Kind
	if kinds > 1 {
		for i := range kinds {
			only = append(only, queue.Kind{Source: "bench", Type: fmt.Sprintf("bench.event%d", i)})
		}
	}
	for range b.N {
		pool := dbtest.PoolWith(b, dbtest.Options{MaxConns: workers + 4})
		_, err := pool.Exec(ctx, baselineTable)
		require.NoError(b, err)
		q, err := queue.New(pool, queue.Config{})
		require.NoError(b, err)
		var handled atomic.Int64
		c, err := queue.NewConsumer(q, queue.ConsumerConfig{
			Workers: workers,
			Only:    only,
			Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
				handled.Add(1)
				return nil
			},
		})
		require.NoError(b, err)

		drainBaseline := func() time.Duration {
			return parallelFor(b, workers, workers, func(int) error {
				for {
					rows, err := pool.Query(ctx, `
DELETE FROM bench_baseline WHERE id IN (
    SELECT id FROM bench_baseline ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED)
RETURNING id, source, event_id, event_type, body`)
					if err != nil {
						return err
					}
					n := 0
					for rows.Next() {
						n++
					}
					if err := rows.Err(); err != nil {
						return err
					}
					if n == 0 {
						return nil
					}
				}
			})
		}
		// drainQueue runs the consumer until it has handled n more events
		// and the queue is empty (the last transaction commits after its
		// handler returns).
		drainQueue := func(n int) time.Duration {
			runCtx, stop := context.WithCancel(ctx)
			defer stop()
			done := make(chan error, 1)
			start := time.Now()
			go func() { done <- c.Run(runCtx) }()
			require.NoError(b, benchkit.WaitDrained(ctx, pool, handled.Load, handled.Load()+int64(n), done))
			elapsed := time.Since(start)
			stop()
			require.NoError(b, <-done)
			return elapsed
		}

		preload(b, pool, 0, warmup, kinds)
		drainBaseline()
		drainQueue(warmup)
		var baseline, wharf time.Duration
		per := events / rounds
		for r := range rounds {
			preload(b, pool, warmup+r*per, per, kinds)
			if r%2 == 0 {
				baseline += drainBaseline()
				wharf += drainQueue(per)
			} else {
				wharf += drainQueue(per)
				baseline += drainBaseline()
			}
		}
		q.Close()
		require.EqualValues(b, warmup+events, handled.Load(), "every event handled once")
		require.Zero(b, dbtest.Count(b, pool, `SELECT count(*) FROM bench_baseline`))

		b.ReportMetric(events/baseline.Seconds(), "baseline-events/s")
		b.ReportMetric(events/wharf.Seconds(), "events/s")
		b.ReportMetric(baseline.Seconds()/wharf.Seconds(), "x-baseline")
	}
	b.ReportMetric(0, "ns/op")
}

// preload fills both the queue and the baseline table with n 1 KB events,
// ids first+1 to first+n, of one type ("bench.event") or, with kinds > 1,
// of that many types taken in turn ("bench.event0", ...).
func preload(b *testing.B, pool *pgxpool.Pool, first, n, kinds int) {
	ctx := context.Background()
	const eventType = `CASE WHEN $3 = 1 THEN 'bench.event' ELSE 'bench.event' || g % $3 END`
	for _, sql := range []string{
		`INSERT INTO bench_baseline (source, event_id, event_type, body)
		 SELECT 'bench', g::text, ` + eventType + `, $1 FROM generate_series($4::int + 1, $4::int + $2) g`,
		`WITH ins AS (
		     INSERT INTO wharf.queue (source, event_id, event_type, max_attempts)
		     SELECT 'bench', g::text, ` + eventType + `, 8 FROM generate_series($4::int + 1, $4::int + $2) g
		     RETURNING id, source, event_id)
		 INSERT INTO wharf.queue_payloads (queue_id, source, event_id, body) SELECT id, source, event_id, $1 FROM ins`,
	} {
		_, err := pool.Exec(ctx, sql, body1K, n, kinds, first)
		require.NoError(b, err)
	}
	_, err := pool.Exec(ctx, `VACUUM ANALYZE bench_baseline, wharf.queue, wharf.queue_payloads`)
	require.NoError(b, err)
}

// BenchmarkPickupLatency: on an idle queue, the time from Enqueue returning
// to the handler starting. Reported as percentiles; the consumer polls only
// once an hour, so every pick-up is a wake-up.
func BenchmarkPickupLatency(b *testing.B) {
	ctx := context.Background()
	pool := dbtest.Pool(b)
	q, err := queue.New(pool, queue.Config{})
	require.NoError(b, err)
	defer q.Close()
	started := make(chan time.Time, 1)
	c, err := queue.NewConsumer(q, queue.ConsumerConfig{
		PollInterval: time.Hour,
		Handler: func(ctx context.Context, tx pgx.Tx, ev *queue.Event) error {
			started <- time.Now()
			return nil
		},
	})
	require.NoError(b, err)
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { _ = c.Run(runCtx) }()

	n := max(b.N, 200)
	latencies := make([]time.Duration, 0, n)
	for i := range n {
		_, err := q.Enqueue(ctx, queue.NewEvent{Source: "bench", ID: fmt.Sprint(i), Type: "bench.event", Body: body1K})
		require.NoError(b, err)
		enqueued := time.Now()
		latencies = append(latencies, (<-started).Sub(enqueued))
	}
	slices.Sort(latencies)
	pct := func(p float64) float64 {
		return float64(latencies[int(p*float64(len(latencies)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkFetchPastBacklog: a fetch of 10 events behind a backlog of a
// kind it skips (a handler's whose breaker is open, types no handler
// takes), walking (FetchParams.ByKind false) and by kind, against the
// walk with no backlog, in the same run. Each op is one Fetch and the
// Release of what it took. "only" names the kinds (the Pipeline);
// "any-type" takes every type of the source but the skipped one (a
// Pipeline with an Unhandled policy and an open breaker).
func BenchmarkFetchPastBacklog(b *testing.B) {
	ctx := context.Background()
	wanted, skipped := queue.Kind{Source: "bench", Type: "wanted"}, queue.Kind{Source: "bench", Type: "skipped"}
	for _, backlog := range []int{10_000, 100_000} {
		for _, shape := range []struct {
			name          string
			only, exclude []queue.Kind
		}{
			{"only", []queue.Kind{wanted}, nil},
			{"any-type", []queue.Kind{{Source: "bench", Type: queue.AnyType}}, []queue.Kind{skipped}},
		} {
			b.Run(fmt.Sprintf("backlog=%d/%s", backlog, shape.name), func(b *testing.B) {
				q, pool := newQueue(b, queue.Config{})
				insertKind := func(kind queue.Kind, n int, age time.Duration) {
					_, err := pool.Exec(ctx, `
WITH ins AS (
    INSERT INTO wharf.queue (source, event_id, event_type, max_attempts, run_at)
    SELECT $1, $2 || g, $2, 8, now() - $4 * interval '1 millisecond' FROM generate_series(1, $3) g
    RETURNING id, source, event_id)
INSERT INTO wharf.queue_payloads (queue_id, source, event_id, body) SELECT id, source, event_id, '{}' FROM ins`,
						kind.Source, kind.Type, n, age.Milliseconds())
					require.NoError(b, err)
					_, err = pool.Exec(ctx, `VACUUM ANALYZE wharf.queue, wharf.queue_payloads`)
					require.NoError(b, err)
				}
				measure := func(byKind bool) time.Duration {
					p := queue.FetchParams{Limit: 10, Only: shape.only, Exclude: shape.exclude, ByKind: byKind}
					start := time.Now()
					for range b.N {
						evs, err := q.Fetch(ctx, p)
						require.NoError(b, err)
						require.Len(b, evs, 10)
						require.NoError(b, q.Release(ctx, evs...))
					}
					return time.Since(start)
				}
				insertKind(wanted, 100, time.Minute)
				clear := measure(false)
				insertKind(skipped, backlog, time.Hour)
				walk, byKind := measure(false), measure(true)
				b.ReportMetric(float64(clear.Microseconds())/float64(b.N), "baseline-µs/op")
				b.ReportMetric(walk.Seconds()/clear.Seconds(), "walk-x-baseline")
				b.ReportMetric(byKind.Seconds()/clear.Seconds(), "bykind-x-baseline")
				b.ReportMetric(0, "ns/op")
			})
		}
	}
}
