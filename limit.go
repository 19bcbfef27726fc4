package wharf

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// RateLimit caps how often a downstream is called, per process: handlers
// with Downstream(name) wait for their turn before they run. A worker that
// waits holds its transaction, so keep the rate above what the workers
// would otherwise reach only briefly.
type RateLimit struct {
	// PerSecond is the sustained rate. Required, positive.
	PerSecond float64
	// Burst is how many calls may go at once after a quiet spell.
	// Defaults to 1.
	Burst int
}

// limiter is a token bucket in its "virtual scheduling" form: tat is the
// time at which the bucket would be full again.
type limiter struct {
	interval time.Duration
	burst    int

	mu  sync.Mutex
	tat time.Time
}

func newLimiter(name string, rl RateLimit) (*limiter, error) {
	if rl.PerSecond <= 0 || rl.Burst < 0 {
		return nil, fmt.Errorf("%w: rate limit of %q: PerSecond must be positive and Burst not negative", ErrInvalidConfig, name)
	}
	burst := max(rl.Burst, 1)
	return &limiter{interval: time.Duration(float64(time.Second) / rl.PerSecond), burst: burst}, nil
}

// wait blocks until a call may go, or ctx ends.
func (l *limiter) wait(ctx context.Context) error {
	l.mu.Lock()
	now := time.Now()
	if l.tat.Before(now) {
		l.tat = now
	}
	delay := l.tat.Sub(now) - time.Duration(l.burst-1)*l.interval
	l.tat = l.tat.Add(l.interval)
	l.mu.Unlock()
	if delay <= 0 {
		return nil
	}
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
