package breaker

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
)

// Breaker is the circuit breaker of one downstream. Get it from
// Registry.Breaker; it is safe for concurrent use and stays valid for the
// Registry's lifetime.
//
// Inside, a gobreaker.CircuitBreaker does the counting and the state
// machine. In shared mode the Registry may replace it with a fresh one to
// adopt a transition another process published; a Breaker's identity does
// not change.
type Breaker struct {
	name     string
	settings Settings
	reg      *Registry

	cur atomic.Pointer[instance]

	// Shared mode only. knownGen is the generation of the shared row this
	// process last wrote or adopted; others are the other processes'
	// counts under that generation; pub is this process's latest
	// transition not yet published.
	knownGen atomic.Int64
	others   atomic.Pointer[otherCounts]
	pub      atomic.Pointer[publication]
	// lastCounts and lastCountsAt are what was last written to
	// breaker_counts; guarded by the shared state's sync lock.
	lastCounts   countsRow
	lastCountsAt time.Time

	// State changes wait in pending until delivered, outside every lock, by
	// whichever goroutine gets deliver first.
	pendMu     sync.Mutex
	pending    []StateChange
	hasPending atomic.Bool
	deliver    sync.Mutex
}

// instance is one gobreaker circuit breaker and what this package knows
// about it that gobreaker keeps private.
type instance struct {
	b       *Breaker
	cb      *gobreaker.TwoStepCircuitBreaker[struct{}]
	timeout time.Duration // this instance's open timeout
	// until is when the next probe is allowed, recorded when it opened.
	until atomic.Pointer[time.Time]
	// forcing is set while the instance is being tripped on purpose to
	// adopt a shared open: ReadyToTrip says yes, the hook stays quiet.
	forcing atomic.Bool
}

// The outcome a call's error was classified as, as gobreaker sees it:
// comparing against these is all IsSuccessful and IsExcluded do, so a
// Classifier runs once per failed call.
var (
	errOutcomeSuccess  = errors.New("breaker: outcome success")
	errOutcomeFailure  = errors.New("breaker: outcome failure")
	errOutcomeExcluded = errors.New("breaker: outcome excluded")
	errForcedTrip      = errors.New("breaker: adopting a shared open")
)

// gobreakerError is what gobreaker is told of a call with outcome o.
func (o Outcome) gobreakerError() error {
	switch o {
	case Success:
		return errOutcomeSuccess
	case Excluded:
		return errOutcomeExcluded
	default:
		return errOutcomeFailure
	}
}

func newBreaker(r *Registry, name string, s Settings) *Breaker {
	b := &Breaker{name: name, settings: s, reg: r}
	b.cur.Store(b.newInstance(s.OpenTimeout))
	return b
}

// newInstance returns a closed gobreaker circuit breaker with b's settings
// and the given open timeout.
func (b *Breaker) newInstance(timeout time.Duration) *instance {
	s := b.settings
	inst := &instance{b: b, timeout: timeout}
	inst.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:          b.name,
		MaxRequests:   uint32(s.HalfOpenProbes),
		Interval:      s.Window,
		BucketPeriod:  s.Window / time.Duration(s.WindowBuckets),
		Timeout:       timeout,
		ReadyToTrip:   inst.readyToTrip,
		OnStateChange: inst.onStateChange,
		IsSuccessful:  func(err error) bool { return err == errOutcomeSuccess },
		IsExcluded:    func(err error) bool { return err == errOutcomeExcluded },
	})
	return inst
}

// Name returns the breaker's name.
func (b *Breaker) Name() string { return b.name }

// Settings returns the breaker's resolved settings (every default applied).
func (b *Breaker) Settings() Settings { return b.settings }

