package faultinject

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/dlq"
	"github.com/wharfhq/wharf/internal/dbtest"
)

// TestCrashLoop queues one event that kills its worker process (SIGKILL
// to itself, as the OOM killer would) among ordinary ones, all before the
// first worker starts, so the first fetch leases the killer together with
// its neighbours. A supervisor restarts the worker whenever it dies. The
// killer must reach the dead letter queue after exactly MaxAttempts
// crashes, each attempt's error a lease expiry (invariant 8), and take no
// other event with it: every other event has exactly one effect, and none
// was charged more than the one attempt the first crash cost it, because a
// rescued event runs alone in its process.
func TestCrashLoop(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	w := newWorld(t, dbtest.Database(t, dbtest.Options{}))
	const maxAttempts = 3
	flags := []string{"-max-attempts", fmt.Sprint(maxAttempts), "-lease", "1s", "-rescue-interval", "200ms", "-backoff", "20ms"}
	ingest := w.mustStart("ingest", flags...)

	evs := newEvents("crashloop", "fi.effect", pick(300, 3000))
	killer := &evs[20]
	killer.Type = "fi.crash"
	s := &sender{url: ingest.url, concurrency: 8, retryAfter: 100 * time.Millisecond, deadline: time.Minute}
	_, err := s.send(evs)
	require.NoError(t, err)

	var (
		crashes  atomic.Int64
		stop     = make(chan struct{})
		wg       sync.WaitGroup
		startErr error
	)
	started := time.Now()
	wg.Go(func() {
		for {
			n, err := w.start("worker", flags...)
			if err != nil {
				startErr = err
				return
			}
			select {
			case <-n.exited:
				crashes.Add(1)
			case <-stop:
				return // killed at cleanup
			}
		}
	})
	w.drained(pick(60*time.Second, 3*time.Minute), ids(evs))
	took := time.Since(started)
	close(stop)
	wg.Wait()
	require.NoError(t, startErr)

	c := w.census()
	lost, doubled := c.lostAndDoubled(ids(evs))
	charged := w.count(`SELECT count(*) FROM fi_effects WHERE attempt > 1`)
	report(t, row{
		scenario: "7. an event that kills its worker",
		events:   len(evs), acked: len(evs),
		faults: fmt.Sprintf("1 event whose handler SIGKILLs its process, queued among the rest; %d crashes (max attempts %d); %d other events charged an attempt by the first",
			crashes.Load(), maxAttempts, charged),
		lost: lost, doubled: doubled, dlq: len(c.dead),
		recovery: "all settled " + ms(took) + " after the first worker started",
	})
	require.Equal(t, int64(maxAttempts), crashes.Load(), "one crash per attempt of the killer")
	require.Equal(t, map[string]bool{killer.ID: true}, c.dead, "only the killer is dead-lettered")
	require.Zero(t, lost, "lost events")
	require.Zero(t, doubled, "events with more than one effect")
	require.LessOrEqual(t, w.count(`SELECT coalesce(max(attempt), 0) FROM fi_effects`), 2,
		"an event ran on its third attempt: a later crash charged it again")
	w.requireOnePlace(ids(evs))

	op, err := wharf.New(w.pool, wharf.Config{})
	require.NoError(t, err)
	t.Cleanup(op.Close)
	entries, _, err := op.DLQ().List(ctx, dlq.Filter{Source: source}, dlq.Page{Limit: 10})
	require.NoError(t, err)
	require.Len(t, entries, 1)
	require.Equal(t, maxAttempts, entries[0].Attempts)
	require.Len(t, entries[0].Errors, maxAttempts)
	for i, ae := range entries[0].Errors {
		require.Equal(t, i+1, ae.Attempt)
		require.True(t, strings.Contains(ae.Error, "lease expired"), "attempt %d: %s", ae.Attempt, ae.Error)
	}
}
