package queue

import (
	"errors"
	"fmt"
	"time"
)

var (
	// ErrInvalidEvent is wrapped by every error about an event that cannot
	// be stored (missing or malformed field); nothing was written.
	ErrInvalidEvent = errors.New("queue: invalid event")

	// ErrInvalidConfig is wrapped by every error about a Config or
	// ConsumerConfig that cannot work.
	ErrInvalidConfig = errors.New("queue: invalid config")

	// ErrPoolTooSmall is returned by NewConsumer when the pool cannot give
	// every worker, the fetcher and the maintenance loop a connection at
	// once; starving at run time would be worse.
	ErrPoolTooSmall = errors.New("queue: pool too small")

	// ErrLeaseLost is returned when the caller no longer holds the lease it
	// acts on: it expired and the event was rescued or fetched by another
	// worker, or the event was already completed. Nothing was changed.
	ErrLeaseLost = errors.New("queue: lease lost")

	// ErrPoolClosed is wrapped by the error Consumer.Run returns when the
	// pool it runs on was closed under it: a closed pool never serves
	// again, so Run shuts down instead of retrying every PollInterval.
	ErrPoolClosed = errors.New("queue: the pool was closed")

	// ErrClosed is returned by Enqueue after Close.
	ErrClosed = errors.New("queue: closed")

	// ErrNotReadCommitted is wrapped by the error of EnqueueTx and
	// EnqueueBatchTx in a transaction that is not READ COMMITTED (or READ
	// UNCOMMITTED, which Postgres runs the same way), when
	// Config.DuplicateIf is set: the check that follows the insert must
	// see what commits while the insert waits on a key, and a transaction
	// that keeps one snapshot would let an event in twice. Nothing was
	// stored.
	ErrNotReadCommitted = errors.New("queue: the transaction must be READ COMMITTED to enqueue with a DuplicateIf condition")

	// ErrTxOwned is returned when a Handler tries to commit or roll back the
	// transaction the Consumer gave it: the Consumer commits it together
	// with the event's completion.
	ErrTxOwned = errors.New("queue: the consumer owns this transaction; return from the handler instead")

	// ErrTxAborted is the failure recorded for a handler that returned nil
	// although one of its statements failed: Postgres aborts the
	// transaction at a failed statement, so nothing the handler did after
	// its savepoint can commit. See Aborted.
	ErrTxAborted = errors.New("queue: handler returned nil but its transaction failed (a failed statement aborts the transaction)")

	// errBatchUnfinished is the failure recorded for the events of a
	// failed BatchHandler call that the consumer could not run again
	// alone: the call ran them, so the attempt counts.
	errBatchUnfinished = errors.New("queue: the event's batch failed, and the consumer stopped before the event ran again alone")
)

// InvalidEventError says which field of which event is invalid. It wraps
// ErrInvalidEvent.
type InvalidEventError struct {
	Source string // as given, possibly itself the invalid field
	ID     string // as given, possibly itself the invalid field
	Field  string // "source", "id", "type", "ordering key", "body", "headers", "max attempts"
	Reason string
}

func (e *InvalidEventError) Error() string {
	return fmt.Sprintf("queue: event %q from %q: %s: %s", e.ID, e.Source, e.Field, e.Reason)
}

// Unwrap makes errors.Is(err, ErrInvalidEvent) true.
func (e *InvalidEventError) Unwrap() error { return ErrInvalidEvent }

// DeferError asks the Consumer to put the event back without spending an
// attempt, to run again at Until. Return it from a Handler with Defer when
// the event cannot run yet for a reason that is not its own fault, such as
// an open circuit breaker.
type DeferError struct {
	Until  time.Time
	Reason error // optional, for logs
	// Counted adds one to the event's Deferrals (see DeferCounted).
	Counted bool
}

func (e *DeferError) Error() string {
	if e.Reason != nil {
		return fmt.Sprintf("queue: deferred until %s: %v", e.Until.Format(time.RFC3339Nano), e.Reason)
	}
	return "queue: deferred until " + e.Until.Format(time.RFC3339Nano)
}

func (e *DeferError) Unwrap() error { return e.Reason }

// Defer returns a *DeferError for a Handler to return: the event goes back
// to the queue, due at until, with the attempt it was fetched with given
// back. Any work the handler did in the transaction is rolled back.
func Defer(until time.Time, reason error) error {
	return &DeferError{Until: until, Reason: reason}
}

// DeferCounted is Defer for an event that ran and failed through no fault
// of its own, such as a call that a downstream failed while its circuit
// breaker stayed closed. The attempt is given back all the same, and the
// event's Deferrals grows by one, so that its handler can wait longer each
// time: without it, an event that one downstream always rejects would be
// retried at the same pace forever.
func DeferCounted(until time.Time, reason error) error {
	return &DeferError{Until: until, Reason: reason, Counted: true}
}

// PermanentError marks a handler's failure as one no retry can fix (a
// payload that will never parse): the Consumer exhausts the event at once,
// with Err recorded as the attempt's error, instead of spending its
// remaining attempts.
type PermanentError struct {
	Err error
}

func (e *PermanentError) Error() string { return "permanent: " + e.Err.Error() }

func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent returns err marked as permanent (see PermanentError); nil stays
// nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &PermanentError{Err: err}
}

// RetryError asks for the event to be retried after After instead of the
// queue's backoff: a handler with a schedule of its own, or a downstream
// that said when to come back (Retry-After). The attempt counts.
type RetryError struct {
	After time.Duration
	Err   error
}

func (e *RetryError) Error() string { return e.Err.Error() }

func (e *RetryError) Unwrap() error { return e.Err }

// RetryIn returns err marked to be retried after d (see RetryError); nil
// stays nil.
func RetryIn(d time.Duration, err error) error {
	if err == nil {
		return nil
	}
	return &RetryError{After: max(d, 0), Err: err}
}

// notReadCommittedError is an insert's refusal to store in a transaction
// of another isolation level (see ErrNotReadCommitted).
type notReadCommittedError struct{ isolation string }

func (e *notReadCommittedError) Error() string {
	return fmt.Sprintf("%v (this one is %s; nothing was stored)", ErrNotReadCommitted, e.isolation)
}

func (e *notReadCommittedError) Unwrap() error { return ErrNotReadCommitted }
