package wharfotel_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/queue"
	"github.com/wharfhq/wharf/wharfotel"
)

const defaultURL = "postgres://postgres@127.0.0.1:5432/postgres"

var secret = "whsec_" + base64.StdEncoding.EncodeToString([]byte("wharfotel-test-secret-0123456789"))

// testPool creates a database of the test's own on the server at
// $DATABASE_URL, migrates it, and drops it at cleanup. The root module's
// test harness is internal to it, so this module makes its own.
func testPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	ctx := context.Background()
	url := os.Getenv("DATABASE_URL")
	if url == "" {
		url = defaultURL
	}
	admin, err := pgx.Connect(ctx, url)
	require.NoError(t, err, "wharfotel tests need PostgreSQL at $DATABASE_URL (default %s); start one, e.g.\n"+
		"  docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres:15", defaultURL)
	defer admin.Close(ctx)
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name := "wharfotel_test_" + hex.EncodeToString(b)
	_, err = admin.Exec(ctx, "CREATE DATABASE "+name)
	require.NoError(t, err)
	t.Cleanup(func() {
		conn, err := pgx.Connect(context.Background(), url)
		if err != nil {
			t.Errorf("drop database %s: %v", name, err)
			return
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(context.Background(), "DROP DATABASE "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("drop database %s: %v", name, err)
		}
	})
	cfg, err := pgxpool.ParseConfig(url)
	require.NoError(t, err)
	cfg.ConnConfig.Database = name
	cfg.MaxConns = 12
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	require.NoError(t, wharf.Migrate(ctx, pool))
	return pool
}