// Execute calls fn through the breaker and returns:
//
//   - an *OpenError (errors.Is(err, ErrOpen)) without calling fn when the
//     breaker is open, or half-open and waiting for its probes;
//   - nil when fn succeeded;
//   - a *DownstreamError wrapping fn's error when the Classifier counted it
//     as a failure (errors.Is(err, ErrDownstream)), including the failure
//     of a half-open probe and the failure that opens the breaker;
//   - fn's error as it is otherwise (excluded, or classified a success).
//
// ctx, with the call noted in it, is passed to fn; Execute itself does not
// wait on it. A call made through the same breaker with that context
// while fn runs (a handler that runs under the breaker and sends through
// its Transport) is part of this call, not a second one: it is never
// refused, and a failure of it counts once, as this call's, even if fn
// then returns nil or an error the Classifier excludes (Execute then
// returns fn's error in a *DownstreamError).
//
// If fn panics, the call counts as neither a success nor a failure (a bug
// in the caller says nothing about the downstream, and must not open the
// breaker for every other caller), and the panic continues.
func (b *Breaker) Execute(ctx context.Context, fn func(ctx context.Context) error) error {
	if outer := callOf(ctx, b); outer != nil {
		return outer.nested(ctx, fn)
	}
	inst := b.cur.Load()
	done, err := inst.cb.Allow()
	if err != nil {
		b.flush()
		return b.rejection(inst, err)
	}
	c := newCall(ctx, b)
	// outcome stays Excluded unless fn returns and is classified: a panic
	// in fn, or in the Classifier, is a bug of the caller's, and the call
	// must still be reported once, or a half-open breaker would keep its
	// probe slot for ever.
	outcome := Excluded
	defer func() {
		c.ended.Store(true)
		done(outcome.gobreakerError())
		b.flush()
	}()
	callErr := fn(c)
	classified := Success
	if callErr != nil {
		classified = b.classify(callErr)
	}
	if c.failed.Load() {
		classified = Failure
	}
	outcome = classified
	switch {
	case callErr == nil:
		return nil
	case outcome == Failure:
		return &DownstreamError{Breaker: b.name, Err: callErr}
	default:
		return callErr
	}
}

// classify is the Settings' Classifier, with anything but Success or
// Excluded taken as Failure.
func (b *Breaker) classify(err error) Outcome {
	switch o := b.settings.Classify(err); o {
	case Success, Excluded:
		return o
	default:
		return Failure
	}
}

// rejection turns gobreaker's refusal into an *OpenError.
func (b *Breaker) rejection(inst *instance, err error) error {
	if errors.Is(err, gobreaker.ErrTooManyRequests) {
		return &OpenError{Breaker: b.name, State: StateHalfOpen, Until: time.Now().Add(b.settings.HalfOpenWait)}
	}
	var until time.Time
	if u := inst.until.Load(); u != nil {
		until = *u
	} else {
		until = time.Now().Add(inst.timeout) // not reached: it was recorded when it opened
	}
	return &OpenError{Breaker: b.name, State: StateOpen, Until: until}
}

// Status returns the breaker's state now. An open breaker whose timeout
// has passed turns half-open here, as on a call.
func (b *Breaker) Status() Status {
	inst := b.cur.Load()
	st := Status{Name: b.name, State: fromGobreaker(inst.cb.State())}
	st.Counts = fromGobreakerCounts(inst.cb.Counts())
	// gobreaker lets a half-open breaker take calls while the calls it let
	// through this generation, excluded ones aside, are fewer than its
	// probes; finished probes count until it closes or opens again.
	st.Probing = st.State == StateHalfOpen &&
		st.Counts.Requests-min(st.Counts.Excluded, st.Counts.Requests) >= uint32(b.settings.HalfOpenProbes)
	if st.State == StateOpen {
		if u := inst.until.Load(); u != nil {
			st.Until = *u
		}
	}
	b.flush()
	return st
}

// readyToTrip is gobreaker's ReadyToTrip: called under the instance's
// lock after each counted failure of a closed breaker.
func (inst *instance) readyToTrip(c gobreaker.Counts) bool {
	if inst.forcing.Load() {
		return true
	}
	s := &inst.b.settings
	if s.Trip == TripOnConsecutiveFailures {
		return c.ConsecutiveFailures >= uint32(s.ConsecutiveFailures)
	}
	requests := uint64(c.TotalSuccesses) + uint64(c.TotalFailures)
	failures := uint64(c.TotalFailures)
	if o := inst.b.others.Load(); o != nil && o.generation == inst.b.knownGen.Load() {
		requests += o.requests
		failures += o.failures
	}
	return requests >= uint64(s.MinRequests) && float64(failures) >= s.FailureRate*float64(requests)
}

