package wharf

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/wharfhq/wharf/breaker"
	"github.com/wharfhq/wharf/idempotency"
	"github.com/wharfhq/wharf/queue"
)

// errUnhandled is the dead-letter reason for events no handler takes, with
// Config.Unhandled set to DeadLetterUnhandled.
var errUnhandled = errors.New("no handler takes this event type")

// otherVersionWait is how long an event stored for a handler this process
// lacks (another version's, during a rolling deploy) is put back for: a
// process that has the handler takes it once it is due again.
const otherVersionWait = 5 * time.Second

// work processes one event inside the consumer's transaction, under its
// savepoint: idempotency claim (made for the whole transaction by
// claimAll), the user's handler (through its breaker), the audit record.
// The consumer then completes the event in the same transaction, or rolls
// the savepoint back and retries, defers or dead-letters it.
func (p *Pipeline) work(ctx context.Context, tx pgx.Tx, qev *queue.Event) error {
	h := p.handlerFor(qev.Source, qev.Type)
	if h == nil && qev.Handler != "" {
		// The process that stored it had a handler for it: a newer (or
		// older) version's event, fetched here because this process takes
		// every type to apply Config.Unhandled. It waits for a process
		// that has the handler; completing or dead-lettering it here
		// would take it from that version during a rolling deploy.
		return queue.Defer(time.Now().Add(otherVersionWait), fmt.Errorf("%w here; stored for handler %q", errUnhandled, qev.Handler))
	}
	if name, ok := qev.Prepared.(pausedHandler); ok {
		return queue.Defer(time.Now().Add(pausedHandlerWait), fmt.Errorf("handler %q is paused", string(name)))
	}
	if _, ok := qev.Prepared.(claimHeld); ok {
		// One backoff step later each time, as for a downstream that
		// rejects the event: the lost run's transaction may stay open for
		// as long as its server takes to notice that its client is gone.
		return queue.DeferCounted(time.Now().Add(p.cfg.Backoff.Delay(qev.Attempt+qev.Deferrals)), errClaimHeld)
	}
	if h == nil {
		switch p.cfg.Unhandled {
		case DeadLetterUnhandled:
			return queue.Permanent(errUnhandled)
		case CompleteUnhandled:
			first, err := p.claim(ctx, tx, UnhandledConsumer, qev)
			if err != nil {
				return err
			}
			if !first {
				return p.record(ctx, tx, qev, AuditDuplicate, nil)
			}
			return p.record(ctx, tx, qev, AuditUnhandled, nil)
		default:
			// LeaveUnhandled events are not fetched; one fetched anyway
			// (by an older configuration's worker) goes back untouched.
			return queue.Defer(time.Now().Add(time.Minute), errUnhandled)
		}
	}
	first, err := p.claim(ctx, tx, h.name, qev)
	if err != nil {
		return err
	}
	if !first {
		// Processed already, by an earlier delivery of the same event:
		// complete this one without running the handler again.
		return p.record(ctx, tx, qev, AuditDuplicate, nil)
	}
	release, err := h.acquire(ctx)
	if err != nil {
		return err
	}
	defer release()

	ev := eventOf(qev)
	err = p.run(ctx, tx, h, stepsOf(qev), func(ctx context.Context, tx pgx.Tx) error { return h.fn(ctx, tx, ev) })
	if err != nil {
		return h.retryIn(err, qev.Attempt)
	}
	return p.recordProcessed(ctx, tx, h, qev)
}

// recordProcessed appends the audit record of an event h processed.
func (p *Pipeline) recordProcessed(ctx context.Context, tx pgx.Tx, h *handler, qev *queue.Event) error {
	return p.record(ctx, tx, qev, AuditProcessed, map[string]any{"handler": h.name, "attempt": qev.Attempt})
}

// batchKey is the consumer's BatchKey: events go to calls of their
// handler's batch function, at most its MaxBatch at a time, when it has
// one and their claims were won in this transaction by claimAll. Any
// other event (a duplicate, one without a handler, one whose downstream
// failed it before) runs alone through work: a call that the downstream
// failed while its breaker stayed closed is deferred whole, so its events
// then run apart, and one that the downstream rejects holds none back.
func (p *Pipeline) batchKey(qev *queue.Event) (key string, limit int) {
	c, ok := qev.Prepared.(*preparedClaim)
	if !ok || !c.First || c.Err != nil {
		return "", 0
	}
	h := p.handlerFor(qev.Source, qev.Type)
	if h == nil || h.batch == nil || c.pair.Consumer != h.name || qev.Deferrals > 0 {
		return "", 0
	}
	return h.source + "\x00" + h.typ, h.maxBatch
}

