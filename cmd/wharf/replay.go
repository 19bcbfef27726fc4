package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/dlq"
	"github.com/wharfhq/wharf/eventlog"
	"github.com/wharfhq/wharf/internal/sqlschema"
	"github.com/wharfhq/wharf/queue"
)

var dlqReplayCommand = &command{
	name:    "replay",
	summary: "send dead letters back to the queue, attempts reset",
	args:    " [ID...]",
	help: `Sends dead-letter entries back to the queue with their attempts reset, by id or
by filter (every dead entry matching the flags, oldest first, in batches, with
a progress line on stderr). Each entry is marked replayed in the transaction
that queues it, so a replay run twice, or concurrently, queues an event once;
entries no longer dead are skipped. Above --confirm-above entries it asks for
confirmation on stdin, unless --yes; Ctrl-C at the question replays nothing. A
replay by filter replays the entries it counted (and asked about), not those
that die meanwhile.

It does what Pipeline.Replay does, with one difference, since the service's
Config is not at hand: the "replayed" audit record goes into a delivery's
audit trail only when that trail exists (the service runs with Config.Audit
on and recorded the event's dead-lettering); --no-audit writes none.

Examples:
  wharf dlq replay 42 43
  wharf dlq replay --source stripe --error "connection refused" --since 2h
  wharf dlq replay --handler billing/invoice.paid --rate 50 --yes
  wharf dlq replay --all --yes`,
	flags: func(fs *flag.FlagSet, e *env) func(context.Context, *env, []string) error {
		const path = "wharf dlq replay"
		var db dbOptions
		db.register(fs, e)
		var f dlq.Filter
		filterFlags(fs, &f)
		all := fs.Bool("all", false, "replay every dead entry (when no id and no filter is given)")
		var ask confirmation
		ask.register(fs, "replayed")
		var opts dlq.ReplayOptions
		fs.Float64Var(&opts.MaxPerSecond, "rate", 0, "the most entries to replay per second, so the consumers and the downstream are not flooded; 0 for no cap")
		fs.IntVar(&opts.BatchSize, "batch", dlq.DefaultReplayBatch, fmt.Sprintf("entries per transaction of a replay by filter, 1 to %d; with --rate, at most the rate", dlq.MaxListLimit))
		noAudit := fs.Bool("no-audit", false, "write no \"replayed\" audit records")
		return func(ctx context.Context, e *env, args []string) error {
			ids, err := parseIDs(path, args)
			if err != nil {
				return err
			}
			filtered := f != (dlq.Filter{})
			switch {
			case len(ids) > 0 && (filtered || *all):
				return &usageError{path, errors.New("give entry ids or filter flags (or --all), not both")}
			case len(ids) == 0 && !filtered && !*all:
				return &usageError{path, errors.New("give entry ids, filter flags, or --all")}
			case opts.MaxPerSecond < 0:
				return &usageError{path, fmt.Errorf("-rate %g: want 0 (no cap) or more", opts.MaxPerSecond)}
			case opts.BatchSize < 1 || opts.BatchSize > dlq.MaxListLimit:
				return &usageError{path, fmt.Errorf("-batch %d: want 1 to %d", opts.BatchSize, dlq.MaxListLimit)}
			}
			if err := checkTimeRange(path, f); err != nil {
				return err
			}
			return db.withQueue(ctx, func(pool *pgxpool.Pool, q *queue.Queue) error {
				var cfg dlq.Config
				if !*noAudit {
					log, err := eventlog.New(pool, eventlog.Config{Schema: db.schema})
					if err != nil {
						return err
					}
					defer log.Close()
					defer log.Notify() // after the replays' commits: wake projections of the audit log
					cfg.OnReplay = auditReplays(db.schema, log)
				}
				cfg.Schema = db.schema
				d, err := dlq.New(pool, cfg)
				if err != nil {
					return err
				}
				if len(ids) > 0 {
					if err := requireEntries(ctx, pool, db.schema, ids); err != nil {
						return err
					}
					return replayIDs(ctx, e, d, q, ids, ask)
				}
				return replayMatching(ctx, e, d, q, f, opts, ask)
			})
		}
	},
}

// replayIDs replays the entries ids, which requireEntries has found.
func replayIDs(ctx context.Context, e *env, d *dlq.DLQ, q *queue.Queue, ids []int64, ask confirmation) error {
	if err := confirmReplay(ctx, e, ask, int64(len(ids))); err != nil {
		return err
	}
	res, err := d.Replay(ctx, q, ids...)
	if err != nil {
		return err
	}
	printReplayResult(e, res)
	return nil
}

// replayMatching replays the dead entries matching f, with a progress line
// per batch: those that matched when it counted them, bounded by the
// newest of them, so that entries dying while the question waits are not
// replayed unconfirmed.
func replayMatching(ctx context.Context, e *env, d *dlq.DLQ, q *queue.Queue, f dlq.Filter, opts dlq.ReplayOptions, ask confirmation) error {
	f.Status = dlq.StatusDead
	f, n, err := d.Pin(ctx, f)
	if err != nil {
		return err
	}
	if n == 0 {
		fmt.Fprintln(e.stdout, "no dead entries match")
		return nil
	}
	if err := confirmReplay(ctx, e, ask, n); err != nil {
		return err
	}
	opts.Progress = func(replayed, total int64) {
		fmt.Fprintf(e.stderr, "replayed %d of %d\n", replayed, total)
	}
	res, err := d.ReplayMatching(ctx, q, f, opts)
	printReplayResult(e, res) // what was done, also when stopped by an error or Ctrl-C
	return err
}

