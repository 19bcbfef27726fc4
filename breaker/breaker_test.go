package breaker_test

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/breaker"
)

// Every test here runs in a synctest bubble: time is fake, starts at
// 2000-01-01 and moves only by time.Sleep inside the bubble, so the
// timeouts and windows of the breakers (which gobreaker reads from
// time.Now itself) are exact.

var ctx = context.Background()

func TestOpensOnFailureRateOnceMinRequestsAreCounted(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		rec := &recorder{}
		r := newRegistry(t, breaker.Settings{MinRequests: 6, FailureRate: 0.5, OpenTimeout: time.Minute}, rec)
		d := &downstream{}

		// 3 successes then 2 failures: 2 of 5 failed, under MinRequests and
		// under the rate. Every failure comes back as a DownstreamError.
		for range 3 {
			require.NoError(t, r.Execute(ctx, "billing", d.call))
		}
		d.set(errRefused)
		for range 2 {
			err := r.Execute(ctx, "billing", d.call)
			require.ErrorIs(t, err, breaker.ErrDownstream)
			require.ErrorIs(t, err, errRefused, "the downstream's error stays reachable")
		}
		requireState(t, r, "billing", breaker.StateClosed)

		// The 6th call: 3 of 6 failed, at MinRequests and at the rate. The
		// call that trips it ran, so it is a DownstreamError, not an open.
		err := r.Execute(ctx, "billing", d.call)
		require.ErrorIs(t, err, breaker.ErrDownstream)
		require.NotErrorIs(t, err, breaker.ErrOpen)
		st := requireState(t, r, "billing", breaker.StateOpen)
		require.Equal(t, time.Now().Add(time.Minute+time.Nanosecond), st.Until)
		require.Equal(t, int64(6), d.calls.Load())
		require.Equal(t, []string{"closed>open"}, rec.transitions())
		require.Equal(t, st.Until, rec.all()[0].Until, "the callback carries the next probe time")
	})
}

func TestFailureRateBelowThresholdStaysClosed(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r := newRegistry(t, breaker.Settings{MinRequests: 4, FailureRate: 0.5}, nil)
		d := &downstream{}
		// S S F S S F ...: 1 failure in every 3 calls, 30 calls: 33% < 50%,
		// far past MinRequests.
		for i := range 30 {
			if i%3 == 2 {
				d.set(errRefused)
			} else {
				d.set(nil)
			}
			_ = r.Execute(ctx, "billing", d.call)
		}
		st := requireState(t, r, "billing", breaker.StateClosed)
		require.Equal(t, uint32(10), st.Counts.Failures)
		require.Equal(t, uint32(20), st.Counts.Successes)
	})
}

func TestOpenRejectsWithoutCallingUntilTheNextProbeTime(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r := newRegistry(t, breaker.Settings{Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 2, OpenTimeout: 30 * time.Second}, nil)
		d := &downstream{err: errRefused}
		for range 2 {
			require.ErrorIs(t, r.Execute(ctx, "billing", d.call), breaker.ErrDownstream)
		}
		openedAt := time.Now()

		time.Sleep(10 * time.Second)
		err := r.Execute(ctx, "billing", d.call)
		open := requireOpenError(t, err, "billing")
		require.Equal(t, breaker.StateOpen, open.State)
		require.Equal(t, openedAt.Add(30*time.Second+time.Nanosecond), open.Until)
		require.Equal(t, int64(2), d.calls.Load(), "an open breaker does not call the downstream")
		require.Contains(t, err.Error(), `breaker: "billing" is open until 2000-01-01T00:00:30`)

		// Registry.State and Registry.Open know the same time.
		st := requireState(t, r, "billing", breaker.StateOpen)
		require.Equal(t, open.Until, st.Until)
		openList := r.Open()
		require.Len(t, openList, 1)
		require.Equal(t, "billing", openList[0].Name)
		require.Equal(t, open.Until, openList[0].Until)

		// One nanosecond before Until it still rejects; at Until the probe
		// goes through: Until is exactly the first instant allowed.
		time.Sleep(time.Until(open.Until) - time.Nanosecond)
		requireOpenError(t, r.Execute(ctx, "billing", d.call), "billing")
		require.Equal(t, int64(2), d.calls.Load())
		time.Sleep(time.Nanosecond)
		requireState(t, r, "billing", breaker.StateHalfOpen)
		require.Empty(t, r.Open(), "a half-open breaker is not listed as open")
		d.set(nil)
		require.NoError(t, r.Execute(ctx, "billing", d.call))
		require.Equal(t, int64(3), d.calls.Load())
	})
}

