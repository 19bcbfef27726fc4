package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"time"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/internal/benchkit"
)

var ingestCommand = &command{
	name:    "ingest",
	summary: "signed webhooks over HTTP into Pipeline.Handler, against a one-INSERT endpoint",
	help: `Serves Pipeline.Handler on 127.0.0.1 and posts signed 1 KB Standard Webhooks
requests to it from -c concurrent senders (each sends its next request when
the last one is answered) for -d. Each request is acknowledged only once its
event is committed. The baseline is a plain endpoint on the same HTTP server
that reads the body the same way, verifies the same signature and commits one
INSERT per request, on a pool of -conns connections. The two alternate in
-rounds slices of -d each, so drift hits both. Then, for one slice, the
same senders post to a ceiling: the same endpoint storing nothing, what
the HTTP work alone allows on the machine. The whole takes about 2 × -d
and a slice.

Reports requests/s, the acknowledgement latency as the sender sees it
(p50/p95/p99 of 202 answers), errors by status, wharf ÷ baseline, and the
ceiling ÷ baseline: the most any endpoint that stores could gain here. On
Linux it also reports the CPU time per request of the bench process
(senders, server, wharf's committers) and, when the server runs on this
machine, of the postgres processes that serve the scratch database: its
backends, each counted for the time it used in the measured slices, and
the server's own processes (WAL writer, checkpointer), which other
databases' work keeps busy too, so keep the server otherwise idle.

Examples:
  wharf bench ingest                      # 32 senders, 10s each side
  wharf bench ingest -c 64 -d 30s -json   # more senders, longer, for a script
  DATABASE_URL=postgres://bench@db:5432/postgres wharf bench ingest -c 16`,
	flags: func(fs *flag.FlagSet, e *env) func(context.Context, *env, []string) error {
		o := &ingestOptions{}
		o.register(fs, e)
		fs.IntVar(&o.concurrency, "c", 32, "concurrent senders")
		fs.DurationVar(&o.duration, "d", 10*time.Second, "how long each side (wharf, baseline) is measured")
		fs.IntVar(&o.rounds, "rounds", 2, "slices each side's -d is split into, alternating with the other side")
		fs.IntVar(&o.conns, "conns", 0, "the baseline's pool size (wharf needs only its group committers); defaults to -c, at most 32")
		return func(ctx context.Context, e *env, _ []string) error { return benchIngest(ctx, e, o) }
	},
}

type ingestOptions struct {
	benchOptions
	concurrency, rounds, conns int
	duration                   time.Duration
}

func (o *ingestOptions) validate() error {
	switch {
	case o.concurrency < 1:
		return fmt.Errorf("-c %d: want at least 1 sender", o.concurrency)
	case o.duration <= 0:
		return fmt.Errorf("-d %s: want a positive duration", o.duration)
	case o.rounds < 1:
		return fmt.Errorf("-rounds %d: want at least 1", o.rounds)
	case o.conns < 0:
		return fmt.Errorf("-conns %d: must not be negative", o.conns)
	}
	if o.conns == 0 {
		o.conns = min(o.concurrency, 32)
	}
	return nil
}

// ingestSide is one endpoint's figures.
type ingestSide struct {
	Requests  int64            `json:"requests"` // answered, any status
	Accepted  int64            `json:"accepted"` // 202
	Stored    int64            `json:"stored"`   // rows in its table, warm-up left out
	Seconds   float64          `json:"seconds"`
	PerSecond float64          `json:"requests_per_second"`
	Ack       latency          `json:"ack_latency"`
	Errors    map[string]int64 `json:"errors_by_status"`
	CPU       *requestCPU      `json:"cpu_per_request,omitempty"` // Linux only
}

// requestCPU is the CPU time one request cost, in microseconds: in the
// bench process (the senders, the HTTP server and, for wharf, its group
// committers), and in Postgres, whole server, when it runs on this machine.
type requestCPU struct {
	Bench    float64  `json:"bench_us"`
	Postgres *float64 `json:"postgres_us,omitempty"`
}

