package wharf_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/idempotency"
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

// benchSource and benchType name the benchmarks' events; their handler's
// name, the idempotency consumer, is "bench/bench.event".
const (
	benchSource  = "bench"
	benchType    = "bench.event"
	benchHandler = benchSource + "/" + benchType
)

// benchBody is a 1 KB Standard Webhooks JSON body of type bench.event.
var benchBody = func() []byte {
	b := []byte(`{"type":"bench.event","timestamp":"2024-05-01T12:00:00Z","data":{"object":{"id":"ord_1NG8Du2eZvKYlo2C","customer":"cus_9s6XKzkNRiz8i3","note":"`)
	for len(b) < 1024-4 {
		b = append(b, 'x')
	}
	return append(b, `"}}}`...)
}()

// benchHeaders is what the HTTP ingest stores with an event (keptHeaders of
// a signed request from Go's client), for the preloaded events.
var benchHeaders = func() []byte {
	h := wharf.SignStandardWebhooks(testSecret, "msg_preloaded", time.Now(), benchBody)
	h.Set("Content-Type", "application/json")
	h.Set("User-Agent", "Go-http-client/1.1")
	h.Set("Accept-Encoding", "gzip")
	h.Set("Content-Length", "1024")
	b, err := json.Marshal(h)
	if err != nil {
		panic(err)
	}
	return b
}()

// percentile returns the p-quantile (0..1) of sorted, in milliseconds.
func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return float64(sorted[int(p*float64(len(sorted)-1))].Microseconds()) / 1000
}

// benchParallel runs fn(i) for i in [0, n) on workers goroutines and returns
// the elapsed time; the first error fails the benchmark.
func benchParallel(b *testing.B, workers, n int, fn func(i int) error) time.Duration {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	start := time.Now()
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
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

// benchCount runs a count(*) query.
func benchCount(b *testing.B, pool *pgxpool.Pool, sql string) int {
	b.Helper()
	var n int
	require.NoError(b, pool.QueryRow(context.Background(), sql).Scan(&n))
	return n
}

// --- 1. HTTP ingest ---------------------------------------------------------

// baselineIngestTable is what a plain webhook endpoint would insert into.
const baselineIngestTable = `
CREATE TABLE bench_webhooks (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source      text NOT NULL,
    event_id    text NOT NULL,
    event_type  text NOT NULL,
    body        bytea NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source, event_id)
)`

// plainHandler is the baseline endpoint: it verifies the same Standard
// Webhooks signature, reads the type from the body, and stores the event
// with one INSERT, committed (synchronous_commit is on on the server)
// before it answers.
func plainHandler(pool *pgxpool.Pool, v *wharf.StandardWebhooksVerifier) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, wharf.DefaultMaxBodyBytes))
		if err != nil {
			http.Error(w, "cannot read body", http.StatusBadRequest)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), wharf.DefaultAckDeadline)
		defer cancel()
		if err := v.Verify(ctx, r.Header, body); err != nil {
			http.Error(w, "invalid signature", http.StatusUnauthorized)
			return
		}
		var payload struct {
			Type string `json:"type"`
		}
		id := r.Header.Get("Webhook-Id")
		if err := json.Unmarshal(body, &payload); err != nil || payload.Type == "" || id == "" {
			http.Error(w, "no id or type", http.StatusBadRequest)
			return
		}
		tag, err := pool.Exec(ctx, `INSERT INTO bench_webhooks (source, event_id, event_type, body) VALUES ($1, $2, $3, $4)
			ON CONFLICT (source, event_id) DO NOTHING`, benchSource, id, payload.Type, body)
		switch {
		case err != nil:
			http.Error(w, "temporarily unavailable", http.StatusServiceUnavailable)
		case tag.RowsAffected() == 0:
			w.WriteHeader(http.StatusOK)
			_, _ = io.WriteString(w, "duplicate\n")
		default:
			w.WriteHeader(http.StatusAccepted)
			_, _ = io.WriteString(w, "accepted\n")
		}
	})
}

