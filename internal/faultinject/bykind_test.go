package faultinject

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/queue"
)

// TestFetchByKindUnderCrashes runs worker processes that fetch each kind
// on its own (queue.FetchParams.ByKind), and kills them with SIGKILL at
// random moments while they do. A queue.Consumer switches to fetching by
// kind when more than half of the first 1,000 due events are of kinds it
// skips; here they are the events of a paused handler (fi.batch, paused
// with queue.Queue.Pause, as an operator would during an incident), queued
// before the workers start, ahead of everything else. Each worker logs its
// switch at debug level with its pid, and is killed only after it did, so
// every kill hits a worker fetching by kind. Meanwhile events of another
// kind (fi.effect) flow in and must be processed; the paused ones must not
// run, nor spend an attempt. Then the handler is resumed while the
// workers still fetch by kind, the backlog drains, and they switch back to
// walking once it is gone. Every acknowledged event must end with exactly
// one effect, and none in the dead letter queue.
func TestFetchByKindUnderCrashes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	w := newWorld(t, dbtest.Database(t, dbtest.Options{}))
	// MaxAttempts 100: a flowing event leased by several workers that all
	// die spends an attempt each time (invariant 8); this scenario is
	// about effects, not the dead letter queue. A short lease and rescue
	// interval hand a killed worker's events to the others soon.
	flags := []string{"-max-attempts", "100", "-lease", "1s", "-rescue-interval", "500ms"}
	workerFlags := append(flags[:len(flags):len(flags)], "-log-level", "debug")
	ingest := w.mustStart("ingest", flags...)

	op, err := wharf.New(w.pool, wharf.Config{})
	require.NoError(t, err)
	t.Cleanup(op.Close)
	paused := queue.PauseTarget{Handler: source + "/fi.batch"}
	require.NoError(t, op.Queue().Pause(ctx, paused, "faultinject: a backlog the workers skip"))

	held := newEvents("held", "fi.batch", pick(800, 3000))
	flowing := newEvents("flow", "fi.effect", pick(1000, 6000))
	s := &sender{url: ingest.url, concurrency: 8, retryAfter: 100 * time.Millisecond, deadline: time.Minute}
	log, err := s.send(held)
	require.NoError(t, err)

	// The workers start behind the paused backlog: each one's first fetch
	// is followed by a count of the events ahead that it skips, and the
	// switch. Each worker is killed after a random 300-1500 ms of fetching
	// by kind, and restarted at once, until the last flowing event is sent.
	const workerCount = 2
	workers := make([]*node, workerCount)
	for i := range workers {
		workers[i] = w.mustStart("worker", workerFlags...)
	}
	killer := w.startKilling(workers, workerFlags, func(n *node) error { return w.awaitByKind(n, true, 30*time.Second) })
	flow := pick(6*time.Second, 30*time.Second)
	s = &sender{url: ingest.url, concurrency: 8, every: flow / time.Duration(len(flowing)),
		retryAfter: 100 * time.Millisecond, deadline: time.Minute}
	sending := time.Now()
	flowLog, sendErr := s.send(flowing)
	workers, startErr := killer.finish()
	flowed := time.Since(sending)
	// Checked first: paused events that ran would shrink the backlog, and
	// the workers started after that would never switch.
	require.Zero(t, w.count(`SELECT count(*) FROM fi_effects WHERE event_type = 'fi.batch'`),
		"paused events ran while their handler was paused")
	require.NoError(t, startErr)
	require.NoError(t, sendErr)
	log = append(log, flowLog...)
	for _, n := range workers {
		require.NoError(t, w.awaitByKind(n, true, 30*time.Second))
	}

	// While the handler is paused, the flowing events are processed, and
	// the paused ones wait untouched.
	eventually(t, pick(time.Minute, 3*time.Minute), "the flowing events to be processed past the paused backlog", func() (bool, string) {
		c := w.census()
		lost, _ := c.lostAndDoubled(ids(flowing))
		left := w.count(`SELECT count(*) FROM wharf.queue WHERE event_type <> 'fi.batch'`)
		return lost == 0 && left == 0, fmt.Sprintf("%d of %d flowing events without an effect, %d in the queue", lost, len(flowing), left)
	})
	heldRan := w.count(`SELECT count(*) FROM fi_effects WHERE event_type = 'fi.batch'`)
	heldTouched := w.count(`SELECT count(*) FROM wharf.queue WHERE event_type = 'fi.batch' AND (state <> 'available' OR attempt > 0 OR deferrals > 0)`)
	heldQueued := w.count(`SELECT count(*) FROM wharf.queue WHERE event_type = 'fi.batch'`)

	resumed := time.Now()
	wasPaused, err := op.Queue().Resume(ctx, paused)
	require.NoError(t, err)
	require.True(t, wasPaused)
	all := append(ids(held), ids(flowing)...)
	drain := w.drained(pick(time.Minute, 3*time.Minute), all)
	// With the backlog gone, each worker's next count (every 5 s) finds
	// nothing skipped, and it walks again.
	for _, n := range workers {
		require.NoError(t, w.awaitByKind(n, false, 30*time.Second))
	}
	walking := time.Since(resumed)

	switches := w.strategySwitches()
	byKindProcesses := 0
	for _, seq := range switches {
		if len(seq) > 0 && seq[0] {
			byKindProcesses++
		}
	}
	c := w.census()
	acked := ackedIDs(log)
	ackedList := make([]string, 0, len(acked))
	for id := range acked {
		ackedList = append(ackedList, id)
	}
	lost, doubled := c.lostAndDoubled(ackedList)
	rerun := w.count(`SELECT count(*) FROM fi_effects WHERE attempt > 1`)
	heldRerun := w.count(`SELECT count(*) FROM fi_effects WHERE event_type = 'fi.batch' AND (attempt <> 1 OR prior_errors > 0)`)
	report(t, row{
		scenario: "9. fetch by kind behind a paused backlog, worker crashes",
		events:   len(held) + len(flowing), acked: len(acked),
		faults: fmt.Sprintf("handler fi.batch paused with %d events queued ahead; %d worker processes switched to fetching by kind; %d SIGKILLs, each of a worker fetching by kind (%d with a writing transaction open), while %d events of another kind flowed in (%s); %d events re-run after losing their worker",
			heldQueued, byKindProcesses, killer.all.Load(), killer.midTx.Load(), len(flowing), ms(flowed), rerun),
		lost: lost, doubled: doubled, dlq: len(c.dead),
		recovery: "resume to drained: " + ms(drain) + "; every worker walking again " + ms(walking) + " after the resume",
	})
	require.Len(t, acked, len(held)+len(flowing), "the ingest process was never killed: every event is acknowledged")
	require.Zero(t, lost, "lost events")
	require.Zero(t, doubled, "events with more than one effect")
	require.Empty(t, c.dead, "no event spent its 100 attempts")
	require.GreaterOrEqual(t, killer.all.Load(), int64(3), "workers killed while fetching by kind")
	require.Equal(t, int(killer.all.Load())+workerCount, byKindProcesses, "every worker process switched to fetching by kind at its first count")
	require.Equal(t, len(held), heldQueued, "the paused events waited in the queue")
	require.Zero(t, heldRan, "paused events ran while their handler was paused")
	require.Zero(t, heldTouched, "paused events fetched, or charged an attempt, while their handler was paused")
	require.Zero(t, heldRerun, "paused events that ran on an attempt after the first once resumed")
	w.requireOnePlace(ackedList)
}

