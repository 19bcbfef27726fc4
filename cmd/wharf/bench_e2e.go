package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/internal/benchkit"
)

var e2eCommand = &command{
	name:    "e2e",
	summary: "sustained ingest and work together: enqueue-to-handler latency, backlog over time",
	help: `Runs the ingest of 'wharf bench ingest' (-c senders for -d) while the workers
of 'wharf bench drain' process what arrives, as a service in production
does: Pipeline.Handler and Pipeline.Run in this process, on one pool. When
the senders stop, it waits until every accepted event is processed.

The baseline does the same with the plain endpoint (one INSERT per request)
and the hand-written DELETE ... SKIP LOCKED loop on -workers connections,
which has no wake-up and polls an empty table every -baseline-poll. The
baseline runs first, then wharf, -d each.

Reports the requests/s accepted, the events/s processed (accepted events ÷
time from the first request to the last event processed), the latency from
the event's INSERT to its handler starting (p50/p95/p99), the backlog
sampled every -sample, how long the backlog took to empty after the senders
stopped, and wharf ÷ baseline.

Examples:
  wharf bench e2e                         # 32 senders, 10s each side, INSERT handler
  wharf bench e2e -c 8 -d 30s -sample 2s  # a lighter, longer load
  wharf bench e2e -json | jq '.wharf.backlog'`,
	flags: func(fs *flag.FlagSet, e *env) func(context.Context, *env, []string) error {
		o := &e2eOptions{}
		o.register(fs, e)
		fs.IntVar(&o.concurrency, "c", 32, "concurrent senders")
		fs.DurationVar(&o.duration, "d", 10*time.Second, "how long each side is sent to")
		fs.StringVar(&o.handler, "handler", "insert", "what the handler does: insert (one INSERT into a business table), batch (a HandleBatch handler: one INSERT for all the events of a call) or noop")
		fs.IntVar(&o.workers, "workers", wharf.DefaultWorkers, "wharf workers; the baseline's drain loop gets as many connections")
		fs.DurationVar(&o.sample, "sample", time.Second, "how often the backlog is sampled")
		fs.DurationVar(&o.poll, "baseline-poll", benchkit.DefaultBaselinePoll, "how long the baseline's loop waits after finding its table empty")
		return func(ctx context.Context, e *env, _ []string) error { return benchE2E(ctx, e, o) }
	},
}

type e2eOptions struct {
	benchOptions
	concurrency, workers   int
	duration, sample, poll time.Duration
	handler                string
}

func (o *e2eOptions) validate() error {
	switch {
	case o.concurrency < 1:
		return fmt.Errorf("-c %d: want at least 1 sender", o.concurrency)
	case o.duration <= 0:
		return fmt.Errorf("-d %s: want a positive duration", o.duration)
	case !benchkit.ValidHandler(o.handler):
		return fmt.Errorf("-handler %q: want insert, batch or noop", o.handler)
	case o.workers < 1:
		return fmt.Errorf("-workers %d: want at least 1", o.workers)
	case o.sample <= 0:
		return fmt.Errorf("-sample %s: want a positive duration", o.sample)
	case o.poll <= 0:
		return fmt.Errorf("-baseline-poll %s: want a positive duration", o.poll)
	}
	return nil
}

// backlogSample is the number of events waiting T seconds after the
// senders started.
type backlogSample struct {
	T      float64 `json:"t"`
	Events int64   `json:"events"`
}

// e2eSide is one side's figures; warm-up left out.
type e2eSide struct {
	Requests    int64            `json:"requests"`
	Accepted    int64            `json:"accepted"`
	Processed   int64            `json:"processed"`
	SendSeconds float64          `json:"send_seconds"`
	TailSeconds float64          `json:"drain_tail_seconds"` // senders stopped → backlog empty
	IngestRate  float64          `json:"requests_per_second"`
	ProcessRate float64          `json:"processed_per_second"`
	Latency     latency          `json:"enqueue_to_handler"`
	Ack         latency          `json:"ack_latency"`
	Errors      map[string]int64 `json:"errors_by_status"`
	Backlog     []backlogSample  `json:"backlog"`
	MaxBacklog  int64            `json:"max_backlog"`
}

type e2eResult struct {
	Mode         string  `json:"mode"`
	Database     string  `json:"database"` // the scratch database, dropped unless -keep
	Concurrency  int     `json:"concurrency"`
	Duration     float64 `json:"duration_seconds"`
	Handler      string  `json:"handler"`
	Workers      int     `json:"workers"`
	Poll         float64 `json:"baseline_poll_ms"`
	Wharf        e2eSide `json:"wharf"`
	Baseline     e2eSide `json:"baseline"`
	Ratio        float64 `json:"ratio"`             // wharf ÷ baseline processed/s
	LatencyRatio float64 `json:"latency_p99_ratio"` // wharf ÷ baseline p99; below 1: wharf is quicker
	Memory       memory  `json:"memory"`
}

