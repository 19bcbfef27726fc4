package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"time"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/internal/benchkit"
)

var drainCommand = &command{
	name:    "drain",
	summary: "workers empty a preloaded backlog, against a DELETE ... SKIP LOCKED loop",
	help: `Preloads -n 1 KB events (as Pipeline.Handler stores them) and times
Pipeline.Run emptying the queue: fetch under a lease, idempotency claim, the
handler, completion, one commit per worker transaction. The handler does one
INSERT into a business table in the event's transaction (-handler insert),
one INSERT for all the events of a call (-handler batch, registered with
HandleBatch), or nothing (-handler noop; the claim is still made).

The baseline preloads the same events into a plain table and empties it with
the hand-written loop on as many connections as wharf has workers in all:
per batch of 100, DELETE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED
LIMIT 100) RETURNING, the same claims and the same business rows, COMMIT.
It writes the business rows with one INSERT for the batch (-baseline-insert
batch), or with one INSERT per event, a round trip each, as a handler does
(-baseline-insert per-event).
-n is split into -rounds, alternating which side goes first; -warmup events
are drained by both first, untimed.

With -procs N the workers run in N processes of their own (this binary,
re-executed), -workers each, all on the one database: how wharf scales out.

Reports events/s, the time to empty, wharf ÷ baseline, and checks that
every preloaded event was processed exactly once (the business table has
exactly one row per event, nothing dead-lettered, nothing left queued).

Examples:
  wharf bench drain                          # 100,000 events, INSERT handler, 4 workers
  wharf bench drain -handler noop -n 50000   # the queue's own cost
  for p in 1 2 4; do wharf bench drain -procs $p -workers 2 -json; done`,
	flags: func(fs *flag.FlagSet, e *env) func(context.Context, *env, []string) error {
		o := &drainOptions{}
		o.register(fs, e)
		fs.IntVar(&o.events, "n", 100_000, "events to drain, per side")
		fs.StringVar(&o.handler, "handler", "insert", "what the handler does: insert (one INSERT into a business table), batch (a HandleBatch handler: one INSERT for all the events of a call) or noop")
		fs.StringVar(&o.baselineInsert, "baseline-insert", "batch", "how the baseline writes its business rows: batch (one INSERT per batch) or per-event")
		fs.IntVar(&o.workers, "workers", wharf.DefaultWorkers, "wharf workers per process; the baseline gets -workers × max(1, -procs) connections")
		fs.IntVar(&o.procs, "procs", 0, "worker processes; 0 runs the workers in this process")
		fs.IntVar(&o.rounds, "rounds", 2, "rounds -n is split into, alternating which side goes first")
		fs.IntVar(&o.warmup, "warmup", 400, "events drained by each side before timing starts")
		return func(ctx context.Context, e *env, _ []string) error { return benchDrain(ctx, e, o) }
	},
}

type drainOptions struct {
	benchOptions
	events, workers, procs, rounds, warmup int
	handler, baselineInsert                string
}

func (o *drainOptions) validate() error {
	switch {
	case o.events < 1:
		return fmt.Errorf("-n %d: want at least 1 event", o.events)
	case !benchkit.ValidHandler(o.handler):
		return fmt.Errorf("-handler %q: want insert, batch or noop", o.handler)
	case o.baselineInsert != "batch" && o.baselineInsert != "per-event":
		return fmt.Errorf("-baseline-insert %q: want batch or per-event", o.baselineInsert)
	case o.workers < 1:
		return fmt.Errorf("-workers %d: want at least 1", o.workers)
	case o.procs < 0 || o.procs > 64:
		return fmt.Errorf("-procs %d: want 0 (in this process) to 64", o.procs)
	case o.rounds < 1 || o.rounds > o.events:
		return fmt.Errorf("-rounds %d: want 1 to -n", o.rounds)
	case o.warmup < 0:
		return fmt.Errorf("-warmup %d: must not be negative", o.warmup)
	}
	return nil
}

// drainSide is one side's figures.
type drainSide struct {
	Events    int64   `json:"events"`
	Seconds   float64 `json:"seconds_to_empty"`
	PerSecond float64 `json:"events_per_second"`
}

// drainChecks count where the events ended up, warm-up included: each
// must have been processed exactly once.
type drainChecks struct {
	Preloaded        int64 `json:"preloaded"`
	HandlerCalls     int64 `json:"handler_calls"`
	Processed        int64 `json:"processed"`          // wharf.processed_events
	BusinessRows     int64 `json:"business_rows"`      // bench_orders (insert handler)
	DeadLetters      int64 `json:"dead_letters"`       // wharf.dead_letters
	QueueLeft        int64 `json:"queue_left"`         // wharf.queue
	BaselineClaimed  int64 `json:"baseline_processed"` // bench_processed_events
	BaselineBusiness int64 `json:"baseline_business_rows"`
	BaselineLeft     int64 `json:"baseline_left"` // bench_events
}

