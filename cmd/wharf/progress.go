package main

import (
	"context"
	"fmt"
	"io"
	"time"
)

// progress prints a line to stderr every interval while a phase runs:
// its label, elapsed time, how many requests or events are done, the rate
// over the last interval and, when backlog is not nil, the events waiting.
// On a terminal the line rewrites itself; elsewhere (a log, a test) each
// update is a line of its own.
type progress struct {
	w        io.Writer
	interval time.Duration // 0: print nothing
}

// start begins printing for one phase; the returned func stops it.
func (p progress) start(ctx context.Context, label string, done func() int64, backlog func(context.Context) (int64, error)) (stop func()) {
	if p.interval <= 0 {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	finished := make(chan struct{})
	tty := isTerminal(p.w)
	go func() {
		defer close(finished)
		tick := time.NewTicker(p.interval)
		defer tick.Stop()
		start, last, lastAt := time.Now(), done(), time.Now()
		for {
			select {
			case <-ctx.Done():
				if tty {
					fmt.Fprintln(p.w)
				}
				return
			case now := <-tick.C:
				n := done()
				line := fmt.Sprintf("%-16s %6.1fs %10d done %10.0f/s", label, now.Sub(start).Seconds(), n, float64(n-last)/now.Sub(lastAt).Seconds())
				last, lastAt = n, now
				if backlog != nil {
					if b, err := backlog(ctx); err == nil {
						line += fmt.Sprintf("   backlog %d", b)
					}
				}
				if tty {
					fmt.Fprintf(p.w, "\r%s\x1b[K", line)
				} else {
					fmt.Fprintln(p.w, line)
				}
			}
		}
	}()
	return func() {
		cancel()
		<-finished
	}
}