// BenchmarkPipelineIngest: signed 1 KB Standard Webhooks requests from
// concurrent senders over real HTTP (one httptest server, one keep-alive
// client), each answered only once its event is committed. wharf:
// Pipeline.Handler (verify, identify, group commit into the queue).
// Baseline: plainHandler, one INSERT and one commit per request, on a pool
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
	_, err := pool.Exec(ctx, baselineIngestTable)
	require.NoError(b, err)

	p, err := wharf.New(pool, wharf.Config{})
	require.NoError(b, err)
	defer p.Close()
	require.NoError(b, p.Source(benchSource, wharf.StandardWebhooks(testSecret)))
	require.NoError(b, p.Handle(benchSource, benchType, func(context.Context, pgx.Tx, wharf.Event) error { return nil }))

	mux := http.NewServeMux()
	mux.Handle("POST /wharf", p.Handler(benchSource))
	mux.Handle("POST /plain", plainHandler(pool, wharf.StandardWebhooks(testSecret)))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	transport := &http.Transport{MaxIdleConns: 2 * senders, MaxIdleConnsPerHost: 2 * senders, DisableCompression: true}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport, Timeout: 30 * time.Second}

	// round posts n signed requests to path from senders goroutines and
	// returns the elapsed time and each request's latency.
	round := func(path, prefix string, n int) (time.Duration, []time.Duration) {
		headers := make([]http.Header, n)
		now := time.Now()
		for i := range headers {
			headers[i] = wharf.SignStandardWebhooks(testSecret, fmt.Sprintf("msg_%s_%d", prefix, i), now, benchBody)
			headers[i].Set("Content-Type", "application/json")
		}
		latencies := make([]time.Duration, n)
		url := srv.URL + path
		elapsed := benchParallel(b, senders, n, func(i int) error {
			req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(benchBody))
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
	require.Equal(b, rounds*per+4*senders, benchCount(b, pool, `SELECT count(*) FROM bench_webhooks`))
	require.Equal(b, rounds*per+4*senders, benchCount(b, pool, `SELECT count(*) FROM wharf.queue`))

	slices.Sort(baseLat)
	slices.Sort(ourLat)
	requests := float64(rounds * per)
	b.ReportMetric(requests/baseline.Seconds(), "baseline-req/s")
	b.ReportMetric(requests/ours.Seconds(), "req/s")
	b.ReportMetric(baseline.Seconds()/ours.Seconds(), "x-baseline")
	b.ReportMetric(percentile(ourLat, 0.50), "p50-ms")
	b.ReportMetric(percentile(ourLat, 0.99), "p99-ms")
	b.ReportMetric(percentile(baseLat, 0.50), "baseline-p50-ms")
	b.ReportMetric(percentile(baseLat, 0.99), "baseline-p99-ms")
	b.ReportMetric(0, "ns/op")
}

// --- 2. End-to-end drain ------------------------------------------------------

// drainTables are the baseline's copy of the queued events, its copy of the
// idempotency table (same columns, keys and indexes), and the business
// tables both sides write to.
const drainTables = `
CREATE TABLE bench_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source      text NOT NULL,
    event_id    text NOT NULL,
    event_type  text NOT NULL,
    body        bytea NOT NULL,
    headers     jsonb,
    received_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source, event_id)
);
CREATE TABLE bench_processed_events (LIKE wharf.processed_events INCLUDING ALL);
CREATE TABLE bench_orders (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source     text NOT NULL,
    event_id   text NOT NULL,
    event_type text NOT NULL,
    size       integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE bench_orders_baseline (LIKE bench_orders INCLUDING ALL);`

// businessInsert is the realistic handler's one write.
const businessInsert = `INSERT INTO bench_orders (source, event_id, event_type, size) VALUES ($1, $2, $3, $4)`

// drainPreload queues n events, ids from first, both in the Pipeline's
// queue (as its HTTP ingest stores them, handler column set so dedupe and
// claims behave as in production) and in the baseline's events table.
func drainPreload(b *testing.B, pool *pgxpool.Pool, first, n int) {
	ctx := context.Background()
	for _, sql := range []string{
		`INSERT INTO bench_events (source, event_id, event_type, body, headers)
		 SELECT 'bench', 'msg_' || g, 'bench.event', $1, $4 FROM generate_series($2::int, $2::int + $3::int - 1) g`,
		`WITH ins AS (
		     INSERT INTO wharf.queue (source, event_id, event_type, handler, max_attempts)
		     SELECT 'bench', 'msg_' || g, 'bench.event', 'bench/bench.event', 8 FROM generate_series($2::int, $2::int + $3::int - 1) g
		     RETURNING id, source, event_id)
		 INSERT INTO wharf.queue_payloads (queue_id, source, event_id, body, headers) SELECT id, source, event_id, $1, $4 FROM ins`,
	} {
		_, err := pool.Exec(ctx, sql, benchBody, first, n, benchHeaders)
		require.NoError(b, err)
	}
	_, err := pool.Exec(ctx, `VACUUM ANALYZE bench_events, bench_processed_events, bench_orders, bench_orders_baseline,
		wharf.queue, wharf.queue_payloads, wharf.processed_events`)
	require.NoError(b, err)
}

// baselineDrain empties bench_events on conns connections with the
// hand-written loop: per batch of 100, one transaction of DELETE ... FOR
// UPDATE SKIP LOCKED ... RETURNING, the claims (one INSERT ... ON CONFLICT
// DO NOTHING for the batch), the business INSERT for the claimed events
// (unless noop), COMMIT.
func baselineDrain(b *testing.B, pool *pgxpool.Pool, conns int, noop bool) time.Duration {
	ctx := context.Background()
	return benchParallel(b, conns, conns, func(int) error {
		for {
			var n int
			err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				rows, err := tx.Query(ctx, `
DELETE FROM bench_events WHERE id IN (
    SELECT id FROM bench_events ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED)
RETURNING source, event_id, event_type, body, headers`)
				if err != nil {
					return err
				}
				var sources, ids, types, keys []string
				var sizes []int32
				for rows.Next() {
					var source, id, typ string
					var body, headers []byte
					if err := rows.Scan(&source, &id, &typ, &body, &headers); err != nil {
						rows.Close()
						return err
					}
					sources, ids, types = append(sources, source), append(ids, id), append(types, typ)
					keys = append(keys, idempotency.Key(source, id))
					sizes = append(sizes, int32(len(body)))
				}
				if err := rows.Err(); err != nil {
					return err
				}
				if n = len(ids); n == 0 {
					return nil
				}
				claimed, err := tx.Query(ctx, `
INSERT INTO bench_processed_events (consumer, key, mode)
SELECT $1, k, 'tx' FROM unnest($2::text[]) k
ON CONFLICT (consumer, key) DO NOTHING
RETURNING key`, benchHandler, keys)
				if err != nil {
					return err
				}
				won, err := pgx.CollectRows(claimed, pgx.RowTo[string])
				if err != nil {
					return err
				}
				if len(won) != n {
					return fmt.Errorf("baseline: %d of %d claims won, every key is new", len(won), n)
				}
				if noop {
					return nil
				}
				_, err = tx.Exec(ctx, `
INSERT INTO bench_orders_baseline (source, event_id, event_type, size)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[])`, sources, ids, types, sizes)
				return err
			})
			if err != nil || n == 0 {
				return err
			}
		}
	})
}

