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

const restored = `  order 1  ada     15.50  paid
  order 2  grace   40.00  cancelled
  order 3  linus    9.90  paid
`

func TestReplayRestoresTheProjection(t *testing.T) {
	t.Parallel()
	url := dbtest.Database(t, dbtest.Options{Empty: true})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	var out testio.Buffer
	require.NoError(t, run(ctx, url, &out), out.String())
	got := out.String()
	require.Contains(t, got, "appended 3 events to order-1")
	require.Contains(t, got, "the projection:\n"+restored, "the projection folded every event")
	require.Contains(t, got, "after a bug zeroed order 1 and deleted order 3:\n  order 1  ada      0.00  paid\n  order 2  grace   40.00  cancelled\n\n")
	require.Contains(t, got, "event_log is append-only: UPDATE is not allowed", "the bug could not reach the log")
	require.Contains(t, got, "rebuild: 7 of 7 events replayed")
	require.Contains(t, got, "after the rebuild:\n"+restored)
	require.Contains(t, got, "restored: the table is what it was before the bug")

	pool := exampletest.Pool(t, url)
	require.Equal(t, 1550, exampletest.Count(t, pool, `SELECT total_cents FROM replay_order_totals WHERE order_id = '1' AND status = 'paid'`))
	require.Equal(t, 3, exampletest.Count(t, pool, `SELECT count(*) FROM replay_order_totals`))
	require.Equal(t, 7, exampletest.Count(t, pool, `SELECT count(*) FROM wharf.event_log`), "the log unchanged")

	// Again, on the same database: the orders are in the log already, and
	// the rebuild restores the table all the same.
	var again testio.Buffer
	require.NoError(t, run(ctx, url, &again), again.String())
	require.Contains(t, again.String(), "order-1 is in the log already")
	require.Contains(t, again.String(), "after the rebuild:\n"+restored)
	require.Equal(t, 7, exampletest.Count(t, pool, `SELECT count(*) FROM wharf.event_log`), "nothing appended twice")
	require.Equal(t, 1, strings.Count(again.String(), "restored: "))
}
