package faultinject

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/dlq"
	"github.com/wharfhq/wharf/internal/dbtest"
)

// TestPoisonAndReplay mixes poison events (their handler fails on every
// attempt) into good ones. Exactly the poison set must end in the dead
// letter queue, each entry with one error per attempt; a redelivery of a
// dead event is a duplicate (invariant 3); after the fix is deployed (the
// worker restarted with -fixed), a replay (by id, and by filter)
// processes each exactly once, with its attempts reset.
func TestPoisonAndReplay(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	w := newWorld(t, dbtest.Database(t, dbtest.Options{}))
	// The ingest side stores each event's MaxAttempts from its handler's
	// settings, so both roles get the flag.
	const maxAttempts = 3
	flags := []string{"-max-attempts", fmt.Sprint(maxAttempts), "-backoff", "20ms"}
	ingest := w.mustStart("ingest", flags...)
	worker := w.mustStart("worker", flags...)

	evs := newEvents("poison", "fi.effect", pick(300, 3000))
	var poison []string
	for i := range evs {
		if i%2 == 1 {
			evs[i].Type = "fi.batch" // half of them through a HandleBatch handler
		}
		if i%10 == 3 || i%10 == 4 {
			evs[i].Data = map[string]any{"poison": true}
			poison = append(poison, evs[i].ID)
		}
	}
	s := &sender{url: ingest.url, concurrency: 8, retryAfter: 100 * time.Millisecond, deadline: time.Minute}
	log, err := s.send(evs)
	require.NoError(t, err)
	w.drained(60*time.Second, ids(evs))
	c := w.census()
	lost, doubled := c.lostAndDoubled(ids(evs))
	deadAtFirst := len(c.dead)

	op, err := wharf.New(w.pool, wharf.Config{Audit: true})
	require.NoError(t, err)
	t.Cleanup(op.Close)
	entries, next, err := op.DLQ().List(ctx, dlq.Filter{Source: source}, dlq.Page{Limit: dlq.MaxListLimit})
	require.NoError(t, err)
	require.Nil(t, next)
	var badHistory []string
	for _, e := range entries {
		ok := e.Attempts == maxAttempts && len(e.Errors) == maxAttempts
		for i, ae := range e.Errors {
			ok = ok && ae.Attempt == i+1 && strings.Contains(ae.Error, "poison event "+e.EventID)
		}
		if !ok && len(badHistory) < 3 {
			badHistory = append(badHistory, fmt.Sprintf("%s: %d attempts, errors %+v", e.EventID, e.Attempts, e.Errors))
		}
	}

	// The provider retries some dead events: duplicates, not new rows.
	var redelivered []delivery
	for _, ev := range evs {
		if slices.Contains(poison, ev.ID) {
			redelivered = append(redelivered, postUntilAcked(ingest.url, ev, 100*time.Millisecond, time.Now().Add(time.Minute))...)
		}
	}

	// The fix is deployed; the operator replays half the entries by id and
	// the rest by what their errors say.
	worker.kill()
	w.mustStart("worker", append(flags, "-fixed")...)
	replayStart := time.Now()
	var byID []int64
	for _, e := range entries[:len(entries)/2] {
		byID = append(byID, e.ID)
	}
	res, err := op.Replay(ctx, byID...)
	require.NoError(t, err)
	require.Equal(t, len(byID), res.Replayed)
	res, err = op.ReplayMatching(ctx, dlq.Filter{Source: source, ErrorContains: "poison event"}, dlq.ReplayOptions{})
	require.NoError(t, err)
	require.Equal(t, len(entries)-len(byID), res.Replayed)
	eventually(t, 60*time.Second, "the replayed events to be processed", func() (bool, string) {
		c := w.census()
		lost, _ := c.lostAndDoubled(poison)
		return c.queued == 0 && len(c.dead) == 0 && lost == 0, fmt.Sprintf("%d queued, %d dead, %d unprocessed", c.queued, len(c.dead), lost)
	})
	replayTime := time.Since(replayStart)

	report(t, row{
		scenario: "5. poison events + replay",
		events:   len(evs), acked: len(ackedIDs(log)),
		faults: fmt.Sprintf("%d poison events (fail every attempt, max %d); replayed after the fix", len(poison), maxAttempts),
		lost:   lost, doubled: doubled, dlq: deadAtFirst,
		recovery: "replay to processed: " + ms(replayTime),
	})
	require.Equal(t, len(evs), len(ackedIDs(log)))
	require.Zero(t, lost, "lost events")
	require.Zero(t, doubled, "events with more than one effect")
	deadIDs := make([]string, 0, len(entries))
	for _, e := range entries {
		deadIDs = append(deadIDs, e.EventID)
	}
	require.ElementsMatch(t, poison, deadIDs, "exactly the poison events are dead-lettered")
	require.Empty(t, badHistory, "each dead letter keeps one error per attempt")
	duplicates := 0
	for _, d := range redelivered {
		if d.status != http.StatusServiceUnavailable { // under load; retried
			require.Equal(t, http.StatusOK, d.status, "a redelivery of a dead event is a duplicate: %s %q %v", d.id, d.body, d.err)
			duplicates++
		}
	}
	require.Equal(t, len(poison), duplicates, "each redelivery was answered")

	c = w.census()
	lost, doubled = c.lostAndDoubled(ids(evs))
	require.Zero(t, lost+doubled, "after the replay: %d lost, %d doubled", lost, doubled)
	require.Zero(t, w.count(`SELECT count(*) FROM fi_effects WHERE event_id = ANY($1) AND attempt <> 1`, poison),
		"a replayed event runs with its attempts reset")
	w.requireOnePlace(ids(evs))
}
