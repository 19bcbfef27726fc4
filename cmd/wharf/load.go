package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wharfhq/wharf/internal/benchkit"
)

// sender posts signed 1 KB Standard Webhooks requests (benchkit.Body,
// signed with benchkit.Secret at send time: a fresh timestamp, a fresh id)
// from Concurrency goroutines, each sending its next request as soon as
// the last one is answered, over keep-alive connections.
type sender struct {
	client      *http.Client
	concurrency int
}

func newSender(concurrency int) *sender {
	t := &http.Transport{MaxIdleConns: 2 * concurrency, MaxIdleConnsPerHost: 2 * concurrency, DisableCompression: true}
	return &sender{client: &http.Client{Transport: t, Timeout: 30 * time.Second}, concurrency: concurrency}
}

func (s *sender) close() { s.client.CloseIdleConnections() }

// tally counts one endpoint's answers across rounds.
type tally struct {
	prefix    string // event ids are prefix_<n>
	next      atomic.Int64
	answered  atomic.Int64
	accepted  atomic.Int64 // 202
	elapsed   time.Duration
	latencies benchkit.Latencies // accepted requests only
	cpu       cpuTally

	mu     sync.Mutex
	errors map[string]int64 // by status code, or "transport"
}

func newTally(prefix string) *tally { return &tally{prefix: prefix, errors: map[string]int64{}} }

func (t *tally) fail(key string) {
	t.mu.Lock()
	t.errors[key]++
	t.mu.Unlock()
}

func (t *tally) errorsByStatus() map[string]int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.errors
}

// sendFor sends to url until d has passed (or ctx ends), recording into t.
func (s *sender) sendFor(ctx context.Context, url string, d time.Duration, t *tally) {
	deadline := time.Now().Add(d)
	start := time.Now()
	var wg sync.WaitGroup
	for range s.concurrency {
		wg.Go(func() {
			for ctx.Err() == nil && time.Now().Before(deadline) {
				s.send(ctx, url, t)
			}
		})
	}
	wg.Wait()
	t.elapsed += time.Since(start)
}

// sendN sends n requests to url, for warming up connections and caches.
func (s *sender) sendN(ctx context.Context, url string, n int, t *tally) {
	_, _ = benchkit.Parallel(s.concurrency, n, func(int) error {
		s.send(ctx, url, t)
		return ctx.Err()
	})
}

func (s *sender) send(ctx context.Context, url string, t *tally) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(benchkit.Body))
	if err != nil {
		t.fail("request")
		return
	}
	req.Header = benchkit.Sign(fmt.Sprintf("%s_%d", t.prefix, t.next.Add(1)))
	start := time.Now()
	resp, err := s.client.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			t.fail("transport")
		}
		return
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	t.answered.Add(1)
	if resp.StatusCode != http.StatusAccepted {
		t.fail(strconv.Itoa(resp.StatusCode))
		return
	}
	t.latencies.Add(time.Since(start))
	t.accepted.Add(1)
}

// latency is a summary of durations, in milliseconds.
type latency struct {
	P50 float64 `json:"p50_ms"`
	P95 float64 `json:"p95_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}

func summarize(sorted []time.Duration) latency {
	return latency{
		P50: benchkit.Percentile(sorted, 0.50),
		P95: benchkit.Percentile(sorted, 0.95),
		P99: benchkit.Percentile(sorted, 0.99),
		Max: benchkit.Percentile(sorted, 1),
	}
}

func (l latency) String() string {
	return fmt.Sprintf("%.1f / %.1f / %.1f ms", l.P50, l.P95, l.P99)
}

// cpuTally adds up the CPU time spent while one side was measured: the
// bench process (senders, HTTP server and, for wharf, its committers) and
// the Postgres server.
type cpuTally struct {
	self, postgres time.Duration
	postgresMissed bool // in some slice, no postgres process was visible
}

// procCPU is one process's start time (in clock ticks since boot, to tell
// a reused pid) and the CPU time it has used so far.
type procCPU struct {
	start uint64
	cpu   time.Duration
}

// during runs send and adds the CPU time used meanwhile (Linux only).
// scope, when not nil, returns the pids of the server's processes that
// serve the bench (its scratch database's backends and the server's own
// processes); it is read before and after, outside the measured time.
func (c *cpuTally) during(scope func() map[int]bool, send func()) {
	var in map[int]bool
	if scope != nil {
		in = scope()
	}
	self0, pg0 := selfCPU(), postgresProcs()
	send()
	self1, pg1 := selfCPU(), postgresProcs()
	if scope != nil {
		if in == nil {
			in = scope()
		} else {
			maps.Copy(in, scope())
		}
	}
	c.self += self1 - self0
	used, seen := postgresUsed(pg0, pg1, in)
	c.postgres += used
	c.postgresMissed = c.postgresMissed || !seen
}

// postgresUsed is the CPU time the postgres processes used between two
// readings: each process's time since the first reading, or all of it for
// a process that started in between. A process that ended in between
// takes its time with it, so the sum can come out low, never high. Only
// the processes in scope count, when any of them is visible here (else,
// say, the server runs in a container with a pid namespace of its own,
// and every postgres process counts). seen is false when no postgres
// process is visible at all.
func postgresUsed(before, after map[int]procCPU, scope map[int]bool) (used time.Duration, seen bool) {
	if len(after) == 0 {
		return 0, false
	}
	restrict := false
	for pid := range scope {
		if _, ok := after[pid]; ok {
			restrict = true
			break
		}
	}
	for pid, p := range after {
		if restrict && !scope[pid] {
			continue
		}
		if b, ok := before[pid]; ok && b.start == p.start {
			used += max(p.cpu-b.cpu, 0)
		} else {
			used += p.cpu
		}
	}
	return used, true
}
