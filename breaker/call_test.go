package breaker_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/breaker"
)

// A handler that runs under breaker "billing" and sends through
// "billing"'s Transport makes calls through the same breaker inside a call
// through it; these tests hold that they count as that one call.

// nestedClient returns a client whose Transport goes through breaker
// "billing" of r to a downstream answering code.
func nestedClient(t *testing.T, r *breaker.Registry, code *int) *http.Client {
	t.Helper()
	tr, err := r.Transport("billing", roundTripFunc(func(req *http.Request) (*http.Response, error) {
		resp, _ := answer(req, *code)
		return resp, nil
	}))
	require.NoError(t, err)
	return &http.Client{Transport: tr}
}

// charge is a handler's call: one request, and an error for any answer
// but 200, in the handler's own words.
func charge(ctx context.Context, client *http.Client) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://billing.test/charge", nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("billing answered %d", resp.StatusCode)
	}
	return nil
}

func TestNestedCallThroughTheSameBreakerCountsOnce(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r := newRegistry(t, breaker.Settings{Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 2}, nil)
		code := http.StatusServiceUnavailable
		client := nestedClient(t, r, &code)

		err := r.Execute(ctx, "billing", func(ctx context.Context) error { return charge(ctx, client) })
		var de *breaker.DownstreamError
		require.True(t, errors.As(err, &de),
			"the handler's own error for the 503 comes back as the downstream's failure, got %T %v", err, err)
		require.EqualError(t, de.Err, "billing answered 503")
		st := requireState(t, r, "billing", breaker.StateClosed)
		require.Equal(t, uint32(1), st.Counts.Failures, "one failed call, counted once")
		require.Equal(t, uint32(1), st.Counts.Requests)

		// Outside any call, the Transport counts on its own, as before.
		require.EqualError(t, charge(ctx, client), "billing answered 503")
		requireState(t, r, "billing", breaker.StateOpen)
	})
}

func TestNestedFailureCountsEvenWhenTheCallSucceeds(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r := newRegistry(t, breaker.Settings{Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 1}, nil)
		code := http.StatusBadGateway
		client := nestedClient(t, r, &code)

		err := r.Execute(ctx, "billing", func(ctx context.Context) error {
			_ = charge(ctx, client) // a handler that shrugs the failure off
			return nil
		})
		require.NoError(t, err, "the call succeeded in its caller's eyes")
		st := requireState(t, r, "billing", breaker.StateOpen)
		require.NotZero(t, st.Until, "the downstream's failure was counted")
	})
}

func TestNestedCallIsNotTurnedAwayByTheProbeItRunsIn(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r := newRegistry(t, breaker.Settings{
			Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 1,
			OpenTimeout: 5 * time.Second, HalfOpenProbes: 1,
		}, nil)
		code := http.StatusServiceUnavailable
		client := nestedClient(t, r, &code)
		require.EqualError(t, charge(ctx, client), "billing answered 503")
		requireState(t, r, "billing", breaker.StateOpen)
		time.Sleep(5*time.Second + time.Nanosecond)

		// The one probe runs the handler, and the handler's request goes
		// out: before, it was refused for want of a probe, so the breaker
		// stayed half-open for good.
		code = http.StatusOK
		require.NoError(t, r.Execute(ctx, "billing", func(ctx context.Context) error { return charge(ctx, client) }))
		requireState(t, r, "billing", breaker.StateClosed)
	})
}

func TestNestedCallUnderAnotherBreakerStillCountsWithTheOuterOne(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r := newRegistry(t, breaker.Settings{Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 2}, nil)
		code := http.StatusServiceUnavailable
		client := nestedClient(t, r, &code)

		// billing > ledger > billing: the innermost call is part of the
		// outer billing call. ledger sees only the handler's own error for
		// the 503, which DefaultClassifier does not count.
		err := r.Execute(ctx, "billing", func(ctx context.Context) error {
			return r.Execute(ctx, "ledger", func(ctx context.Context) error { return charge(ctx, client) })
		})
		require.ErrorIs(t, err, breaker.ErrDownstream)
		st := requireState(t, r, "billing", breaker.StateClosed)
		require.Equal(t, uint32(1), st.Counts.Failures)
		require.Equal(t, uint32(1), st.Counts.Requests)
		st = requireState(t, r, "ledger", breaker.StateClosed)
		require.Equal(t, uint32(0), st.Counts.Failures)
		require.Equal(t, uint32(1), st.Counts.Excluded)
	})
}

// A context kept past its call (a goroutine the handler started) makes
// calls of their own: while the breaker is open they are refused, not let
// through as parts of a call that has ended.
func TestCallsWithAnEndedCallsContextGoThroughTheBreaker(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r := newRegistry(t, breaker.Settings{Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 1}, nil)
		var kept context.Context
		require.NoError(t, r.Execute(ctx, "billing", func(c context.Context) error { kept = c; return nil }))
		require.ErrorIs(t, r.Execute(ctx, "billing", func(context.Context) error { return errRefused }), breaker.ErrDownstream)
		requireState(t, r, "billing", breaker.StateOpen)
		d := &downstream{err: errRefused}
		requireOpenError(t, r.Execute(kept, "billing", d.call), "billing")
		require.Zero(t, d.calls.Load(), "an open breaker sends nothing")
	})
}

// A Classifier that panics is the caller's bug: the call is still
// reported (excluded), so a half-open breaker gets its probe back instead
// of refusing every call for ever.
func TestPanickingClassifierGivesTheProbeBack(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		boom := errors.New("boom")
		r := newRegistry(t, breaker.Settings{
			Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 1,
			OpenTimeout: 2 * time.Second, HalfOpenProbes: 1,
			Classify: func(err error) breaker.Outcome {
				if errors.Is(err, boom) {
					panic("classifier bug")
				}
				return breaker.DefaultClassifier(err)
			},
		}, nil)
		require.ErrorIs(t, r.Execute(ctx, "billing", (&downstream{err: errRefused}).call), breaker.ErrDownstream)
		time.Sleep(2*time.Second + time.Nanosecond)
		require.Panics(t, func() { _ = r.Execute(ctx, "billing", func(context.Context) error { return boom }) })
		require.NoError(t, r.Execute(ctx, "billing", (&downstream{}).call), "the probe slot was given back")
		requireState(t, r, "billing", breaker.StateClosed)
	})
}
