package idempotency

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

var (
	// ErrInvalidKey is wrapped by every error about a consumer name or key
	// that cannot be stored: empty, longer than MaxConsumerLen or
	// MaxKeyLen, holding a NUL byte or invalid UTF-8. Nothing was written.
	ErrInvalidKey = errors.New("idempotency: invalid consumer or key")

	// ErrInvalidConfig is wrapped by every error about a Config that cannot
	// work, and by New when the pool is nil.
	ErrInvalidConfig = errors.New("idempotency: invalid config")

	// ErrInvalidArgument is wrapped by errors about other misuse: a nil
	// transaction, function or lock, or a result longer than MaxResultLen.
	// Nothing was written.
	ErrInvalidArgument = errors.New("idempotency: invalid argument")

	// ErrInProgress is returned by Begin (and Do) while another caller
	// holds the key in the external mode and its lock has not expired.
	// The error is a *KeyError whose LockedUntil says when the key may be
	// taken over; retry later (a queue consumer can defer the event until
	// then).
	ErrInProgress = errors.New("idempotency: in progress")

	// ErrLockLost is returned by Finish, FinishTx, Extend and Release when
	// the lock's token no longer holds the key: its lock expired and
	// another caller took it over, or it was released. Nothing was
	// changed; the current holder's outcome is the one that counts.
	ErrLockLost = errors.New("idempotency: lock lost")

	// ErrModeMismatch is returned when a key that was claimed in one mode
	// is used from the other: Claim or Once on a key taken by Begin, or
	// Begin or Do on a key taken by Claim. Nothing was changed, and the
	// caller's transaction is still usable.
	ErrModeMismatch = errors.New("idempotency: mode mismatch")
)

// Mode is how a key was claimed, as stored in processed_events.mode.
type Mode string

// The two modes.
const (
	// ModeTx is a key claimed with Claim or Once, in the transaction that
	// does the consumer's database work.
	ModeTx Mode = "tx"
	// ModeExternal is a key taken with Begin or Do, for a side effect
	// outside the database.
	ModeExternal Mode = "external"
)

// KeyError is a failure about one (consumer, key). errors.Is matches its
// Err, one of ErrInvalidKey, ErrInvalidArgument, ErrInProgress,
// ErrLockLost and ErrModeMismatch.
type KeyError struct {
	Consumer string // as given
	Key      string // as given
	Err      error  // the sentinel
	Reason   string // what exactly, for people

	// LockedUntil, for ErrInProgress, is when the current holder's lock
	// expires (database clock); zero in the rare case Begin gave up
	// because the key kept changing hands while it looked.
	LockedUntil time.Time
	// Mode, for ErrModeMismatch, is the mode the key was claimed in.
	Mode Mode
}

func (e *KeyError) Error() string {
	what := strings.TrimPrefix(e.Err.Error(), "idempotency: ")
	msg := fmt.Sprintf("idempotency: consumer %s, key %s: %s", quote(e.Consumer), quote(e.Key), what)
	if e.Reason != "" {
		msg += ": " + e.Reason
	}
	return msg
}

// Unwrap makes errors.Is(err, e.Err) true.
func (e *KeyError) Unwrap() error { return e.Err }

// quote quotes s for an error message, cut to its first 64 bytes so that
// a megabyte-long bad key does not make a megabyte-long message.
func quote(s string) string {
	const limit = 64
	if len(s) <= limit {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q…(%d bytes)", s[:limit], len(s))
}

// dbError wraps an error from the database with the key it was about.
func dbError(op, consumer, key string, err error) error {
	return fmt.Errorf("idempotency: %s consumer %s, key %s: %w", op, quote(consumer), quote(key), err)
}
