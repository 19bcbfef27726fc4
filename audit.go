package wharf

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/wharfhq/wharf/dlq"
	"github.com/wharfhq/wharf/eventlog"
	"github.com/wharfhq/wharf/queue"
)

// DeliveryStream is the event-log stream holding the audit trail of one
// delivery, when Config.Audit is on: "what happened to evt_123 and when"
// is a ReadStream of DeliveryStream("stripe", "evt_123").
func DeliveryStream(source, eventID string) string {
	return "delivery:" + source + ":" + eventID
}

// Audit record types, the Type of each event in a delivery's stream.
const (
	AuditReceived      = "received"       // stored by an endpoint; data: received_at
	AuditAttemptFailed = "attempt_failed" // data: attempt, error, at, worker
	AuditProcessed     = "processed"      // data: handler, attempt
	AuditDuplicate     = "duplicate"      // a redelivery, completed without running the handler
	AuditUnhandled     = "unhandled"      // completed: no handler (CompleteUnhandled)
	AuditDeadLettered  = "dead_lettered"  // data: attempts, handler
	AuditReplayed      = "replayed"       // sent back from the dead letter queue; data: entry
)

// record appends the end of one processing of qev to its delivery stream,
// in tx, when audit is on: what led there (received, and each earlier
// failed attempt, whose own records were rolled back with their
// attempts), then what happened now.
func (p *Pipeline) record(ctx context.Context, tx pgx.Tx, qev *queue.Event, what string, data map[string]any) error {
	if p.audit == nil {
		return nil
	}
	events := p.history(qev)
	ev, err := auditEvent(qev, what, data)
	if err != nil {
		return err
	}
	events = append(events, ev)
	_, err = p.audit.AppendTx(ctx, tx, DeliveryStream(qev.Source, qev.ID), eventlog.AnyVersion, events...)
	return err
}

// history is the audit records of qev's life in the queue before now: its
// arrival and its failed attempts. Nothing of it was recorded before: a
// delivery's records are written only when its queue row ends (processed,
// dead-lettered), because a failed attempt rolls back whatever it wrote.
func (p *Pipeline) history(qev *queue.Event) []eventlog.NewEvent {
	var events []eventlog.NewEvent
	if ev, err := auditEvent(qev, AuditReceived, map[string]any{"received_at": qev.ReceivedAt}); err == nil {
		events = append(events, ev)
	}
	for _, ae := range qev.Errors {
		ev, err := auditEvent(qev, AuditAttemptFailed, map[string]any{
			"attempt": ae.Attempt, "error": ae.Error, "at": ae.At, "worker": ae.Worker})
		if err == nil {
			events = append(events, ev)
		}
	}
	return events
}

func auditEvent(qev *queue.Event, what string, data map[string]any) (eventlog.NewEvent, error) {
	if data == nil {
		data = map[string]any{}
	}
	b, err := json.Marshal(data)
	if err != nil {
		return eventlog.NewEvent{}, fmt.Errorf("wharf: audit %s of %q: %w", what, qev.ID, err)
	}
	return eventlog.NewEvent{Type: what, Data: b, Metadata: eventlog.Metadata{SourceEventID: qev.ID, Actor: qev.Source}}, nil
}

// exhausted is the queue's OnExhausted hook: events that used their last
// attempt move to the dead letter queue, and their audit trail records it,
// in the transaction that removes them from the queue.
func (p *Pipeline) exhausted(ctx context.Context, tx pgx.Tx, evs []*queue.Event) error {
	if err := p.dead.Move(ctx, tx, evs); err != nil {
		return err
	}
	for _, qev := range evs {
		data := map[string]any{"attempts": qev.Attempt, "handler": qev.Handler}
		// The final error is already in qev.Errors: it is recorded as a
		// failed attempt before the dead-lettering.
		if err := p.record(ctx, tx, qev, AuditDeadLettered, data); err != nil {
			return err
		}
	}
	return nil
}

// Replay sends dead-letter entries back to the queue, attempts reset, and
// records the replay in their audit trails (when audit is on), in one
// transaction. See dlq.DLQ.Replay.
func (p *Pipeline) Replay(ctx context.Context, ids ...int64) (dlq.ReplayResult, error) {
	res, err := p.dead.Replay(ctx, p.queue, ids...)
	p.announceReplays(res)
	return res, err
}

// ReplayMatching replays every dead-letter entry matching f. See
// dlq.DLQ.ReplayMatching.
func (p *Pipeline) ReplayMatching(ctx context.Context, f dlq.Filter, opts dlq.ReplayOptions) (dlq.ReplayResult, error) {
	res, err := p.dead.ReplayMatching(ctx, p.queue, f, opts)
	p.announceReplays(res)
	return res, err
}

// announceReplays wakes the audit log's projections after replays whose
// records have committed.
func (p *Pipeline) announceReplays(res dlq.ReplayResult) {
	if p.audit != nil && res.Replayed > 0 {
		p.audit.Notify()
	}
}

// onReplay records replays in the delivery streams.
func (p *Pipeline) onReplay(ctx context.Context, tx pgx.Tx, replayed []dlq.Replayed) error {
	for _, r := range replayed {
		b, err := json.Marshal(map[string]any{"entry": r.ID, "at": time.Now().UTC()})
		if err != nil {
			return err
		}
		ev := eventlog.NewEvent{Type: AuditReplayed, Data: b, Metadata: eventlog.Metadata{SourceEventID: r.EventID, Actor: r.Source}}
		if _, err := p.audit.AppendTx(ctx, tx, DeliveryStream(r.Source, r.EventID), eventlog.AnyVersion, ev); err != nil {
			return err
		}
	}
	return nil
}
