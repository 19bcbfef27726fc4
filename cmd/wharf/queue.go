package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/internal/sqlschema"
	"github.com/wharfhq/wharf/queue"
)

var queueCommand = &command{
	name:    "queue",
	summary: "look at the queue: counts by state, source and type; the events waiting",
	help: `wharf queue shows what waits in the queue (wharf.queue): events stored by the
endpoints and not yet processed, retried or dead-lettered. It only reads.`,
	subcommands: []*command{queueStatsCommand, queueListCommand},
}

var queueStatsCommand = &command{
	name:    "stats",
	summary: "count events by state, source and type; paused and unhandled ones",
	help: `Counts the queue's events by state (due, scheduled for a retry, running,
exhausted), by source and by kind (source and type); says how long the oldest
due event has waited; lists the types stored without a handler (no handler of
the process that stored them took them) and the paused sources and handlers.

Examples:
  wharf queue stats
  wharf queue stats --json | jq .oldest_due_age_seconds`,
	flags: func(fs *flag.FlagSet, e *env) func(context.Context, *env, []string) error {
		var db dbOptions
		db.register(fs, e)
		asJSON := fs.Bool("json", false, "print the stats as one JSON object")
		return func(ctx context.Context, e *env, _ []string) error {
			return db.withQueue(ctx, func(_ *pgxpool.Pool, q *queue.Queue) error {
				st, err := q.Stats(ctx)
				if err != nil {
					return err
				}
				out := newStatsOutput(st)
				if *asJSON {
					return printJSON(e.stdout, out)
				}
				return out.print(e.stdout)
			})
		}
	},
}

// withQueue runs fn with a queue on the pool of a migrated schema: a
// Pipeline's, so that what the CLI queues (a replay) is checked for
// duplicates as the service's own enqueues are: an event processed since it
// died is not queued again.
func (o *dbOptions) withQueue(ctx context.Context, fn func(pool *pgxpool.Pool, q *queue.Queue) error) error {
	return o.withPool(ctx, func(pool *pgxpool.Pool) error {
		p, err := wharf.New(pool, wharf.Config{Schema: o.schema})
		if err != nil {
			return err
		}
		defer p.Close()
		return fn(pool, p.Queue())
	})
}

// counts is queue.SourceStats with JSON names.
type counts struct {
	Due       int64 `json:"due"`
	Scheduled int64 `json:"scheduled"`
	Running   int64 `json:"running"`
	Exhausted int64 `json:"exhausted"`
}

type kindCounts struct {
	Source string `json:"source"`
	Type   string `json:"type"`
	counts
}

type unhandledKind struct {
	Source  string `json:"source"`
	Type    string `json:"type"`
	Waiting int64  `json:"waiting"`
}

type pauseOutput struct {
	Source   string    `json:"source,omitempty"`
	Handler  string    `json:"handler,omitempty"`
	Reason   string    `json:"reason"`
	PausedAt time.Time `json:"paused_at"`
}

// statsOutput is queue.Stats as printed: maps keyed by Kind become lists
// sorted by source and type, so the JSON has a stable shape.
type statsOutput struct {
	counts
	OldestDueAgeSeconds float64           `json:"oldest_due_age_seconds"`
	BySource            map[string]counts `json:"by_source"`
	ByKind              []kindCounts      `json:"by_kind"`
	Unhandled           []unhandledKind   `json:"unhandled"`
	Paused              []pauseOutput     `json:"paused"`
}