type drainResult struct {
	Mode     string `json:"mode"`
	Database string `json:"database"` // the scratch database, dropped unless -keep
	Handler  string `json:"handler"`
	// BaselineInsert is how the baseline wrote its business rows: batch or per-event.
	BaselineInsert string      `json:"baseline_insert"`
	Workers        int         `json:"workers"` // per process
	Procs          int         `json:"procs"`   // 0: in this process
	Conns          int         `json:"baseline_conns"`
	Rounds         int         `json:"rounds"`
	Wharf          drainSide   `json:"wharf"`
	Baseline       drainSide   `json:"baseline"`
	Ratio          float64     `json:"ratio"` // wharf ÷ baseline events/s
	Checks         drainChecks `json:"checks"`
	Memory         memory      `json:"memory"`
}

// drainer runs wharf's side of one round: until handled events reach the
// target and the queue is empty.
type drainer interface {
	drain(ctx context.Context, events int64) (time.Duration, error)
	handled() int64
	close() error
}

func benchDrain(ctx context.Context, e *env, o *drainOptions) error {
	if err := o.validate(); err != nil {
		return &usageError{"wharf bench drain", err}
	}
	noop := o.handler == "noop"
	conns := o.workers * max(1, o.procs)
	maxConns := conns + 2 // the rounds run one after the other; +2 for the checks and progress
	if o.procs == 0 {
		maxConns = max(conns, o.workers+5) + 2 // the Pipeline's fetcher, maintenance and committers
	}
	return withScratch(ctx, &o.benchOptions, e, int32(maxConns), func(s *scratch) (err error) {
		var w drainer
		if o.procs == 0 {
			local := &localDrainer{pool: s}
			if local.p, err = benchkit.NewPipeline(s.pool, wharf.Config{Workers: o.workers}, o.handler, func(wharf.Event) { local.calls.Add(1) }); err != nil {
				return err
			}
			w = local
		} else {
			w = &procDrainer{opts: o, database: s.name, stderr: e.stderr, pool: s.pool}
		}
		closed := false
		defer func() {
			if !closed {
				err = errors.Join(err, w.close())
			}
		}()
		prog := progress{w: e.stderr, interval: o.progress}
		var ours, theirs time.Duration
		// round drains n events with each side, in the order r says, and
		// returns their times.
		round := func(r, first, n int) (time.Duration, time.Duration, error) {
			if err := benchkit.Preload(ctx, s.pool, first, n); err != nil {
				return 0, 0, err
			}
			var tw, tb time.Duration
			var err error
			for i := range 2 {
				if (i+r)%2 == 0 {
					b := &benchkit.BaselineDrain{Pool: s.pool, Conns: conns, Noop: noop, InsertPerEvent: o.baselineInsert == "per-event"}
					stop := prog.start(ctx, "drain/baseline", b.Processed, backlogOf(s, "bench_events"))
					tb, err = b.Run(ctx)
					stop()
				} else {
					before := w.handled()
					stop := prog.start(ctx, "drain/wharf", func() int64 { return w.handled() - before }, backlogOf(s, "wharf.queue"))
					tw, err = w.drain(ctx, int64(n))
					stop()
				}
				if err != nil {
					return 0, 0, err
				}
			}
			return tw, tb, nil
		}
		if o.warmup > 0 {
			if _, _, err := round(0, 1, o.warmup); err != nil {
				return fmt.Errorf("warm-up: %w", err)
			}
		}
		first := o.warmup + 1
		for r := range o.rounds {
			n := o.events / o.rounds
			if r == o.rounds-1 {
				n = o.events - r*(o.events/o.rounds)
			}
			tw, tb, err := round(r, first, n)
			if err != nil {
				return err
			}
			ours, theirs, first = ours+tw, theirs+tb, first+n
		}
		closed = true
		if err := w.close(); err != nil { // before peakMemory: the processes are waited for
			return err
		}

		res := drainResult{
			Mode: "drain", Database: s.name, Handler: o.handler, BaselineInsert: o.baselineInsert, Workers: o.workers, Procs: o.procs, Conns: conns, Rounds: o.rounds,
			Wharf:    drainSide{Events: int64(o.events), Seconds: ours.Seconds(), PerSecond: float64(o.events) / ours.Seconds()},
			Baseline: drainSide{Events: int64(o.events), Seconds: theirs.Seconds(), PerSecond: float64(o.events) / theirs.Seconds()},
		}
		res.Ratio = ratio(res.Wharf.PerSecond, res.Baseline.PerSecond)
		res.Checks.Preloaded = int64(o.events + o.warmup)
		res.Checks.HandlerCalls = w.handled()
		c := &res.Checks
		for _, q := range []struct {
			into *int64
			sql  string
		}{
			{&c.Processed, `SELECT count(*) FROM wharf.processed_events`},
			{&c.BusinessRows, `SELECT count(*) FROM bench_orders`},
			{&c.DeadLetters, `SELECT count(*) FROM wharf.dead_letters`},
			{&c.QueueLeft, `SELECT count(*) FROM wharf.queue`},
			{&c.BaselineClaimed, `SELECT count(*) FROM bench_processed_events`},
			{&c.BaselineBusiness, `SELECT count(*) FROM bench_orders_baseline`},
			{&c.BaselineLeft, `SELECT count(*) FROM bench_events`},
		} {
			n, err := s.count(context.WithoutCancel(ctx), q.sql)
			if err != nil {
				return err
			}
			*q.into = n
		}
		res.Memory = peakMemory()
		if err := emit(&o.benchOptions, e, res, res.table); err != nil {
			return err
		}
		return res.check()
	})
}

