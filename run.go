package wharf

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/wharfhq/wharf/queue"
)

// Run processes events until ctx ends, then shuts down gracefully: it stops
// fetching, gives fetched events that have not started back to the queue
// (attempts returned), and lets running handlers finish within
// Config.ShutdownTimeout; their contexts are not cancelled by ctx itself.
// It also prunes processed event ids past their retention (see
// Config.IdempotencyPruneInterval). It returns at once an error wrapping
// ErrNotReady if the schema lacks migrations this code needs, and ErrClosed
// after Close. If the pool is closed under it, it shuts down as for ctx
// and returns an error wrapping queue.ErrPoolClosed.
// Workers fetch only the (source, type) pairs with a handler, and leave
// out those whose downstream breaker turns calls away (open, or half-open
// with its probes in flight); a catch-all handler's events ("*") are left
// out only while its source's other handlers are blocked too, and are
// otherwise fetched and deferred by the breaker. Run may run in a process
// of its own, apart from the ones serving Handler.
func (p *Pipeline) Run(ctx context.Context) error {
	if !p.running.CompareAndSwap(false, true) {
		return fmt.Errorf("wharf: Run called twice: %w", ErrRunning)
	}
	defer p.running.Store(false)
	if p.closed.Load() {
		return ErrClosed
	}
	// A schema behind this code would fail every fetch, logged over and
	// over; say so once. A database that does not answer yet is the
	// workers' to wait for.
	if err := p.Ready(ctx); errors.Is(err, errMigrationsMissing) {
		return err
	}
	only, downstreams, typed := p.kinds()
	if len(only) == 0 {
		if p.cfg.Unhandled != LeaveUnhandled {
			return fmt.Errorf("%w: no sources registered (Source): nothing to run", ErrInvalidConfig)
		}
		return fmt.Errorf("%w: no handlers registered (Handle) and Unhandled is LeaveUnhandled: nothing to run", ErrInvalidConfig)
	}
	for _, name := range slices.Sorted(maps.Keys(p.cfg.RateLimits)) {
		if _, used := downstreams[name]; !used {
			p.cfg.Logger.Warn("wharf: a rate limit names a downstream no handler calls (Downstream option); it limits nothing", "downstream", name)
		}
	}
	work := p.work
	if p.cfg.Observer != nil {
		work = p.observeWork
	}
	cfg := queue.ConsumerConfig{
		Handler:         work,
		Prepare:         p.claimAll,
		Unprepare:       p.unclaim,
		Workers:         p.cfg.Workers,
		TxBatch:         p.cfg.TxBatch,
		MaxTxDuration:   p.cfg.MaxTxDuration,
		Only:            only,
		Exclude:         func() []queue.Kind { return p.blockedKinds(downstreams, typed) },
		PollOnly:        p.cfg.PollOnly,
		PollInterval:    p.cfg.PollInterval,
		RescueInterval:  p.cfg.RescueInterval,
		ShutdownTimeout: p.cfg.ShutdownTimeout,
		Logger:          p.cfg.Logger,
	}
	if p.audit != nil {
		// Audit records commit with the worker transactions; projections
		// of the audit log hear of them at once, not at their next poll.
		cfg.Committed = p.audit.Notify
	}
	p.mu.RLock()
	if p.batching {
		cfg.BatchKey, cfg.BatchHandler = p.batchKey, p.workBatch
	}
	p.mu.RUnlock()
	consumer, err := queue.NewConsumer(p.queue, cfg)
	if err != nil {
		return asConfigError(err)
	}
	maintenanceCtx, stopMaintenance := context.WithCancel(ctx)
	var maintenance sync.WaitGroup
	maintenance.Go(func() { p.pruneProcessed(maintenanceCtx) })
	err = consumer.Run(ctx)
	stopMaintenance()
	maintenance.Wait()
	return err
}

// pruneProcessed deletes processed event ids older than
// Config.IdempotencyRetention now and every Config.IdempotencyPruneInterval
// until ctx ends; without it the table grows for ever.
func (p *Pipeline) pruneProcessed(ctx context.Context) {
	if p.cfg.IdempotencyPruneInterval < 0 {
		return
	}
	tick := time.NewTicker(p.cfg.IdempotencyPruneInterval)
	defer tick.Stop()
	for {
		if _, err := p.claims.Prune(ctx); err != nil && ctx.Err() == nil {
			p.cfg.Logger.Warn("wharf: cannot prune processed event ids; trying again at the next interval", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// kinds returns what the workers fetch, the kinds behind each downstream
// breaker, and each source's kinds with a handler of their own type (not
// AnyType).
func (p *Pipeline) kinds() (only []queue.Kind, downstreams, typed map[string][]queue.Kind) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	downstreams, typed = map[string][]queue.Kind{}, map[string][]queue.Kind{}
	for r, h := range p.routes {
		k := queue.Kind{Source: r.source, Type: r.typ}
		only = append(only, k)
		if h.downstream != "" {
			downstreams[h.downstream] = append(downstreams[h.downstream], k)
		}
		if r.typ != queue.AnyType {
			typed[r.source] = append(typed[r.source], k)
		}
	}
	if p.cfg.Unhandled != LeaveUnhandled {
		// Unhandled types are fetched too, to be completed or
		// dead-lettered: every type of every registered source.
		only = only[:0]
		for name := range p.sources {
			only = append(only, queue.Kind{Source: name, Type: queue.AnyType})
		}
	}
	return only, downstreams, typed
}

// blockedKinds returns the kinds whose downstream breaker turns every call
// away now: open, or half-open with all its probes in flight. Fetching
// them would only defer them again, rewriting the whole backlog while a
// slow probe runs. A catch-all handler's kind (AnyType) is among them
// only while every kind of its source in typed (those with a handler of
// their own) is blocked too: an excluded AnyType leaves out every type of
// its source, and would stall handlers that do not call the downstream.
// Until then the catch-all's events are fetched, and the breaker defers
// them, attempts untouched.
func (p *Pipeline) blockedKinds(downstreams, typed map[string][]queue.Kind) []queue.Kind {
	var blocked []queue.Kind
	for _, st := range p.breakers.Blocking() {
		blocked = append(blocked, downstreams[st.Name]...)
	}
	exclude := make([]queue.Kind, 0, len(blocked))
	for _, k := range blocked {
		if k.Type == queue.AnyType && slices.ContainsFunc(typed[k.Source], func(own queue.Kind) bool { return !slices.Contains(blocked, own) }) {
			continue // a handler of its source still runs
		}
		exclude = append(exclude, k)
	}
	return exclude
}