type ingestResult struct {
	Mode        string     `json:"mode"`
	Database    string     `json:"database"` // the scratch database, dropped unless -keep
	Concurrency int        `json:"concurrency"`
	Duration    float64    `json:"duration_seconds"` // per side
	Rounds      int        `json:"rounds"`
	Conns       int        `json:"baseline_conns"`
	Wharf       ingestSide `json:"wharf"`
	Baseline    ingestSide `json:"baseline"`
	Ceiling     ingestSide `json:"ceiling"` // the endpoint that stores nothing
	Ratio       float64    `json:"ratio"`   // wharf ÷ baseline requests/s
	// CeilingRatio is ceiling ÷ baseline requests/s.
	CeilingRatio float64 `json:"ceiling_ratio"`
	Memory       memory  `json:"memory"`
}

func benchIngest(ctx context.Context, e *env, o *ingestOptions) error {
	if err := o.validate(); err != nil {
		return &usageError{"wharf bench ingest", err}
	}
	// wharf and the baseline never run at once, so they share one pool:
	// the baseline's connections, plus wharf's committers and notifier.
	return withScratch(ctx, &o.benchOptions, e, int32(o.conns+3), func(s *scratch) error {
		p, err := benchkit.NewPipeline(s.pool, wharf.Config{}, benchkit.HandlerNoop, nil)
		if err != nil {
			return err
		}
		defer p.Close()
		mux := http.NewServeMux()
		mux.Handle("POST /wharf", p.Handler(benchkit.Source))
		mux.Handle("POST /baseline", benchkit.PlainHandler(s.pool))
		mux.Handle("POST /ceiling", benchkit.NullHandler())
		base, stop, err := serve(mux)
		if err != nil {
			return err
		}
		defer stop()
		snd := newSender(o.concurrency)
		defer snd.close()

		// Warm up: connections opened (HTTP and database), statements
		// prepared. Not counted.
		warm := newTally("warm")
		snd.sendN(ctx, base+"/baseline", 4*o.concurrency, warm)
		snd.sendN(ctx, base+"/wharf", 4*o.concurrency, warm)
		if warm.accepted.Load() != int64(8*o.concurrency) {
			return fmt.Errorf("warm-up: %d of %d requests accepted; errors by status: %v", warm.accepted.Load(), 8*o.concurrency, warm.errorsByStatus())
		}

		ours, theirs := newTally("wharf"), newTally("baseline")
		scope := func() map[int]bool { return s.serverPIDs(ctx) }
		prog := progress{w: e.stderr, interval: o.progress}
		slice := o.duration / time.Duration(o.rounds)
		for r := range o.rounds {
			sides := []*tally{theirs, ours}
			if r%2 == 1 {
				sides[0], sides[1] = ours, theirs
			}
			for _, t := range sides {
				done := prog.start(ctx, fmt.Sprintf("ingest/%s", t.prefix), t.answered.Load, nil)
				t.cpu.during(scope, func() { snd.sendFor(ctx, base+"/"+t.prefix, slice, t) })
				done()
			}
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		ceiling := newTally("ceiling")
		snd.sendN(ctx, base+"/ceiling", 4*o.concurrency, warm)
		done := prog.start(ctx, "ingest/ceiling", ceiling.answered.Load, nil)
		ceiling.cpu.during(scope, func() { snd.sendFor(ctx, base+"/ceiling", slice, ceiling) })
		done()
		if err := ctx.Err(); err != nil {
			return err
		}
		res := ingestResult{
			Mode: "ingest", Database: s.name, Concurrency: o.concurrency, Duration: o.duration.Seconds(), Rounds: o.rounds, Conns: o.conns,
			Wharf: ingestFigures(ours), Baseline: ingestFigures(theirs), Ceiling: ingestFigures(ceiling),
		}
		if res.Wharf.Stored, err = s.count(ctx, `SELECT count(*) FROM wharf.queue`); err != nil {
			return err
		}
		if res.Baseline.Stored, err = s.count(ctx, `SELECT count(*) FROM bench_events`); err != nil {
			return err
		}
		res.Wharf.Stored -= int64(4 * o.concurrency)
		res.Baseline.Stored -= int64(4 * o.concurrency)
		res.Ratio = ratio(res.Wharf.PerSecond, res.Baseline.PerSecond)
		res.CeilingRatio = ratio(res.Ceiling.PerSecond, res.Baseline.PerSecond)
		res.Memory = peakMemory()
		if err := emit(&o.benchOptions, e, res, res.table); err != nil {
			return err
		}
		return res.check()
	})
}

func ingestFigures(t *tally) ingestSide {
	side := ingestSide{
		Requests: t.answered.Load(), Accepted: t.accepted.Load(),
		Seconds: t.elapsed.Seconds(), PerSecond: float64(t.answered.Load()) / t.elapsed.Seconds(),
		Ack: summarize(t.latencies.Sorted()), Errors: t.errorsByStatus(),
	}
	if t.cpu.self > 0 && side.Requests > 0 {
		perRequest := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(side.Requests) }
		side.CPU = &requestCPU{Bench: perRequest(t.cpu.self)}
		if !t.cpu.postgresMissed {
			pg := perRequest(t.cpu.postgres)
			side.CPU.Postgres = &pg
		}
	}
	return side
}

