package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/internal/benchkit"
)

// workerCommand is the worker process of bench drain -procs: the parent
// re-executes its own binary with these arguments. It speaks a line
// protocol. It prints "ready" once connected; then "go" on stdin starts
// Pipeline.Run, "stop" stops it gracefully and answers "stopped" after a
// last count. While running it prints "handled <n>" (handler calls since
// it started) every workerReport. At the end of stdin (the parent closing
// the pipe, or dying) it stops and exits. One process serves every round
// of a bench, so its connections and prepared statements stay warm.
var workerCommand = &command{
	name:    "worker",
	hidden:  true,
	summary: "a worker process of bench drain -procs (internal)",
	help:    "Runs the Pipeline's workers for bench drain -procs, driven through stdin; not for direct use.",
	flags: func(fs *flag.FlagSet, e *env) func(context.Context, *env, []string) error {
		o := &workerOptions{}
		fs.StringVar(&o.databaseURL, "database-url", "", "the server")
		fs.StringVar(&o.database, "database", "", "the scratch database")
		fs.IntVar(&o.workers, "workers", wharf.DefaultWorkers, "workers")
		fs.StringVar(&o.handler, "handler", "insert", "insert, batch or noop")
		return func(ctx context.Context, e *env, _ []string) error { return benchWorker(ctx, e, o) }
	},
}

// workerReport is how often a running worker process reports its count;
// it bounds how late the parent learns that a round is done.
const workerReport = 10 * time.Millisecond

type workerOptions struct {
	databaseURL, database, handler string
	workers                        int
}

// args returns the command line that runs a worker process with o.
func (o workerOptions) args() []string {
	return []string{"bench", "worker", "-database-url", o.databaseURL, "-database", o.database,
		"-workers", strconv.Itoa(o.workers), "-handler", o.handler}
}

func benchWorker(ctx context.Context, e *env, o *workerOptions) error {
	if o.database == "" || o.databaseURL == "" {
		return &usageError{"wharf bench worker", errors.New("-database-url and -database are required (bench drain -procs starts this command)")}
	}
	cfg, err := poolConfig(o.databaseURL, e.connectTimeout)
	if err != nil {
		return err
	}
	cfg.ConnConfig.Database = o.database
	cfg.MaxConns = int32(o.workers + 3) // the workers, the fetcher, maintenance, one spare
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := pool.Ping(ctx); err != nil {
		return fmt.Errorf("connect to %s: %w", o.database, err)
	}
	var calls atomic.Int64
	p, err := benchkit.NewPipeline(pool, wharf.Config{Workers: o.workers}, o.handler, func(wharf.Event) { calls.Add(1) })
	if err != nil {
		return err
	}
	defer p.Close()

	commands := make(chan string)
	go func() {
		defer close(commands)
		lines := bufio.NewScanner(e.stdin)
		for lines.Scan() {
			commands <- lines.Text()
		}
	}()
	fmt.Fprintln(e.stdout, "ready")
	report := func() { fmt.Fprintf(e.stdout, "handled %d\n", calls.Load()) }
	tick := time.NewTicker(workerReport)
	defer tick.Stop()
	var r *workerRun // nil while stopped
	halt := func() error {
		r.stop()
		err := <-r.done
		r = nil
		report()
		return err
	}
	for {
		var done chan error // nil while stopped: never ready
		if r != nil {
			done = r.done
		}
		select {
		case cmd, ok := <-commands:
			switch {
			case !ok && r != nil:
				return halt()
			case !ok:
				return nil
			case cmd == "go" && r == nil:
				r = startRun(ctx, p)
			case cmd == "stop" && r != nil:
				if err := halt(); err != nil {
					return err
				}
				fmt.Fprintln(e.stdout, "stopped")
			default:
				return fmt.Errorf("worker: unexpected %q on stdin", cmd)
			}
		case err := <-done:
			if ctx.Err() != nil { // interrupted: Ctrl-C reaches the whole process group
				return ctx.Err()
			}
			return fmt.Errorf("worker: Run returned: %v", err)
		case <-tick.C:
			if r != nil {
				report()
			}
		}
	}
}

