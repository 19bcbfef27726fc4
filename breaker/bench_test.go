package breaker_test

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/breaker"
	"github.com/wharfhq/wharf/internal/dbtest"
)

// Each benchmark measures the call through the breaker and a baseline (the
// same function called directly) in the same run, interleaved, and reports
// both and the difference (overhead-ns/op), because absolute numbers on a
// shared machine drift. Run them with:
//
//	go test ./breaker -run '^$' -bench . -benchtime 100000x

// noop is the downstream call. It is called through a variable, as the
// breaker calls it, so the baseline pays for an indirect call too.
var noop = func(context.Context) error { return nil }

var failing = func(context.Context) error { return errRefused }

// measure runs call b.N times, half in each of two rounds interleaved
// with the baseline, and reports both.
func measure(b *testing.B, baseline, call func() error) {
	b.ReportAllocs()
	measureN(b, b.N, baseline, call)
}

// measureN is measure with n calls instead of b.N (and no allocation
// figures, which the framework would divide by b.N).
func measureN(b *testing.B, n int, baseline, call func() error) {
	var direct, wrapped time.Duration
	for range 2 {
		start := time.Now()
		for range n / 2 {
			_ = baseline()
		}
		direct += time.Since(start)
		start = time.Now()
		for range n / 2 {
			_ = call()
		}
		wrapped += time.Since(start)
	}
	calls := float64(2 * (n / 2))
	b.ReportMetric(float64(direct.Nanoseconds())/calls, "baseline-ns/op")
	b.ReportMetric(float64(wrapped.Nanoseconds())/calls, "ns/op")
	b.ReportMetric(float64((wrapped-direct).Nanoseconds())/calls, "overhead-ns/op")
}

// measureParallel is measure with GOMAXPROCS goroutines calling at once.
func measureParallel(b *testing.B, baseline, call func() error) {
	b.ReportAllocs()
	workers := runtime.GOMAXPROCS(0)
	each := max(b.N/workers, 1)
	run := func(fn func() error) time.Duration {
		var wg sync.WaitGroup
		start := time.Now()
		for range workers {
			wg.Go(func() {
				for range each {
					_ = fn()
				}
			})
		}
		wg.Wait()
		return time.Since(start)
	}
	var direct, wrapped time.Duration
	for range 2 {
		direct += run(baseline)
		wrapped += run(call)
	}
	calls := float64(2 * workers * each)
	b.ReportMetric(float64(direct.Nanoseconds())/calls, "baseline-ns/op")
	b.ReportMetric(float64(wrapped.Nanoseconds())/calls, "ns/op")
	b.ReportMetric(float64((wrapped-direct).Nanoseconds())/calls, "overhead-ns/op")
}

// BenchmarkExecute: a no-op downstream call through a closed breaker,
// against calling it directly.
//
//   - local: Registry.Execute by name (a map lookup, then the breaker);
//   - local-handle: Breaker.Execute on a handle kept by the caller;
//   - local-parallel: Registry.Execute from GOMAXPROCS goroutines at once,
//     all on one breaker (they share its lock);
//   - shared-refresh-1s and -10ms: Registry.Execute on a Registry that
//     shares state through PostgreSQL, its refresher running meanwhile
//     every second (the default) or every 10 ms (100 times as often),
//     publishing the changing counts each time;
//   - failure: a call that fails and is counted (classification and the
//     *DownstreamError), on a breaker that never trips;
//   - open: a call that an open breaker turns away (the *OpenError), against
//     the baseline of a failing call made directly.
func BenchmarkExecute(b *testing.B) {
	b.Run("local", func(b *testing.B) {
		r := newRegistry(b, breaker.Settings{}, nil)
		measure(b, func() error { return noop(ctx) }, func() error { return r.Execute(ctx, "billing-api", noop) })
	})
	b.Run("local-handle", func(b *testing.B) {
		r := newRegistry(b, breaker.Settings{}, nil)
		br, err := r.Breaker("billing-api")
		require.NoError(b, err)
		measure(b, func() error { return noop(ctx) }, func() error { return br.Execute(ctx, noop) })
	})
	b.Run("local-parallel", func(b *testing.B) {
		r := newRegistry(b, breaker.Settings{}, nil)
		measureParallel(b, func() error { return noop(ctx) }, func() error { return r.Execute(ctx, "billing-api", noop) })
	})
	for _, refresh := range []time.Duration{breaker.DefaultRefreshInterval, 10 * time.Millisecond} {
		b.Run("shared-refresh-"+refresh.String(), func(b *testing.B) {
			pool := dbtest.Pool(b)
			r, err := breaker.New(breaker.Config{Shared: &breaker.SharedConfig{Pool: pool, RefreshInterval: refresh}})
			require.NoError(b, err)
			defer r.Close()
			require.NoError(b, r.Execute(ctx, "billing-api", noop))
			measure(b, func() error { return noop(ctx) }, func() error { return r.Execute(ctx, "billing-api", noop) })
			require.NoError(b, r.Sync(ctx))
			var n int
			require.NoError(b, pool.QueryRow(ctx, `SELECT count(*) FROM wharf.breaker_counts WHERE requests > 0`).Scan(&n))
			require.Equal(b, 1, n, "the counts are published")
		})
	}
	b.Run("failure", func(b *testing.B) {
		r := newRegistry(b, breaker.Settings{MinRequests: 1 << 30}, nil)
		measure(b, func() error { return failing(ctx) }, func() error { return r.Execute(ctx, "billing-api", failing) })
	})
	b.Run("open", func(b *testing.B) {
		r := newRegistry(b, breaker.Settings{Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 1, OpenTimeout: time.Hour}, nil)
		_ = r.Execute(ctx, "billing-api", failing)
		requireState(b, r, "billing-api", breaker.StateOpen)
		measure(b, func() error { return failing(ctx) }, func() error { return r.Execute(ctx, "billing-api", noop) })
	})
}

// BenchmarkSync: one refresh of shared state (publish changed counts of 10
// breakers, read the table and the others' counts: one round trip),
// against a bare SELECT 1 round trip on the same pool. This is what each
// process spends once per RefreshInterval, not per call.
func BenchmarkSync(b *testing.B) {
	pool := dbtest.Pool(b)
	r, err := breaker.NewManualSync(breaker.Config{Shared: &breaker.SharedConfig{Pool: pool}})
	require.NoError(b, err)
	defer r.Close()
	names := make([]string, 10)
	for i := range names {
		names[i] = fmt.Sprintf("downstream-%d", i)
	}
	// At most 2000 refreshes: each is a round trip, and the figure settles
	// long before b.N of them.
	measureN(b, min(b.N, 2000),
		func() error { _, err := pool.Exec(ctx, `SELECT 1`); return err },
		func() error {
			for _, name := range names { // change the counts, so they are written
				_ = r.Execute(ctx, name, noop)
			}
			return r.Sync(ctx)
		})
}
