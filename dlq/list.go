package dlq

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Filter selects entries. Zero fields do not filter.
type Filter struct {
	// Status selects entries by status. Defaults to StatusDead.
	Status Status
	Source string
	Type   string
	// Handler matches the handler name recorded with the entry.
	Handler string
	// ErrorContains matches entries any of whose attempts' errors contains
	// this text, case-insensitively.
	ErrorContains string
	// Since and Until bound the time the entry died: Since <= dead_at < Until.
	Since, Until time.Time
	// UpTo keeps the entries listed at or after the entry it names (newest
	// first): (dead_at, id) <= (UpTo.DeadAt, UpTo.ID). Fixed to the newest
	// matching entry before a bulk replay is confirmed (DLQ.Pin), it keeps
	// entries that die meanwhile out of the replay. Defaults to nil: no
	// bound.
	UpTo *Cursor
}

// Page bounds one listing.
type Page struct {
	// Limit is the most entries to return, 1 to 1000. Defaults to 50.
	Limit int
	// After continues a listing after the entry this cursor names.
	After *Cursor
	// OmitBody leaves Entry.Body nil, for a listing that shows no bodies:
	// a body can be megabytes, and is then not read at all. Defaults to
	// false: bodies are read.
	OmitBody bool
}

// args returns the filter's SQL arguments ($1 to $9 of filterSQL).
func (f Filter) args() ([]any, error) {
	status := f.Status
	if status == "" {
		status = StatusDead
	}
	switch status {
	case StatusDead, StatusReplayed, StatusDiscarded:
	default:
		return nil, fmt.Errorf("%w: status %q", ErrInvalidFilter, status)
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && !f.Since.Before(f.Until) {
		return nil, fmt.Errorf("%w: Since %s is not before Until %s", ErrInvalidFilter, f.Since.Format(time.RFC3339Nano), f.Until.Format(time.RFC3339Nano))
	}
	var upToAt *time.Time
	var upToID int64
	if f.UpTo != nil {
		upToAt, upToID = &f.UpTo.DeadAt, f.UpTo.ID
	}
	return []any{string(status), textOrNil(f.Source), textOrNil(f.Type), textOrNil(f.Handler),
		likePattern(f.ErrorContains), timeOrNil(f.Since), timeOrNil(f.Until), upToAt, upToID}, nil
}

func textOrNil(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func timeOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// likePattern makes a substring match of s for ILIKE ... ESCAPE '\', with
// the pattern characters in s matched literally.
func likePattern(s string) *string {
	if s == "" {
		return nil
	}
	escaped := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
	p := "%" + escaped + "%"
	return &p
}

// List returns entries matching f, newest first, and the cursor to pass as
// Page.After for the next page (nil when this page is the last).
func (d *DLQ) List(ctx context.Context, f Filter, p Page) ([]Entry, *Cursor, error) {
	args, err := f.args()
	if err != nil {
		return nil, nil, err
	}
	limit := p.Limit
	if limit == 0 {
		limit = DefaultListLimit
	}
	if limit < 1 || limit > MaxListLimit {
		return nil, nil, fmt.Errorf("%w: Page.Limit %d is outside 1..%d", ErrInvalidFilter, limit, MaxListLimit)
	}
	var afterAt *time.Time
	var afterID int64
	if p.After != nil {
		afterAt, afterID = &p.After.DeadAt, p.After.ID
	}
	query := d.sql.list
	if p.OmitBody {
		query = d.sql.listWithoutBodies
	}
	// One more than asked, to know whether another page follows.
	rows, err := d.pool.Query(ctx, query, append(args, afterAt, afterID, limit+1)...)
	if err != nil {
		return nil, nil, fmt.Errorf("dlq: list: %w", err)
	}
	entries, err := pgx.CollectRows(rows, scanEntry)
	if err != nil {
		return nil, nil, fmt.Errorf("dlq: list: %w", err)
	}
	if len(entries) <= limit {
		return entries, nil, nil
	}
	entries = entries[:limit]
	last := entries[limit-1]
	return entries, &Cursor{DeadAt: last.DeadAt, ID: last.ID}, nil
}

// Count returns how many entries match f.
func (d *DLQ) Count(ctx context.Context, f Filter) (int64, error) {
	args, err := f.args()
	if err != nil {
		return 0, err
	}
	var n int64
	if err := d.pool.QueryRow(ctx, d.sql.count, args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("dlq: count: %w", err)
	}
	return n, nil
}

// Pin bounds f by the newest entry it matches now (Filter.UpTo) and
// counts the entries of that set: what an operator confirms before a bulk
// replay (wharf dlq replay, the web console). Entries that die afterwards
// stay out of the set, whatever the clock of the process asking, since the
// bound is an entry's own (dead_at, id) as the database recorded it. When
// nothing matches, f is returned unbounded, with 0.
func (d *DLQ) Pin(ctx context.Context, f Filter) (Filter, int64, error) {
	newest, _, err := d.List(ctx, f, Page{Limit: 1, OmitBody: true})
	if err != nil || len(newest) == 0 {
		return f, 0, err
	}
	f.UpTo = &Cursor{DeadAt: newest[0].DeadAt, ID: newest[0].ID}
	n, err := d.Count(ctx, f)
	return f, n, err
}

// Get returns one entry, or an error wrapping ErrNotFound.
func (d *DLQ) Get(ctx context.Context, id int64) (Entry, error) {
	rows, err := d.pool.Query(ctx, d.sql.get, id)
	if err != nil {
		return Entry{}, fmt.Errorf("dlq: get %d: %w", id, err)
	}
	e, err := pgx.CollectExactlyOneRow(rows, scanEntry)
	if errors.Is(err, pgx.ErrNoRows) {
		return Entry{}, fmt.Errorf("dlq: get %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return Entry{}, fmt.Errorf("dlq: get %d: %w", id, err)
	}
	return e, nil
}
