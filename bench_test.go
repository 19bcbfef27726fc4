package wharf_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/internal/benchkit"
	"github.com/wharfhq/wharf/internal/dbtest"
)

// The Pipeline's benchmarks: the "Speed" figures of the design. Each one
// measures wharf and a hand-written baseline in the same run, on the same
// database, and reports both rates and their ratio (x-baseline), because
// absolute numbers on a shared 2-core machine drift; rounds alternate
// between the two so that drift hits both. They do not run in CI. Run them
// with, for example:
//
//	go test -run '^$' -bench Pipeline -benchtime 1x -count 3 .
//
// b.N only raises the amount of work above each benchmark's default (the
// default already takes seconds), so -benchtime 1x gives the default and
// -benchtime 100000x runs 100,000 requests or events.

// benchParallel runs fn(i) for i in [0, n) on workers goroutines and returns
// the elapsed time; the first error fails the benchmark.
func benchParallel(b *testing.B, workers, n int, fn func(i int) error) time.Duration {
	elapsed, err := benchkit.Parallel(workers, n, fn)
	require.NoError(b, err)
	return elapsed
}

// benchCount runs a count(*) query.
func benchCount(b *testing.B, pool *pgxpool.Pool, sql string) int {
	b.Helper()
	var n int
	require.NoError(b, pool.QueryRow(context.Background(), sql).Scan(&n))
	return n
}

// --- 1. HTTP ingest ---------------------------------------------------------

// BenchmarkPipelineIngest: signed 1 KB Standard Webhooks requests from
// concurrent senders over real HTTP (one httptest server, one keep-alive
// client), each answered only once its event is committed. wharf:
// Pipeline.Handler (verify, identify, group commit into the queue).
// Baseline: benchkit.PlainHandler, one INSERT and one commit per request, on a pool
// of at most 32 connections (more only adds contention on 2 cores, and the
// server allows 100 connections in all). Reports both request rates, the
// ratio (target at 32 senders: 2.5x) and wharf's ack latency as the sender
// sees it (target p99 <= 30 ms), with the baseline's for comparison.
// Requests are signed before the clock starts: signing is the provider's
// work.
func BenchmarkPipelineIngest(b *testing.B) {
	for _, senders := range []int{32, 64} {
		b.Run(fmt.Sprintf("senders=%d", senders), func(b *testing.B) { benchmarkIngest(b, senders) })
	}
}