// onStateChange is gobreaker's OnStateChange, called under the instance's
// lock by whichever goroutine caused the change. It records what gobreaker
// keeps private (when the next probe is allowed), queues the change for
// delivery outside the lock, and, in shared mode, for publication.
func (inst *instance) onStateChange(_ string, from, to gobreaker.State) {
	now := time.Now()
	b := inst.b
	f, t := fromGobreaker(from), fromGobreaker(to)
	var until time.Time
	if t == StateOpen {
		// gobreaker set its expiry to its own now + timeout, read just
		// before ours, and lets a probe through once the clock is strictly
		// after it: one nanosecond later is the first instant allowed.
		until = now.Add(inst.timeout + time.Nanosecond)
		inst.until.Store(&until)
	}
	if inst.forcing.Load() || b.cur.Load() != inst {
		return // an adoption in progress, or a replaced instance
	}
	if t != StateHalfOpen && inst.timeout != b.settings.OpenTimeout {
		// This instance adopted a shared open with the time that was left
		// of it as its timeout; from its first own transition on, the
		// breaker goes on with a normal one in the same state.
		next := b.newInstance(b.settings.OpenTimeout)
		if t == StateOpen {
			next.trip()
			until = *next.until.Load()
		}
		b.cur.Store(next)
	}
	b.enqueue(StateChange{Breaker: b.name, From: f, To: t, At: now, Until: until})
	if sh := b.reg.shared; sh != nil && t != StateHalfOpen {
		b.pub.Store(&publication{inst: b.cur.Load(), to: t})
		sh.wake()
	}
}

// trip opens a fresh instance on purpose, without calling anything.
func (inst *instance) trip() {
	inst.forcing.Store(true)
	if done, err := inst.cb.Allow(); err == nil {
		done(errForcedTrip)
	}
	inst.forcing.Store(false)
}

// adopt moves the breaker to state to, published by another process, by
// replacing its gobreaker with a fresh one in that state; openFor is how
// long an adopted open has left. It reports the change as Shared.
//
// A breaker already open (it tripped on the same outage before it saw the
// published open) is still given the published open's time, unreported
// since its state stays the same: otherwise it would probe on its own
// schedule, and its reopen after a failed probe would be refused while
// the published open is in force.
func (b *Breaker) adopt(to State, openFor time.Duration) {
	old := b.cur.Load()
	from := fromGobreaker(old.cb.State())
	if from == to && to != StateOpen {
		return
	}
	next := b.newInstance(b.settings.OpenTimeout)
	var until time.Time
	if to == StateOpen {
		next = b.newInstance(max(openFor, time.Microsecond))
		next.trip()
		until = *next.until.Load()
	}
	b.cur.Store(next)
	if from != to {
		b.enqueue(StateChange{Breaker: b.name, From: from, To: to, At: time.Now(), Until: until, Shared: true})
	}
}

// enqueue queues a state change for delivery by flush.
func (b *Breaker) enqueue(c StateChange) {
	if b.reg.cfg.onChange == nil {
		return
	}
	b.pendMu.Lock()
	b.pending = append(b.pending, c)
	b.hasPending.Store(true)
	b.pendMu.Unlock()
}

// flush delivers queued state changes, in order, outside every lock. If
// another goroutine is delivering, it takes these too: it checks again
// after letting go of deliver.
func (b *Breaker) flush() {
	for b.hasPending.Load() && b.deliver.TryLock() {
		b.deliverPending()
	}
}

// deliverPending hands the pending state changes to OnStateChange; the
// caller holds deliver, which it releases even if the callback panics, so
// that later changes are still delivered.
func (b *Breaker) deliverPending() {
	defer b.deliver.Unlock()
	b.pendMu.Lock()
	batch := b.pending
	b.pending = nil
	b.hasPending.Store(false)
	b.pendMu.Unlock()
	for _, c := range batch {
		b.reg.cfg.onChange(c)
	}
}