// confirmReplay asks before replaying n entries, unless ask skips it.
func confirmReplay(ctx context.Context, e *env, ask confirmation, n int64) error {
	return ask.ask(ctx, e, n, fmt.Sprintf("replay %d dead-letter entries into the queue?", n), "replayed")
}

func printReplayResult(e *env, res dlq.ReplayResult) {
	fmt.Fprintf(e.stdout, "replayed %d", res.Replayed)
	if res.Skipped > 0 {
		fmt.Fprintf(e.stdout, ", skipped %d (no longer dead: already replayed or discarded)", res.Skipped)
	}
	fmt.Fprintln(e.stdout)
}

// auditReplays is the dlq.Config.OnReplay of a replay from the CLI: like
// the Pipeline's with Config.Audit on, it appends a "replayed" record to
// each replayed delivery's audit trail, in the replay's transaction, but
// only to trails that exist, since the CLI cannot know whether the service
// audits.
func auditReplays(schema string, log *eventlog.Log) func(context.Context, pgx.Tx, []dlq.Replayed) error {
	return func(ctx context.Context, tx pgx.Tx, replayed []dlq.Replayed) error {
		streams := make([]string, len(replayed))
		for i, r := range replayed {
			streams[i] = wharf.DeliveryStream(r.Source, r.EventID)
		}
		rows, err := tx.Query(ctx, sqlschema.Render(auditedStreamsSQL, schema), streams)
		if err != nil {
			return fmt.Errorf("find audit trails: %w", err)
		}
		audited, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("find audit trails: %w", err)
		}
		for i, r := range replayed {
			if !slices.Contains(audited, streams[i]) {
				continue
			}
			data, err := json.Marshal(map[string]any{"entry": r.ID, "at": time.Now().UTC()})
			if err != nil {
				return err
			}
			ev := eventlog.NewEvent{Type: wharf.AuditReplayed, Data: data, Metadata: eventlog.Metadata{
				SourceEventID: r.EventID, Actor: r.Source, Extra: map[string]string{"via": "wharf dlq replay"}}}
			if _, err := log.AppendTx(ctx, tx, streams[i], eventlog.AnyVersion, ev); err != nil {
				return err
			}
		}
		return nil
	}
}

var dlqDiscardCommand = &command{
	name:    "discard",
	summary: "set dead letters aside without replaying them",
	args:    " ID...",
	help: `Sets dead-letter entries aside: they stop counting as dead and are never
replayed by a filter, but stay in the table for audit until purged. Entries
that are not dead (already replayed or discarded) are left as they are.

Examples:
  wharf dlq discard 42
  wharf dlq discard 42 43 44`,
	flags: func(fs *flag.FlagSet, e *env) func(context.Context, *env, []string) error {
		var db dbOptions
		db.register(fs, e)
		return func(ctx context.Context, e *env, args []string) error {
			ids, err := parseIDs("wharf dlq discard", args)
			if err != nil {
				return err
			}
			if len(ids) == 0 {
				return &usageError{"wharf dlq discard", errors.New("want at least one entry id")}
			}
			return db.withDLQ(ctx, dlq.Config{}, func(pool *pgxpool.Pool, d *dlq.DLQ) error {
				if err := requireEntries(ctx, pool, db.schema, ids); err != nil {
					return err
				}
				n, err := d.Discard(ctx, ids...)
				if err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "discarded %d", n)
				if skipped := len(ids) - n; skipped > 0 {
					fmt.Fprintf(e.stdout, ", skipped %d (not dead: already replayed or discarded)", skipped)
				}
				fmt.Fprintln(e.stdout)
				return nil
			})
		}
	},
}

var dlqPurgeCommand = &command{
	name:    "purge",
	summary: "delete replayed and discarded entries older than a duration",
	help: `Deletes replayed and discarded entries whose replay or discard is older than
--older-than, in batches. Dead entries are never purged. The rows go for good,
and a discarded entry's row is the only copy of its event: above
--confirm-above entries it asks for confirmation on stdin, unless --yes, and
deletes exactly the entries it counted. --dry-run only counts them.

Examples:
  wharf dlq purge --older-than 720h --dry-run    # how many, 30 days and older
  wharf dlq purge --older-than 720h --yes`,
	flags: func(fs *flag.FlagSet, e *env) func(context.Context, *env, []string) error {
		var db dbOptions
		db.register(fs, e)
		olderThan := fs.Duration("older-than", 0, "how long ago the replay or discard must be (required; e.g. 720h)")
		dryRun := fs.Bool("dry-run", false, "print how many entries would be purged, and delete nothing")
		var ask confirmation
		ask.register(fs, "purged")
		return func(ctx context.Context, e *env, _ []string) error {
			if *olderThan <= 0 {
				return &usageError{"wharf dlq purge", fmt.Errorf("-older-than %s: want a positive duration, e.g. 720h", *olderThan)}
			}
			return db.withDLQ(ctx, dlq.Config{}, func(_ *pgxpool.Pool, d *dlq.DLQ) error {
				n, before, err := d.CountPurgeable(ctx, *olderThan)
				if err != nil {
					return err
				}
				if *dryRun {
					fmt.Fprintf(e.stdout, "would purge %d entries replayed or discarded more than %s ago (before %s); nothing deleted\n",
						n, *olderThan, before.Format(time.RFC3339))
					return nil
				}
				if n > 0 {
					question := fmt.Sprintf("delete %d replayed or discarded entries for good (a discarded entry's row is its event's only copy)?", n)
					if err := ask.ask(ctx, e, n, question, "purged"); err != nil {
						return err
					}
					if n, err = d.PurgeBefore(ctx, before); err != nil {
						return err
					}
				}
				fmt.Fprintf(e.stdout, "purged %d entries replayed or discarded more than %s ago\n", n, *olderThan)
				return nil
			})
		}
	},
}