func benchmarkIngest(b *testing.B, senders int) {
	ctx := context.Background()
	baselineConns := min(senders, 32)
	// The rounds run one after the other, so wharf (2 committers and the
	// notifier) and the baseline never need connections at once.
	pool := dbtest.PoolWith(b, dbtest.Options{MaxConns: int32(baselineConns + 2)})
	_, err := pool.Exec(ctx, benchkit.Tables)
	require.NoError(b, err)

	p, err := benchkit.NewPipeline(pool, wharf.Config{}, benchkit.HandlerNoop, nil)
	require.NoError(b, err)
	defer p.Close()

	mux := http.NewServeMux()
	mux.Handle("POST /wharf", p.Handler(benchkit.Source))
	mux.Handle("POST /plain", benchkit.PlainHandler(pool))
	mux.Handle("POST /null", benchkit.NullHandler())
	srv := httptest.NewServer(mux)
	defer srv.Close()
	transport := &http.Transport{MaxIdleConns: 2 * senders, MaxIdleConnsPerHost: 2 * senders, DisableCompression: true}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport, Timeout: 30 * time.Second}

	// round posts n signed requests to path from senders goroutines and
	// returns the elapsed time and each request's latency.
	round := func(path, prefix string, n int) (time.Duration, []time.Duration) {
		headers := make([]http.Header, n)
		for i := range headers {
			headers[i] = benchkit.Sign(fmt.Sprintf("msg_%s_%d", prefix, i))
		}
		latencies := make([]time.Duration, n)
		url := srv.URL + path
		elapsed := benchParallel(b, senders, n, func(i int) error {
			req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(benchkit.Body))
			if err != nil {
				return err
			}
			req.Header = headers[i]
			start := time.Now()
			resp, err := client.Do(req)
			if err != nil {
				return err
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			latencies[i] = time.Since(start)
			if resp.StatusCode != http.StatusAccepted {
				return fmt.Errorf("POST %s: status %d, want 202", path, resp.StatusCode)
			}
			return nil
		})
		return elapsed, latencies
	}

	// Warm up: connections opened (HTTP and database), statements prepared.
	round("/plain", "warm", 4*senders)
	round("/wharf", "warm", 4*senders)

	n := max(b.N, 12_000)
	const rounds = 4
	per := n / rounds
	var baseline, ours time.Duration
	var baseLat, ourLat []time.Duration
	b.ResetTimer()
	for r := range rounds {
		// Alternate which goes first, so neither always follows the
		// other's backlog (checkpoints, autovacuum).
		first, second := "/plain", "/wharf"
		if r%2 == 1 {
			first, second = second, first
		}
		for _, path := range []string{first, second} {
			elapsed, lat := round(path, fmt.Sprintf("r%d", r), per)
			if path == "/plain" {
				baseline += elapsed
				baseLat = append(baseLat, lat...)
			} else {
				ours += elapsed
				ourLat = append(ourLat, lat...)
			}
		}
	}
	b.StopTimer()
	// The ceiling: the same requests answered without storing anything.
	round("/null", "warm", 4*senders)
	ceiling, _ := round("/null", "ceiling", rounds*per)
	require.Equal(b, rounds*per+4*senders, benchCount(b, pool, `SELECT count(*) FROM bench_events`))
	require.Equal(b, rounds*per+4*senders, benchCount(b, pool, `SELECT count(*) FROM wharf.queue`))

	slices.Sort(baseLat)
	slices.Sort(ourLat)
	requests := float64(rounds * per)
	b.ReportMetric(requests/baseline.Seconds(), "baseline-req/s")
	b.ReportMetric(requests/ours.Seconds(), "req/s")
	b.ReportMetric(baseline.Seconds()/ours.Seconds(), "x-baseline")
	b.ReportMetric(requests/ceiling.Seconds(), "ceiling-req/s")
	b.ReportMetric(benchkit.Percentile(ourLat, 0.50), "p50-ms")
	b.ReportMetric(benchkit.Percentile(ourLat, 0.99), "p99-ms")
	b.ReportMetric(benchkit.Percentile(baseLat, 0.50), "baseline-p50-ms")
	b.ReportMetric(benchkit.Percentile(baseLat, 0.99), "baseline-p99-ms")
	b.ReportMetric(0, "ns/op")
}

// --- 2. End-to-end drain ------------------------------------------------------

// pipelineDrain runs p until it has handled n more events (counted by the
// handler through handled) and the queue is empty, and returns the time.
func pipelineDrain(b *testing.B, pool *pgxpool.Pool, p *wharf.Pipeline, handled *atomic.Int64, n int) time.Duration {
	elapsed, err := benchkit.PipelineDrain(context.Background(), pool, p, handled.Load, handled.Load()+int64(n))
	require.NoError(b, err)
	return elapsed
}

// baselineDrain empties bench_events with benchkit.BaselineDrain on conns
// connections and returns the time.
func baselineDrain(b *testing.B, pool *pgxpool.Pool, conns int, noop bool) time.Duration {
	d := &benchkit.BaselineDrain{Pool: pool, Conns: conns, Noop: noop}
	elapsed, err := d.Run(context.Background())
	require.NoError(b, err)
	return elapsed
}

// drainPreload queues n events, ids from first, for both (benchkit.Preload).
func drainPreload(b *testing.B, pool *pgxpool.Pool, first, n int) {
	require.NoError(b, benchkit.Preload(context.Background(), pool, first, n))
}

