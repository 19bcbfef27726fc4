package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/examples/internal/exampletest"
	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/internal/testio"
	"github.com/wharfhq/wharf/wharftest"
)

// role runs one role of the example, as its own process would, until the
// returned stop is called; stop returns run's error.
func role(t *testing.T, url string, o options) (out *testio.Buffer, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out = &testio.Buffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, url, out, o) }()
	var once bool
	var err error
	stop = func() error {
		if !once {
			once = true
			cancel()
			err = <-done
		}
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return out, stop
}

func order(i int) wharftest.Webhook {
	return wharftest.Webhook{
		ID:   fmt.Sprintf("evt_%d", i),
		Type: "order.created",
		Body: fmt.Appendf(nil, `{"type":"order.created","data":{"order_id":"ord_%d","total_cents":%d}}`, i, 1000+i),
	}
}

func TestSplitIngestAndWorker(t *testing.T) {
	t.Parallel()
	url := dbtest.Database(t, dbtest.Options{Empty: true})
	pool := exampletest.Pool(t, url)
	shop := wharftest.StandardWebhooks(demoSecret)

	ingestOut, stopIngest := role(t, url, options{role: "ingest", addr: "127.0.0.1:0", secret: demoSecret})
	endpoint := exampletest.Match(t, ingestOut, regexp.MustCompile(`ingest: listening on (\S+)`))[1]

	// With no worker anywhere, the ingest side stores and acknowledges,
	// and processes nothing.
	first := shop.Sign(t, order(1))
	require.Equal(t, http.StatusAccepted, first.Send(t, endpoint).StatusCode)
	for i := 2; i <= 3; i++ {
		require.Equal(t, http.StatusAccepted, shop.Send(t, endpoint, order(i)).StatusCode)
	}
	require.Equal(t, 3, exampletest.Count(t, pool, `SELECT count(*) FROM wharf.queue WHERE handler = 'orders.store'`),
		"stored, each marked for the handler the ingest side knows by name")
	require.Zero(t, exampletest.Count(t, pool, `SELECT count(*) FROM split_orders`))

	// The worker process picks them up.
	workerOut, stopWorker := role(t, url, options{role: "worker", secret: demoSecret})
	exampletest.Eventually(t, "the three orders stored", func() bool {
		return exampletest.Count(t, pool, `SELECT count(*) FROM split_orders`) == 3
	})
	exampletest.Eventually(t, "the queue drained", func() bool {
		return exampletest.Count(t, pool, `SELECT count(*) FROM wharf.queue`) == 0
	})
	require.Equal(t, 1003, exampletest.Count(t, pool, `SELECT total_cents FROM split_orders WHERE order_id = 'ord_3' AND event_id = 'evt_3'`))
	require.Contains(t, workerOut.String(), "worker: stored order ord_1 (event evt_1, attempt 1)")
	require.NotContains(t, ingestOut.String(), "stored order", "the ingest process ran no handler")

	// A redelivery of a processed event is answered as a duplicate by the
	// ingest side, which knows the handler's name, and is not stored again.
	res := first.Send(t, endpoint)
	require.Equal(t, http.StatusOK, res.StatusCode)
	require.Equal(t, "duplicate\n", res.Body)
	require.Zero(t, exampletest.Count(t, pool, `SELECT count(*) FROM wharf.queue`))

	// A new event reaches the running worker (woken across processes).
	require.Equal(t, http.StatusAccepted, shop.Send(t, endpoint, order(4)).StatusCode)
	exampletest.Eventually(t, "the fourth order stored", func() bool {
		return exampletest.Count(t, pool, `SELECT count(*) FROM split_orders`) == 4
	})
	require.Equal(t, 4, exampletest.Count(t, pool, `SELECT count(*) FROM wharf.processed_events WHERE consumer = 'orders.store'`))

	require.NoError(t, stopWorker(), "the worker shuts down cleanly")
	require.NoError(t, stopIngest(), "the ingest side too")
}

// TestSplitReplicasStartTogether: replicas started at once on a new
// database all come up; none fails creating the example's table.
func TestSplitReplicasStartTogether(t *testing.T) {
	t.Parallel()
	for range 3 {
		url := dbtest.Database(t, dbtest.Options{Empty: true})
		ctx, cancel := context.WithCancel(context.Background())
		dones := make([]chan error, 6)
		up := make(chan error, len(dones))
		for i := range dones {
			out, done := &testio.Buffer{}, make(chan error, 1)
			dones[i] = done
			go func() { done <- run(ctx, url, out, options{role: "worker", secret: demoSecret}) }()
			go func() {
				deadline := time.After(exampletest.Timeout)
				for !strings.Contains(out.String(), "worker: processing events") {
					select {
					case <-deadline:
						up <- errors.New("a replica did not start within " + exampletest.Timeout.String())
						return
					case err := <-done:
						done <- err
						up <- fmt.Errorf("a replica stopped before it ran: %v", err)
						return
					case <-time.After(10 * time.Millisecond):
					}
				}
				up <- nil
			}()
		}
		for range dones {
			err := <-up
			if err != nil {
				cancel()
			}
			require.NoError(t, err)
		}
		cancel()
		for _, done := range dones {
			require.NoError(t, <-done)
		}
	}
}

func TestSplitRefusesAnUnknownRole(t *testing.T) {
	t.Parallel()
	err := run(context.Background(), "postgres://unused", &testio.Buffer{}, options{role: "both"})
	require.ErrorContains(t, err, `-role must be "ingest" or "worker", not "both"`)
}

// Without WEBHOOK_SECRET the public demo secret serves only a loopback address.
func TestDemoSecretOnlyOnLoopback(t *testing.T) {
	exampletest.DemoSecretOnlyOnLoopback(t, "WEBHOOK_SECRET", demoSecret, signingSecret)
}
