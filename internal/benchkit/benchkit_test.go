package benchkit_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/internal/benchkit"
)

func TestPercentile(t *testing.T) {
	t.Parallel()
	var l benchkit.Latencies
	for i := 100; i >= 1; i-- { // out of order: Sorted sorts
		l.Add(time.Duration(i) * time.Millisecond)
	}
	sorted := l.Sorted()
	require.Equal(t, 50.0, benchkit.Percentile(sorted, 0.50))
	require.Equal(t, 99.0, benchkit.Percentile(sorted, 0.99))
	require.Equal(t, 100.0, benchkit.Percentile(sorted, 1))
	require.Equal(t, 1.0, benchkit.Percentile(sorted, 0))
	require.Zero(t, benchkit.Percentile(nil, 0.5))
	require.Equal(t, 1.5, benchkit.Millis(1500*time.Microsecond))
}

func TestParallel(t *testing.T) {
	t.Parallel()
	seen := make([]atomic.Int32, 1000)
	_, err := benchkit.Parallel(8, len(seen), func(i int) error {
		seen[i].Add(1)
		return nil
	})
	require.NoError(t, err)
	for i := range seen {
		require.EqualValues(t, 1, seen[i].Load(), "index %d", i)
	}

	boom := errors.New("boom")
	var calls atomic.Int32
	_, err = benchkit.Parallel(1, 10, func(i int) error {
		calls.Add(1)
		if i == 3 {
			return boom
		}
		return nil
	})
	require.ErrorIs(t, err, boom)
	require.EqualValues(t, 4, calls.Load(), "a worker stops at its first error")
}

func TestBody(t *testing.T) {
	t.Parallel()
	require.Len(t, benchkit.Body, 1024)
	require.Contains(t, string(benchkit.Body), `"type":"`+benchkit.Type+`"`)
	h := benchkit.Sign("msg_1")
	require.Equal(t, "msg_1", h.Get("Webhook-Id"))
	require.NoError(t, wharf.StandardWebhooks(benchkit.Secret).Verify(context.Background(), h, benchkit.Body))
}
