package faultinject

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/internal/dbtest"
)

// TestWorkerCrash runs three worker processes on one database and kills
// each with SIGKILL at random moments, restarting it at once, while events
// flow in through an ingest process at a steady rate. Killed workers die
// holding leases, many of them mid-transaction (the row counts the kills
// that found the victim with a writing transaction open); their
// transactions roll back and the rescuer hands their events to the
// others. Every acknowledged event must
// end with exactly one effect (invariants 2 and 3).
func TestWorkerCrash(t *testing.T) {
	t.Parallel()
	w := newWorld(t, dbtest.Database(t, dbtest.Options{}))
	// A high MaxAttempts: an event leased by several workers that all die
	// spends an attempt each time (invariant 8), and this scenario is
	// about effects, not the dead letter queue.
	flags := []string{"-max-attempts", "100", "-lease", "2s"}
	ingest := w.mustStart("ingest", flags...)
	workers := make([]*node, 3)
	for i := range workers {
		workers[i] = w.mustStart("worker", flags...)
	}

	evs := newEvents("crash", "fi.effect", pick(1500, 10000))
	for i := range evs {
		if i%2 == 1 {
			evs[i].Type = "fi.batch" // half of them through a HandleBatch handler
		}
	}
	flow := pick(8*time.Second, 40*time.Second)
	s := &sender{url: ingest.url, concurrency: 8, every: flow / time.Duration(len(evs)),
		retryAfter: 100 * time.Millisecond, deadline: time.Minute}

	// Each worker dies after a random 300-1500 ms of life, and is
	// restarted at once, until the last event is sent.
	killer := w.startKilling(workers, flags, nil)
	sending := time.Now()
	log, sendErr := s.send(evs)
	_, startErr := killer.finish()
	flowed := time.Since(sending)
	require.NoError(t, startErr)
	require.NoError(t, sendErr)

	acked := ackedIDs(log)
	ackedList := make([]string, 0, len(acked))
	for id := range acked {
		ackedList = append(ackedList, id)
	}
	drain := w.drained(pick(90*time.Second, 3*time.Minute), ackedList)
	c := w.census()
	lost, doubled := c.lostAndDoubled(ackedList)
	rerun := w.count(`SELECT count(*) FROM fi_effects WHERE attempt > 1`)
	report(t, row{
		scenario: "1. worker crash (3 workers, SIGKILL)",
		events:   len(evs), acked: len(acked),
		faults: fmt.Sprintf("%d SIGKILLs while the events flowed in (%s), %d of them with a writing transaction open; %d events re-run after losing their worker",
			killer.all.Load(), ms(flowed), killer.midTx.Load(), rerun),
		lost: lost, doubled: doubled, dlq: len(c.dead),
		recovery: "last kill to drained: " + ms(drain),
	})
	require.Len(t, acked, len(evs), "the ingest process was never killed: every event is acknowledged")
	require.Zero(t, lost, "lost events")
	require.Zero(t, doubled, "events with more than one effect")
	require.Empty(t, c.dead, "no event spent its 100 attempts")
	require.Positive(t, killer.all.Load())
	w.requireOnePlace(ackedList)
}