// pipelineDrain runs p until it has handled n more events (counted by the
// handler through handled) and the queue is empty, and returns the time.
func pipelineDrain(b *testing.B, pool *pgxpool.Pool, p *wharf.Pipeline, handled *atomic.Int64, n int) time.Duration {
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	target := handled.Load() + int64(n)
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- p.Run(ctx) }()
	for handled.Load() < target {
		select {
		case err := <-done:
			b.Fatalf("Run returned early: %v", err)
		case <-time.After(time.Millisecond):
		}
	}
	// The last transactions commit after their handlers return.
	for benchCount(b, pool, `SELECT count(*) FROM wharf.queue`) > 0 {
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	stop()
	require.NoError(b, <-done)
	return elapsed
}

// BenchmarkPipelineDrain: Pipeline.Run empties a preloaded backlog of 1 KB
// events (50,000 by default) on its default 4 workers; each event runs as
// in production: idempotency claim, the handler, completion, one commit per
// worker transaction (TxBatch 32). The realistic handler does one INSERT
// into a business table in the given transaction; the no-op handler
// nothing (the Pipeline still claims). Baseline: the hand-written loop of
// baselineDrain on as many connections as the Pipeline has workers, doing
// the same work in batches of 100. Targets: realistic >= 0.5x, stretch
// 0.8x. Two rounds of half the events each, the first with the baseline
// first, the second with wharf first.
func BenchmarkPipelineDrain(b *testing.B) {
	for _, handler := range []string{"insert", "noop"} {
		b.Run("handler="+handler, func(b *testing.B) { benchmarkDrain(b, handler == "noop") })
	}
}

