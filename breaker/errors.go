package breaker

import (
	"errors"
	"fmt"
	"time"
)

var (
	// ErrInvalidConfig is wrapped by every error about a Config that cannot
	// work; New returns no Registry.
	ErrInvalidConfig = errors.New("breaker: invalid config")

	// ErrInvalidName is wrapped by every error about a breaker name that is
	// empty, longer than MaxNameBytes or not valid UTF-8; nothing was
	// called.
	ErrInvalidName = errors.New("breaker: invalid breaker name")

	// ErrOpen is wrapped by *OpenError: the breaker turned the call away
	// without calling the downstream. Nothing was counted; the caller
	// should try again at OpenError.Until, and an event waiting on it has
	// not spent an attempt.
	ErrOpen = errors.New("breaker: open")

	// ErrDownstream matches, with errors.Is, every *DownstreamError: the
	// call ran and the breaker counted its error as a failure of the
	// downstream (a half-open probe's failure included), not of the event.
	ErrDownstream = errors.New("breaker: downstream failure")

	// ErrClosed is returned by Sync after Close.
	ErrClosed = errors.New("breaker: registry closed")
)

// OpenError is returned, without calling the downstream, by a breaker that
// is open, or half-open and waiting for the probes it let through. It
// wraps ErrOpen.
type OpenError struct {
	// Breaker names the breaker.
	Breaker string
	// State is StateOpen, or StateHalfOpen when the breaker has let all
	// its probes through and waits for their outcome.
	State State
	// Until is when to try again: when the open breaker lets its first
	// probe through (OpenTimeout after it opened), or HalfOpenWait from now
	// for a busy half-open one.
	Until time.Time
}

func (e *OpenError) Error() string {
	if e.State == StateHalfOpen {
		return fmt.Sprintf("breaker: %q is half-open and waiting for its probes; retry at %s",
			e.Breaker, e.Until.Format(time.RFC3339Nano))
	}
	return fmt.Sprintf("breaker: %q is open until %s", e.Breaker, e.Until.Format(time.RFC3339Nano))
}

// Unwrap makes errors.Is(err, ErrOpen) true.
func (e *OpenError) Unwrap() error { return ErrOpen }

// DownstreamError wraps an error that the breaker counted as a failure of
// the downstream: a timeout, a connection error, a 5xx or 429 answer, or
// an error marked with MarkFailure. errors.Is(err, ErrDownstream) is true,
// and the original error stays reachable through Unwrap.
type DownstreamError struct {
	// Breaker names the breaker that counted the failure.
	Breaker string
	// Err is the error the call returned.
	Err error
}

func (e *DownstreamError) Error() string {
	return fmt.Sprintf("breaker: %q: downstream failure: %v", e.Breaker, e.Err)
}

// Unwrap returns the error the call returned.
func (e *DownstreamError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrDownstream) true.
func (e *DownstreamError) Is(target error) bool { return target == ErrDownstream }
