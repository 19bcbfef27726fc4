package wharf

import (
	"time"

	"github.com/wharfhq/wharf/queue"
)

// Permanent marks a handler's error as one no retry can fix: the event goes
// to the dead letter queue at once. It is queue.Permanent.
func Permanent(err error) error { return queue.Permanent(err) }

// Defer puts the event back, due at until, without spending an attempt;
// its writes are rolled back. It is queue.Defer.
func Defer(until time.Time, reason error) error { return queue.Defer(until, reason) }

// RetryIn retries the event after d instead of its backoff (a downstream
// that said Retry-After); the attempt counts. It is queue.RetryIn.
func RetryIn(d time.Duration, err error) error { return queue.RetryIn(d, err) }