// BenchmarkPipelineDrain: Pipeline.Run empties a preloaded backlog of 1 KB
// events (50,000 by default) on its default 4 workers; each event runs as
// in production: idempotency claim, the handler, completion, one commit per
// worker transaction (TxBatch 100; 50 when the handler writes, see
// queue.MaxTxSavepoints). The realistic handler does one INSERT
// into a business table in the given transaction; the no-op handler
// nothing (the Pipeline still claims). Baseline: the hand-written loop of
// benchkit.BaselineDrain on as many connections as the Pipeline has workers, doing
// the same work in batches of 100. Targets: realistic >= 0.5x, stretch
// 0.8x. Two rounds of half the events each, the first with the baseline
// first, the second with wharf first.
func BenchmarkPipelineDrain(b *testing.B) {
	for _, handler := range []string{benchkit.HandlerInsert, benchkit.HandlerBatch, benchkit.HandlerNoop} {
		b.Run("handler="+handler, func(b *testing.B) { benchmarkDrain(b, handler) })
	}
}

func benchmarkDrain(b *testing.B, handler string) {
	noop := handler == benchkit.HandlerNoop
	const workers = wharf.DefaultWorkers
	ctx := context.Background()
	pool := dbtest.PoolWith(b, dbtest.Options{MaxConns: workers + 4})
	_, err := pool.Exec(ctx, benchkit.Tables)
	require.NoError(b, err)

	var handled atomic.Int64
	p, err := benchkit.NewPipeline(pool, wharf.Config{Workers: workers}, handler, func(wharf.Event) { handled.Add(1) })
	require.NoError(b, err)
	defer p.Close()

	// Warm up both on a few hundred events: connections, prepared
	// statements, caches.
	drainPreload(b, pool, 1, 400)
	baselineDrain(b, pool, workers, noop)
	pipelineDrain(b, pool, p, &handled, 400)

	n := max(b.N, 50_000)
	const rounds = 2
	per := n / rounds
	var baseline, ours time.Duration
	b.ResetTimer()
	for r := range rounds {
		b.StopTimer()
		drainPreload(b, pool, 1000+r*per, per)
		b.StartTimer()
		if r%2 == 0 {
			baseline += baselineDrain(b, pool, workers, noop)
			ours += pipelineDrain(b, pool, p, &handled, per)
		} else {
			ours += pipelineDrain(b, pool, p, &handled, per)
			baseline += baselineDrain(b, pool, workers, noop)
		}
	}
	b.StopTimer()

	total := rounds*per + 400
	require.Zero(b, benchCount(b, pool, `SELECT count(*) FROM bench_events`))
	require.Equal(b, total, benchCount(b, pool, `SELECT count(*) FROM bench_processed_events`))
	require.Equal(b, total, benchCount(b, pool, `SELECT count(*) FROM wharf.processed_events`))
	if !noop {
		require.Equal(b, total, benchCount(b, pool, `SELECT count(*) FROM bench_orders_baseline`))
		require.Equal(b, total, benchCount(b, pool, `SELECT count(*) FROM bench_orders`))
	}
	events := float64(rounds * per)
	b.ReportMetric(events/baseline.Seconds(), "baseline-events/s")
	b.ReportMetric(events/ours.Seconds(), "events/s")
	b.ReportMetric(baseline.Seconds()/ours.Seconds(), "x-baseline")
	b.ReportMetric(0, "ns/op")
}

// --- 3. Idle pickup -----------------------------------------------------------

// BenchmarkPipelinePickup: on an idle pipeline, the time from the event
// being enqueued (the endpoint writing its 202, which it does as soon as
// the event's commit returns, as BenchmarkPickupLatency in queue times
// from Enqueue returning) to the handler starting (after the fetch and the
// idempotency claim), one event at a time, 300 by default. Target: p99 <
// 10 ms. ack-p50-ms and ack-p99-ms time from the sender having read the
// 202 instead, which is later by the response's trip, so they come out
// lower. process=same: Handler and Run share one Pipeline, whose enqueue
// wakes its own workers directly. process=split: the endpoint and the
// workers are two Pipelines on two pools, as two processes would be, so
// the wake-up travels by NOTIFY and LISTEN. The Pipeline's workers also
// poll every second; an event picked up by a poll would show as a latency
// near 1 s. An ack latency is negative when the handler started before the
// sender had read the 202.
func BenchmarkPipelinePickup(b *testing.B) {
	for _, mode := range []string{"same", "split"} {
		b.Run("process="+mode, func(b *testing.B) { benchmarkPickup(b, mode == "split") })
	}
}