func TestClosesAfterSuccessfulProbes(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		rec := &recorder{}
		r := newRegistry(t, breaker.Settings{
			Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 1,
			OpenTimeout: 5 * time.Second, HalfOpenProbes: 2,
		}, rec)
		d := &downstream{err: errRefused}
		require.ErrorIs(t, r.Execute(ctx, "billing", d.call), breaker.ErrDownstream)
		time.Sleep(5*time.Second + time.Nanosecond)

		d.set(nil)
		require.NoError(t, r.Execute(ctx, "billing", d.call))
		requireState(t, r, "billing", breaker.StateHalfOpen) // one probe of two
		require.NoError(t, r.Execute(ctx, "billing", d.call))
		requireState(t, r, "billing", breaker.StateClosed)
		require.Equal(t, []string{"closed>open", "open>half-open", "half-open>closed"}, rec.transitions())

		// Closed again: failures are counted from scratch.
		d.set(errRefused)
		require.ErrorIs(t, r.Execute(ctx, "billing", d.call), breaker.ErrDownstream)
		requireState(t, r, "billing", breaker.StateOpen)
	})
}

func TestFailedProbeReopensAndCountsAsDownstreamFailure(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		rec := &recorder{}
		r := newRegistry(t, breaker.Settings{
			Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 1,
			OpenTimeout: 5 * time.Second, HalfOpenProbes: 3,
		}, rec)
		d := &downstream{err: errRefused}
		require.ErrorIs(t, r.Execute(ctx, "billing", d.call), breaker.ErrDownstream)
		time.Sleep(5*time.Second + time.Nanosecond)

		// A success, then a failed probe: open again, for a new timeout.
		d.set(nil)
		require.NoError(t, r.Execute(ctx, "billing", d.call))
		d.set(errRefused)
		err := r.Execute(ctx, "billing", d.call)
		var de *breaker.DownstreamError
		require.True(t, errors.As(err, &de), "a failed probe is a counted downstream failure, got %T", err)
		require.Equal(t, "billing", de.Breaker)
		st := requireState(t, r, "billing", breaker.StateOpen)
		require.Equal(t, time.Now().Add(5*time.Second+time.Nanosecond), st.Until)
		require.Equal(t, []string{"closed>open", "open>half-open", "half-open>open"}, rec.transitions())
		requireOpenError(t, r.Execute(ctx, "billing", d.call), "billing")
	})
}

func TestHalfOpenTurnsAwayCallsBeyondItsProbes(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r := newRegistry(t, breaker.Settings{
			Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 1,
			OpenTimeout: time.Second, HalfOpenProbes: 1, HalfOpenWait: 250 * time.Millisecond,
		}, nil)
		require.Error(t, r.Execute(ctx, "billing", func(context.Context) error { return errRefused }))
		time.Sleep(time.Second + time.Nanosecond)

		release := make(chan struct{})
		probeDone := make(chan error)
		go func() {
			probeDone <- r.Execute(ctx, "billing", func(context.Context) error { <-release; return nil })
		}()
		synctest.Wait() // the probe is in flight, blocked on release

		called := false
		err := r.Execute(ctx, "billing", func(context.Context) error { called = true; return nil })
		open := requireOpenError(t, err, "billing")
		require.False(t, called)
		require.Equal(t, breaker.StateHalfOpen, open.State)
		require.Equal(t, time.Now().Add(250*time.Millisecond), open.Until)
		require.Contains(t, err.Error(), `breaker: "billing" is half-open and waiting for its probes; retry at 2000-01-01T00:00:`)
		require.Empty(t, r.Open(), "busy probing is not open: the work should not be parked for a whole timeout")

		close(release)
		require.NoError(t, <-probeDone)
		requireState(t, r, "billing", breaker.StateClosed)
	})
}