func newStatsOutput(st queue.Stats) statsOutput {
	out := statsOutput{
		counts:              counts(st.SourceStats),
		OldestDueAgeSeconds: st.OldestDueAge.Seconds(),
		BySource:            map[string]counts{},
		ByKind:              []kindCounts{},
		Unhandled:           []unhandledKind{},
		Paused:              []pauseOutput{},
	}
	for s, c := range st.BySource {
		out.BySource[s] = counts(c)
	}
	for _, k := range sortedKinds(st.ByKind) {
		out.ByKind = append(out.ByKind, kindCounts{k.Source, k.Type, counts(st.ByKind[k])})
	}
	for _, k := range sortedKinds(st.Unhandled) {
		out.Unhandled = append(out.Unhandled, unhandledKind{k.Source, k.Type, st.Unhandled[k]})
	}
	for _, p := range st.Paused {
		out.Paused = append(out.Paused, pauseOutput{p.Source, p.Handler, p.Reason, p.PausedAt})
	}
	return out
}

func sortedKinds[V any](m map[queue.Kind]V) []queue.Kind {
	return slices.SortedFunc(maps.Keys(m), func(a, b queue.Kind) int {
		return cmp.Or(cmp.Compare(a.Source, b.Source), cmp.Compare(a.Type, b.Type))
	})
}

func (s statsOutput) print(w io.Writer) error {
	return table(w, func(tw io.Writer) {
		fmt.Fprintf(tw, "due %d, scheduled %d, running %d, exhausted %d", s.Due, s.Scheduled, s.Running, s.Exhausted)
		if s.OldestDueAgeSeconds > 0 {
			fmt.Fprintf(tw, "; the oldest due event has waited %s", time.Duration(s.OldestDueAgeSeconds*float64(time.Second)).Round(time.Millisecond))
		}
		fmt.Fprintln(tw)
		if len(s.ByKind) > 0 {
			fmt.Fprintln(tw, "\nSOURCE\tTYPE\tDUE\tSCHEDULED\tRUNNING\tEXHAUSTED")
			for _, source := range slices.Sorted(maps.Keys(s.BySource)) {
				c := s.BySource[source]
				fmt.Fprintf(tw, "%s\t(all)\t%d\t%d\t%d\t%d\n", cell(source), c.Due, c.Scheduled, c.Running, c.Exhausted)
				for _, k := range s.ByKind {
					if k.Source == source {
						fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\n", cell(source), cell(k.Type), k.Due, k.Scheduled, k.Running, k.Exhausted)
					}
				}
			}
		}
		if len(s.Unhandled) > 0 {
			fmt.Fprintln(tw, "\nUNHANDLED: stored without a handler\nSOURCE\tTYPE\tWAITING")
			for _, u := range s.Unhandled {
				fmt.Fprintf(tw, "%s\t%s\t%d\n", cell(u.Source), cell(u.Type), u.Waiting)
			}
		}
		if len(s.Paused) > 0 {
			fmt.Fprintln(tw, "\nPAUSED\tSINCE\tREASON")
			for _, p := range s.Paused {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", queue.PauseTarget{Source: p.Source, Handler: p.Handler}, p.PausedAt.Local().Format(time.DateTime), cell(p.Reason))
			}
		}
	})
}

