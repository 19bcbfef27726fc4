package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/examples/internal/exampletest"
	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/internal/testio"
)

func TestDownstreamOutageCostsNoAttempts(t *testing.T) {
	t.Parallel()
	url := dbtest.Database(t, dbtest.Options{Empty: true})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	var out testio.Buffer
	require.NoError(t, run(ctx, url, &out), out.String())
	got := out.String()

	// The outage happened, and the breaker saw it through.
	require.Equal(t, outageCalls, strings.Count(got, " -> 503\n"), got)
	require.Contains(t, got, "breaker fulfilment: closed -> open\n")
	require.Contains(t, got, "breaker fulfilment: half-open -> closed\n")
	require.Contains(t, got, "queue while the breaker is open: ", "the events waited in the queue")
	require.NotRegexp(t, `[1-9][0-9]* dead-lettered`, got)
	require.Contains(t, got, "queue after the outage: 0 events waiting, 0 dead-lettered")
	require.Contains(t, got, "all 10 orders delivered, 10 of them on their first attempt")
	require.Contains(t, got, "the downstream accepted 10 orders")

	// The database agrees: every order delivered once, on its first
	// attempt, although MaxAttempts is 1 and calls failed; nothing
	// dead-lettered; nothing left queued.
	pool := exampletest.Pool(t, url)
	require.Equal(t, orders, exampletest.Count(t, pool, `SELECT count(*) FROM downstream_deliveries WHERE attempt = 1`))
	require.Equal(t, orders, exampletest.Count(t, pool, `SELECT count(*) FROM downstream_deliveries`))
	require.Zero(t, exampletest.Count(t, pool, `SELECT count(*) FROM wharf.dead_letters`))
	require.Zero(t, exampletest.Count(t, pool, `SELECT count(*) FROM wharf.queue`))
	require.Equal(t, orders, exampletest.Count(t, pool, `SELECT count(*) FROM wharf.processed_events WHERE consumer = 'shop/order.paid'`))
}