// workBatch is the consumer's BatchHandler: it runs events that batchKey
// grouped, all of one handler, in one call of its batch function (through
// its breaker, within its timeout), and records their audit. If it fails,
// the consumer rolls its writes back and runs the events again through
// work, one by one; a deferral defers them all.
func (p *Pipeline) workBatch(ctx context.Context, tx pgx.Tx, qevs []*queue.Event) (err error) {
	h := p.handlerFor(qevs[0].Source, qevs[0].Type)
	ended := p.startAttempts(ctx, h, qevs)
	defer func() {
		// A panic is the consumer's to recover; the attempts end on the way.
		r := recover()
		if r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
		ended(err)
		if r != nil {
			panic(r)
		}
	}()
	release, err := h.acquire(ctx)
	if err != nil {
		return err
	}
	defer release()
	evs := make([]Event, len(qevs))
	for i, qev := range qevs {
		evs[i] = eventOf(qev)
	}
	err = p.run(ctx, tx, h, stepsOf(qevs...), func(ctx context.Context, tx pgx.Tx) error { return h.batch(ctx, tx, evs) })
	for i := 0; err == nil && i < len(qevs); i++ {
		err = p.recordProcessed(ctx, tx, h, qevs[i])
	}
	return err
}

// eventOf is what a handler sees of a queued event.
func eventOf(qev *queue.Event) Event {
	return Event{
		Source: qev.Source, ID: qev.ID, Type: qev.Type, OrderingKey: qev.OrderingKey,
		Body: qev.Body, Headers: qev.Headers, ReceivedAt: qev.ReceivedAt,
		Attempt: qev.Attempt, MaxAttempts: qev.MaxAttempts, Errors: qev.Errors, Deferrals: qev.Deferrals,
	}
}

// backoffSteps are the steps of Config.Backoff that a downstream's failure
// defers a call's events by (the largest among them). plain, their
// attempt, is for a failure of the outage's (one that opened the breaker);
// counted adds one per earlier counted deferral, for a failure that left
// the breaker closed, so that an event that the downstream keeps
// rejecting alone waits longer each time (up to Backoff.Max) without
// spending attempts.
type backoffSteps struct{ plain, counted int }

func stepsOf(qevs ...*queue.Event) backoffSteps {
	var s backoffSteps
	for _, qev := range qevs {
		s.plain = max(s.plain, qev.Attempt)
		s.counted = max(s.counted, qev.Attempt+qev.Deferrals)
	}
	return s
}

// claim is the event's idempotency claim for consumer (a handler's name,
// or UnhandledConsumer): the one claimAll made for its transaction, or,
// for an event that came without (a consumer without Prepare), one of its
// own.
func (p *Pipeline) claim(ctx context.Context, tx pgx.Tx, consumer string, qev *queue.Event) (first bool, err error) {
	if c, ok := qev.Prepared.(*preparedClaim); ok && c.pair.Consumer == consumer {
		return c.First, c.Err
	}
	return p.claims.Claim(ctx, tx, consumer, idempotency.Key(qev.Source, qev.ID))
}

// preparedClaim is an event's claim, made by claimAll.
type preparedClaim struct {
	pair idempotency.Pair
	idempotency.ClaimResult
}

// claimAll claims, in one statement at the start of a worker transaction,
// every event of it that has a handler or that CompleteUnhandled is to
// complete (under UnhandledConsumer), so that events cost no claim
// statement of their own; unclaim then takes back the claims of those the
// transaction does not complete (their savepoints do not cover the
// claims). A rescued event, which comes alone, waits for its claim at
// most rescuedClaimWait (see claimRescued). It is the consumer's Prepare.
func (p *Pipeline) claimAll(ctx context.Context, tx pgx.Tx, evs []*queue.Event) error {
	handlers := make([]*handler, len(evs))
	for i, ev := range evs {
		handlers[i] = p.handlerFor(ev.Source, ev.Type)
	}
	paused, err := p.pausedUnnamed(ctx, tx, evs, handlers)
	if err != nil {
		return err
	}
	pairs := make([]idempotency.Pair, 0, len(evs))
	claimed := make([]*queue.Event, 0, len(evs))
	for i, ev := range evs {
		ev.Prepared = nil
		h := handlers[i]
		switch {
		case h == nil && ev.Handler == "" && p.cfg.Unhandled == CompleteUnhandled:
			pairs = append(pairs, idempotency.Pair{Consumer: UnhandledConsumer, Key: idempotency.Key(ev.Source, ev.ID)})
			claimed = append(claimed, ev)
		case h == nil:
		case ev.Handler != h.name && paused[h.name]:
			ev.Prepared = pausedHandler(h.name)
		default:
			pairs = append(pairs, idempotency.Pair{Consumer: h.name, Key: idempotency.Key(ev.Source, ev.ID)})
			claimed = append(claimed, ev)
		}
	}
	if len(pairs) == 0 {
		return nil
	}
	claim := p.claims.ClaimAll
	if len(evs) == 1 && evs[0].Rescued {
		claim = p.claimRescued
	}
	results, err := claim(ctx, tx, pairs)
	if errors.Is(err, errClaimHeld) {
		evs[0].Prepared = claimHeld{}
		return nil
	}
	if err != nil {
		return err
	}
	for i, ev := range claimed {
		ev.Prepared = &preparedClaim{pair: pairs[i], ClaimResult: results[i]}
	}
	return nil
}