var queueListCommand = &command{
	name:    "ls",
	summary: "list queued events, oldest first",
	help: `Lists the events in the queue, oldest first, with their state, attempts, the
size of their stored body and their last error. It reads wharf.queue and
wharf.queue_payloads and changes nothing.

DEFERRALS counts the runs that a downstream failed while its circuit breaker
stayed closed: they spend no attempt and record no error, so an event that one
downstream keeps rejecting shows here, waiting longer each time.

States: due (waiting for a worker), scheduled (waiting for a retry's backoff or
a delayed start), running (leased by a worker), exhausted (out of attempts,
kept in the queue because no dead letter queue takes them).

Examples:
  wharf queue ls
  wharf queue ls --source stripe --state scheduled
  wharf queue ls --handler billing/invoice.paid --limit 200 --json
  wharf queue ls --after 1234      # the next page: events after id 1234`,
	flags: func(fs *flag.FlagSet, e *env) func(context.Context, *env, []string) error {
		var db dbOptions
		db.register(fs, e)
		var f queueListFilter
		fs.StringVar(&f.source, "source", "", "only events of this source")
		fs.StringVar(&f.eventType, "type", "", "only events of this type")
		fs.StringVar(&f.handler, "handler", "", "only events recorded for this handler")
		fs.Func("state", "only events in this state: due, scheduled, running or exhausted", func(s string) error {
			if !slices.Contains([]string{"due", "scheduled", "running", "exhausted"}, s) {
				return fmt.Errorf("want due, scheduled, running or exhausted")
			}
			f.state = s
			return nil
		})
		fs.IntVar(&f.limit, "limit", 50, "the most events to list")
		fs.Int64Var(&f.after, "after", 0, "list the events after this queue id (the last id of the previous page)")
		asJSON := fs.Bool("json", false, "print the events as a JSON array")
		return func(ctx context.Context, e *env, _ []string) error {
			if f.limit < 1 {
				return &usageError{"wharf queue ls", fmt.Errorf("-limit %d: want at least 1", f.limit)}
			}
			return db.withPool(ctx, func(pool *pgxpool.Pool) error {
				events, err := listQueue(ctx, pool, db.schema, f)
				if err != nil {
					return err
				}
				if *asJSON {
					return printJSON(e.stdout, events)
				}
				return printQueueList(e.stdout, events)
			})
		}
	},
}

type queueListFilter struct {
	source, eventType, handler, state string
	limit                             int
	after                             int64
}

// queuedEvent is one row of queue ls.
type queuedEvent struct {
	ID          int64     `json:"id"`
	Source      string    `json:"source"`
	EventID     string    `json:"event_id"`
	Type        string    `json:"type"`
	Handler     string    `json:"handler"`
	State       string    `json:"state"`
	Attempt     int       `json:"attempt"`
	MaxAttempts int       `json:"max_attempts"`
	Deferrals   int       `json:"deferrals"`
	ReceivedAt  time.Time `json:"received_at"`
	RunAt       time.Time `json:"run_at"`
	BodyBytes   int64     `json:"body_bytes"`
	LastError   string    `json:"last_error"`
}

func listQueue(ctx context.Context, pool *pgxpool.Pool, schema string, f queueListFilter) ([]queuedEvent, error) {
	rows, err := pool.Query(ctx, sqlschema.Render(queueListSQL, schema), f.source, f.eventType, f.handler, f.state, f.limit, f.after)
	if err != nil {
		return nil, fmt.Errorf("list the queue: %w", err)
	}
	events, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (queuedEvent, error) {
		var ev queuedEvent
		err := row.Scan(&ev.ID, &ev.Source, &ev.EventID, &ev.Type, &ev.Handler, &ev.State,
			&ev.Attempt, &ev.MaxAttempts, &ev.Deferrals, &ev.ReceivedAt, &ev.RunAt, &ev.BodyBytes, &ev.LastError)
		return ev, err
	})
	if err != nil {
		return nil, fmt.Errorf("list the queue: %w", err)
	}
	return events, nil
}

func printQueueList(w io.Writer, events []queuedEvent) error {
	return printList(w, "no events", "ID\tSOURCE\tEVENT\tTYPE\tHANDLER\tSTATE\tATTEMPT\tDEFERRALS\tRECEIVED\tRUN AT\tBYTES\tLAST ERROR", events, func(tw io.Writer, ev queuedEvent) {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%d/%d\t%d\t%s\t%s\t%d\t%s\n", ev.ID, cell(ev.Source), cell(ev.EventID), cell(ev.Type),
			cell(cmp.Or(ev.Handler, "-")), ev.State, ev.Attempt, ev.MaxAttempts, ev.Deferrals, ev.ReceivedAt.Local().Format(time.DateTime),
			ev.RunAt.Local().Format(time.DateTime), ev.BodyBytes, truncate(ev.LastError, 60))
	})
}

// truncate puts s on one line, its control characters escaped (cell), and
// shortens it to n runes, with an ellipsis, for a table cell.
func truncate(s string, n int) string {
	s = cell(strings.Join(strings.Fields(s), " "))
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}
