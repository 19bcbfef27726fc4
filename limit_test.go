package wharf

import (
	"context"
	"math"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/queue"
)

func TestLimiterPacesCallsAfterTheBurst(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		l, err := newLimiter("ledger", RateLimit{PerSecond: 10, Burst: 3})
		require.NoError(t, err)
		ctx := context.Background()
		start := time.Now()
		var at []time.Duration
		for range 6 {
			require.NoError(t, l.wait(ctx, time.Second))
			at = append(at, time.Since(start))
		}
		// Three at once, then one every 100ms.
		require.Equal(t, []time.Duration{0, 0, 0, 100 * time.Millisecond, 200 * time.Millisecond, 300 * time.Millisecond}, at)

		time.Sleep(time.Second) // a quiet spell refills the burst, no more
		start = time.Now()
		at = at[:0]
		for range 4 {
			require.NoError(t, l.wait(ctx, time.Second))
			at = append(at, time.Since(start))
		}
		require.Equal(t, []time.Duration{0, 0, 0, 100 * time.Millisecond}, at)
	})
}

// A wait that ends with its context, or a turn further off than the
// longest wait, defers the event (no attempt spent) and gives its place
// back: callers that give up do not push the next turns away (before, five
// waiters that gave up made the next caller wait 5.5 s at one call a
// second).
func TestLimiterDefersAndGivesBackItsPlace(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		l, err := newLimiter("ledger", RateLimit{PerSecond: 1})
		require.NoError(t, err)
		require.NoError(t, l.wait(context.Background(), time.Minute))
		for range 5 {
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			err := l.wait(ctx, time.Minute)
			cancel()
			var deferred *queue.DeferError
			require.ErrorAs(t, err, &deferred)
			require.ErrorIs(t, err, context.DeadlineExceeded)
		}
		start := time.Now()
		require.NoError(t, l.wait(context.Background(), time.Minute))
		require.Equal(t, 500*time.Millisecond, time.Since(start), "the turn after the first call's, a second after it")

		err = l.wait(context.Background(), 100*time.Millisecond)
		var deferred *queue.DeferError
		require.ErrorAs(t, err, &deferred, "a turn a second away is further than the longest wait")
		require.Equal(t, time.Now().Add(time.Second), deferred.Until)
		require.ErrorContains(t, err, `downstream "ledger" is rate-limited`)
		start = time.Now()
		require.NoError(t, l.wait(context.Background(), time.Minute))
		require.Equal(t, time.Second, time.Since(start), "the deferred call's place was given back")
	})
}

func TestLimiterRejectsBadConfig(t *testing.T) {
	t.Parallel()
	for _, rl := range []RateLimit{
		{}, {PerSecond: -1}, {PerSecond: 1, Burst: -1},
		{PerSecond: math.NaN()}, {PerSecond: math.Inf(1)}, {PerSecond: 2e9},
		{PerSecond: 1e-12},                // an interval past a Duration's range
		{PerSecond: 1e-6, Burst: 1 << 40}, // a burst's worth of intervals past it
	} {
		_, err := newLimiter("x", rl)
		require.ErrorIs(t, err, ErrInvalidConfig)
	}
}