// claimHeld marks, in Event.Prepared, a rescued event whose idempotency
// claim is held by the transaction of the run that lost its lease, still
// open (see claimRescued): it goes back unrun, its attempt given back.
type claimHeld struct{}

// errClaimHeld is the reason recorded for a claimHeld event's deferral.
var errClaimHeld = errors.New("its last run's transaction, whose lease expired, is still open on the server and holds its idempotency claim")

// rescuedClaimWait bounds how long a rescued event's claim waits for the
// lost run's transaction.
const rescuedClaimWait = time.Second

// claimRescued is ClaimAll for a rescued event (the only event of its
// transaction), waiting at most rescuedClaimWait for a lock. The run that
// lost the event's lease may still be inside its transaction, its claim
// written but not committed: a worker whose process stalls, or whose host
// vanished while the server keeps its session open, until TCP gives up,
// hours later by default. Waiting on that claim unbounded would take this
// worker for as long; each rescued event of a stalled batch would take
// another, until none is left. When the wait runs out (or the session's
// shorter statement_timeout) it returns errClaimHeld, with the claim
// undone and the transaction usable.
func (p *Pipeline) claimRescued(ctx context.Context, tx pgx.Tx, pairs []idempotency.Pair) ([]idempotency.ClaimResult, error) {
	// The lock_timeout the transaction had is put back by name, not with
	// SET ... TO DEFAULT: that is the value RESET would give, which lacks a
	// SET the session made itself (a pool's AfterConnect, say), and the
	// handler that runs next would go without it.
	var previous string
	b := &pgx.Batch{}
	b.Queue(`SAVEPOINT wharf_rescued_claim`)
	b.Queue(`SELECT current_setting('lock_timeout'), set_config('lock_timeout', $1, true)`,
		fmt.Sprint(rescuedClaimWait.Milliseconds())).QueryRow(func(row pgx.Row) error {
		return row.Scan(&previous, new(string))
	})
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, err
	}
	results, err := p.claims.ClaimAll(ctx, tx, pairs)
	var pgErr *pgconn.PgError
	// lock_not_available: lock_timeout ran out; or query_canceled, not by
	// ctx: a session's statement_timeout shorter than rescuedClaimWait ran
	// out first, and the claim is as held.
	if errors.As(err, &pgErr) && (pgErr.Code == "55P03" || pgErr.Code == "57014" && ctx.Err() == nil) {
		// ROLLBACK TO also undoes the set_config.
		if _, err := tx.Exec(ctx, `ROLLBACK TO SAVEPOINT wharf_rescued_claim`); err != nil {
			return nil, err
		}
		return nil, errClaimHeld
	}
	if err != nil {
		return nil, err
	}
	b = &pgx.Batch{}
	b.Queue(`SELECT set_config('lock_timeout', $1, true)`, previous)
	b.Queue(`RELEASE SAVEPOINT wharf_rescued_claim`)
	return results, tx.SendBatch(ctx, b).Close()
}

// pausedHandler marks, in Event.Prepared, an event whose handler is
// paused although its row does not name that handler, so the fetch let
// it through: it goes back unrun (see pausedUnnamed).
type pausedHandler string

// pausedHandlerWait is how long an event held back by pausedHandler is put
// back for: it is fetched again after that, and runs if the pause is over.
const pausedHandlerWait = 5 * time.Second

// pausedUnnamed returns which handlers are paused among those that would
// run an event of evs (handlers[i] runs evs[i]) whose row names another
// handler, or none (an event stored before its route existed). A fetch
// holds back only the events whose row names a paused handler; these are
// the rest of a paused handler's events. It sends nothing when every row
// names its handler.
func (p *Pipeline) pausedUnnamed(ctx context.Context, tx pgx.Tx, evs []*queue.Event, handlers []*handler) (map[string]bool, error) {
	var names []string
	for i, ev := range evs {
		if h := handlers[i]; h != nil && ev.Handler != h.name {
			names = append(names, h.name)
		}
	}
	if len(names) == 0 {
		return nil, nil
	}
	return p.queue.PausedHandlersTx(ctx, tx, names)
}

