package eventlog

import (
	"errors"
	"fmt"
)

var (
	// ErrInvalidStream is wrapped by every error about a stream name that
	// cannot be used (empty, too long, not UTF-8, or holding a NUL byte);
	// nothing was written.
	ErrInvalidStream = errors.New("eventlog: invalid stream name")

	// ErrInvalidEvent is wrapped by every error about an event that cannot
	// be appended (see InvalidEventError); nothing was written.
	ErrInvalidEvent = errors.New("eventlog: invalid event")

	// ErrInvalidArgument is wrapped by every error about another argument
	// that cannot be used: an expected version below NoStream other than
	// AnyVersion, a limit outside 0..MaxReadLimit, a malformed cursor, an
	// empty category, a nil transaction or reset function. Nothing was
	// written.
	ErrInvalidArgument = errors.New("eventlog: invalid argument")

	// ErrInvalidConfig is wrapped by every error about a Config or
	// ProjectionConfig that cannot work.
	ErrInvalidConfig = errors.New("eventlog: invalid config")

	// ErrVersionConflict is wrapped by the *VersionConflictError an append
	// returns when the stream is not at the expected version. Nothing was
	// written, and the caller's transaction (AppendTx) is still usable.
	ErrVersionConflict = errors.New("eventlog: version conflict")

	// ErrTxOwned is returned when a ProjectionFunc or a Rebuild's reset
	// tries to commit or roll back the transaction it was given: the
	// projection commits it together with its checkpoint.
	ErrTxOwned = errors.New("eventlog: the projection owns this transaction; return from the function instead")

	// ErrAlreadyRunning is returned by Run when the same Projection value
	// is already running. (Several Projection values with one name, on any
	// number of replicas, may run at once: they take turns.)
	ErrAlreadyRunning = errors.New("eventlog: projection is already running")
)

// VersionConflictError says that an append expected a stream at one
// version and found it at another. It wraps ErrVersionConflict.
type VersionConflictError struct {
	Stream string
	// Expected is the expected version as given: AnyVersion never
	// conflicts, NoStream (-1) or 0 means the stream had to be empty.
	Expected int64
	// Actual is the stream's version (its number of events; 0 when it has
	// none) read after the conflict, in a snapshot taken after the
	// competing append had committed.
	Actual int64
}

// Error says which stream was at which version instead of which.
func (e *VersionConflictError) Error() string {
	expected := fmt.Sprintf("version %d", e.Expected)
	if e.Expected == NoStream {
		expected = "no stream"
	}
	return fmt.Sprintf("eventlog: stream %q: version conflict: expected %s, found version %d", e.Stream, expected, e.Actual)
}

// Unwrap makes errors.Is(err, ErrVersionConflict) true.
func (e *VersionConflictError) Unwrap() error { return ErrVersionConflict }

// InvalidEventError says which field of which event of an append is
// invalid. It wraps ErrInvalidEvent.
type InvalidEventError struct {
	Stream string
	Index  int    // position of the event in the append's arguments, from 0; -1 when not one event's fault
	Type   string // as given, possibly itself the invalid field
	Field  string // "type", "data", "metadata", "events"
	Reason string
	// Err is the database's error when Postgres rejected the data after
	// the checks in Go passed (for example a number too large for jsonb).
	Err error
}

// Error names the stream, the event and the field, and says why.
func (e *InvalidEventError) Error() string {
	if e.Index < 0 {
		return fmt.Sprintf("eventlog: stream %q: %s: %s", e.Stream, e.Field, e.Reason)
	}
	return fmt.Sprintf("eventlog: stream %q: event %d (%q): %s: %s", e.Stream, e.Index, e.Type, e.Field, e.Reason)
}

// Unwrap returns ErrInvalidEvent and, when the database rejected the
// event, its error.
func (e *InvalidEventError) Unwrap() []error {
	if e.Err != nil {
		return []error{ErrInvalidEvent, e.Err}
	}
	return []error{ErrInvalidEvent}
}
