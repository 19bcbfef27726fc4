package main

import (
	"context"
	"errors"
	"flag"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wharfhq/wharf/queue"
)

// pauseTargetFlags registers --source and --handler, of which a pause or a
// resume takes exactly one; the function it returns says which, or gives
// a usage error of the command path. verb says what the command does to
// the events ("hold back", "let workers take again").
func pauseTargetFlags(fs *flag.FlagSet, path, verb string) func() (queue.PauseTarget, error) {
	var t queue.PauseTarget
	fs.StringVar(&t.Source, "source", "", "the source whose events to "+verb+" (e.g. stripe)")
	fs.StringVar(&t.Handler, "handler", "", "the handler whose events to "+verb+" (e.g. billing/invoice.paid, as in wharf queue ls)")
	return func() (queue.PauseTarget, error) {
		if (t.Source == "") == (t.Handler == "") {
			return t, &usageError{path, errors.New("want exactly one of --source and --handler")}
		}
		return t, nil
	}
}

var pauseCommand = &command{
	name:    "pause",
	summary: "stop workers from taking a source's or a handler's events",
	help: `wharf pause holds back the events of one source or one handler: the workers of
every replica stop fetching them from their next fetch on (events already
running finish). The endpoints keep storing new events, which wait in the
queue, attempts untouched, until wharf resume. The pause is stored in the
database (wharf.queue_pauses), so it outlives restarts and deploys.
Pausing what is already paused keeps the first time and takes the new reason.
When no queued event, dead letter or processed event has the source or the
handler, a warning on stderr says the name may be misspelled; the pause is
made anyway, since pausing before any traffic is legitimate.

Examples:
  wharf pause --source stripe --reason "incident 42: billing API down"
  wharf pause --handler billing/invoice.paid
  wharf queue stats     # lists what is paused`,
	flags: func(fs *flag.FlagSet, e *env) func(context.Context, *env, []string) error {
		var db dbOptions
		db.register(fs, e)
		target := pauseTargetFlags(fs, "wharf pause", "hold back")
		reason := fs.String("reason", "", "why, for whoever looks at queue stats")
		return func(ctx context.Context, e *env, _ []string) error {
			t, err := target()
			if err != nil {
				return err
			}
			return db.withQueue(ctx, func(_ *pgxpool.Pool, q *queue.Queue) error {
				if err := q.Pause(ctx, t, *reason); err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "paused %s: workers leave its events in the queue from their next fetch\n", t)
				used, err := q.InUse(ctx, t)
				if err != nil {
					return err
				}
				if !used {
					fmt.Fprintf(e.stderr, "wharf pause: warning: no queued event, dead letter or processed event has %s: is it misspelled? (wharf queue stats and wharf dlq ls show the names in use; paused anyway, as a pause before any traffic is legitimate)\n", t)
				}
				return nil
			})
		}
	},
}

var resumeCommand = &command{
	name:    "resume",
	summary: "let workers take a paused source's or handler's events again",
	help: `wharf resume ends a pause made by wharf pause: idle workers find the waiting
events at their next poll.

Examples:
  wharf resume --source stripe
  wharf resume --handler billing/invoice.paid`,
	flags: func(fs *flag.FlagSet, e *env) func(context.Context, *env, []string) error {
		var db dbOptions
		db.register(fs, e)
		target := pauseTargetFlags(fs, "wharf resume", "let workers take again")
		return func(ctx context.Context, e *env, _ []string) error {
			t, err := target()
			if err != nil {
				return err
			}
			return db.withQueue(ctx, func(_ *pgxpool.Pool, q *queue.Queue) error {
				was, err := q.Resume(ctx, t)
				if err != nil {
					return err
				}
				if !was {
					fmt.Fprintf(e.stdout, "%s was not paused\n", t)
					return nil
				}
				fmt.Fprintf(e.stdout, "resumed %s\n", t)
				return nil
			})
		}
	},
}
