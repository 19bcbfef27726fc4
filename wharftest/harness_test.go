package wharftest_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/queue"
	"github.com/wharfhq/wharf/wharftest"
)

var acme = wharftest.StandardWebhooks(swSecret)

func TestDrainProcessesEachEventOnce(t *testing.T) {
	t.Parallel()
	pool, p := setup(t, wharf.Config{})
	require.NoError(t, p.Handle("acme", "order.paid", writeEffect))
	h := wharftest.New(t, pool, p)

	for i := range 3 {
		d := acme.Sign(t, wharftest.Webhook{ID: fmt.Sprintf("evt_%d", i), Type: "order.paid"})
		require.Equal(t, http.StatusAccepted, d.Send(t, h.URL("acme")).StatusCode)
		require.Equal(t, http.StatusOK, d.Send(t, h.URL("acme")).StatusCode, "a retry is a duplicate")
	}
	h.Drain()

	require.Equal(t, map[string]int{"evt_0": 1, "evt_1": 1, "evt_2": 1}, effects(t, pool), "each effect landed once")
	require.Zero(t, queueRows(t, pool), "Drain returned with the queue empty")
	for i := range 3 {
		h.RequireProcessedOnce("acme", fmt.Sprintf("evt_%d", i))
	}
	st := h.Status("acme", "evt_0")
	require.Equal(t, []string{"acme/order.paid"}, st.ProcessedBy)
	require.False(t, st.Queued)
	require.False(t, st.Dead)

	// A redelivery after processing is a duplicate, and processing stays
	// once.
	res := h.Send("acme", acme, wharftest.Webhook{ID: "evt_0", Type: "order.paid"})
	require.Equal(t, http.StatusOK, res.StatusCode)
	h.Drain()
	h.RequireProcessedOnce("acme", "evt_0")
	require.Equal(t, 1, effects(t, pool)["evt_0"])

	msg := mustFail(t, func(tb testing.TB) { wharftest.New(tb, pool, p).RequireProcessedOnce("acme", "evt_never_sent") })
	require.Contains(t, msg, "acme/evt_never_sent is nowhere")
}

func TestDrainWaitsForRetriesAndTheTrailShowsThem(t *testing.T) {
	t.Parallel()
	pool, p := setup(t, wharf.Config{Audit: true})
	var runs atomic.Int32
	require.NoError(t, p.Handle("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		runs.Add(1)
		if err := writeEffect(ctx, tx, ev); err != nil {
			return err
		}
		if ev.Attempt < 3 {
			return fmt.Errorf("flaky downstream, attempt %d", ev.Attempt)
		}
		return nil
	}))
	h := wharftest.New(t, pool, p)
	res := h.Send("acme", acme, wharftest.Webhook{Type: "order.paid"})
	require.Equal(t, http.StatusAccepted, res.StatusCode)

	h.Drain()
	require.EqualValues(t, 3, runs.Load(), "Drain waited through two retries")
	require.Equal(t, 1, effects(t, pool)[res.EventID], "the failed attempts' writes were rolled back")
	h.RequireProcessedOnce("acme", res.EventID)
	h.RequireTrail("acme", res.EventID, wharf.AuditReceived, wharf.AuditAttemptFailed, wharf.AuditAttemptFailed, wharf.AuditProcessed)
	trail := h.Trail("acme", res.EventID)
	require.Contains(t, string(trail[2].Data), "flaky downstream, attempt 2")

	msg := mustFail(t, func(tb testing.TB) {
		wharftest.New(tb, pool, p).RequireTrail("acme", res.EventID, wharf.AuditReceived, wharf.AuditProcessed)
	})
	require.Contains(t, msg, `"attempt_failed"`, "the failure shows the trail it got")
}

func TestDeadLetteredThenReplayed(t *testing.T) {
	t.Parallel()
	pool, p := setup(t, wharf.Config{})
	var fixed atomic.Bool
	require.NoError(t, p.Handle("acme", "order.paid", func(ctx context.Context, tx pgx.Tx, ev wharf.Event) error {
		if !fixed.Load() {
			return errors.New("cannot parse the order")
		}
		return writeEffect(ctx, tx, ev)
	}, wharf.MaxAttempts(2)))
	h := wharftest.New(t, pool, p)
	require.Equal(t, http.StatusAccepted, h.Send("acme", acme, wharftest.Webhook{ID: "poison", Type: "order.paid"}).StatusCode)

	h.Drain() // returns once the event is dead-lettered: it left the queue
	h.RequireDeadLettered("acme", "poison")
	st := h.Status("acme", "poison")
	require.NotZero(t, st.DeadLetterID)
	require.Len(t, st.Errors, 2, "both attempts' errors")
	require.Equal(t, "cannot parse the order", st.Errors[1].Error)
	require.Contains(t, st.String(), "dead-lettered")
	msg := mustFail(t, func(tb testing.TB) { wharftest.New(tb, pool, p).RequireProcessedOnce("acme", "poison") })
	require.Contains(t, msg, "dead-lettered")
	require.Contains(t, msg, "cannot parse the order")

	fixed.Store(true)
	_, err := p.Replay(context.Background(), st.DeadLetterID)
	require.NoError(t, err)
	h.Drain()
	h.RequireProcessedOnce("acme", "poison")
	require.Equal(t, map[string]int{"poison": 1}, effects(t, pool))
	msg = mustFail(t, func(tb testing.TB) { wharftest.New(tb, pool, p).RequireDeadLettered("acme", "poison") })
	require.Contains(t, msg, "processed by acme/order.paid")
}

