package faultinject

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/internal/dbtest"
)

// TestDownstreamOutage takes the downstream a handler calls (a real HTTP
// server, behind the breaker wharf.Downstream names) down for a while,
// answering 503, while events keep arriving. An outage is not the events'
// fault (invariant 4): no attempt is spent on it (no queued event shows a
// spent attempt during the outage, every event runs on attempt 1, the
// audit trail records no failed attempt), nothing reaches the dead letter
// queue though MaxAttempts is only 3, the breaker turns most calls away,
// and the backlog drains once the downstream is back.
func TestDownstreamOutage(t *testing.T) {
	t.Parallel()
	var down atomic.Bool
	var calls, refused atomic.Int64
	downstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if down.Load() {
			refused.Add(1)
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(downstream.Close)
	w := newWorld(t, dbtest.Database(t, dbtest.Options{}))
	const openTimeout = 500 * time.Millisecond
	flags := []string{"-max-attempts", "3", "-backoff", "50ms", "-open-timeout", openTimeout.String(), "-downstream", downstream.URL}
	ingest := w.mustStart("ingest", flags...)
	w.mustStart("worker", flags...)

	outage := pick(3*time.Second, 30*time.Second)
	evs := newEvents("down", "fi.downstream", pick(300, 3000))
	before, during, after := evs[:len(evs)/3], evs[len(evs)/3:2*len(evs)/3], evs[2*len(evs)/3:]
	var log []delivery
	send := func(evs []event, every time.Duration) {
		s := &sender{url: ingest.url, concurrency: 8, every: every, retryAfter: 100 * time.Millisecond, deadline: time.Minute}
		l, err := s.send(evs)
		require.NoError(t, err)
		log = append(log, l...)
	}

	send(before, 0)
	w.drained(time.Minute, ids(before))

	// The outage: events keep arriving, spread over it, while a monitor
	// watches the queue for an attempt spent on a waiting event.
	down.Store(true)
	outageEnd := time.Now().Add(outage)
	monitorCtx, stopMonitor := context.WithCancel(context.Background())
	var (
		monitor       sync.WaitGroup
		spentAttempts int
		monitorErr    error
	)
	monitor.Go(func() {
		for monitorCtx.Err() == nil {
			var n int
			err := w.pool.QueryRow(monitorCtx, `SELECT coalesce(max(attempt), 0) FROM wharf.queue WHERE state = 'available'`).Scan(&n)
			if err != nil && monitorCtx.Err() == nil {
				monitorErr = err
				return
			}
			spentAttempts = max(spentAttempts, n)
			time.Sleep(50 * time.Millisecond) // sampling interval
		}
	})
	send(during, outage/time.Duration(len(during)))
	time.Sleep(time.Until(outageEnd)) // the rest of the outage, if sending ended early
	waiting := w.count(`SELECT count(*) FROM wharf.queue`)
	down.Store(false)
	callsDuringOutage := refused.Load()
	stopMonitor()
	monitor.Wait()
	require.NoError(t, monitorErr)
	drain := w.drained(time.Minute, ids(during))

	send(after, 0)
	w.drained(time.Minute, ids(evs))

	c := w.census()
	lost, doubled := c.lostAndDoubled(ids(evs))
	rerun := w.count(`SELECT count(*) FROM fi_effects WHERE attempt > 1 OR prior_errors > 0`)
	failedAttempts := w.count(`SELECT count(*) FROM wharf.event_log WHERE event_type = 'attempt_failed'`)
	report(t, row{
		scenario: "3. downstream outage behind a breaker",
		events:   len(evs), acked: len(ackedIDs(log)),
		faults: fmt.Sprintf("downstream answering 503 for %s; %d events waiting at its end; %d calls reached it meanwhile; %d attempts spent",
			ms(outage), waiting, callsDuringOutage, rerun+failedAttempts),
		lost: lost, doubled: doubled, dlq: len(c.dead),
		recovery: "backlog drained " + ms(drain) + " after recovery",
	})
	require.Len(t, ackedIDs(log), len(evs))
	require.Zero(t, lost, "lost events")
	require.Zero(t, doubled, "events with more than one effect")
	require.Empty(t, c.dead, "an outage never floods the dead letter queue")
	require.Zero(t, spentAttempts, "a waiting event showed a spent attempt during the outage")
	require.Zero(t, rerun, "events that ran on an attempt after the first")
	require.Zero(t, failedAttempts, "failed attempts in the audit trail")
	require.Positive(t, waiting, "events were waiting when the downstream came back")
	require.Less(t, callsDuringOutage, int64(len(during)/2), "the breaker turned most calls away")
	w.requireOnePlace(ids(evs))
}
