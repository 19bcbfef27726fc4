package faultinject

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/internal/dbtest"
)

// TestSlowAndHangingHandlers runs handlers that outlive their lease and
// handlers that hang. A slow handler's lease is kept alive by heartbeats:
// it runs once, on its first attempt, and is never rescued from under it
// (the sleep outlasts the lease plus the rescuer's interval, so without
// heartbeats it would be). A hanging handler, in Postgres or on an HTTP
// call, is ended by the Timeout option; that attempt's writes roll back,
// the retry succeeds, and the event has one effect (invariant 2), with the
// timeout in its error history.
func TestSlowAndHangingHandlers(t *testing.T) {
	t.Parallel()
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // never answers; the caller's timeout ends it
	}))
	t.Cleanup(hang.Close)
	w := newWorld(t, dbtest.Database(t, dbtest.Options{}))
	const lease, timeout = 2 * time.Second, time.Second
	// The rescuer looks for expired leases every 5s (queue's
	// DefaultRescueInterval): sleeping past lease + 5s + margin is sure to
	// be rescued unless heartbeats extend the lease.
	sleep := lease + 5*time.Second + 1500*time.Millisecond
	flags := []string{"-lease", lease.String(), "-timeout", timeout.String(), "-backoff", "50ms", "-hang-url", hang.URL, "-workers", "4"}
	ingest := w.mustStart("ingest", flags...)
	w.mustStart("worker", flags...)
	w.mustStart("worker", flags...)

	slow := newEvents("slow", "fi.slow", 4)
	for i := range slow {
		slow[i].Data = map[string]any{"sleep_ms": sleep.Milliseconds()}
	}
	hangs := newEvents("hang", "fi.hang", 4)
	for i := range hangs {
		hangs[i].Data = map[string]any{"hang": []string{"db", "http"}[i%2]}
	}
	plain := newEvents("plain", "fi.effect", pick(100, 1000))
	all := append(append(append([]event(nil), slow...), hangs...), plain...)

	start := time.Now()
	s := &sender{url: ingest.url, concurrency: 8, retryAfter: 100 * time.Millisecond, deadline: time.Minute}
	log, err := s.send(all)
	require.NoError(t, err)
	w.drained(time.Minute, ids(all))
	took := time.Since(start)
	c := w.census()
	lost, doubled := c.lostAndDoubled(ids(all))
	report(t, row{
		scenario: "6. slow and hanging handlers",
		events:   len(all), acked: len(ackedIDs(log)),
		faults: fmt.Sprintf("%d handlers sleeping %s (lease %s); %d hanging (half in Postgres, half on HTTP), Timeout %s",
			len(slow), sleep, lease, len(hangs), timeout),
		lost: lost, doubled: doubled, dlq: len(c.dead),
		recovery: "all processed in " + ms(took),
	})
	require.Len(t, ackedIDs(log), len(all))
	require.Zero(t, lost, "lost events")
	require.Zero(t, doubled, "events with more than one effect")
	require.Empty(t, c.dead)

	type run struct{ attempt, priorErrors int }
	runs := map[string]run{}
	rows, err := w.pool.Query(context.Background(), `SELECT event_id, attempt, prior_errors FROM fi_effects`)
	require.NoError(t, err)
	var id string
	var r run
	_, err = pgx.ForEachRow(rows, []any{&id, &r.attempt, &r.priorErrors}, func() error { runs[id] = r; return nil })
	require.NoError(t, err)
	for _, ev := range slow {
		require.Equal(t, run{attempt: 1}, runs[ev.ID], "slow event %s: one attempt, kept by heartbeats", ev.ID)
	}
	for _, ev := range hangs {
		require.Equal(t, run{attempt: 2, priorErrors: 1}, runs[ev.ID], "hung event %s: the timeout ended attempt 1, attempt 2 succeeded", ev.ID)
		var failure string
		require.NoError(t, w.pool.QueryRow(context.Background(),
			`SELECT data->>'error' FROM wharf.event_log WHERE stream = $1 AND event_type = 'attempt_failed'`,
			wharf.DeliveryStream(source, ev.ID)).Scan(&failure))
		want := map[any]string{"db": "statement timeout", "http": "deadline exceeded"}[ev.Data["hang"]]
		require.Contains(t, failure, want, "the audit trail of %s records why attempt 1 failed", ev.ID)
	}
}
