package wharfotel

import (
	"context"
	"errors"
	"fmt"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/breaker"
)

// breakerStates are the states wharf.breaker.state reports, each its own
// series, so that a dashboard sums or alerts on one state.
var breakerStates = []breaker.State{breaker.StateClosed, breaker.StateHalfOpen, breaker.StateOpen}

// ObservePipeline registers gauges read from p at each collection:
//
//	wharf.queue.events          gauge, {event}: the queue's events by messaging.destination.name (the source) and wharf.queue.state (due, scheduled, running, exhausted)
//	wharf.queue.oldest_due_age  gauge, s: how long the oldest due event has waited (0 when none is due)
//	wharf.breaker.state         gauge, 1 for the breaker's current state and 0 for the others, by wharf.breaker.name and wharf.breaker.state
//
// A source has wharf.queue.events series only while it has events in the
// queue. The queue gauges cost one scan of the queue table per collection
// (queue.Queue.Stats), bounded by Config.StatsTimeout; a collection that
// cannot read them (the database slow or down) reports the breakers only,
// and hands the error to otel.Handle instead of returning it: a reader
// whose collection fails exports nothing at all, the application's own
// metrics included, and a database outage is when they matter. p may run
// in another process than the one serving its endpoints: the queue is the
// database's, the breakers this process's. Unregister the registration
// before closing p.
func (o *Observer) ObservePipeline(p *wharf.Pipeline) (metric.Registration, error) {
	events, errEvents := o.meter.Int64ObservableGauge("wharf.queue.events",
		metric.WithUnit("{event}"), metric.WithDescription("Events in the wharf queue, by source and state."))
	oldest, errOldest := o.meter.Float64ObservableGauge("wharf.queue.oldest_due_age",
		metric.WithUnit("s"), metric.WithDescription("How long the oldest due event in the wharf queue has waited."))
	breakers, errBreakers := o.meter.Int64ObservableGauge("wharf.breaker.state",
		metric.WithUnit("1"), metric.WithDescription("1 for the state each downstream's circuit breaker is in, 0 for the others."))
	if err := errors.Join(errEvents, errOldest, errBreakers); err != nil {
		return nil, fmt.Errorf("wharfotel: pipeline gauges: %w", err)
	}
	system := semconv.MessagingSystemKey.String("wharf")
	reg, err := o.meter.RegisterCallback(func(ctx context.Context, obs metric.Observer) error {
		for _, st := range p.Breakers().Statuses() {
			for _, s := range breakerStates {
				var v int64
				if st.State == s {
					v = 1
				}
				obs.ObserveInt64(breakers, v,
					metric.WithAttributes(system, BreakerKey.String(st.Name), BreakerStateKey.String(s.String())))
			}
		}
		ctx, cancel := context.WithTimeout(ctx, o.statsTimeout)
		defer cancel()
		stats, err := p.Queue().Stats(ctx)
		if err != nil {
			otel.Handle(fmt.Errorf("wharfotel: queue stats: %w", err))
			return nil
		}
		for source, s := range stats.BySource {
			for state, n := range map[string]int64{"due": s.Due, "scheduled": s.Scheduled, "running": s.Running, "exhausted": s.Exhausted} {
				obs.ObserveInt64(events, n, metric.WithAttributes(
					system, semconv.MessagingDestinationName(source), QueueStateKey.String(state)))
			}
		}
		obs.ObserveFloat64(oldest, stats.OldestDueAge.Seconds(), metric.WithAttributes(system))
		return nil
	}, events, oldest, breakers)
	if err != nil {
		return nil, fmt.Errorf("wharfotel: pipeline gauges: %w", err)
	}
	return reg, nil
}
