package wharf

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"
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
			require.NoError(t, l.wait(ctx))
			at = append(at, time.Since(start))
		}
		// Three at once, then one every 100ms.
		require.Equal(t, []time.Duration{0, 0, 0, 100 * time.Millisecond, 200 * time.Millisecond, 300 * time.Millisecond}, at)

		time.Sleep(time.Second) // a quiet spell refills the burst, no more
		start = time.Now()
		at = at[:0]
		for range 4 {
			require.NoError(t, l.wait(ctx))
			at = append(at, time.Since(start))
		}
		require.Equal(t, []time.Duration{0, 0, 0, 100 * time.Millisecond}, at)
	})
}

func TestLimiterWaitEndsWithContext(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		l, err := newLimiter("ledger", RateLimit{PerSecond: 1})
		require.NoError(t, err)
		require.NoError(t, l.wait(context.Background()))
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		require.ErrorIs(t, l.wait(ctx), context.DeadlineExceeded)
	})
}

func TestLimiterRejectsBadConfig(t *testing.T) {
	t.Parallel()
	for _, rl := range []RateLimit{{}, {PerSecond: -1}, {PerSecond: 1, Burst: -1}} {
		_, err := newLimiter("x", rl)
		require.ErrorIs(t, err, ErrInvalidConfig)
	}
}
