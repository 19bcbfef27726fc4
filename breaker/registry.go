package breaker

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"sync"
)

// Registry holds one Breaker per downstream, by name, created on first
// use with Config.Default or the Config.Breakers entry of that name. It is
// safe for concurrent use.
type Registry struct {
	cfg      *resolved
	breakers sync.Map     // name → *Breaker
	shared   *sharedState // nil unless Config.Shared
}

// New returns a Registry, or an error wrapping ErrInvalidConfig. With
// Config.Shared set it starts a goroutine that publishes and refreshes the
// shared state until Close.
func New(cfg Config) (*Registry, error) {
	return newRegistry(cfg, true)
}

// newRegistry is New; without refresh, shared state moves only on Sync
// (for tests that must control when it does).
func newRegistry(cfg Config, refresh bool) (*Registry, error) {
	res, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	r := &Registry{cfg: res}
	if res.shared != nil {
		r.shared = newSharedState(r, *res.shared)
		if refresh {
			r.shared.start()
		}
	}
	return r, nil
}

// Close stops sharing state (and removes this process's counts from the
// shared table, best effort). Breakers keep working locally afterwards. It
// is a no-op for a Registry that does not share state.
func (r *Registry) Close() {
	if r.shared != nil {
		r.shared.close()
	}
}

// Breaker returns the breaker named name, creating it on first use, or an
// error wrapping ErrInvalidName.
func (r *Registry) Breaker(name string) (*Breaker, error) {
	if b, ok := r.breakers.Load(name); ok {
		return b.(*Breaker), nil
	}
	if err := validateName(name); err != nil {
		return nil, err
	}
	b, _ := r.breakers.LoadOrStore(name, newBreaker(r, name, r.cfg.settingsFor(name)))
	return b.(*Breaker), nil
}

// Execute calls fn through the breaker named name; see Breaker.Execute
// for what it returns. An invalid name returns an error wrapping
// ErrInvalidName and does not call fn.
func (r *Registry) Execute(ctx context.Context, name string, fn func(ctx context.Context) error) error {
	b, err := r.Breaker(name)
	if err != nil {
		return err
	}
	return b.Execute(ctx, fn)
}

// State returns the state of the breaker named name: closed for one never
// used. Its Until says, while open, when the next probe is allowed. An
// invalid name returns an error wrapping ErrInvalidName.
func (r *Registry) State(name string) (Status, error) {
	if err := validateName(name); err != nil {
		return Status{}, err
	}
	b, ok := r.breakers.Load(name)
	if !ok {
		return Status{Name: name, State: StateClosed}, nil
	}
	return b.(*Breaker).Status(), nil
}

// Open lists the breakers that are open now, by name, each with the time
// its next probe is allowed. In shared mode it includes those another
// process opened, once this one has refreshed. Half-open breakers are not
// listed, not even Probing ones: see Blocking.
func (r *Registry) Open() []Status {
	return r.statusesWhere(func(st Status) bool { return st.State == StateOpen })
}

// Blocking lists, by name, the breakers that turn every call away now: the
// open ones, and the half-open ones whose probes are all in flight
// (Status.Probing). Their work should wait in the queue: fetched, it would
// only be put back. A Probing breaker stops blocking when its probes have
// finished (at the first that fails, or when all have succeeded), so work
// waiting on it is held back for the length of its calls, not of a
// timeout; a probe that never returns holds it back until it does.
func (r *Registry) Blocking() []Status {
	return r.statusesWhere(Status.Blocking)
}

// Statuses lists every breaker of the registry, in name order: those
// created by a call or by Breaker (a wharf Pipeline creates one per
// Downstream its handlers name), whatever their state. Operators' tools
// show it; Blocking is the list for deciding which work waits.
func (r *Registry) Statuses() []Status {
	return r.statusesWhere(func(Status) bool { return true })
}

// statusesWhere returns the statuses that keep accepts, in name order.
func (r *Registry) statusesWhere(keep func(Status) bool) []Status {
	var out []Status
	for _, b := range r.all() {
		if st := b.Status(); keep(st) {
			out = append(out, st)
		}
	}
	return out
}

// Transport returns an http.RoundTripper that sends requests through base
// (http.DefaultTransport when nil) under the breaker named name; see
// Transport. An invalid name returns an error wrapping ErrInvalidName.
// Inside a call of the same breaker (a wharf handler registered with
// Downstream of the same name), a request sent with the call's context is
// part of that call: counted once, with it (see Breaker.Execute).
func (r *Registry) Transport(name string, base http.RoundTripper) (*Transport, error) {
	b, err := r.Breaker(name)
	if err != nil {
		return nil, err
	}
	return &Transport{Breaker: b, Base: base}, nil
}

// Sync publishes this process's pending transitions and counts and reads
// the shared state now, instead of at the next refresh. It is a no-op for
// a Registry that does not share state, and returns ErrClosed after Close.
func (r *Registry) Sync(ctx context.Context) error {
	if r.shared == nil {
		return nil
	}
	return r.shared.sync(ctx)
}

// all returns every breaker, in name order.
func (r *Registry) all() []*Breaker {
	var out []*Breaker
	r.breakers.Range(func(_, v any) bool {
		out = append(out, v.(*Breaker))
		return true
	})
	slices.SortFunc(out, func(a, b *Breaker) int { return strings.Compare(a.name, b.name) })
	return out
}
