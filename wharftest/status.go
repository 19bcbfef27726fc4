package wharftest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/eventlog"
	"github.com/wharfhq/wharf/idempotency"
	"github.com/wharfhq/wharf/queue"
)

// EventStatus says where one event is. wharf keeps an acknowledged event
// in exactly one place: the queue, processed (by its handler), or dead
// (in the dead letter queue, waiting for a replay). An event in none of
// them was never stored (or its record outlived the idempotency
// retention); one in two would be a bug in wharf.
type EventStatus struct {
	Source, ID string

	// Queued is true while the event waits or runs in the queue.
	Queued bool
	// State is the queue row's state ("available", "running"), Attempt
	// the attempts spent so far and Handler the name of the handler that
	// takes it ("" for a type no handler took when it was stored); set
	// while Queued.
	State   string
	Attempt int
	Handler string

	// ProcessedBy names the handlers (their idempotency consumers, such as
	// "stripe/invoice.paid") that processed the event: its handler's
	// claim committed with the handler's work and the event's completion.
	ProcessedBy []string

	// Dead is true while the event sits in the dead letter queue;
	// DeadLetterID is its entry, for Pipeline.Replay.
	Dead         bool
	DeadLetterID int64

	// Errors are the failed attempts' errors, oldest first, of the queued
	// or dead event.
	Errors []queue.AttemptError
}

// String describes s for failure messages.
func (s EventStatus) String() string {
	var parts []string
	if s.Queued {
		p := fmt.Sprintf("queued (%s, %d attempts spent", s.State, s.Attempt)
		if s.Handler == "" {
			p += ", no handler"
		}
		parts = append(parts, p+")")
	}
	if len(s.ProcessedBy) > 0 {
		parts = append(parts, "processed by "+strings.Join(s.ProcessedBy, ", "))
	}
	if s.Dead {
		parts = append(parts, fmt.Sprintf("dead-lettered (entry %d)", s.DeadLetterID))
	}
	if len(parts) == 0 {
		return fmt.Sprintf("%s/%s is nowhere: not queued, processed or dead-lettered", s.Source, s.ID)
	}
	out := fmt.Sprintf("%s/%s is %s", s.Source, s.ID, strings.Join(parts, " and "))
	if last := attemptErrors(s.Errors).last(); last != "" {
		out += "; last error: " + last
	}
	return out
}

// Status reads where the event with id from source is. id is the id wharf
// stored (Response.EventID).
func (h *Harness) Status(source, id string) EventStatus {
	h.t.Helper()
	st, err := h.status(source, id)
	if err != nil {
		h.t.Fatalf("wharftest: status of %s/%s: %v", source, id, err)
	}
	return st
}

func (h *Harness) status(source, id string) (EventStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), queryTimeout)
	defer cancel()
	st := EventStatus{Source: source, ID: id}

	var errs attemptErrors
	err := h.pool.QueryRow(ctx, `SELECT state, attempt, coalesce(handler, ''), errors FROM `+h.tables.queue+`
		WHERE source = $1 AND event_id = $2`, source, id).Scan(&st.State, &st.Attempt, &st.Handler, &errs)
	switch {
	case err == nil:
		st.Queued, st.Errors = true, errs
	case !errors.Is(err, pgx.ErrNoRows):
		return st, err
	}

	// Only the Pipeline's own claims (mode tx), not the external-mode keys
	// a handler may have taken with idempotency.Store.Do.
	rows, err := h.pool.Query(ctx, `SELECT consumer FROM `+h.tables.processed+`
		WHERE key = $1 AND mode = 'tx' ORDER BY consumer`, idempotency.Key(source, id))
	if err != nil {
		return st, err
	}
	if st.ProcessedBy, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		return st, err
	}

	errs = nil
	err = h.pool.QueryRow(ctx, `SELECT id, errors FROM `+h.tables.dead+`
		WHERE source = $1 AND event_id = $2 AND status = 'dead' ORDER BY id DESC LIMIT 1`, source, id).Scan(&st.DeadLetterID, &errs)
	switch {
	case err == nil:
		st.Dead = true
		if !st.Queued {
			st.Errors = errs
		}
	case !errors.Is(err, pgx.ErrNoRows):
		return st, err
	}
	return st, nil
}

// RequireProcessedOnce fails the test unless the event was processed by
// exactly one handler and is neither queued nor dead-lettered: its
// handler's work committed once (the claim is the primary key of
// processed_events, committed with the handler's writes). It does not
// count the handler's calls: a run that failed or was deferred before
// the one that committed had its database writes rolled back, but what it
// did outside the database happened. To assert the handler was called
// once, count its calls in the test, or check the audit Trail for
// wharf.AuditAttemptFailed records.
func (h *Harness) RequireProcessedOnce(source, id string) {
	h.t.Helper()
	st := h.Status(source, id)
	if st.Queued || st.Dead || len(st.ProcessedBy) != 1 {
		h.t.Fatalf("wharftest: want %s/%s processed once, but %s", source, id, st)
	}
}

// RequireDeadLettered fails the test unless the event is in the dead
// letter queue, and neither queued nor processed.
func (h *Harness) RequireDeadLettered(source, id string) {
	h.t.Helper()
	st := h.Status(source, id)
	if !st.Dead || st.Queued || len(st.ProcessedBy) != 0 {
		h.t.Fatalf("wharftest: want %s/%s dead-lettered, but %s", source, id, st)
	}
}

// Trail returns the event's audit trail (its delivery stream in the event
// log), oldest first: wharf.AuditReceived, wharf.AuditAttemptFailed, ...,
// wharf.AuditProcessed. A delivery's records are written when its queue
// row ends (processed, dead-lettered), so a queued event has none yet. It
// fails the test unless the Pipeline's Config.Audit is on.
func (h *Harness) Trail(source, id string) []eventlog.Event {
	h.t.Helper()
	log := h.p.AuditLog()
	if log == nil {
		h.t.Fatalf("wharftest: no audit trail: the Pipeline's Config.Audit is off")
	}
	ctx, cancel := context.WithTimeout(context.Background(), queryTimeout)
	defer cancel()
	var trail []eventlog.Event
	for from := int64(1); ; {
		events, err := log.ReadStream(ctx, wharf.DeliveryStream(source, id), from, eventlog.MaxReadLimit)
		if err != nil {
			h.t.Fatalf("wharftest: read the audit trail of %s/%s: %v", source, id, err)
		}
		trail = append(trail, events...)
		if len(events) < eventlog.MaxReadLimit {
			return trail
		}
		from = events[len(events)-1].Version + 1
	}
}

// RequireTrail fails the test unless the types of the event's audit trail
// are exactly types, in order:
//
//	h.RequireTrail("stripe", "evt_1", wharf.AuditReceived, wharf.AuditAttemptFailed, wharf.AuditProcessed)
func (h *Harness) RequireTrail(source, id string, types ...string) {
	h.t.Helper()
	trail := h.Trail(source, id)
	got := make([]string, len(trail))
	for i, ev := range trail {
		got[i] = ev.Type
	}
	if !slices.Equal(got, types) {
		h.t.Fatalf("wharftest: audit trail of %s/%s:\n  got  %q\n  want %q", source, id, got, types)
	}
}

// attemptErrors is a queue or dead letter row's errors column.
type attemptErrors []queue.AttemptError

// last returns the newest error with its attempt and age, or "".
func (e attemptErrors) last() string {
	if len(e) == 0 {
		return ""
	}
	l := e[len(e)-1]
	return fmt.Sprintf("attempt %d, %s ago: %s", l.Attempt, time.Since(l.At).Round(time.Millisecond), l.Error)
}
