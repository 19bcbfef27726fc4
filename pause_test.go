package wharf_test

import (
	"context"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/queue"
)

// A handler is paused by its name (wharf.HandlerName), and a pause holds
// back every event that handler would run. An event stored before its
// route existed (by an ingest replica of an older version, say) has no
// handler name on its row, yet the handler takes it here: pausing the
// handler must hold it back too, not only the events whose row names it.
func TestPausedHandlerHoldsBackEventsStoredWithoutItsName(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := newHarness(t, wharf.Config{Workers: 1})
	require.Equal(t, http.StatusAccepted, h.send("before", "order.paid")) // no route yet
	require.Equal(t, 1, h.count(`SELECT count(*) FROM wharf.queue WHERE event_id = 'before' AND handler IS NULL`))
	require.NoError(t, h.p.Handle("acme", "order.paid", writeEffect, wharf.HandlerName("billing.paid")))
	require.NoError(t, h.p.Handle("acme", "other", writeEffect))
	require.NoError(t, h.p.Queue().Pause(ctx, queue.PauseTarget{Handler: "billing.paid"}, "incident"))
	require.Equal(t, http.StatusAccepted, h.send("after", "order.paid"))
	h.run()

	// One worker takes events oldest first: once the later, unpaused
	// event has run, the paused handler's would have run before it.
	require.Equal(t, http.StatusAccepted, h.send("free", "other"))
	h.eventually("the unpaused handler's event", func() bool {
		return h.count(`SELECT count(*) FROM effects WHERE event_id = 'free'`) == 1
	})
	require.Zero(t, h.count(`SELECT count(*) FROM effects WHERE event_id IN ('before', 'after')`),
		"the paused handler ran an event")
	require.Equal(t, 2, h.count(`SELECT count(*) FROM wharf.queue WHERE event_id IN ('before', 'after') AND attempt = 0`),
		"paused events wait, attempts untouched")

	_, err := h.p.Queue().Resume(ctx, queue.PauseTarget{Handler: "billing.paid"})
	require.NoError(t, err)
	h.eventually("resumed", func() bool {
		return h.count(`SELECT count(*) FROM effects WHERE event_id IN ('before', 'after')`) == 2
	})
}