// e2eWorkers is one side's processing, for runE2E.
type e2eWorkers struct {
	name      string // and the HTTP path
	table     string // where its backlog waits
	latencies benchkit.Latencies
	measuring atomic.Bool // latencies are recorded once the warm-up is done
	processed func() int64
	// start starts the workers; they stop when ctx ends, sending Run's
	// error to the channel.
	start func(ctx context.Context) <-chan error
	// drained waits until processed reaches target and the backlog is
	// empty.
	drained func(ctx context.Context, target int64, failed <-chan error) error
}

func benchE2E(ctx context.Context, e *env, o *e2eOptions) error {
	if err := o.validate(); err != nil {
		return &usageError{"wharf bench e2e", err}
	}
	noop := o.handler == "noop"
	ingestConns := min(o.concurrency, 32)
	maxConns := max(o.workers+5, ingestConns+o.workers) + 2 // the sides run one after the other
	return withScratch(ctx, &o.benchOptions, e, int32(maxConns), func(s *scratch) error {
		ours := &e2eWorkers{name: "wharf", table: "wharf.queue"}
		var calls atomic.Int64
		p, err := benchkit.NewPipeline(s.pool, wharf.Config{Workers: o.workers}, o.handler, func(ev wharf.Event) {
			if ev.Attempt == 1 && ours.measuring.Load() {
				ours.latencies.Add(time.Since(ev.ReceivedAt))
			}
			calls.Add(1)
		})
		if err != nil {
			return err
		}
		defer p.Close()
		ours.processed = calls.Load
		ours.start = func(ctx context.Context) <-chan error {
			done := make(chan error, 1)
			go func() { done <- p.Run(ctx) }()
			return done
		}
		ours.drained = func(ctx context.Context, target int64, failed <-chan error) error {
			return benchkit.WaitDrained(ctx, s.pool, calls.Load, target, failed)
		}

		theirs := &e2eWorkers{name: "baseline", table: "bench_events"}
		loop := &benchkit.BaselineDrain{Pool: s.pool, Conns: o.workers, Noop: noop, Follow: true, PollInterval: o.poll,
			OnEvent: func(received time.Time) {
				if theirs.measuring.Load() {
					theirs.latencies.Add(time.Since(received))
				}
			}}
		theirs.processed = loop.Processed
		theirs.start = func(ctx context.Context) <-chan error {
			done := make(chan error, 1)
			go func() {
				_, err := loop.Run(ctx)
				done <- err
			}()
			return done
		}
		theirs.drained = func(ctx context.Context, target int64, failed <-chan error) error {
			return benchkit.Poll(ctx, failed, func() (bool, error) { return loop.Processed() >= target, nil })
		}

		mux := http.NewServeMux()
		mux.Handle("POST /wharf", p.Handler(benchkit.Source))
		mux.Handle("POST /baseline", benchkit.PlainHandler(s.pool))
		base, stop, err := serve(mux)
		if err != nil {
			return err
		}
		defer stop()
		snd := newSender(o.concurrency)
		defer snd.close()

		res := e2eResult{Mode: "e2e", Database: s.name, Concurrency: o.concurrency, Duration: o.duration.Seconds(), Handler: o.handler, Workers: o.workers, Poll: benchkit.Millis(o.poll)}
		if res.Baseline, err = runE2E(ctx, e, o, s, snd, base, theirs); err != nil {
			return fmt.Errorf("baseline: %w", err)
		}
		if res.Wharf, err = runE2E(ctx, e, o, s, snd, base, ours); err != nil {
			return fmt.Errorf("wharf: %w", err)
		}
		res.Ratio = ratio(res.Wharf.ProcessRate, res.Baseline.ProcessRate)
		res.LatencyRatio = ratio(res.Wharf.Latency.P99, res.Baseline.Latency.P99)
		res.Memory = peakMemory()
		if err := emit(&o.benchOptions, e, res, res.table); err != nil {
			return err
		}
		return res.check()
	})
}

