package idempotency_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/idempotency"
)

// ProcessedPerMinute counts finished keys by the minute they were
// processed in, oldest minute first, and leaves out keys in progress and
// keys older than the window.
func TestProcessedPerMinute(t *testing.T) {
	t.Parallel()
	store, pool := newStore(t, idempotency.Config{})
	ctx := context.Background()
	for _, key := range []string{"now-1", "now-2", "two-min", "old"} {
		require.True(t, claimIn(t, pool, store, "stripe/invoice.paid", key))
	}
	_, _, err := store.Begin(ctx, "payments", "in-flight")
	require.NoError(t, err)
	exec(t, pool, `UPDATE wharf.processed_events SET processed_at = now() - interval '150 seconds' WHERE key = 'two-min'`)
	exec(t, pool, `UPDATE wharf.processed_events SET processed_at = now() - interval '10 minutes' WHERE key = 'old'`)

	counts, err := store.ProcessedPerMinute(ctx, 5)
	require.NoError(t, err)
	require.Equal(t, []int64{0, 0, 1, 0, 2}, counts)

	for _, bad := range []int{0, -1, idempotency.MaxRateMinutes + 1} {
		_, err := store.ProcessedPerMinute(ctx, bad)
		require.ErrorIs(t, err, idempotency.ErrInvalidArgument)
	}
}
