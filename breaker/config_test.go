package breaker_test

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/breaker"
	"github.com/wharfhq/wharf/internal/dbtest"
)

func TestZeroConfigUsesDocumentedDefaults(t *testing.T) {
	t.Parallel()
	r := newRegistry(t, breaker.Settings{}, nil)
	b, err := r.Breaker("billing")
	require.NoError(t, err)
	s := b.Settings()
	require.Equal(t, breaker.TripOnFailureRate, s.Trip)
	require.Equal(t, breaker.DefaultTrip, s.Trip)
	require.Equal(t, breaker.DefaultFailureRate, s.FailureRate)
	require.Equal(t, breaker.DefaultMinRequests, s.MinRequests)
	require.Equal(t, breaker.DefaultConsecutiveFailures, s.ConsecutiveFailures)
	require.Equal(t, breaker.DefaultWindow, s.Window)
	require.Equal(t, breaker.DefaultWindowBuckets, s.WindowBuckets)
	require.Equal(t, breaker.DefaultOpenTimeout, s.OpenTimeout)
	require.Equal(t, breaker.DefaultHalfOpenProbes, s.HalfOpenProbes)
	require.Equal(t, breaker.DefaultHalfOpenWait, s.HalfOpenWait)
	require.NotNil(t, s.Classify)
	require.Equal(t, breaker.Failure, s.Classify(errRefused), "the default classifier is DefaultClassifier")
	// The documented values, so changing a constant is a visible decision.
	require.Equal(t, 0.5, breaker.DefaultFailureRate)
	require.Equal(t, 10, breaker.DefaultMinRequests)
	require.Equal(t, 30*time.Second, breaker.DefaultOpenTimeout)
	require.Equal(t, time.Second, breaker.DefaultRefreshInterval)
}

func TestPerBreakerSettingsInheritDefault(t *testing.T) {
	t.Parallel()
	r, err := breaker.New(breaker.Config{
		Default: breaker.Settings{OpenTimeout: 5 * time.Second, MinRequests: 20},
		Breakers: map[string]breaker.Settings{
			"ledger": {Trip: breaker.TripOnConsecutiveFailures, MinRequests: 3},
		},
	})
	require.NoError(t, err)
	ledger, err := r.Breaker("ledger")
	require.NoError(t, err)
	require.Equal(t, breaker.TripOnConsecutiveFailures, ledger.Settings().Trip)
	require.Equal(t, 3, ledger.Settings().MinRequests)
	require.Equal(t, 5*time.Second, ledger.Settings().OpenTimeout, "unset fields come from Default")
	require.Equal(t, breaker.DefaultHalfOpenProbes, ledger.Settings().HalfOpenProbes, "then from the package defaults")

	billing, err := r.Breaker("billing")
	require.NoError(t, err)
	require.Equal(t, breaker.TripOnFailureRate, billing.Settings().Trip)
	require.Equal(t, 20, billing.Settings().MinRequests)
}

func TestNewRejectsInvalidConfig(t *testing.T) {
	t.Parallel()
	pool := dbtest.Pool(t)
	cases := map[string]struct {
		cfg  breaker.Config
		want string
	}{
		"rate above 1":          {breaker.Config{Default: breaker.Settings{FailureRate: 1.5}}, "FailureRate 1.5"},
		"negative rate":         {breaker.Config{Default: breaker.Settings{FailureRate: -0.1}}, "FailureRate -0.1"},
		"NaN rate":              {breaker.Config{Default: breaker.Settings{FailureRate: math.NaN()}}, "FailureRate NaN"},
		"negative min requests": {breaker.Config{Default: breaker.Settings{MinRequests: -1}}, "MinRequests -1"},
		"negative consecutive":  {breaker.Config{Default: breaker.Settings{ConsecutiveFailures: -3}}, "ConsecutiveFailures -3"},
		"negative window":       {breaker.Config{Default: breaker.Settings{Window: -time.Second}}, "Window -1s"},
		"negative buckets":      {breaker.Config{Default: breaker.Settings{WindowBuckets: -1}}, "WindowBuckets -1"},
		"too many buckets":      {breaker.Config{Default: breaker.Settings{WindowBuckets: 1001}}, "WindowBuckets 1001"},
		"tiny buckets":          {breaker.Config{Default: breaker.Settings{Window: 5 * time.Millisecond, WindowBuckets: 10}}, "shorter than 1ms"},
		"negative open timeout": {breaker.Config{Default: breaker.Settings{OpenTimeout: -time.Second}}, "OpenTimeout -1s"},
		"negative probes":       {breaker.Config{Default: breaker.Settings{HalfOpenProbes: -1}}, "HalfOpenProbes -1"},
		"negative wait":         {breaker.Config{Default: breaker.Settings{HalfOpenWait: -time.Second}}, "HalfOpenWait -1s"},
		"unknown trip mode":     {breaker.Config{Default: breaker.Settings{Trip: 7}}, "Trip 7"},
		"bad named breaker": {breaker.Config{Breakers: map[string]breaker.Settings{"ledger": {MinRequests: -2}}},
			`breaker "ledger": MinRequests -2`},
		"empty breaker name":   {breaker.Config{Breakers: map[string]breaker.Settings{"": {}}}, "invalid breaker name"},
		"shared without pool":  {breaker.Config{Shared: &breaker.SharedConfig{}}, "Pool is nil"},
		"shared, bad schema":   {breaker.Config{Shared: &breaker.SharedConfig{Pool: pool, Schema: "Bad-Name"}}, "Bad-Name"},
		"shared, bad interval": {breaker.Config{Shared: &breaker.SharedConfig{Pool: pool, RefreshInterval: -time.Second}}, "RefreshInterval -1s"},
		"shared, NUL in owner": {breaker.Config{Shared: &breaker.SharedConfig{Pool: pool, Owner: "a\x00b"}}, "without NUL"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			r, err := breaker.New(c.cfg)
			require.ErrorIs(t, err, breaker.ErrInvalidConfig)
			require.Nil(t, r)
			require.Contains(t, err.Error(), c.want)
			require.True(t, strings.HasPrefix(err.Error(), "breaker: invalid config: "), err.Error())
		})
	}
	_, err := breaker.New(breaker.Config{Breakers: map[string]breaker.Settings{"": {}}})
	require.ErrorIs(t, err, breaker.ErrInvalidName, "an empty name in Breakers is also an invalid name")
}

func TestInvalidBreakerNamesAreRefused(t *testing.T) {
	t.Parallel()
	r := newRegistry(t, breaker.Settings{}, nil)
	called := false
	fn := func(context.Context) error { called = true; return nil }
	for _, name := range []string{"", strings.Repeat("x", breaker.MaxNameBytes+1), "bad\xffutf8", "bad\x00nul"} {
		err := r.Execute(ctx, name, fn)
		require.ErrorIs(t, err, breaker.ErrInvalidName)
		require.True(t, strings.HasPrefix(err.Error(), "breaker: invalid breaker name "), err.Error())
		_, err = r.Breaker(name)
		require.ErrorIs(t, err, breaker.ErrInvalidName)
		_, err = r.State(name)
		require.ErrorIs(t, err, breaker.ErrInvalidName)
		_, err = r.Transport(name, nil)
		require.ErrorIs(t, err, breaker.ErrInvalidName)
	}
	require.False(t, called, "nothing is called under an invalid name")
	require.Empty(t, r.Open())
	_, err := r.Breaker(strings.Repeat("x", breaker.MaxNameBytes))
	require.NoError(t, err, "MaxNameBytes itself is fine")
}
