package wharf

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/wharfhq/wharf/queue"
)

// RateLimit caps how often a downstream is called, per process: handlers
// with Downstream(name) wait for their turn before they run, before their
// Timeout starts. A worker that waits holds its transaction, so it waits
// at most maxWaitInTx (a second); an event whose turn is further off goes
// back to the queue, its attempt given back, due when its turn comes.
type RateLimit struct {
	// PerSecond is the sustained rate. Required: positive and finite, at
	// most 1e9.
	PerSecond float64
	// Burst is how many calls may go at once after a quiet spell.
	// Defaults to 1.
	Burst int
}

// limiter is a token bucket in its "virtual scheduling" form: tat is the
// time at which the bucket would be full again.
type limiter struct {
	name     string
	interval time.Duration
	burst    int

	mu  sync.Mutex
	tat time.Time
}

// maxWaitInTx is the longest a worker waits, holding its transaction, for
// a downstream's turn or a handler's concurrency slot.
const maxWaitInTx = time.Second

func newLimiter(name string, rl RateLimit) (*limiter, error) {
	burst := max(rl.Burst, 1)
	interval := float64(time.Second) / rl.PerSecond
	// NaN and +Inf fail the first test; a rate so slow that a burst's worth
	// of intervals does not fit a Duration fails the second.
	if !(interval >= 1) || interval*float64(burst) > math.MaxInt64/2 || rl.Burst < 0 {
		return nil, fmt.Errorf("%w: rate limit of %q: PerSecond %v must be a positive, finite rate of at most 1e9, and Burst %d not negative",
			ErrInvalidConfig, name, rl.PerSecond, rl.Burst)
	}
	return &limiter{name: name, interval: time.Duration(interval), burst: burst}, nil
}

// wait blocks until a call may go, for at most longest. A turn further off
// than that, or a ctx that ends first, returns a queue.DeferError, due at
// the turn (or now): the event waits in the queue without spending an
// attempt, and its place is given back unless a later call took one since.
func (l *limiter) wait(ctx context.Context, longest time.Duration) error {
	l.mu.Lock()
	now := time.Now()
	if l.tat.Before(now) {
		l.tat = now
	}
	delay := l.tat.Sub(now) - time.Duration(l.burst-1)*l.interval
	l.tat = l.tat.Add(l.interval)
	mine := l.tat
	l.mu.Unlock()
	if delay <= 0 {
		return nil
	}
	giveBack := func() {
		l.mu.Lock()
		if l.tat.Equal(mine) {
			l.tat = l.tat.Add(-l.interval)
		}
		l.mu.Unlock()
	}
	if delay > longest {
		giveBack()
		return queue.Defer(now.Add(delay), fmt.Errorf("wharf: downstream %q is rate-limited: its next call in %s", l.name, delay.Round(time.Millisecond)))
	}
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		giveBack()
		return queue.Defer(time.Now(), ctx.Err())
	}
}
