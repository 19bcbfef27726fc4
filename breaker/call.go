package breaker

import (
	"context"
	"sync/atomic"
)

// call is one call through a Breaker that Execute let through. It is the
// context Execute gives fn (fn's ctx with the call noted in it, in one
// allocation), so that calls through the same Breaker made inside it are
// counted with it (see Execute).
type call struct {
	context.Context
	b     *Breaker
	outer *call // the call through another breaker this one runs inside, if any
	// failed is set when a call made inside this one failed in a way the
	// Classifier counts.
	failed atomic.Bool
	// ended is set when Execute reports the call: a call made with its
	// context after that (from a goroutine the call started) is a call of
	// its own.
	ended atomic.Bool
}

type callKey struct{}

// newCall returns the call through b made with ctx.
func newCall(ctx context.Context, b *Breaker) *call {
	outer, _ := ctx.Value(callKey{}).(*call)
	return &call{Context: ctx, b: b, outer: outer}
}

// Value returns c for callKey, and what its context holds otherwise.
func (c *call) Value(key any) any {
	if key == (callKey{}) {
		return c
	}
	return c.Context.Value(key)
}

// callOf returns the call through b, still running, that ctx was made
// for, or nil.
func callOf(ctx context.Context, b *Breaker) *call {
	c, _ := ctx.Value(callKey{}).(*call)
	for c != nil && (c.b != b || c.ended.Load()) {
		c = c.outer
	}
	return c
}

// nested runs fn for a call through c's breaker made inside c: whatever
// the breaker's state, since c was let through (it may hold the only
// half-open probe), and without counting; a failure is noted on c, which
// counts it when it ends. It returns what Execute would.
func (c *call) nested(ctx context.Context, fn func(ctx context.Context) error) error {
	err := fn(ctx)
	if err == nil {
		return nil
	}
	if c.b.classify(err) == Failure {
		c.failed.Store(true)
		return &DownstreamError{Breaker: c.b.name, Err: err}
	}
	return err
}