func benchmarkDrain(b *testing.B, noop bool) {
	const workers = wharf.DefaultWorkers
	ctx := context.Background()
	pool := dbtest.PoolWith(b, dbtest.Options{MaxConns: workers + 4})
	_, err := pool.Exec(ctx, drainTables)
	require.NoError(b, err)

	p, err := wharf.New(pool, wharf.Config{Workers: workers})
	require.NoError(b, err)
	defer p.Close()
	require.NoError(b, p.Source(benchSource, wharf.StandardWebhooks(testSecret)))
	var handled atomic.Int64
	require.NoError(b, p.Handle(benchSource, benchType, func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		handled.Add(1)
		if noop {
			return nil
		}
		_, err := tx.Exec(ctx, businessInsert, ev.Source, ev.ID, ev.Type, len(ev.Body))
		return err
	}))

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

// BenchmarkPipelinePickup: on an idle pipeline, the time from the sender
// receiving its 202 to the handler starting (after the fetch and the
// idempotency claim), one event at a time, 300 by default. Target: p99 <
// 10 ms. process=same: Handler and Run share one Pipeline, whose enqueue
// wakes its own workers directly. process=split: the endpoint and the
// workers are two Pipelines on two pools, as two processes would be, so
// the wake-up travels by NOTIFY and LISTEN. The Pipeline's workers also
// poll every second; an event picked up by a poll would show as a latency
// near 1 s. A negative latency means the handler started before the
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
		p, err := wharf.New(pool, wharf.Config{})
		require.NoError(b, err)
		b.Cleanup(p.Close)
		require.NoError(b, p.Source(benchSource, wharf.StandardWebhooks(testSecret)))
		require.NoError(b, p.Handle(benchSource, benchType, func(context.Context, pgx.Tx, wharf.Event) error {
			started <- time.Now()
			return nil
		}))
		return p
	}
	worker := newPipeline(newPool())
	endpoint := worker
	if split {
		endpoint = newPipeline(newPool())
	}
	srv := httptest.NewServer(endpoint.Handler(benchSource))
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
		req, err := http.NewRequest(http.MethodPost, srv.URL, bytes.NewReader(benchBody))
		if err != nil {
			return acked, start, err
		}
		req.Header = wharf.SignStandardWebhooks(testSecret, id, time.Now(), benchBody)
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
	b.ResetTimer()
	for i := range n {
		acked, start, err := send(fmt.Sprintf("msg_%d", i))
		require.NoError(b, err)
		latencies = append(latencies, start.Sub(acked))
	}
	b.StopTimer()
	slices.Sort(latencies)
	b.ReportMetric(percentile(latencies, 0.50), "p50-ms")
	b.ReportMetric(percentile(latencies, 0.99), "p99-ms")
	b.ReportMetric(float64(latencies[len(latencies)-1].Microseconds())/1000, "max-ms")
	b.ReportMetric(0, "ns/op")
}