// strategyLine matches a consumer's log record of a switch of fetch
// strategy, as the node writes it (slog's text format, the pid attribute
// first).
var strategyLine = regexp.MustCompile(`msg="queue: fetch strategy changed" pid=(\d+) by_kind=(true|false)`)

// strategySwitches reads the nodes' log for their consumers' switches of
// fetch strategy (logged at debug level) and returns them by process id,
// oldest first: true for a switch to fetching by kind, false for one back
// to walking.
func (w *world) strategySwitches() map[int][]bool {
	b, err := os.ReadFile(w.logs)
	if err != nil {
		return nil
	}
	out := map[int][]bool{}
	for line := range strings.Lines(string(b)) {
		if m := strategyLine.FindStringSubmatch(line); m != nil {
			pid, _ := strconv.Atoi(m[1])
			out[pid] = append(out[pid], m[2] == "true")
		}
	}
	return out
}

// awaitByKind waits until n's last logged switch of fetch strategy is to
// byKind (a process that never switched walks), or returns an error when
// timeout passes or n exits first.
func (w *world) awaitByKind(n *node, byKind bool, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	pid := n.cmd.Process.Pid
	for {
		seq := w.strategySwitches()[pid]
		if last := len(seq) > 0 && seq[len(seq)-1]; last == byKind {
			return nil
		}
		select {
		case <-n.exited:
			return fmt.Errorf("worker %d exited before it switched to by_kind=%t", pid, byKind)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("worker %d did not switch to by_kind=%t within %s; its switches: %v", pid, byKind, timeout, seq)
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
}
