package faultinject

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/internal/dbtest"
)

// TestStalledWorker freezes a worker process (SIGSTOP, as a long GC pause
// or a frozen VM would) in the middle of a transaction, after its handler
// wrote an event's effect, and keeps it frozen until the rescuer has
// taken back the events it held (whose runs in the other worker then
// wait on the frozen transaction's claims); then it thaws it (SIGCONT). The stalled worker lost its leases: it must
// commit nothing (lease fencing), so the event's one effect comes from
// the run after the rescue, on attempt 2, and every other event
// has exactly one effect (invariants 2 and 3). Without the fencing, the
// stalled run would commit its effect on attempt 1 and complete an event
// leased to another worker; the idempotency claim alone would hide that
// from the effect count, so the test also checks where the effect came
// from.
func TestStalledWorker(t *testing.T) {
	t.Parallel()
	w := newWorld(t, dbtest.Database(t, dbtest.Options{}))
	flags := []string{"-lease", "1s", "-rescue-interval", "200ms", "-backoff", "20ms", "-max-attempts", "5"}
	ingest := w.mustStart("ingest", flags...)

	evs := newEvents("stall", "fi.effect", pick(200, 2000))
	staller := &evs[5] // fetched with its neighbours by the first worker
	staller.Type = "fi.stall"
	s := &sender{url: ingest.url, concurrency: 8, retryAfter: 100 * time.Millisecond, deadline: time.Minute}
	log, err := s.send(evs)
	require.NoError(t, err)

	// The first worker runs alone until it freezes itself in the staller's
	// handler. With one worker goroutine, the staller's is its only open
	// transaction: every event it holds then is in that transaction or
	// fetched ahead for the next, and it must commit none of those runs.
	// It never rescues: frozen in the middle of its own rescue (its
	// leases can lapse under load before it freezes), that transaction
	// would keep the rows it locked from the other worker's rescuer until
	// the thaw.
	frozen := w.mustStart("worker", append(flags, "-workers", "1", "-rescue-interval", "1h")...)
	frozenPID := frozen.cmd.Process.Pid
	frozenLeases := fmt.Sprintf("%%:%d:%%", frozenPID) // leased_by is hostname:pid:random
	eventually(t, 30*time.Second, "the worker to stop itself", func() (bool, string) {
		st := processState(frozenPID)
		return st == "T", "state " + st
	})
	stalledAt := time.Now()
	rows, err := w.pool.Query(t.Context(), `SELECT event_id, attempt FROM wharf.queue WHERE state = 'running' AND leased_by LIKE $1`,
		frozenLeases)
	require.NoError(t, err)
	held, err := pgx.CollectRows(rows, pgx.RowToStructByPos[struct {
		ID      string
		Attempt int
	}])
	require.NoError(t, err)
	require.NotEmpty(t, held, "the frozen worker holds leases")
	heldIDs, heldAttempts := make([]string, len(held)), make([]int, len(held))
	for i, h := range held {
		heldIDs[i], heldAttempts[i] = h.ID, h.Attempt
	}
	w.mustStart("worker", flags...)

	// Its leases lapse and the rescuer (the other worker's) takes the
	// events back, charging the attempt. The other worker may fetch them
	// again, but their runs wait on the frozen transaction's claims.
	eventually(t, time.Minute, "the staller's lease to be rescued", func() (bool, string) {
		// Besides the errors, what a failure needs explained: whether the
		// lease had lapsed, and who held it. (Whether a transaction locks
		// the row, which the rescuer would skip, cannot be asked without
		// locking it, and so getting in the rescuer's way.)
		var errs, row string
		_ = w.pool.QueryRow(t.Context(), `SELECT errors::text, format('state %s, lease expired %s, leased by %s, attempt %s',
				state, lease_expires_at < now(), leased_by, attempt)
			FROM wharf.queue WHERE event_id = $1`, staller.ID).Scan(&errs, &row)
		return strings.Contains(errs, "lease expired"), "errors " + errs + "; " + row
	})
	// Its other leases too: a chunk it fetched ahead after its last
	// heartbeat holds a lease that lapses later than the staller's, and a
	// thaw before that would let it heartbeat the lease and run the chunk
	// legitimately, on the attempt it held.
	eventually(t, time.Minute, "every lease of the frozen worker to be rescued", func() (bool, string) {
		n := w.count(`SELECT count(*) FROM wharf.queue WHERE state = 'running' AND leased_by LIKE $1`, frozenLeases)
		return n == 0, fmt.Sprintf("%d still leased", n)
	})
	stall := time.Since(stalledAt)
	require.NoError(t, frozen.cmd.Process.Signal(syscall.SIGCONT))
	drain := w.drained(time.Minute, ids(evs))

	c := w.census()
	lost, doubled := c.lostAndDoubled(ids(evs))
	report(t, row{
		scenario: "8. a worker stalled mid-transaction past its lease",
		events:   len(evs), acked: len(ackedIDs(log)),
		faults: fmt.Sprintf("SIGSTOP of a worker inside a handler's transaction, holding %d leases, for %s (lease 1s, rescuer every 200ms), then SIGCONT",
			len(held), ms(stall)),
		lost: lost, doubled: doubled, dlq: len(c.dead),
		recovery: "drained " + ms(drain) + " after the thaw",
	})
	require.Len(t, ackedIDs(log), len(evs))
	require.Zero(t, lost, "lost events")
	require.Zero(t, doubled, "events with more than one effect")
	require.Empty(t, c.dead)
	var attempt, pid int
	require.NoError(t, w.pool.QueryRow(t.Context(), `SELECT attempt, pid FROM fi_effects WHERE event_id = $1`, staller.ID).Scan(&attempt, &pid))
	// From a run after the rescue: the second, unless on a loaded machine
	// that run's own 1s lease lapsed too while it waited behind the
	// frozen worker's claims.
	require.GreaterOrEqual(t, attempt, 2, "the staller's effect is from a run after the rescue (pid %d; the stalled one %d)", pid, frozenPID)
	// After the thaw the worker may fetch some of them again, under new
	// leases, and run them legitimately; never on the attempt it held
	// when it froze.
	require.Zero(t, w.count(`SELECT count(*) FROM fi_effects e JOIN unnest($2::text[], $3::int[]) AS h(id, attempt)
		ON e.event_id = h.id AND e.attempt = h.attempt WHERE e.pid = $1`, frozenPID, heldIDs, heldAttempts),
		"the stalled worker committed a run whose lease it had lost")
	w.requireOnePlace(ids(evs))
}

// processState returns the state letter of process pid from
// /proc/PID/stat ("T" when stopped), or what went wrong.
func processState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return err.Error()
	}
	// pid (comm) state ...: comm may hold spaces, so read after the last ')'.
	fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(fields) == 0 {
		return "unreadable"
	}
	return fields[0]
}