// runE2E sends to w's endpoint for o.duration while w's workers process,
// then waits until the backlog is empty.
func runE2E(ctx context.Context, e *env, o *e2eOptions, s *scratch, snd *sender, base string, w *e2eWorkers) (e2eSide, error) {
	runCtx, stopWorkers := context.WithCancel(ctx)
	defer stopWorkers()
	failed := w.start(runCtx)
	url := base + "/" + w.name

	warm := newTally("warm_" + w.name)
	snd.sendN(ctx, url, 4*o.concurrency, warm)
	if err := w.drained(ctx, warm.accepted.Load(), failed); err != nil {
		return e2eSide{}, fmt.Errorf("warm-up: %w", err)
	}
	before := w.processed()
	w.measuring.Store(true)

	t := newTally(w.name)
	start := time.Now()
	samples := sampleBacklog(ctx, s, w.table, o.sample, start)
	stopProgress := progress{w: e.stderr, interval: o.progress}.start(ctx, "e2e/"+w.name,
		func() int64 { return w.processed() - before }, backlogOf(s, w.table))
	snd.sendFor(ctx, url, o.duration, t)
	sent := time.Now()
	err := w.drained(ctx, before+t.accepted.Load(), failed)
	end := time.Now()
	stopProgress()
	backlog := samples()
	if err != nil {
		return e2eSide{}, err
	}
	stopWorkers()
	if err := <-failed; err != nil {
		return e2eSide{}, err
	}
	side := e2eSide{
		Requests: t.answered.Load(), Accepted: t.accepted.Load(), Processed: w.processed() - before,
		SendSeconds: t.elapsed.Seconds(), TailSeconds: end.Sub(sent).Seconds(),
		IngestRate:  float64(t.answered.Load()) / t.elapsed.Seconds(),
		ProcessRate: float64(t.accepted.Load()) / end.Sub(start).Seconds(),
		Latency:     summarize(w.latencies.Sorted()), Ack: summarize(t.latencies.Sorted()),
		Errors: t.errorsByStatus(), Backlog: backlog,
	}
	for _, b := range backlog {
		side.MaxBacklog = max(side.MaxBacklog, b.Events)
	}
	return side, nil
}

// sampleBacklog counts table's rows every interval until the returned
// func is called; that func returns the samples.
func sampleBacklog(ctx context.Context, s *scratch, table string, interval time.Duration, start time.Time) func() []backlogSample {
	ctx, cancel := context.WithCancel(ctx)
	var mu sync.Mutex
	var samples []backlogSample
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-tick.C:
				n, err := s.count(ctx, "SELECT count(*) FROM "+table)
				if err != nil {
					continue // cancelled mid-query, or a blip: a missing sample
				}
				mu.Lock()
				samples = append(samples, backlogSample{T: now.Sub(start).Seconds(), Events: n})
				mu.Unlock()
			}
		}
	}()
	return func() []backlogSample {
		cancel()
		<-done
		mu.Lock()
		defer mu.Unlock()
		return samples
	}
}

// check fails the run unless every request was accepted and every
// accepted event was processed exactly once.
func (r e2eResult) check() error {
	return eachSide(r.Wharf, r.Baseline, func(name string, side e2eSide) error {
		if side.Processed != side.Accepted {
			return fmt.Errorf("e2e check: %s accepted %d events and processed %d", name, side.Accepted, side.Processed)
		}
		if len(side.Errors) > 0 || side.Accepted != side.Requests {
			return fmt.Errorf("e2e check: %s accepted %d of %d requests answered; errors by status: %s",
				name, side.Accepted, side.Requests, formatErrors(side.Errors))
		}
		return nil
	})
}

func (r e2eResult) table(w io.Writer) {
	fmt.Fprintf(w, "wharf bench e2e: %d senders for %s per side, handler %s, %d workers\n\n",
		r.Concurrency, time.Duration(r.Duration*float64(time.Second)), r.Handler, r.Workers)
	writeTable(w, "\taccepted\treq/s\tprocessed/s\tenqueue→handler p50\tp95\tp99\tmax backlog\ttail\terrors",
		r.Wharf.row("wharf"), r.Baseline.row(fmt.Sprintf("baseline (poll %s)", time.Duration(r.Poll*float64(time.Millisecond)))))
	fmt.Fprintf(w, "\nratio (wharf ÷ baseline processed/s): %.2f×; p99 latency wharf ÷ baseline: %.2f×\n", r.Ratio, r.LatencyRatio)
	fmt.Fprintf(w, "backlog, wharf:   %s\nbacklog, baseline: %s\n", formatBacklog(r.Wharf.Backlog), formatBacklog(r.Baseline.Backlog))
	fmt.Fprintln(w, r.Memory)
}

func (s e2eSide) row(name string) string {
	return fmt.Sprintf("%s\t%d\t%.0f\t%.0f\t%.1f ms\t%.1f ms\t%.1f ms\t%d\t%.2fs\t%s", name, s.Accepted, s.IngestRate,
		s.ProcessRate, s.Latency.P50, s.Latency.P95, s.Latency.P99, s.MaxBacklog, s.TailSeconds, formatErrors(s.Errors))
}

// formatBacklog is "0.5s:12 1.0s:30 ...".
func formatBacklog(samples []backlogSample) string {
	var b strings.Builder
	for _, s := range samples {
		fmt.Fprintf(&b, "%.1fs:%d ", s.T, s.Events)
	}
	return strings.TrimSpace(b.String())
}