// unclaim takes back the claims claimAll won for events the transaction
// does not complete, so that their next attempts run. It is the
// consumer's Unprepare.
func (p *Pipeline) unclaim(ctx context.Context, tx pgx.Tx, evs []*queue.Event) error {
	var won []idempotency.Pair
	for _, ev := range evs {
		if c, ok := ev.Prepared.(*preparedClaim); ok && c.First {
			won = append(won, c.pair)
		}
	}
	return p.claims.Unclaim(ctx, tx, won)
}

// run calls fn, the handler's function bound to its events, within the
// handler's timeout and through its breaker, and turns the breaker's
// answers into deferrals: an open breaker, or a failure it counts, is the
// downstream's fault, not the event's, so the event waits without
// spending an attempt. steps pick the deferral's backoff. A handler
// that returns nil after one of its statements failed gets
// queue.ErrTxAborted, as the consumer will record it.
func (p *Pipeline) run(ctx context.Context, tx pgx.Tx, h *handler, steps backoffSteps, fn func(context.Context, pgx.Tx) error) error {
	if l := p.limits[h.downstream]; l != nil {
		if st, err := p.breakers.State(h.downstream); err == nil && st.State == breaker.StateOpen && time.Now().Before(st.Until) {
			// Turned away as the breaker would turn it away, without a
			// turn of the rate limit: the calls after the outage need them.
			return queue.Defer(st.Until, &breaker.OpenError{Breaker: h.downstream, State: breaker.StateOpen, Until: st.Until})
		}
		// Before the Timeout starts: the wait is not the handler's.
		if err := l.wait(ctx, maxWaitInTx); err != nil {
			return err
		}
	}
	restore := func() error { return nil }
	handlerTx := tx
	if h.timeout > 0 {
		var err error
		if restore, err = setStatementTimeout(ctx, tx, h.timeout); err != nil {
			return err
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, h.timeout)
		defer cancel()
		handlerTx = detachedTx{tx}
	}
	err := p.call(ctx, h, steps, func(ctx context.Context) error { return fn(ctx, handlerTx) })
	switch {
	case err != nil:
		return err
	case queue.Aborted(tx):
		return queue.ErrTxAborted
	}
	return restore()
}

// setStatementTimeout sets statement_timeout for the rest of tx and returns
// a func that restores the previous value, for the events after this one;
// if the event fails, rolling back its savepoint restores it anyway.
func setStatementTimeout(ctx context.Context, tx pgx.Tx, d time.Duration) (restore func() error, err error) {
	var previous string
	err = tx.QueryRow(ctx, `SELECT current_setting('statement_timeout'), set_config('statement_timeout', $1, true)`,
		fmt.Sprint(d.Milliseconds())).Scan(&previous, new(string))
	if err != nil {
		return nil, err
	}
	return func() error {
		_, err := tx.Exec(context.WithoutCancel(ctx), `SELECT set_config('statement_timeout', $1, true)`, previous)
		return err
	}, nil
}

// call runs the handler's call through its breaker, if it has one.
//
// A failure the breaker counts defers the call's events. One that left
// the breaker closed may be theirs alone (a downstream that rejects this
// payload), so it counts a deferral, and each makes them wait a step
// longer; one that opened it (the failure that tripped it, or a failed
// probe) belongs to the outage, like the calls the open breaker turns
// away, and counts nothing: the backlog drains at once when the
// downstream is back.
func (p *Pipeline) call(ctx context.Context, h *handler, steps backoffSteps, call func(context.Context) error) error {
	if h.downstream == "" {
		return call(ctx)
	}
	err := p.breakers.Execute(ctx, h.downstream, call)
	var open *breaker.OpenError
	switch {
	case errors.As(err, &open):
		return queue.Defer(open.Until, err)
	case errors.Is(err, breaker.ErrDownstream):
		if st, stErr := p.breakers.State(h.downstream); stErr != nil || st.State != breaker.StateClosed {
			return queue.Defer(time.Now().Add(p.cfg.Backoff.Delay(steps.plain)), err)
		}
		return queue.DeferCounted(time.Now().Add(p.cfg.Backoff.Delay(steps.counted)), err)
	}
	return err
}

// retryIn applies the handler's own backoff to a failure that the queue
// would otherwise retry on its schedule; deferrals, permanent failures and
// explicit RetryIn delays pass through.
func (h *handler) retryIn(err error, attempt int) error {
	var deferred *queue.DeferError
	var permanent *queue.PermanentError
	var retry *queue.RetryError
	if h.backoff == nil || errors.As(err, &deferred) || errors.As(err, &permanent) || errors.As(err, &retry) {
		return err
	}
	return queue.RetryIn(h.backoff.Delay(attempt), err)
}