// A half-open breaker blocks (Status.Probing, Registry.Blocking) exactly
// while every probe it lets through is in flight: with two probes, one in
// flight still admits a call; two do not; an excluded probe frees its place;
// once they finish it is closed and blocks nothing. An open breaker blocks
// too, and Open still lists only open ones.
func TestBlockingWhileEveryProbeIsInFlight(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r := newRegistry(t, breaker.Settings{
			Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 1,
			OpenTimeout: time.Second, HalfOpenProbes: 2,
		}, nil)
		require.Empty(t, r.Blocking(), "a breaker never used blocks nothing")
		require.Error(t, r.Execute(ctx, "billing", func(context.Context) error { return errRefused }))
		blocking := r.Blocking()
		require.Len(t, blocking, 1)
		require.Equal(t, breaker.StateOpen, blocking[0].State)
		require.False(t, blocking[0].Probing)
		require.Equal(t, r.Open(), blocking)

		time.Sleep(time.Second + time.Nanosecond)
		requireState(t, r, "billing", breaker.StateHalfOpen)
		require.Empty(t, r.Blocking(), "half-open with no probe in flight takes calls")

		release := make([]chan struct{}, 3)
		done := make(chan error, 3)
		probe := func(i int, err error) {
			release[i] = make(chan struct{})
			go func() {
				done <- r.Execute(ctx, "billing", func(context.Context) error { <-release[i]; return err })
			}()
			synctest.Wait()
		}
		probe(0, breaker.MarkBusiness(errors.New("invoice 7 is void")))
		st := requireState(t, r, "billing", breaker.StateHalfOpen)
		require.False(t, st.Probing, "one of two probes in flight")
		require.Empty(t, r.Blocking())

		probe(1, nil)
		st = requireState(t, r, "billing", breaker.StateHalfOpen)
		require.True(t, st.Probing, "both probes in flight")
		require.True(t, st.Blocking())
		require.Equal(t, []string{"billing"}, names(r.Blocking()))
		require.Empty(t, r.Open(), "a probing breaker is not open")
		requireOpenError(t, r.Execute(ctx, "billing", func(context.Context) error { return nil }), "billing")

		close(release[0]) // excluded: it does not count as a probe
		require.Error(t, <-done)
		require.False(t, requireState(t, r, "billing", breaker.StateHalfOpen).Probing)
		probe(2, nil)
		require.True(t, requireState(t, r, "billing", breaker.StateHalfOpen).Probing)

		close(release[1])
		close(release[2])
		require.NoError(t, <-done)
		require.NoError(t, <-done)
		requireState(t, r, "billing", breaker.StateClosed)
		require.Empty(t, r.Blocking())
	})
}

func names(sts []breaker.Status) []string {
	out := make([]string, len(sts))
	for i, st := range sts {
		out[i] = st.Name
	}
	return out
}

func TestExcludedErrorsDoNotCount(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r := newRegistry(t, breaker.Settings{Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 2, MinRequests: 1}, nil)
		errInvalid := errors.New("invoice 42 has no customer")
		excluded := []error{
			breaker.MarkBusiness(errInvalid),
			&breaker.StatusError{Code: 404},
			&breaker.StatusError{Code: 400},
			&breaker.StatusError{Code: 422},
			context.Canceled,
			errInvalid, // unrecognised: the event's fault
			fmt.Errorf("decode answer: %w", errors.New("unexpected field")),
		}
		for range 3 {
			for _, e := range excluded {
				err := r.Execute(ctx, "billing", func(context.Context) error { return e })
				require.Same(t, e, err, "an excluded error comes back as it is")
				require.NotErrorIs(t, err, breaker.ErrDownstream)
			}
		}
		st := requireState(t, r, "billing", breaker.StateClosed)
		require.Equal(t, uint32(3*len(excluded)), st.Counts.Excluded)
		require.Zero(t, st.Counts.Failures)
		require.ErrorIs(t, breaker.MarkBusiness(errInvalid), errInvalid)
		require.Equal(t, errInvalid.Error(), breaker.MarkBusiness(errInvalid).Error())

		// Excluded calls between failures neither count nor break the run.
		require.ErrorIs(t, r.Execute(ctx, "billing", func(context.Context) error { return errRefused }), breaker.ErrDownstream)
		require.Error(t, r.Execute(ctx, "billing", func(context.Context) error { return &breaker.StatusError{Code: 409} }))
		requireState(t, r, "billing", breaker.StateClosed)
		require.ErrorIs(t, r.Execute(ctx, "billing", func(context.Context) error { return errRefused }), breaker.ErrDownstream)
		requireState(t, r, "billing", breaker.StateOpen)
	})
}

