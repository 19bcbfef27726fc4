package eventlog

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
)

// Rebuild's replay loop ends at the first short batch once it has applied
// the events that were below the horizon when it began, and reads again
// after a short batch before that (a read held back for a moment).
// TestRebuildRestoresLiveState runs it against Postgres; these cases pin
// down the reads a real server returns only under rare timing.
func TestReplayReadsOnUntilTheTotal(t *testing.T) {
	t.Parallel()
	type step struct{ done, total int64 }
	for _, tc := range []struct {
		name      string
		total     int64
		batches   []int
		wantDone  int64
		wantSteps []step
	}{
		{"ends at a short batch", 200, []int{64, 64, 64, 8}, 200,
			[]step{{64, 200}, {128, 200}, {192, 200}, {200, 200}}},
		{"an empty read before the total is read again", 200, []int{0, 64, 64, 64, 8}, 200,
			[]step{{64, 200}, {128, 200}, {192, 200}, {200, 200}}},
		{"a short read before the total is read again", 200, []int{30, 0, 64, 64, 42}, 200,
			[]step{{30, 200}, {94, 200}, {158, 200}, {200, 200}}},
		{"events that arrived meanwhile raise the total", 100, []int{64, 64, 10}, 138,
			[]step{{64, 100}, {128, 128}, {138, 138}}},
		{"nothing to replay", 0, []int{0}, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			calls := 0
			read := func() (int, error) {
				require.Less(t, calls, len(tc.batches), "read after the replay should have ended")
				calls++
				return tc.batches[calls-1], nil
			}
			var steps []step
			done, err := replay(context.Background(), 64, tc.total, read, func(d, t int64) { steps = append(steps, step{d, t}) })
			require.NoError(t, err)
			require.Equal(t, tc.wantDone, done)
			require.Equal(t, len(tc.batches), calls)
			require.Equal(t, tc.wantSteps, steps)
		})
	}
}

// A replay held short of its total stops when its context ends, and a
// read's error stops it at once.
func TestReplayStops(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	reads := 0
	done, err := replay(ctx, 64, 10, func() (int, error) {
		reads++
		if reads == 3 {
			cancel()
		}
		return 0, nil
	}, func(int64, int64) {})
	require.ErrorIs(t, err, context.Canceled)
	require.Zero(t, done)
	require.Equal(t, 3, reads)

	boom := errors.New("boom")
	done, err = replay(context.Background(), 64, 200, func() (int, error) { return 0, boom }, func(int64, int64) {})
	require.ErrorIs(t, err, boom)
	require.Zero(t, done)
}
