package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/wharfhq/wharf/idempotency"
)

// ErrInvalidPause is wrapped by the errors of Pause and Resume about a
// PauseTarget that names no source or handler, both, or an unusable one.
var ErrInvalidPause = errors.New("queue: invalid pause target")

// PauseTarget names what a pause holds back: the events of one source, or
// the events recorded for one handler (NewEvent.Handler). Set exactly one
// of the two.
type PauseTarget struct {
	Source  string
	Handler string
}

func (t PauseTarget) String() string {
	if t.Source != "" {
		return fmt.Sprintf("source %q", t.Source)
	}
	return fmt.Sprintf("handler %q", t.Handler)
}

func (t PauseTarget) validate() error {
	if (t.Source == "") == (t.Handler == "") {
		return fmt.Errorf("%w: set exactly one of Source and Handler", ErrInvalidPause)
	}
	if reason := checkText(t.Source, MaxSourceLen, false); reason != "" {
		return fmt.Errorf("%w: source %s", ErrInvalidPause, reason)
	}
	if reason := checkText(t.Handler, MaxHandlerLen, false); reason != "" {
		return fmt.Errorf("%w: handler %s", ErrInvalidPause, reason)
	}
	return nil
}

// Pause is a paused source or handler.
type Pause struct {
	PauseTarget
	Reason   string
	PausedAt time.Time
}

// Pause stops the workers of every process sharing the database from
// fetching target's events, from their next fetch on; events already
// fetched run to the end. Enqueue keeps storing the events, which wait,
// attempts untouched, until Resume. Pausing what is already paused keeps
// the first pause's time and takes the new reason.
func (q *Queue) Pause(ctx context.Context, target PauseTarget, reason string) error {
	if err := target.validate(); err != nil {
		return err
	}
	if reason := checkText(reason, 1<<10, false); reason != "" {
		return fmt.Errorf("%w: reason %s", ErrInvalidPause, reason)
	}
	if _, err := q.pool.Exec(ctx, q.sql.pause, target.Source, target.Handler, reason); err != nil {
		return fmt.Errorf("queue: pause %s: %w", target, err)
	}
	return nil
}

// Resume lets workers fetch target's events again and reports whether it
// was paused. Idle workers find the waiting events at their next poll
// (ConsumerConfig.PollInterval).
func (q *Queue) Resume(ctx context.Context, target PauseTarget) (bool, error) {
	if err := target.validate(); err != nil {
		return false, err
	}
	tag, err := q.pool.Exec(ctx, q.sql.resume, target.Source, target.Handler)
	if err != nil {
		return false, fmt.Errorf("queue: resume %s: %w", target, err)
	}
	return tag.RowsAffected() > 0, nil
}

// InUse reports whether any queued event, dead letter or processed event
// in the queue's schema has target's source or handler. Pause takes a name
// none has, since pausing before any traffic is legitimate, but such a name
// is likely misspelled (pausing "Stripe" holds back nothing of "stripe"):
// wharf pause and the web console warn about it. The schema must hold the
// dead letter and idempotency tables too, as wharf.Migrate makes it.
func (q *Queue) InUse(ctx context.Context, target PauseTarget) (bool, error) {
	if err := target.validate(); err != nil {
		return false, err
	}
	var used bool
	var err error
	if target.Source != "" {
		// The keys idempotency.Key makes for target.Source start with prefix.
		prefix := strings.TrimSuffix(idempotency.Key(target.Source, "-"), "-")
		past := prefix[:len(prefix)-1] + ";"
		err = q.pool.QueryRow(ctx, q.sql.sourceInUse, target.Source, prefix, past).Scan(&used)
	} else {
		err = q.pool.QueryRow(ctx, q.sql.handlerInUse, target.Handler).Scan(&used)
	}
	if err != nil {
		return false, fmt.Errorf("queue: look for %s in the queue, dead letters and processed events: %w", target, err)
	}
	return used, nil
}

// Pauses lists what is paused, oldest first.
func (q *Queue) Pauses(ctx context.Context) ([]Pause, error) {
	rows, err := q.pool.Query(ctx, q.sql.pauses)
	if err != nil {
		return nil, fmt.Errorf("queue: list pauses: %w", err)
	}
	pauses, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Pause, error) {
		var p Pause
		err := row.Scan(&p.Source, &p.Handler, &p.Reason, &p.PausedAt)
		return p, err
	})
	if err != nil {
		return nil, fmt.Errorf("queue: list pauses: %w", err)
	}
	return pauses, nil
}

// PausedHandlersTx reports which of names are paused handlers, reading in
// tx. A fetch holds back the events whose row names a paused handler; a
// worker that runs an event under another handler's name than its row
// records (none, for an event stored before its handler existed) asks
// here, so that the pause holds that event back too.
func (q *Queue) PausedHandlersTx(ctx context.Context, tx pgx.Tx, names []string) (map[string]bool, error) {
	rows, err := tx.Query(ctx, q.sql.pausedHandlers, names)
	if err != nil {
		return nil, fmt.Errorf("queue: read paused handlers: %w", err)
	}
	paused := map[string]bool{}
	var name string
	if _, err := pgx.ForEachRow(rows, []any{&name}, func() error {
		paused[name] = true
		return nil
	}); err != nil {
		return nil, fmt.Errorf("queue: read paused handlers: %w", err)
	}
	return paused, nil
}