func TestExcludedErrorsDoNotReachMinRequests(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r := newRegistry(t, breaker.Settings{MinRequests: 5, FailureRate: 0.5}, nil)
		for range 100 {
			_ = r.Execute(ctx, "billing", func(context.Context) error { return &breaker.StatusError{Code: 400} })
		}
		// 4 failures: 4 counted calls < MinRequests, whatever the 100
		// excluded ones.
		for range 4 {
			_ = r.Execute(ctx, "billing", func(context.Context) error { return errRefused })
		}
		requireState(t, r, "billing", breaker.StateClosed)
		_ = r.Execute(ctx, "billing", func(context.Context) error { return errRefused })
		requireState(t, r, "billing", breaker.StateOpen)
	})
}

func TestMarkFailureCountsAnyError(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r := newRegistry(t, breaker.Settings{Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 2}, nil)
		errSDK := errors.New("sdk: service unavailable")
		for range 2 {
			err := r.Execute(ctx, "billing", func(context.Context) error { return breaker.MarkFailure(errSDK) })
			require.ErrorIs(t, err, breaker.ErrDownstream)
			require.ErrorIs(t, err, errSDK)
			require.Contains(t, err.Error(), `breaker: "billing": downstream failure: sdk: service unavailable`)
		}
		requireState(t, r, "billing", breaker.StateOpen)
	})
}

func TestConsecutiveFailureMode(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r := newRegistry(t, breaker.Settings{Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 3}, nil)
		d := &downstream{}
		run := func(err error) {
			d.set(err)
			_ = r.Execute(ctx, "ledger", d.call)
		}
		// A success resets the run: F F S F F stays closed although 4 of 5
		// failed (a rate breaker would not care about order).
		for _, err := range []error{errRefused, errRefused, nil, errRefused, errRefused} {
			run(err)
		}
		st := requireState(t, r, "ledger", breaker.StateClosed)
		require.Equal(t, uint32(2), st.Counts.ConsecutiveFailures)
		run(errRefused) // third in a row
		requireState(t, r, "ledger", breaker.StateOpen)
	})
}

func TestWindowForgetsOldFailures(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r := newRegistry(t, breaker.Settings{MinRequests: 3, FailureRate: 1, Window: 10 * time.Second, WindowBuckets: 2}, nil)
		fail := func(context.Context) error { return errRefused }
		_ = r.Execute(ctx, "billing", fail)
		_ = r.Execute(ctx, "billing", fail)
		time.Sleep(11 * time.Second) // both failures have rolled out of the window
		_ = r.Execute(ctx, "billing", fail)
		st := requireState(t, r, "billing", breaker.StateClosed)
		require.Equal(t, uint32(1), st.Counts.Failures)

		_ = r.Execute(ctx, "billing", fail)
		_ = r.Execute(ctx, "billing", fail)
		requireState(t, r, "billing", breaker.StateOpen)
	})
}

func TestPanicIsNotCountedAndPropagatesWithItsStack(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r := newRegistry(t, breaker.Settings{
			Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 1,
			OpenTimeout: 5 * time.Second, HalfOpenProbes: 1,
		}, nil)
		var stack string
		func() {
			defer func() {
				require.Equal(t, "boom", recover())
				stack = string(debug.Stack())
			}()
			_ = r.Execute(ctx, "billing", panickingCall)
		}()
		require.Contains(t, stack, "breaker_test.panickingCall", "the panic goes on from where it was raised")
		st := requireState(t, r, "billing", breaker.StateClosed)
		require.Equal(t, uint32(0), st.Counts.Failures, "a bug in the caller says nothing about the downstream")
		require.Equal(t, uint32(1), st.Counts.Excluded)

		// A probe that panics gives its turn back: the next call probes.
		require.ErrorIs(t, r.Execute(ctx, "billing", (&downstream{err: errRefused}).call), breaker.ErrDownstream)
		time.Sleep(5*time.Second + time.Nanosecond)
		require.Panics(t, func() { _ = r.Execute(ctx, "billing", panickingCall) })
		requireState(t, r, "billing", breaker.StateHalfOpen)
		require.NoError(t, r.Execute(ctx, "billing", (&downstream{}).call))
		requireState(t, r, "billing", breaker.StateClosed)
	})
}

func panickingCall(context.Context) error { panic("boom") }