func TestObserver(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testPool(t)
	obs, reader, spans := newObserver(t)

	p, err := wharf.New(pool, wharf.Config{
		Observer: obs,
		Backoff:  queue.Backoff{Initial: 5 * time.Millisecond, Max: 10 * time.Millisecond},
	})
	require.NoError(t, err)
	t.Cleanup(p.Close)
	require.NoError(t, p.Source("acme", wharf.StandardWebhooks(secret)))
	handlerSpans := make(chan trace.SpanContext, 10)
	require.NoError(t, p.Handle("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		handlerSpans <- trace.SpanContextFromContext(ctx)
		if ev.Attempt == 1 {
			return errors.New("flaky once")
		}
		return nil
	}, wharf.Downstream("billing")))
	require.NoError(t, p.Handle("acme", "order.poison", func(context.Context, pgx.Tx, wharf.Event) error {
		return wharf.Permanent(errors.New("cannot parse"))
	}))
	reg, err := obs.ObservePipeline(p)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, reg.Unregister()) })

	srv := httptest.NewServer(p.Handler("acme"))
	t.Cleanup(srv.Close)
	send := func(id, typ string, header http.Header) int {
		body := []byte(fmt.Sprintf(`{"type":%q}`, typ))
		req, err := http.NewRequest(http.MethodPost, srv.URL, bytes.NewReader(body))
		require.NoError(t, err)
		req.Header = wharf.SignStandardWebhooks(secret, id, time.Now(), body)
		for k, v := range header {
			req.Header[k] = v
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	require.Equal(t, http.StatusAccepted, send("evt_1", "order.paid", nil))
	require.Equal(t, http.StatusOK, send("evt_1", "order.paid", nil))
	require.Equal(t, http.StatusUnauthorized, send("evt_2", "order.paid", http.Header{"Webhook-Signature": {"v1,AAAA"}}))
	require.Equal(t, http.StatusAccepted, send("evt_3", "order.poison", nil))

	// Before the workers run: the gauges see two due events.
	m := collect(t, reader)
	require.Equal(t, map[string]int64{"due": 2, "scheduled": 0, "running": 0, "exhausted": 0}, gaugeBy(t, m, "wharf.queue.events", "wharf.queue.state"))
	require.Equal(t, map[string]int64{"closed": 1, "half-open": 0, "open": 0}, gaugeBy(t, m, "wharf.breaker.state", "wharf.breaker.state"))

	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		require.NoError(t, <-done)
	})
	// A request's span ends after its answer is written, so the client may
	// have the answer first; an attempt's span ends before its commit.
	require.Eventually(t, func() bool {
		var n int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM wharf.queue`).Scan(&n)
		return err == nil && n == 0 && len(spansNamed(spans, "receive acme")) == 4 && len(spansNamed(spans, "process acme")) == 3
	}, 20*time.Second, 5*time.Millisecond, "the queue drained and every span ended")

	m = collect(t, reader)
	require.Equal(t, map[string]int64{"stored": 2, "duplicate": 1, "rejected": 1},
		sumBy(t, m, "wharf.ingest.requests", "wharf.ingest.outcome"))
	require.Equal(t, map[string]uint64{"stored": 2, "duplicate": 1, "rejected": 1},
		histogramCountBy(t, m, "wharf.ingest.duration", "wharf.ingest.outcome"))
	require.Equal(t, map[string]int64{"retried": 1, "processed": 1, "dead_lettered": 1},
		sumBy(t, m, "messaging.client.consumed.messages", "wharf.attempt.outcome"))
	require.Equal(t, map[string]uint64{"retried": 1, "processed": 1, "dead_lettered": 1},
		histogramCountBy(t, m, "messaging.process.duration", "wharf.attempt.outcome"))
	require.Equal(t, map[string]uint64{"acme/order.paid": 2, "acme/order.poison": 1},
		histogramCountBy(t, m, "wharf.queue.wait", "wharf.handler"))
	require.Nil(t, lookup(m, "wharf.queue.events"), "a source with no event in the queue has no series")
	oldest, ok := lookup(m, "wharf.queue.oldest_due_age").(metricdata.Gauge[float64])
	require.True(t, ok)
	require.Len(t, oldest.DataPoints, 1)
	require.Zero(t, oldest.DataPoints[0].Value, "no event is due")

	receives := map[any][]map[string]any{} // by outcome
	for _, s := range spansNamed(spans, "receive acme") {
		require.Equal(t, trace.SpanKindServer, s.SpanKind())
		attrs := attrMap(s.Attributes())
		require.Equal(t, "wharf", attrs["messaging.system"])
		require.Equal(t, "acme", attrs["messaging.destination.name"])
		require.Equal(t, "receive", attrs["messaging.operation.type"])
		receives[attrs["wharf.ingest.outcome"]] = append(receives[attrs["wharf.ingest.outcome"]], attrs)
	}
	require.Len(t, receives["stored"], 2)
	require.ElementsMatch(t, []any{"evt_1", "evt_3"},
		[]any{receives["stored"][0]["messaging.message.id"], receives["stored"][1]["messaging.message.id"]})
	require.Equal(t, int64(202), receives["stored"][0]["http.response.status_code"])
	require.Len(t, receives["duplicate"], 1)
	require.Equal(t, "evt_1", receives["duplicate"][0]["messaging.message.id"])
	require.Len(t, receives["rejected"], 1)
	require.Equal(t, int64(401), receives["rejected"][0]["http.response.status_code"])
	require.NotContains(t, receives["rejected"][0], "messaging.message.id", "a refused request has no identity")

	process := spansNamed(spans, "process acme")
	byOutcome := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range process {
		require.Equal(t, trace.SpanKindConsumer, s.SpanKind())
		byOutcome[attrMap(s.Attributes())["wharf.attempt.outcome"].(string)] = s
	}
	require.Len(t, byOutcome, 3)
	retried := attrMap(byOutcome["retried"].Attributes())
	require.Equal(t, "evt_1", retried["messaging.message.id"], "the processing span carries the id the receive span does")
	require.Equal(t, "process", retried["messaging.operation.type"])
	require.Equal(t, int64(1), retried["wharf.attempt"])
	require.Equal(t, "Error", byOutcome["retried"].Status().Code.String())
	require.Equal(t, int64(2), attrMap(byOutcome["processed"].Attributes())["wharf.attempt"])
	require.Equal(t, "Unset", byOutcome["processed"].Status().Code.String())
	require.Equal(t, "evt_3", attrMap(byOutcome["dead_lettered"].Attributes())["messaging.message.id"])
	require.Len(t, byOutcome["dead_lettered"].Events(), 1, "the error is recorded")

	// The handler ran inside the processing spans.
	for _, want := range []sdktrace.ReadOnlySpan{byOutcome["retried"], byOutcome["processed"]} {
		got := <-handlerSpans
		require.Equal(t, want.SpanContext().SpanID(), got.SpanID())
	}
}

// TestPipelineGaugesWithoutStats: when the queue's statistics cannot be
// read, a collection still succeeds, with the breakers and the
// application's own instruments, and the error goes to otel.Handle. Not
// parallel: it sets the global error handler.
func TestPipelineGaugesWithoutStats(t *testing.T) {
	var mu sync.Mutex
	var handled []error
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		mu.Lock()
		defer mu.Unlock()
		handled = append(handled, err)
	}))
	t.Cleanup(func() { otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { log.Print(err) })) })

	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	obs, err := wharfotel.New(wharfotel.Config{MeterProvider: mp, StatsTimeout: time.Nanosecond})
	require.NoError(t, err)
	p, err := wharf.New(testPool(t), wharf.Config{Observer: obs})
	require.NoError(t, err)
	t.Cleanup(p.Close)
	require.NoError(t, p.Source("acme", wharf.StandardWebhooks(secret)))
	require.NoError(t, p.Handle("acme", "order.paid", func(context.Context, pgx.Tx, wharf.Event) error { return nil },
		wharf.Downstream("billing")))
	reg, err := obs.ObservePipeline(p)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, reg.Unregister()) })
	app, err := mp.Meter("app").Int64Counter("app.orders")
	require.NoError(t, err)
	app.Add(context.Background(), 3)

	m := collect(t, reader)
	require.Equal(t, map[string]int64{"": 3}, sumBy(t, m, "app.orders", "none"), "the application's metric is exported")
	require.Equal(t, map[string]int64{"closed": 1, "half-open": 0, "open": 0}, gaugeBy(t, m, "wharf.breaker.state", "wharf.breaker.state"))
	require.Nil(t, lookup(m, "wharf.queue.events"))
	require.Nil(t, lookup(m, "wharf.queue.oldest_due_age"))
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, handled, 1)
	require.ErrorIs(t, handled[0], context.DeadlineExceeded)
	require.ErrorContains(t, handled[0], "wharfotel: queue stats")
}

// TestReceiveSpanKind: the receive span is a server span that starts a
// trace when the request's context carries none, and an internal span,
// the child of the one it carries (local, as otelhttp's, or remote)
// otherwise.
func TestReceiveSpanKind(t *testing.T) {
	t.Parallel()
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	obs, err := wharfotel.New(wharfotel.Config{TracerProvider: tp, MeterProvider: sdkmetric.NewMeterProvider()})
	require.NoError(t, err)
	receive := func(ctx context.Context) sdktrace.ReadOnlySpan {
		t.Helper()
		_, end := obs.StartIngest(ctx, "acme")
		end(wharf.IngestResult{Source: "acme", Status: http.StatusAccepted, Outcome: wharf.IngestStored})
		ended := spans.Ended()
		require.NotEmpty(t, ended)
		s := ended[len(ended)-1]
		require.Equal(t, "receive acme", s.Name())
		return s
	}

	s := receive(context.Background())
	require.Equal(t, trace.SpanKindServer, s.SpanKind())
	require.False(t, s.Parent().IsValid(), "a new trace")

	ctx, server := tp.Tracer("otelhttp").Start(context.Background(), "POST", trace.WithSpanKind(trace.SpanKindServer))
	s = receive(ctx)
	server.End()
	require.Equal(t, trace.SpanKindInternal, s.SpanKind())
	require.Equal(t, server.SpanContext(), s.Parent())

	remote := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1}, SpanID: trace.SpanID{2}, TraceFlags: trace.FlagsSampled, Remote: true,
	})
	s = receive(trace.ContextWithRemoteSpanContext(context.Background(), remote))
	require.Equal(t, trace.SpanKindInternal, s.SpanKind())
	require.Equal(t, remote.TraceID(), s.SpanContext().TraceID(), "the sender's trace goes on")
	require.Equal(t, remote.SpanID(), s.Parent().SpanID())
}

// TestSemanticConventions: messaging.operation.name on every span and
// measurement, error.type on failed attempts only (spans and metrics), the
// HTTP method a receive span can know, and consumed messages counted once
// per event taken from the queue (not for a split run).
func TestSemanticConventions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	obs, reader, spans := newObserver(t)
	for _, status := range []int{http.StatusAccepted, http.StatusMethodNotAllowed, http.StatusServiceUnavailable} {
		_, end := obs.StartIngest(ctx, "acme")
		end(wharf.IngestResult{Source: "acme", Status: status, Outcome: wharf.IngestStored})
	}
	failure := errors.New("downstream said no")
	for _, outcome := range []wharf.AttemptOutcome{wharf.AttemptProcessed, wharf.AttemptRetried, wharf.AttemptDeferred, wharf.AttemptDeadLettered, wharf.AttemptSplit} {
		_, end := obs.StartAttempt(ctx, wharf.Attempt{Source: "acme", EventID: "evt_" + string(outcome), Handler: "acme/order.paid", Number: 1, MaxAttempts: 5})
		res := wharf.AttemptResult{Outcome: outcome, Duration: time.Millisecond}
		if outcome != wharf.AttemptProcessed {
			res.Err = failure
		}
		end(res)
	}

	m := collect(t, reader)
	require.Equal(t, map[string]int64{"receive": 3}, sumBy(t, m, "wharf.ingest.requests", "messaging.operation.name"))
	require.Equal(t, map[string]uint64{"receive": 3}, histogramCountBy(t, m, "wharf.ingest.duration", "messaging.operation.name"))
	require.Equal(t, map[string]int64{"process": 4}, sumBy(t, m, "messaging.client.consumed.messages", "messaging.operation.name"))
	require.Equal(t, map[string]uint64{"process": 5}, histogramCountBy(t, m, "messaging.process.duration", "messaging.operation.name"))
	require.Equal(t, map[string]uint64{"acme/order.paid": 5}, histogramCountBy(t, m, "wharf.queue.wait", "wharf.handler"))
	require.Equal(t, map[string]int64{"processed": 1, "retried": 1, "deferred": 1, "dead_lettered": 1},
		sumBy(t, m, "messaging.client.consumed.messages", "wharf.attempt.outcome"), "a split run is not a delivery")
	require.Equal(t, map[string]int64{"": 2, "retried": 1, "dead_lettered": 1},
		sumBy(t, m, "messaging.client.consumed.messages", "error.type"))
	require.Equal(t, map[string]uint64{"": 3, "retried": 1, "dead_lettered": 1},
		histogramCountBy(t, m, "messaging.process.duration", "error.type"))

	for _, s := range spansNamed(spans, "process acme") {
		attrs := attrMap(s.Attributes())
		require.Equal(t, "process", attrs["messaging.operation.name"])
		switch outcome := attrs["wharf.attempt.outcome"]; outcome {
		case "retried", "dead_lettered":
			require.Equal(t, outcome, attrs["error.type"])
		default:
			require.NotContains(t, attrs, "error.type", outcome)
		}
	}
	receives := map[int64]map[string]any{}
	for _, s := range spansNamed(spans, "receive acme") {
		attrs := attrMap(s.Attributes())
		require.Equal(t, "receive", attrs["messaging.operation.name"])
		receives[attrs["http.response.status_code"].(int64)] = attrs
	}
	require.Len(t, receives, 3)
	require.Equal(t, "POST", receives[202]["http.request.method"])
	require.NotContains(t, receives[202], "error.type")
	require.NotContains(t, receives[405], "http.request.method", "a 405's method is not known")
	require.Equal(t, "POST", receives[503]["http.request.method"])
	require.Equal(t, "503", receives[503]["error.type"])
}

func TestNewRefusesNegativeStatsTimeout(t *testing.T) {
	t.Parallel()
	_, err := wharfotel.New(wharfotel.Config{StatsTimeout: -time.Second})
	require.ErrorIs(t, err, wharfotel.ErrInvalidConfig)
	require.ErrorContains(t, err, "StatsTimeout")
}

// newObserver builds an Observer whose measurements reader collects and
// whose ended spans spans records.
func newObserver(t *testing.T) (*wharfotel.Observer, *sdkmetric.ManualReader, *tracetest.SpanRecorder) {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	spans := tracetest.NewSpanRecorder()
	obs, err := wharfotel.New(wharfotel.Config{
		MeterProvider:  sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)),
		TracerProvider: sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans)),
	})
	require.NoError(t, err)
	return obs, reader, spans
}

func collect(t *testing.T, r *sdkmetric.ManualReader) metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, r.Collect(context.Background(), &rm))
	return rm
}

// lookup returns the data of the metric called name, nil if none was
// collected.
func lookup(rm metricdata.ResourceMetrics, name string) metricdata.Aggregation {
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m.Data
			}
		}
	}
	return nil
}

func find(t *testing.T, rm metricdata.ResourceMetrics, name string) metricdata.Aggregation {
	t.Helper()
	data := lookup(rm, name)
	require.NotNil(t, data, "no metric %q collected", name)
	return data
}

func sumBy(t *testing.T, rm metricdata.ResourceMetrics, name string, key attribute.Key) map[string]int64 {
	t.Helper()
	sum, ok := find(t, rm, name).(metricdata.Sum[int64])
	require.True(t, ok, "%s is an int64 sum", name)
	return pointsBy(sum.DataPoints, key)
}

func gaugeBy(t *testing.T, rm metricdata.ResourceMetrics, name string, key attribute.Key) map[string]int64 {
	t.Helper()
	g, ok := find(t, rm, name).(metricdata.Gauge[int64])
	require.True(t, ok, "%s is an int64 gauge", name)
	return pointsBy(g.DataPoints, key)
}

func pointsBy(points []metricdata.DataPoint[int64], key attribute.Key) map[string]int64 {
	out := map[string]int64{}
	for _, dp := range points {
		v, _ := dp.Attributes.Value(key)
		out[v.String()] += dp.Value
	}
	return out
}

func histogramCountBy(t *testing.T, rm metricdata.ResourceMetrics, name string, key attribute.Key) map[string]uint64 {
	t.Helper()
	h, ok := find(t, rm, name).(metricdata.Histogram[float64])
	require.True(t, ok, "%s is a float64 histogram", name)
	out := map[string]uint64{}
	for _, dp := range h.DataPoints {
		v, _ := dp.Attributes.Value(key)
		out[v.String()] += dp.Count
	}
	return out
}

func spansNamed(r *tracetest.SpanRecorder, name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range r.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

func attrMap(kvs []attribute.KeyValue) map[string]any {
	m := map[string]any{}
	for _, kv := range kvs {
		m[string(kv.Key)] = kv.Value.AsInterface()
	}
	return m
}
