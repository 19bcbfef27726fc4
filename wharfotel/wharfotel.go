// Package wharfotel instruments a wharf Pipeline with OpenTelemetry
// metrics and traces. It is a module of its own, so that the core module
// does not depend on OpenTelemetry.
//
//	obs, err := wharfotel.New(wharfotel.Config{}) // the global providers
//	p, err := wharf.New(pool, wharf.Config{Observer: obs})
//	reg, err := obs.ObservePipeline(p) // queue depth and breaker gauges
//	defer reg.Unregister()
//
// Attributes follow the OpenTelemetry semantic conventions for messaging
// where they apply: messaging.system is "wharf", messaging.destination.name
// the source, messaging.operation.name and messaging.operation.type both
// "receive" for a request to an endpoint and both "process" for a
// processing attempt, messaging.message.id the provider's event id (on
// spans only: it is unbounded), error.type on a failed attempt (its
// wharf.attempt.outcome: "retried" or "dead_lettered") and on the receive
// span of a request answered with a 5xx (the status code, as for HTTP
// servers). What the conventions have no name for is under wharf.*.
//
// The receive span, when it is a server span, has http.request.method
// ("POST" for every request but those answered 405, whose method wharf
// does not report) and http.response.status_code, but not url.scheme or
// url.path, which the HTTP conventions require: the Observer is not given
// the request. otelhttp's server span, below, has them.
//
// The receive span starts a trace of its own (a server span) unless the
// request's context already carries a span, local or remote; then it is
// an internal span, that span's child. wharf does not read a sender's
// traceparent header itself: to continue the sender's trace (and get
// otelhttp's HTTP server span and metrics), wrap the endpoint in otelhttp,
// which extracts it:
//
//	mux.Handle("POST /webhooks/acme", otelhttp.NewHandler(p.Handler("acme"), "webhook acme"))
package wharfotel

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/wharfhq/wharf"
)

// ScopeName is the instrumentation scope of the meter and the tracer.
const ScopeName = "github.com/wharfhq/wharf/wharfotel"

// DefaultStatsTimeout is Config.StatsTimeout's default.
const DefaultStatsTimeout = 2 * time.Second

// Attribute keys of wharf's own.
const (
	EventTypeKey      = attribute.Key("wharf.event.type")      // the event's type, as the source names it
	HandlerKey        = attribute.Key("wharf.handler")         // the handler's name (wharf.HandlerName)
	AttemptKey        = attribute.Key("wharf.attempt")         // the attempt's number, from 1
	IngestOutcomeKey  = attribute.Key("wharf.ingest.outcome")  // a wharf.IngestOutcome
	AttemptOutcomeKey = attribute.Key("wharf.attempt.outcome") // a wharf.AttemptOutcome
	QueueStateKey     = attribute.Key("wharf.queue.state")     // due, scheduled, running or exhausted
	BreakerKey        = attribute.Key("wharf.breaker.name")    // a downstream's breaker
	BreakerStateKey   = attribute.Key("wharf.breaker.state")   // closed, half-open or open
)

// ErrInvalidConfig is wrapped by the errors about a Config that cannot work.
var ErrInvalidConfig = errors.New("wharfotel: invalid config")

// Config configures an Observer. The zero value is usable.
type Config struct {
	// MeterProvider creates the instruments. Defaults to
	// otel.GetMeterProvider().
	MeterProvider metric.MeterProvider
	// TracerProvider creates the spans. Defaults to
	// otel.GetTracerProvider().
	TracerProvider trace.TracerProvider
	// StatsTimeout bounds each read of the queue's statistics when the
	// gauges of ObservePipeline are collected; a collection that cannot
	// read them in time reports no queue gauges (and hands the error to
	// otel.Handle), but still the breakers' and every other instrument's
	// measurements. Defaults to 2s.
	StatsTimeout time.Duration
}

// Observer is a wharf.Observer that records OpenTelemetry metrics and
// spans. It is safe for concurrent use.
type Observer struct {
	tracer       trace.Tracer
	meter        metric.Meter
	statsTimeout time.Duration

	requests    metric.Int64Counter     // wharf.ingest.requests
	ingestTime  metric.Float64Histogram // wharf.ingest.duration
	consumed    metric.Int64Counter     // messaging.client.consumed.messages
	processTime metric.Float64Histogram // messaging.process.duration
	queueWait   metric.Float64Histogram // wharf.queue.wait
}