func TestBreakersAreIndependent(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r := newRegistry(t, breaker.Settings{Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 1}, nil)
		require.Error(t, r.Execute(ctx, "billing", func(context.Context) error { return errRefused }))
		requireState(t, r, "billing", breaker.StateOpen)
		requireState(t, r, "ledger", breaker.StateClosed) // never used
		called := false
		require.NoError(t, r.Execute(ctx, "ledger", func(context.Context) error { called = true; return nil }))
		require.True(t, called)
		b1, err := r.Breaker("billing")
		require.NoError(t, err)
		b2, err := r.Breaker("billing")
		require.NoError(t, err)
		require.Same(t, b1, b2)
	})
}

func TestStateChangeCallbackRunsOutsideTheLock(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		var seen []breaker.State
		var r *breaker.Registry
		r, err := breaker.New(breaker.Config{
			Default: breaker.Settings{
				Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 1,
				OpenTimeout: time.Second, HalfOpenProbes: 1,
			},
			OnStateChange: func(c breaker.StateChange) {
				// Would deadlock if called under the breaker's lock.
				st, err := r.State(c.Breaker)
				require.NoError(t, err)
				require.Equal(t, c.Breaker, st.Name)
				require.NoError(t, r.Execute(ctx, "other", func(context.Context) error { return nil }))
				seen = append(seen, c.To)
			},
		})
		require.NoError(t, err)
		require.Error(t, r.Execute(ctx, "billing", func(context.Context) error { return errRefused }))
		time.Sleep(time.Second + time.Nanosecond)
		require.NoError(t, r.Execute(ctx, "billing", func(context.Context) error { return nil }))
		require.Equal(t, []breaker.State{breaker.StateOpen, breaker.StateHalfOpen, breaker.StateClosed}, seen)
	})
}

func TestConcurrentCallsCountEveryOutcome(t *testing.T) {
	t.Parallel()
	r := newRegistry(t, breaker.Settings{MinRequests: 1_000_000}, nil)
	const goroutines, each = 8, 500
	done := make(chan struct{})
	for g := range goroutines {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range each {
				if (g+i)%2 == 0 {
					_ = r.Execute(ctx, "billing", func(context.Context) error { return errRefused })
				} else {
					_ = r.Execute(ctx, "billing", func(context.Context) error { return nil })
				}
			}
		}()
	}
	for range goroutines {
		<-done
	}
	st := requireState(t, r, "billing", breaker.StateClosed)
	require.Equal(t, uint32(goroutines*each/2), st.Counts.Failures)
	require.Equal(t, uint32(goroutines*each/2), st.Counts.Successes)
}

func TestStatusesListsEveryBreakerInNameOrder(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r := newRegistry(t, breaker.Settings{Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 1}, nil)
		require.Empty(t, r.Statuses(), "no breaker before the first use")

		_, err := r.Breaker("ledger") // named, never called
		require.NoError(t, err)
		d := &downstream{}
		d.set(errRefused)
		require.ErrorIs(t, r.Execute(ctx, "billing", d.call), breaker.ErrDownstream)

		all := r.Statuses()
		require.Len(t, all, 2)
		require.Equal(t, "billing", all[0].Name)
		require.Equal(t, breaker.StateOpen, all[0].State)
		require.Equal(t, time.Now().Add(breaker.DefaultOpenTimeout+time.Nanosecond), all[0].Until, "as Open and OpenError report it")
		require.Equal(t, "ledger", all[1].Name)
		require.Equal(t, breaker.StateClosed, all[1].State)
		require.Equal(t, r.Open(), all[:1], "Open is the open part of Statuses")
	})
}

// An OnStateChange callback that panics once does not stop later changes
// from being delivered.
func TestStateChangesAreDeliveredAfterACallbackPanicked(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		var delivered []string
		r, err := breaker.New(breaker.Config{
			Default: breaker.Settings{Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 1, OpenTimeout: time.Second, HalfOpenProbes: 1},
			OnStateChange: func(c breaker.StateChange) {
				delivered = append(delivered, c.From.String()+">"+c.To.String())
				if len(delivered) == 1 {
					panic("callback bug")
				}
			},
		})
		require.NoError(t, err)
		t.Cleanup(r.Close)
		require.Panics(t, func() { _ = r.Execute(ctx, "billing", (&downstream{err: errRefused}).call) })
		time.Sleep(time.Second + time.Nanosecond)
		require.NoError(t, r.Execute(ctx, "billing", (&downstream{}).call))
		require.Equal(t, []string{"closed>open", "open>half-open", "half-open>closed"}, delivered)
	})
}
