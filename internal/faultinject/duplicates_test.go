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
		mu            sync.Mutex
		log           []delivery
		unackedCopies int
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
							ds := postUntilAcked(ingest.url, ev, 100*time.Millisecond, time.Now().Add(time.Minute))
							mu.Lock()
							log = append(log, ds...)
							if !ds[len(ds)-1].acked() {
								unackedCopies++
							}
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

	// A copy may get a 503 when its store outlives the ack deadline under
	// load; it is then retried, as a provider would. Such an event may have
	// been stored all the same, and its 202 never sent: a later copy then
	// gets 200. Any other answer is wrong.
	accepted := map[string]int{}
	unavailable := map[string]bool{}
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
		case d.status == http.StatusServiceUnavailable:
			unavailable[d.id] = true
		default:
			refused = append(refused, fmt.Sprintf("%s: %d %q %v", d.id, d.status, d.body, d.err))
		}
	}
	var storedTwice, neverAccepted []string
	for _, ev := range evs {
		switch n := accepted[ev.ID]; {
		case n > 1:
			storedTwice = append(storedTwice, ev.ID)
		case n == 0 && !unavailable[ev.ID]:
			neverAccepted = append(neverAccepted, ev.ID)
		}
	}
	c := w.census()
	lost, doubled := c.lostAndDoubled(ids(evs))
	report(t, row{
		scenario: "4. duplicate storm",
		events:   len(evs), acked: len(ackedIDs(log)),
		faults: fmt.Sprintf("%d deliveries (%d per event: %d at once, %d after processing; %d answered 503 and retried)",
			len(log), concurrent+later, concurrent, later, len(log)-(concurrent+later)*len(evs)),
		lost: lost, doubled: doubled, dlq: len(c.dead),
		recovery: fmt.Sprintf("drained %s after the first wave; total %s", ms(drain), ms(time.Since(start))),
	})
	require.Empty(t, refused, "answers other than 202, 200 duplicate and 503")
	require.Zero(t, unackedCopies, "copies never acknowledged")
	require.Empty(t, storedTwice, "events stored (202) twice")
	require.Empty(t, neverAccepted, "events with no 202 though no copy got a 503")
	require.Zero(t, laterNotDuplicate, "deliveries after processing are answered 200 duplicate")
	require.Zero(t, lost, "lost events")
	require.Zero(t, doubled, "events with more than one effect")
	require.Empty(t, c.dead)
	require.Zero(t, c.queued, "the later copies were not queued again")
	w.requireOnePlace(ids(evs))
}