var _ wharf.Observer = (*Observer)(nil)

// New builds an Observer: set it as wharf.Config.Observer. Its
// instruments:
//
//	wharf.ingest.requests               counter, {request}: each request to an endpoint, by wharf.ingest.outcome and http.response.status_code
//	wharf.ingest.duration               histogram, s: from the request's arrival to its answer (outcome "stored": the acknowledgement latency)
//	messaging.client.consumed.messages  counter, {message}: each event a worker took from the queue, by wharf.handler, wharf.attempt.outcome and error.type
//	messaging.process.duration          histogram, s: each processing attempt's time, handler included, by the same
//	wharf.queue.wait                    histogram, s: how long an event waited in the queue for an attempt (see wharf.Attempt.QueueWait)
//
// all with messaging.system, messaging.destination.name (the source) and
// messaging.operation.name. messaging.client.consumed.messages counts the
// events delivered, as the conventions define it: once each time a worker
// takes one from the queue, a deferred attempt included (the event was
// taken, then given back). It does not count an attempt reported split:
// that event stays taken and runs again alone, counted then (if shutdown
// comes first, that delivery goes uncounted). messaging.process.duration
// has every attempt, split ones included.
// Spans: "receive <source>" (server kind, or internal under a span the
// request's context carries already) for each request, and
// "process <source>" (consumer kind) for each processing attempt, the
// parent of the handler's own spans. A request and the attempts of the
// event it stored share messaging.message.id; the processing span has no
// link to the request's, which ended before it, in another process maybe.
func New(cfg Config) (*Observer, error) {
	if cfg.StatsTimeout < 0 {
		return nil, fmt.Errorf("%w: StatsTimeout %v is negative", ErrInvalidConfig, cfg.StatsTimeout)
	}
	if cfg.StatsTimeout == 0 {
		cfg.StatsTimeout = DefaultStatsTimeout
	}
	if cfg.MeterProvider == nil {
		cfg.MeterProvider = otel.GetMeterProvider()
	}
	if cfg.TracerProvider == nil {
		cfg.TracerProvider = otel.GetTracerProvider()
	}
	o := &Observer{
		tracer:       cfg.TracerProvider.Tracer(ScopeName),
		meter:        cfg.MeterProvider.Meter(ScopeName),
		statsTimeout: cfg.StatsTimeout,
	}
	// Seconds, from a fast acknowledgement to a slow handler; queue waits
	// run longer (backoff, backlogs).
	latency := metric.WithExplicitBucketBoundaries(0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
	wait := metric.WithExplicitBucketBoundaries(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 4*3600)
	var errs [5]error
	o.requests, errs[0] = o.meter.Int64Counter("wharf.ingest.requests",
		metric.WithUnit("{request}"), metric.WithDescription("Requests to a wharf endpoint, by outcome."))
	o.ingestTime, errs[1] = o.meter.Float64Histogram("wharf.ingest.duration", latency,
		metric.WithUnit("s"), metric.WithDescription("Time from a request's arrival at a wharf endpoint to its answer."))
	o.consumed, errs[2] = o.meter.Int64Counter("messaging.client.consumed.messages",
		metric.WithUnit("{message}"), metric.WithDescription("Events a wharf worker took from the queue, by the outcome of their processing."))
	o.processTime, errs[3] = o.meter.Float64Histogram("messaging.process.duration", latency,
		metric.WithUnit("s"), metric.WithDescription("Duration of one processing attempt of an event."))
	o.queueWait, errs[4] = o.meter.Float64Histogram("wharf.queue.wait", wait,
		metric.WithUnit("s"), metric.WithDescription("Time an event waited in the queue before a processing attempt."))
	if err := errors.Join(errs[:]...); err != nil {
		return nil, fmt.Errorf("wharfotel: instruments: %w", err)
	}
	return o, nil
}

// The messaging operations: each is its messaging.operation.name and
// messaging.operation.type, the same words, as no other name is wharf's.
var (
	receiveOp = []attribute.KeyValue{semconv.MessagingOperationName("receive"), semconv.MessagingOperationTypeReceive}
	processOp = []attribute.KeyValue{semconv.MessagingOperationName("process"), semconv.MessagingOperationTypeProcess}
)

// common are the attributes of every measurement and span about source.
func common(source string, op []attribute.KeyValue) []attribute.KeyValue {
	return append([]attribute.KeyValue{
		semconv.MessagingSystemKey.String("wharf"),
		semconv.MessagingDestinationName(source),
	}, op...)
}

// StartIngest starts the request's span; end records the request's
// measurements and ends the span.
//
// The span is the request's server span unless ctx carries a valid span
// context already, local or remote: then the middleware that put it there
// (otelhttp.NewHandler, with its server span) is taken to speak for the
// request, and this span is internal, that span's child, rather than a
// second server span nested in the first.
func (o *Observer) StartIngest(ctx context.Context, source string) (context.Context, func(wharf.IngestResult)) {
	kind := trace.SpanKindServer
	if trace.SpanContextFromContext(ctx).IsValid() {
		kind = trace.SpanKindInternal
	}
	ctx, span := o.tracer.Start(ctx, "receive "+source, trace.WithSpanKind(kind),
		trace.WithAttributes(common(source, receiveOp)...))
	return ctx, func(res wharf.IngestResult) {
		attrs := append(common(res.Source, receiveOp),
			IngestOutcomeKey.String(string(res.Outcome)), semconv.HTTPResponseStatusCode(res.Status))
		set := metric.WithAttributeSet(attribute.NewSet(attrs...))
		o.requests.Add(ctx, 1, set)
		o.ingestTime.Record(ctx, res.Duration.Seconds(), set)

		span.SetAttributes(IngestOutcomeKey.String(string(res.Outcome)), semconv.HTTPResponseStatusCode(res.Status))
		if res.EventID != "" {
			span.SetAttributes(semconv.MessagingMessageID(res.EventID), EventTypeKey.String(res.EventType))
		}
		// Every request but a 405 got past the method check, which lets
		// POST alone through; a 405's method is unknown here.
		if kind == trace.SpanKindServer && res.Status != http.StatusMethodNotAllowed {
			span.SetAttributes(semconv.HTTPRequestMethodPost)
		}
		// As for HTTP servers: only a 5xx is the server's error, and its
		// error.type is the status code.
		if res.Status >= http.StatusInternalServerError {
			span.SetAttributes(semconv.ErrorTypeKey.String(strconv.Itoa(res.Status)))
			span.SetStatus(codes.Error, strconv.Itoa(res.Status)+" "+http.StatusText(res.Status))
		}
		span.End()
	}
}

// StartAttempt records the queue wait and starts the attempt's span; end
// records the attempt's measurements and ends the span.
func (o *Observer) StartAttempt(ctx context.Context, a wharf.Attempt) (context.Context, func(wharf.AttemptResult)) {
	attrs := append(common(a.Source, processOp), HandlerKey.String(a.Handler))
	o.queueWait.Record(ctx, a.QueueWait.Seconds(), metric.WithAttributes(attrs...))
	ctx, span := o.tracer.Start(ctx, "process "+a.Source, trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attrs...),
		trace.WithAttributes(semconv.MessagingMessageID(a.EventID), EventTypeKey.String(a.EventType), AttemptKey.Int(a.Number)))
	return ctx, func(res wharf.AttemptResult) {
		end := []attribute.KeyValue{AttemptOutcomeKey.String(string(res.Outcome))}
		// A deferral is the downstream's or the handler's choice, not a
		// failure of the event; a split run's outcome is its run alone's.
		failed := res.Outcome == wharf.AttemptRetried || res.Outcome == wharf.AttemptDeadLettered
		if failed {
			// error.type is the outcome, not the error's Go type: the
			// conventions ask for a predictable, low-cardinality, documented
			// list, and a handler's errors are mostly *errors.errorString
			// or *fmt.wrapError, which say nothing about what failed.
			end = append(end, semconv.ErrorTypeKey.String(string(res.Outcome)))
		}
		set := metric.WithAttributeSet(attribute.NewSet(append(attrs, end...)...))
		if res.Outcome != wharf.AttemptSplit {
			o.consumed.Add(ctx, 1, set)
		}
		o.processTime.Record(ctx, res.Duration.Seconds(), set)

		span.SetAttributes(end...)
		if res.Err != nil {
			span.RecordError(res.Err)
		}
		if failed {
			span.SetStatus(codes.Error, string(res.Outcome))
		}
		span.End()
	}
}