func TestDrainDoesNotWaitForUnhandledTypes(t *testing.T) {
	t.Parallel()
	pool, p := setup(t, wharf.Config{})
	require.NoError(t, p.Handle("acme", "order.paid", writeEffect))
	h := wharftest.New(t, pool, p)
	unhandled := h.Send("acme", acme, wharftest.Webhook{Type: "order.refunded"})
	handled := h.Send("acme", acme, wharftest.Webhook{Type: "order.paid"})
	require.Equal(t, http.StatusAccepted, unhandled.StatusCode)
	require.Equal(t, http.StatusAccepted, handled.StatusCode)

	h.Drain()
	h.RequireProcessedOnce("acme", handled.EventID)
	st := h.Status("acme", unhandled.EventID)
	require.True(t, st.Queued, "left for a deploy that handles it")
	require.Empty(t, st.Handler)
	require.Zero(t, st.Attempt)
	msg := mustFail(t, func(tb testing.TB) { wharftest.New(tb, pool, p).RequireProcessedOnce("acme", unhandled.EventID) })
	require.Contains(t, msg, "queued (available, 0 attempts spent, no handler)")
}

// With Config.Unhandled taking the events no handler takes, Drain waits
// for them too: it used to return before the workers had dead-lettered
// them.
func TestDrainWaitsForUnhandledTypesTheWorkersTake(t *testing.T) {
	t.Parallel()
	pool, p := setup(t, wharf.Config{Unhandled: wharf.DeadLetterUnhandled})
	require.NoError(t, p.Handle("acme", "order.paid", writeEffect))
	h := wharftest.New(t, pool, p)
	unhandled := h.Send("acme", acme, wharftest.Webhook{Type: "order.refunded"})
	require.Equal(t, http.StatusAccepted, unhandled.StatusCode)

	h.Drain()
	h.RequireDeadLettered("acme", unhandled.EventID)
}

func TestDrainFailsListingWhatIsLeft(t *testing.T) {
	t.Parallel()
	// Retries an hour apart: the event cannot drain within the timeout.
	pool, p := setup(t, wharf.Config{Backoff: queue.Backoff{Initial: time.Hour, Max: time.Hour}})
	require.NoError(t, p.Handle("acme", "order.paid", func(context.Context, pgx.Tx, wharf.Event) error {
		return errors.New("ledger says no")
	}))
	msg := mustFail(t, func(tb testing.TB) {
		h := wharftest.New(tb, pool, p)
		require.Equal(tb, http.StatusAccepted, h.Send("acme", acme, wharftest.Webhook{ID: "stuck", Type: "order.paid"}).StatusCode)
		h.Start()
		// The first attempt failed and its retry, an hour away, is recorded.
		dbtest.Eventually(tb, 20*time.Second, "the failed attempt recorded", func() bool {
			return dbtest.Count(tb, pool, `SELECT count(*) FROM wharf.queue WHERE state = 'available' AND jsonb_array_length(errors) = 1`) == 1
		})
		h.Timeout = 100 * time.Millisecond
		h.Drain()
	})
	require.Contains(t, msg, "did not drain within 100ms")
	require.Contains(t, msg, "acme/stuck (order.paid, handler acme/order.paid)")
	require.Contains(t, msg, "ledger says no")
}

func TestDrainReportsWorkersThatCannotStart(t *testing.T) {
	t.Parallel()
	pool := dbtest.PoolWith(t, dbtest.Options{MaxConns: 3})
	p, err := wharf.New(pool, wharf.Config{Workers: 4})
	require.NoError(t, err)
	t.Cleanup(p.Close)
	require.NoError(t, p.Source("acme", wharf.StandardWebhooks(swSecret)))
	require.NoError(t, p.Handle("acme", "order.paid", func(context.Context, pgx.Tx, wharf.Event) error { return nil }))
	require.Equal(t, http.StatusAccepted, wharftest.New(t, pool, p).Send("acme", acme, wharftest.Webhook{Type: "order.paid"}).StatusCode)

	msg := mustFail(t, func(tb testing.TB) { wharftest.New(tb, pool, p).Drain() })
	require.Contains(t, msg, "workers stopped before the queue drained")
	require.Contains(t, msg, "pool too small")
}

func TestStopStopsTheWorkers(t *testing.T) {
	t.Parallel()
	pool, p := setup(t, wharf.Config{})
	require.NoError(t, p.Handle("acme", "order.paid", writeEffect))
	h := wharftest.New(t, pool, p)
	first := h.Send("acme", acme, wharftest.Webhook{Type: "order.paid"})
	h.Drain()
	h.RequireProcessedOnce("acme", first.EventID)

	h.Stop()
	second := h.Send("acme", acme, wharftest.Webhook{Type: "order.paid"})
	require.Equal(t, http.StatusAccepted, second.StatusCode)
	require.True(t, h.Status("acme", second.EventID).Queued, "no worker runs after Stop")
	require.NotContains(t, effects(t, pool), second.EventID)

	h.Drain() // starts them again
	h.RequireProcessedOnce("acme", second.EventID)
}

func TestNewRequiresAMigratedDatabase(t *testing.T) {
	t.Parallel()
	pool := dbtest.PoolWith(t, dbtest.Options{Empty: true})
	p, err := wharf.New(pool, wharf.Config{})
	require.NoError(t, err)
	t.Cleanup(p.Close)
	msg := mustFail(t, func(tb testing.TB) { wharftest.New(tb, pool, p) })
	require.Contains(t, msg, "run wharf.Migrate")

	require.NoError(t, wharf.Migrate(context.Background(), pool))
	wharftest.New(t, pool, p) // and now it is fine
}

func TestTrailNeedsAudit(t *testing.T) {
	t.Parallel()
	pool, p := setup(t, wharf.Config{})
	msg := mustFail(t, func(tb testing.TB) { wharftest.New(tb, pool, p).Trail("acme", "x") })
	require.Contains(t, msg, "Config.Audit is off")
}