func benchmarkPickup(b *testing.B, split bool) {
	ctx := context.Background()
	url := dbtest.Database(b, dbtest.Options{})
	newPool := func() *pgxpool.Pool {
		cfg, err := pgxpool.ParseConfig(url)
		require.NoError(b, err)
		cfg.MaxConns = 10
		pool, err := pgxpool.NewWithConfig(ctx, cfg)
		require.NoError(b, err)
		b.Cleanup(pool.Close)
		return pool
	}
	started := make(chan time.Time, 1)
	newPipeline := func(pool *pgxpool.Pool) *wharf.Pipeline {
		p, err := benchkit.NewPipeline(pool, wharf.Config{}, benchkit.HandlerNoop, func(wharf.Event) { started <- time.Now() })
		require.NoError(b, err)
		b.Cleanup(p.Close)
		return p
	}
	worker := newPipeline(newPool())
	endpoint := worker
	if split {
		endpoint = newPipeline(newPool())
	}
	// enqueued is when the endpoint last wrote a 202: its commit is done.
	var enqueued atomic.Int64
	h := endpoint.Handler(benchkit.Source)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(stampAccepted{w, &enqueued}, r)
	}))
	defer srv.Close()
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}, Timeout: 10 * time.Second}

	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- worker.Run(runCtx) }()
	defer func() {
		stop()
		require.NoError(b, <-done)
	}()

	// send posts one event and returns the time its 202 was read and when
	// its handler started.
	send := func(id string) (acked, start time.Time, err error) {
		enqueued.Store(0)
		req, err := http.NewRequest(http.MethodPost, srv.URL, bytes.NewReader(benchkit.Body))
		if err != nil {
			return acked, start, err
		}
		req.Header = benchkit.Sign(id)
		resp, err := client.Do(req)
		if err != nil {
			return acked, start, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		acked = time.Now()
		if resp.StatusCode != http.StatusAccepted {
			return acked, start, fmt.Errorf("status %d, want 202", resp.StatusCode)
		}
		select {
		case start = <-started:
		case <-time.After(5 * time.Second):
			return acked, start, errors.New("the handler did not start within 5s")
		}
		// Let the worker commit and go idle again.
		time.Sleep(5 * time.Millisecond)
		return acked, start, nil
	}
	for i := range 20 { // warm up: LISTEN connected, statements prepared
		_, _, err := send(fmt.Sprintf("msg_warm_%d", i))
		require.NoError(b, err)
	}

	n := max(b.N, 300)
	latencies := make([]time.Duration, 0, n)
	ackLatencies := make([]time.Duration, 0, n)
	b.ResetTimer()
	for i := range n {
		acked, start, err := send(fmt.Sprintf("msg_%d", i))
		require.NoError(b, err)
		at := enqueued.Load()
		require.NotZero(b, at, "the endpoint wrote no 202")
		latencies = append(latencies, start.Sub(time.Unix(0, at)))
		ackLatencies = append(ackLatencies, start.Sub(acked))
	}
	b.StopTimer()
	slices.Sort(latencies)
	slices.Sort(ackLatencies)
	b.ReportMetric(benchkit.Percentile(latencies, 0.50), "p50-ms")
	b.ReportMetric(benchkit.Percentile(latencies, 0.99), "p99-ms")
	b.ReportMetric(float64(latencies[len(latencies)-1].Microseconds())/1000, "max-ms")
	b.ReportMetric(benchkit.Percentile(ackLatencies, 0.50), "ack-p50-ms")
	b.ReportMetric(benchkit.Percentile(ackLatencies, 0.99), "ack-p99-ms")
	b.ReportMetric(0, "ns/op")
}

// stampAccepted records in at when its handler writes a 202.
type stampAccepted struct {
	http.ResponseWriter
	at *atomic.Int64
}

func (s stampAccepted) WriteHeader(code int) {
	if code == http.StatusAccepted {
		s.at.Store(time.Now().UnixNano())
	}
	s.ResponseWriter.WriteHeader(code)
}
