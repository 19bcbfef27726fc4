package faultinject

import (
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/internal/dbtest"
)

// TestDuplicateStorm delivers every event five times: three copies at
// once while the workers run, two more after it was processed. Each event
// must be stored once (exactly one 202, every other delivery 200
// "duplicate") and processed once (invariant 2); the later copies must not
// enter the queue again (invariant 3).
func TestDuplicateStorm(t *testing.T) {
	t.Parallel()
	w := newWorld(t, dbtest.Database(t, dbtest.Options{}))
	ingest := w.mustStart("ingest")
	w.mustStart("worker")
	w.mustStart("worker")

	const concurrent, later = 3, 2
	evs := newEvents("dup", "fi.effect", pick(300, 3000))
	start := time.Now()
	var (
		mu  sync.Mutex
		log []delivery
	)
	deliver := func(copies int) {
		work := make(chan event)
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for ev := range work {
					var copiesWG sync.WaitGroup
					for range copies {
						copiesWG.Go(func() {
							d := post(ingest.url, ev)
							mu.Lock()
							log = append(log, d)
							mu.Unlock()
						})
					}
					copiesWG.Wait()
				}
			})
		}
		for _, ev := range evs {
			work <- ev
		}
		close(work)
		wg.Wait()
	}
	deliver(concurrent)
	firstWave := len(log)
	drain := w.drained(60*time.Second, ids(evs))
	deliver(later)

	accepted := map[string]int{}
	var refused []string
	laterNotDuplicate := 0
	for i, d := range log {
		switch {
		case d.status == http.StatusAccepted:
			accepted[d.id]++
			if i >= firstWave {
				laterNotDuplicate++
			}
		case d.status == http.StatusOK && d.body == "duplicate\n":
		default:
			refused = append(refused, fmt.Sprintf("%s: %d %q %v", d.id, d.status, d.body, d.err))
		}
	}
	c := w.census()
	lost, doubled := c.lostAndDoubled(ids(evs))
	storedTwice := 0
	for _, n := range accepted {
		if n > 1 {
			storedTwice++
		}
	}
	report(t, row{
		scenario: "4. duplicate storm",
		events:   len(evs), acked: len(ackedIDs(log)),
		faults: fmt.Sprintf("%d deliveries (%d per event: %d at once, %d after processing)", len(log), concurrent+later, concurrent, later),
		lost:   lost, doubled: doubled, dlq: len(c.dead),
		recovery: fmt.Sprintf("drained %s after the first wave; total %s", ms(drain), ms(time.Since(start))),
	})
	require.Empty(t, refused, "every delivery of a valid event is acknowledged")
	require.Len(t, accepted, len(evs), "each event got one 202")
	require.Zero(t, storedTwice, "no event was stored (202) twice")
	require.Zero(t, laterNotDuplicate, "deliveries after processing are answered 200 duplicate")
	require.Zero(t, lost, "lost events")
	require.Zero(t, doubled, "events with more than one effect")
	require.Empty(t, c.dead)
	require.Zero(t, c.queued, "the later copies were not queued again")
	w.requireOnePlace(ids(evs))
}
