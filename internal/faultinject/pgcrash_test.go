package faultinject

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestPostgresCrash crashes the database server (pg_ctl stop -m
// immediate: no flush, no checkpoint) while events flow in through an
// ingest process and a worker process processes them, keeps it down a
// while, then starts it again (crash recovery). The server's default is
// synchronous_commit=off, the trap of DESIGN.md: a commit acknowledged
// before its WAL is flushed is lost in such a crash, unless wharf turns it
// on for the transactions its answers depend on. Invariant 1: every
// event answered 2xx survives and is processed exactly once; requests
// during the outage get a 5xx, never a 2xx. The senders retry what was
// not acknowledged, as providers do.
func TestPostgresCrash(t *testing.T) {
	t.Parallel()
	// wal_writer_delay at its maximum: the WAL writer writes out an
	// asynchronous commit's last, partial WAL page only that often, so a
	// commit that did not wait for its flush stays in the server's memory,
	// and is lost in the crash, rather than written out within 200 ms.
	pg := newCluster(t, "synchronous_commit=off", "wal_writer_delay=10s")
	pg.migrate("postgres")
	w := newWorld(t, pg.url("postgres"))
	flags := []string{"-lease", "2s", "-max-attempts", "100"}
	ingest := w.mustStart("ingest", flags...)
	worker := w.mustStart("worker", flags...)

	evs := newEvents("pgcrash", "fi.effect", pick(600, 5000))
	flow := pick(6*time.Second, 40*time.Second)
	outage := pick(1500*time.Millisecond, 10*time.Second)
	const freeze = 500 * time.Millisecond
	s := &sender{url: ingest.url, concurrency: 8, every: flow / time.Duration(len(evs)),
		retryAfter: 200 * time.Millisecond, deadline: outage + time.Minute}
	type result struct {
		log []delivery
		err error
	}
	sent := make(chan result, 1)
	go func() {
		log, err := s.send(evs)
		sent <- result{log, err}
	}()

	eventually(t, time.Minute, "a third of the events to be sent", func() (bool, string) {
		return s.sent.Load() >= int64(len(evs)/3), fmt.Sprintf("%d sent", s.sent.Load())
	})
	// The worker freezes (SIGSTOP) a moment before the crash. A running
	// worker's commits, made with synchronous_commit on, flush the WAL up
	// to them, and with it every ingest commit made before them: the
	// ingest commits that a missing synchronous_commit would lose are only
	// those made since the worker's last one. Frozen, it commits nothing,
	// so the crash finds some 2xx'd commits of the last moments (and
	// settings below hold back the WAL writer); it thaws once the server
	// is back, on connections that died with it.
	require.NoError(t, worker.cmd.Process.Signal(syscall.SIGSTOP))
	time.Sleep(freeze) // ingest alone commits this long
	pg.crash()
	crashed := time.Now()
	time.Sleep(outage) // the server stays down this long
	restarting := time.Now()
	pg.start()
	restarted := time.Now()
	require.NoError(t, worker.cmd.Process.Signal(syscall.SIGCONT))
	w.pool.Reset() // the test's own connections died with the server
	res := <-sent
	require.NoError(t, res.err)

	acked := ackedIDs(res.log)
	ackedList := make([]string, 0, len(acked))
	for id := range acked {
		ackedList = append(ackedList, id)
	}
	drained := w.drained(time.Minute, ackedList)
	refusedBy := map[int]int{} // status (0: no answer) -> deliveries
	var (
		duringOutage, ackedDuringOutage, refused, not5xx int
		firstAck                                         time.Time
	)
	for _, d := range res.log {
		if d.start.After(crashed) && d.end.Before(restarting) {
			duringOutage++
			if d.acked() {
				ackedDuringOutage++
			}
		}
		if !d.acked() {
			refused++
			refusedBy[d.status]++
			if d.status != 0 && d.status < 500 {
				not5xx++
			}
		}
		if d.acked() && d.start.After(restarted) && (firstAck.IsZero() || d.end.Before(firstAck)) {
			firstAck = d.end
		}
	}
	c := w.census()
	lost, doubled := c.lostAndDoubled(ackedList)
	recovery := "server restart " + ms(restarted.Sub(restarting))
	if !firstAck.IsZero() {
		recovery += ", first 2xx " + ms(firstAck.Sub(restarted)) + " after it"
	}
	recovery += "; queue drained " + ms(drained) + " after the last 2xx"

	report(t, row{
		scenario: "2. Postgres crash during ingest",
		events:   len(evs), acked: len(acked),
		faults: fmt.Sprintf("pg_ctl stop -m immediate, down %s (server default synchronous_commit=off); %d requests during the outage, %d not acknowledged in all (%s)",
			ms(outage), duringOutage, refused, byStatus(refusedBy)),
		lost: lost, doubled: doubled, dlq: len(c.dead),
		recovery: recovery,
	})
	require.Len(t, acked, len(evs), "every event was acknowledged in the end (senders retry)")
	require.Zero(t, ackedDuringOutage, "invariant 1: no 2xx while the server was down")
	require.Positive(t, duringOutage, "requests arrived during the outage")
	require.Zero(t, not5xx, "what was not acknowledged got a 5xx (or no answer), never a 4xx")
	require.Zero(t, lost, "acknowledged events lost")
	require.Zero(t, doubled, "events with more than one effect")
	require.Empty(t, c.dead)
	w.requireOnePlace(ackedList)
}

// byStatus formats a count of deliveries by status, "503: 120, no answer: 2".
func byStatus(counts map[int]int) string {
	statuses := slices.Sorted(maps.Keys(counts))
	parts := make([]string, len(statuses))
	for i, st := range statuses {
		name := strconv.Itoa(st)
		if st == 0 {
			name = "no answer"
		}
		parts[i] = fmt.Sprintf("%s: %d", name, counts[st])
	}
	return strings.Join(parts, ", ")
}
