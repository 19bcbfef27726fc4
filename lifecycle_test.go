package wharf_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/queue"
)

// An option value may be built once and given to several handlers, which
// may be registered from several goroutines: applying it must not write
// state the option's other uses share (run with -race).
func TestHandleOptionSharedByHandlersRegisteredConcurrently(t *testing.T) {
	t.Parallel()
	p := pipelineOn(t, dbtest.Pool(t))
	require.NoError(t, p.Source("acme", wharf.StandardWebhooks(testSecret)))
	noop := func(context.Context, pgx.Tx, wharf.Event) error { return nil }
	shared := []wharf.HandleOption{
		wharf.Backoff(queue.Backoff{Initial: time.Second}),
		wharf.MaxAttempts(3),
		wharf.Timeout(time.Second),
		wharf.Concurrency(2),
		wharf.Downstream("billing-api"),
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() { require.NoError(t, p.Handle("acme", fmt.Sprintf("t%d", i), noop, shared...)) })
	}
	wg.Wait()
}

// A nil HandleOption (an optional one left unset) is refused with an
// error, like every other registration mistake, not a nil-pointer panic.
func TestNilHandleOptionIsRefused(t *testing.T) {
	t.Parallel()
	p := pipelineOn(t, dbtest.Pool(t))
	require.NoError(t, p.Source("acme", wharf.StandardWebhooks(testSecret)))
	noop := func(context.Context, pgx.Tx, wharf.Event) error { return nil }
	batch := func(context.Context, pgx.Tx, []wharf.Event) error { return nil }
	var unset wharf.HandleOption
	require.NotPanics(t, func() {
		require.ErrorIs(t, p.Handle("acme", "x", noop, wharf.MaxAttempts(3), unset), wharf.ErrInvalidConfig)
		require.ErrorIs(t, p.HandleBatch("acme", "y", batch, unset), wharf.ErrInvalidConfig)
	})
	require.NoError(t, p.Handle("acme", "x", noop, wharf.MaxAttempts(3)), "nothing was registered by the refused call")
}

// A verifier variable left unset (a typed nil) is refused when the source
// is registered, not by a panic there or at the first request.
func TestNilVerifierOfAProviderTypeIsRefused(t *testing.T) {
	t.Parallel()
	p := pipelineOn(t, dbtest.Pool(t))
	var stripe *wharf.StripeVerifier
	var hmac *wharf.HMACVerifier
	require.NotPanics(t, func() {
		require.ErrorIs(t, p.Source("stripe", stripe), wharf.ErrInvalidConfig)
		require.ErrorIs(t, p.Source("orders", hmac, wharf.SourceFields{ID: wharf.FromJSON("id"), Type: wharf.FromJSON("type")}), wharf.ErrInvalidConfig)
	})
	require.NoError(t, p.Source("stripe", wharf.Stripe("whsec_x")), "nothing was registered by the refused call")
}

// Run with nothing to fetch says why: with an Unhandled policy, it is that
// no source is registered, not that no handler is.
func TestRunWithNothingToRunSaysWhy(t *testing.T) {
	t.Parallel()
	p, err := wharf.New(dbtest.Pool(t), wharf.Config{Unhandled: wharf.CompleteUnhandled})
	require.NoError(t, err)
	t.Cleanup(p.Close)
	err = p.Run(context.Background())
	require.ErrorIs(t, err, wharf.ErrInvalidConfig)
	require.NotContains(t, err.Error(), "LeaveUnhandled", "Unhandled is CompleteUnhandled here")
	require.Contains(t, err.Error(), "no sources")
}

// Closing the pool under Run ends Run, maintenance included, with an
// error wrapping queue.ErrPoolClosed: no retry can succeed on a closed
// pool, and Run used to log a failed fetch every poll interval until its
// ctx ended.
func TestRunEndsWhenItsPoolIsClosed(t *testing.T) {
	t.Parallel()
	pool := dbtest.Pool(t)
	p, err := wharf.New(pool, wharf.Config{PollInterval: 20 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(p.Close)
	require.NoError(t, p.Source("acme", wharf.StandardWebhooks(testSecret)))
	require.NoError(t, p.Handle("acme", "*", func(context.Context, pgx.Tx, wharf.Event) error { return nil }))
	ran := make(chan error, 1)
	go func() { ran <- p.Run(context.Background()) }()

	pool.Close()
	select {
	case err := <-ran:
		require.ErrorIs(t, err, queue.ErrPoolClosed)
	case <-time.After(30 * time.Second):
		t.Fatal("Run still running 30 s after its pool was closed")
	}
}