// backlogOf counts the rows of table, for the progress line.
func backlogOf(s *scratch, table string) func(context.Context) (int64, error) {
	return func(ctx context.Context) (int64, error) { return s.count(ctx, "SELECT count(*) FROM "+table) }
}

// check fails the run unless every preloaded event was processed exactly
// once on both sides.
func (r drainResult) check() error {
	c := r.Checks
	want := c.Preloaded
	wantRows := want
	if r.Handler == "noop" {
		wantRows = 0
	}
	if c.Processed != want || c.HandlerCalls != want || c.BusinessRows != wantRows || c.DeadLetters != 0 || c.QueueLeft != 0 {
		return fmt.Errorf("drain check: wharf: %d events preloaded, %d handler calls, %d processed, %d business rows, %d dead letters, %d left in the queue",
			want, c.HandlerCalls, c.Processed, c.BusinessRows, c.DeadLetters, c.QueueLeft)
	}
	if c.BaselineClaimed != want || c.BaselineBusiness != wantRows || c.BaselineLeft != 0 {
		return fmt.Errorf("drain check: baseline: %d events preloaded, %d processed, %d business rows, %d left",
			want, c.BaselineClaimed, c.BaselineBusiness, c.BaselineLeft)
	}
	return nil
}

func (r drainResult) table(w io.Writer) {
	where := "in this process"
	if r.Procs > 0 {
		where = fmt.Sprintf("in %d worker processes", r.Procs)
	}
	fmt.Fprintf(w, "wharf bench drain: %d events of 1 KB, handler %s, %d workers %s, %d rounds, baseline business INSERT per %s\n\n",
		r.Wharf.Events, r.Handler, r.Workers, where, r.Rounds, strings.TrimPrefix(r.BaselineInsert, "per-"))
	writeTable(w, "\tevents\ttime to empty\tevents/s",
		fmt.Sprintf("wharf\t%d\t%.2fs\t%.0f", r.Wharf.Events, r.Wharf.Seconds, r.Wharf.PerSecond),
		fmt.Sprintf("baseline (DELETE … SKIP LOCKED, %d conns)\t%d\t%.2fs\t%.0f", r.Conns, r.Baseline.Events, r.Baseline.Seconds, r.Baseline.PerSecond))
	c := r.Checks
	fmt.Fprintf(w, "\nratio (wharf ÷ baseline events/s): %.2f×\n", r.Ratio)
	fmt.Fprintf(w, "checks (warm-up included): %d preloaded, %d processed once, %d business rows, %d dead letters, %d left\n",
		c.Preloaded, c.Processed, c.BusinessRows, c.DeadLetters, c.QueueLeft)
	fmt.Fprintln(w, r.Memory)
}

// localDrainer runs the Pipeline in this process.
type localDrainer struct {
	pool  *scratch
	p     *wharf.Pipeline
	calls atomic.Int64
}

func (d *localDrainer) handled() int64 { return d.calls.Load() }

func (d *localDrainer) close() error {
	d.p.Close()
	return nil
}

func (d *localDrainer) drain(ctx context.Context, events int64) (time.Duration, error) {
	return benchkit.PipelineDrain(ctx, d.pool.pool, d.p, d.calls.Load, d.calls.Load()+events)
}