// check fails the run when an acknowledged event is not stored, the one
// thing a webhook endpoint must never do, or when a request was not
// accepted: requests/s counts every answer, so a side that answered some
// requests with an error (a quick 503, say) would be credited for them.
func (r ingestResult) check() error {
	return eachSide(r.Wharf, r.Baseline, func(name string, side ingestSide) error {
		if side.Stored != side.Accepted {
			return fmt.Errorf("ingest check: %s accepted %d requests but stored %d events", name, side.Accepted, side.Stored)
		}
		if len(side.Errors) > 0 || side.Accepted != side.Requests {
			return fmt.Errorf("ingest check: %s accepted %d of %d requests answered; errors by status: %s",
				name, side.Accepted, side.Requests, formatErrors(side.Errors))
		}
		return nil
	})
}

func (r ingestResult) table(w io.Writer) {
	fmt.Fprintf(w, "wharf bench ingest: %d senders, %s per side in %d rounds, 1 KB signed Standard Webhooks over HTTP\n\n",
		r.Concurrency, time.Duration(r.Duration*float64(time.Second)), r.Rounds)
	writeTable(w, "\trequests\treq/s\tack p50\tp95\tp99\terrors",
		r.Wharf.row("wharf"), r.Baseline.row(fmt.Sprintf("baseline (1 INSERT/request, %d conns)", r.Conns)),
		r.Ceiling.row("ceiling (stores nothing)"))
	fmt.Fprintf(w, "\nratio (wharf ÷ baseline req/s): %.2f×; ceiling ÷ baseline: %.2f×\n", r.Ratio, r.CeilingRatio)
	if r.Wharf.CPU != nil {
		fmt.Fprintf(w, "CPU per request (bench process / Postgres): wharf %s, baseline %s, ceiling %s\n",
			r.Wharf.CPU, r.Baseline.CPU, r.Ceiling.CPU)
	}
	fmt.Fprintf(w, "%s\n", r.Memory)
}

func (c *requestCPU) String() string {
	if c == nil {
		return "-"
	}
	if c.Postgres == nil {
		return fmt.Sprintf("%.0f µs / -", c.Bench)
	}
	return fmt.Sprintf("%.0f / %.0f µs", c.Bench, *c.Postgres)
}

func (s ingestSide) row(name string) string {
	return fmt.Sprintf("%s\t%d\t%.0f\t%.1f ms\t%.1f ms\t%.1f ms\t%s", name, s.Requests, s.PerSecond,
		s.Ack.P50, s.Ack.P95, s.Ack.P99, formatErrors(s.Errors))
}

// formatErrors is "none" or "503: 12, transport: 1".
func formatErrors(byStatus map[string]int64) string {
	if len(byStatus) == 0 {
		return "none"
	}
	var s string
	for _, k := range slices.Sorted(maps.Keys(byStatus)) {
		if s != "" {
			s += ", "
		}
		s += fmt.Sprintf("%s: %d", k, byStatus[k])
	}
	return s
}