// workerRun is one Pipeline.Run of a worker process.
type workerRun struct {
	stop context.CancelFunc
	done chan error
}

func startRun(ctx context.Context, p *wharf.Pipeline) *workerRun {
	r := &workerRun{done: make(chan error, 1)}
	ctx, r.stop = context.WithCancel(ctx)
	go func() { r.done <- p.Run(ctx) }()
	return r
}

// procDrainer runs wharf's side of bench drain in worker processes, started
// at the first round and kept until close.
type procDrainer struct {
	opts     *drainOptions
	database string
	stderr   io.Writer
	pool     *pgxpool.Pool

	procs   []*workerProc
	readers sync.WaitGroup
	exited  chan error   // a reader's process ended its output
	calls   atomic.Int64 // handler calls, as last reported by the processes
}

// workerProc is one running worker process.
type workerProc struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	stopped chan struct{} // it answered "stop"
}

func (d *procDrainer) handled() int64 { return d.calls.Load() }

// start starts the worker processes and waits until each is ready.
func (d *procDrainer) start() error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find this binary to start worker processes: %w", err)
	}
	args := workerOptions{databaseURL: d.opts.server(), database: d.database, workers: d.opts.workers, handler: d.opts.handler}.args()
	d.exited = make(chan error, d.opts.procs)
	ready := make(chan struct{}, d.opts.procs)
	for i := range d.opts.procs {
		cmd := exec.Command(exe, args...)
		cmd.Stderr = d.stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return err
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start worker process %s: %w", exe, err)
		}
		w := &workerProc{cmd: cmd, stdin: stdin, stopped: make(chan struct{}, 1)}
		d.procs = append(d.procs, w)
		d.readers.Go(func() { d.read(i+1, stdout, w, ready) })
	}
	for range d.opts.procs {
		select {
		case <-ready:
		case err := <-d.exited:
			return err
		}
	}
	return nil
}

// read follows one process's output until it ends.
func (d *procDrainer) read(n int, stdout io.Reader, w *workerProc, ready chan<- struct{}) {
	lines := bufio.NewScanner(stdout)
	var last int64 // this process's count so far
	for lines.Scan() {
		line := lines.Text()
		if v, ok := strings.CutPrefix(line, "handled "); ok {
			if count, err := strconv.ParseInt(v, 10, 64); err == nil {
				d.calls.Add(count - last)
				last = count
			}
			continue
		}
		switch line {
		case "ready":
			ready <- struct{}{}
		case "stopped":
			w.stopped <- struct{}{}
		}
	}
	d.exited <- errors.Join(fmt.Errorf("worker process %d exited", n), lines.Err())
}

func (d *procDrainer) drain(ctx context.Context, events int64) (time.Duration, error) {
	if d.procs == nil {
		if err := d.start(); err != nil {
			return 0, err
		}
	}
	target := d.calls.Load() + events
	start := time.Now()
	if err := d.tell("go"); err != nil {
		return 0, err
	}
	err := benchkit.WaitDrained(ctx, d.pool, d.calls.Load, target, d.exited)
	elapsed := time.Since(start)
	if err != nil {
		return elapsed, err
	}
	if err := d.tell("stop"); err != nil {
		return elapsed, err
	}
	for _, w := range d.procs {
		select {
		case <-w.stopped:
		case err := <-d.exited:
			return elapsed, err
		}
	}
	return elapsed, nil
}

// tell writes a command to every process.
func (d *procDrainer) tell(cmd string) error {
	for i, w := range d.procs {
		if _, err := io.WriteString(w.stdin, cmd+"\n"); err != nil {
			return fmt.Errorf("tell worker process %d to %s: %w", i+1, cmd, err)
		}
	}
	return nil
}

// close ends the worker processes (the end of their stdin stops them
// gracefully) and waits for them.
func (d *procDrainer) close() error {
	for _, w := range d.procs {
		_ = w.stdin.Close()
	}
	d.readers.Wait() // before Wait, which closes the pipes they read
	var errs []error
	for i, w := range d.procs {
		if err := w.cmd.Wait(); err != nil {
			errs = append(errs, fmt.Errorf("worker process %d: %w", i+1, err))
		}
	}
	return errors.Join(errs...)
}
