package breaker

import (
	"fmt"
	"time"

	"github.com/sony/gobreaker/v2"
)

// State is a breaker's state.
type State int

const (
	// StateClosed lets every call through and counts the outcomes.
	StateClosed State = iota
	// StateHalfOpen lets up to HalfOpenProbes calls through to find out
	// whether the downstream is back.
	StateHalfOpen
	// StateOpen rejects every call with an *OpenError until OpenTimeout has
	// passed.
	StateOpen
)

// String returns "closed", "half-open" or "open".
func (s State) String() string {
	switch s {
	case StateClosed:
		return "closed"
	case StateHalfOpen:
		return "half-open"
	case StateOpen:
		return "open"
	default:
		return fmt.Sprintf("State(%d)", int(s))
	}
}

// fromGobreaker converts gobreaker's state.
func fromGobreaker(s gobreaker.State) State {
	switch s {
	case gobreaker.StateHalfOpen:
		return StateHalfOpen
	case gobreaker.StateOpen:
		return StateOpen
	default:
		return StateClosed
	}
}

// Counts are a breaker's counts since it last changed state, over the
// rolling Window while closed.
type Counts struct {
	// Requests is how many calls were let through, including calls still
	// running and excluded ones.
	Requests uint32
	// Successes, Failures and Excluded count finished calls by outcome.
	Successes, Failures, Excluded uint32
	// ConsecutiveSuccesses and ConsecutiveFailures are the current runs.
	ConsecutiveSuccesses, ConsecutiveFailures uint32
}

func fromGobreakerCounts(c gobreaker.Counts) Counts {
	return Counts{
		Requests:             c.Requests,
		Successes:            c.TotalSuccesses,
		Failures:             c.TotalFailures,
		Excluded:             c.TotalExclusions,
		ConsecutiveSuccesses: c.ConsecutiveSuccesses,
		ConsecutiveFailures:  c.ConsecutiveFailures,
	}
}

// Status is a snapshot of one breaker.
type Status struct {
	// Name names the breaker.
	Name string
	// State is the state now.
	State State
	// Until is, while State is StateOpen, when the next probe is allowed;
	// zero otherwise.
	Until time.Time
	// Probing is true while State is StateHalfOpen and every probe the
	// breaker lets through (Settings.HalfOpenProbes) is in flight: until
	// one finishes, it turns calls away as an open breaker does.
	Probing bool
	// Counts are this process's counts (in shared mode the other
	// processes' counts are not included).
	Counts Counts
}

// Blocking reports whether the breaker turns every call away now: it is
// open, or half-open and Probing.
func (s Status) Blocking() bool { return s.State == StateOpen || s.Probing }

// StateChange describes one transition of a breaker, for metrics and logs.
type StateChange struct {
	// Breaker names the breaker.
	Breaker string
	// From and To are the states before and after.
	From, To State
	// At is when it changed, by this process's clock.
	At time.Time
	// Until is, when To is StateOpen, when the next probe is allowed.
	Until time.Time
	// Shared is true when this process adopted a transition another
	// process published (shared mode), false when its own calls caused it.
	Shared bool
}
