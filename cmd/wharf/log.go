package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wharfhq/wharf/eventlog"
)

var logCommand = &command{
	name:    "log",
	summary: "follow the event log, or read one stream (a delivery's audit trail)",
	help: `wharf log reads the append-only event log (wharf.event_log): the audit trail
of every delivery when the service runs with Config.Audit on (streams
delivery:<source>:<event id>), and the service's own streams.

Each event is printed on one line: position, stream, version, type, when it
was recorded, and its data (JSON).`,
	subcommands: []*command{logTailCommand, logStreamCommand},
}

// withLog runs fn with the event log of a migrated schema.
func (o *dbOptions) withLog(ctx context.Context, fn func(l *eventlog.Log) error) error {
	return o.withPool(ctx, func(pool *pgxpool.Pool) error {
		l, err := eventlog.New(pool, eventlog.Config{Schema: o.schema})
		if err != nil {
			return err
		}
		defer l.Close()
		return fn(l)
	})
}

// printEvent prints ev on one line, its stream, type and data escaped
// (cell).
func printEvent(w io.Writer, ev eventlog.Event) {
	fmt.Fprintf(w, "%d %s %d %s %s %s\n", ev.Position, cell(ev.Stream), ev.Version, cell(ev.Type),
		ev.RecordedAt.Local().Format(time.RFC3339Nano), cell(string(ev.Data)))
}

var logTailCommand = &command{
	name:    "tail",
	summary: "print events as they are appended, until Ctrl-C",
	help: `Prints the events appended to the log from now on (or, with --from-start, the
whole log first), in the order every reader of the log sees them, until
Ctrl-C. It never skips an event that commits late.

A transaction left open in this database (a long batch job, a psql session
idle in a transaction) holds the tail back until it ends; when more than
--lag-warn committed events wait behind one, a warning on stderr names its
backend pid and age.

Examples:
  wharf log tail
  wharf log tail --category delivery:stripe:      # the audit trails of stripe's events
  wharf log tail --from-start --category order-`,
	flags: func(fs *flag.FlagSet, e *env) func(context.Context, *env, []string) error {
		var db dbOptions
		db.register(fs, e)
		fromStart := fs.Bool("from-start", false, "print the whole log first, then follow it")
		category := fs.String("category", "", "only streams whose name starts with this prefix")
		poll := fs.Duration("poll", time.Second, "how often to look for new events when idle")
		lagWarn := fs.Int64("lag-warn", 1000, "warn when more committed events than this are held back by an open transaction")
		return func(ctx context.Context, e *env, _ []string) error {
			if *poll <= 0 {
				return &usageError{"wharf log tail", fmt.Errorf("-poll %s: want a positive duration", *poll)}
			}
			return db.withLog(ctx, func(l *eventlog.Log) error {
				err := tail(ctx, e, l, *fromStart, *category, *poll, *lagWarn)
				if ctx.Err() != nil {
					return nil // Ctrl-C is how a tail ends
				}
				return err
			})
		}
	},
}

// tail prints the log's events from its head (or its start) until ctx
// ends, polling when idle, and warns when the tail is held back.
func tail(ctx context.Context, e *env, l *eventlog.Log, fromStart bool, category string, poll time.Duration, lagWarn int64) error {
	var cursor eventlog.Cursor
	if !fromStart {
		var err error
		if cursor, err = l.Head(ctx); err != nil {
			return err
		}
	}
	read := l.ReadAll
	if category != "" {
		read = func(ctx context.Context, after eventlog.Cursor, limit int) ([]eventlog.Event, eventlog.Cursor, error) {
			return l.ReadCategory(ctx, category, after, limit)
		}
	}
	warned := false
	for {
		events, next, err := read(ctx, cursor, eventlog.MaxReadLimit)
		if err != nil {
			return err
		}
		for _, ev := range events {
			printEvent(e.stdout, ev)
		}
		cursor = next
		if len(events) == eventlog.MaxReadLimit {
			continue
		}
		lag, err := l.TailLag(ctx)
		if err != nil {
			return err
		}
		switch {
		case lag.Events > lagWarn && !warned:
			fmt.Fprintf(e.stderr, "wharf log tail: %d committed events are held back by a transaction open for %s (pid %d, prepared %q): %s\n",
				lag.Events, lag.HolderAge.Round(time.Second), lag.HolderPID, lag.HolderPreparedGID, lag.HolderQuery)
			warned = true
		case lag.Events <= lagWarn && warned:
			fmt.Fprintln(e.stderr, "wharf log tail: the tail is no longer held back")
			warned = false
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(poll):
		}
	}
}

var logStreamCommand = &command{
	name:    "stream",
	summary: "print one stream's events, in version order",
	args:    " NAME",
	help: `Prints the events of one stream, in version order. A delivery's audit trail is
the stream delivery:<source>:<event id>: received, each failed attempt,
processed or dead-lettered, replayed.

Examples:
  wharf log stream delivery:stripe:evt_1NG8
  wharf log stream --from 10 order-42`,
	flags: func(fs *flag.FlagSet, e *env) func(context.Context, *env, []string) error {
		var db dbOptions
		db.register(fs, e)
		from := fs.Int64("from", 1, "the first version to print")
		return func(ctx context.Context, e *env, args []string) error {
			if len(args) != 1 {
				return &usageError{"wharf log stream", errors.New("want one stream name")}
			}
			stream := args[0]
			return db.withLog(ctx, func(l *eventlog.Log) error {
				version := *from
				for {
					events, err := l.ReadStream(ctx, stream, version, eventlog.MaxReadLimit)
					if err != nil {
						return err
					}
					if len(events) == 0 && version == *from {
						return fmt.Errorf("stream %q has no events from version %d", stream, version)
					}
					for _, ev := range events {
						printEvent(e.stdout, ev)
					}
					if len(events) < eventlog.MaxReadLimit {
						return nil
					}
					version = events[len(events)-1].Version + 1
				}
			})
		}
	},
}
