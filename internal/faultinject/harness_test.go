package faultinject

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/idempotency"
)

// source is the node's one source (node.Source).
const source = "fi"

// secret signs the suite's webhooks (Standard Webhooks).
const secret = "whsec_d2hhcmYtZmF1bHQtaW5qZWN0aW9uLXNlY3JldC0zMg=="

// world is one scenario's database and the node processes it runs on it.
type world struct {
	t    *testing.T
	url  string        // the database, for nodes
	pool *pgxpool.Pool // the database, for the test's own queries
	logs string        // every node's stderr, appended
}

// newWorld returns a world on the migrated database at url, with the
// business table the nodes' handlers write: one row per effect, no unique
// key, so an event processed twice shows two rows.
func newWorld(t *testing.T, url string) *world {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	require.NoError(t, err)
	cfg.MaxConns = 4
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	w := &world{t: t, url: url, pool: pool, logs: filepath.Join(t.TempDir(), "nodes.log")}
	w.exec(`CREATE TABLE IF NOT EXISTS fi_effects (
		event_id     text        NOT NULL,
		event_type   text        NOT NULL,
		attempt      int         NOT NULL,
		prior_errors int         NOT NULL,
		pid          int         NOT NULL,
		at           timestamptz NOT NULL DEFAULT clock_timestamp())`)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("nodes' stderr (last 4 KiB):\n%s", w.logTail(4<<10))
		}
	})
	return w
}

// exec runs one statement of the test's own, failing the test on error.
func (w *world) exec(sql string, args ...any) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := w.pool.Exec(ctx, sql, args...)
	require.NoError(w.t, err, sql)
}

// count runs a query returning one integer.
func (w *world) count(sql string, args ...any) int {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var n int
	require.NoError(w.t, w.pool.QueryRow(ctx, sql, args...).Scan(&n), sql)
	return n
}

func (w *world) logTail(n int64) string {
	b, err := os.ReadFile(w.logs)
	if err != nil {
		return err.Error()
	}
	if int64(len(b)) > n {
		b = b[int64(len(b))-n:]
	}
	return string(b)
}

// node is one running node process.
type node struct {
	app    string // its connections' application_name, unique in the test binary
	cmd    *exec.Cmd
	url    string // the ingest role's endpoint
	exited chan struct{}
}

// nodeSeq numbers the nodes' application names.
var nodeSeq atomic.Int64

// start runs a node of role with extra flags and waits until it says it is
// ready. The process is killed (SIGKILL) when the test ends, if it has not
// been killed before.
func (w *world) start(role string, flags ...string) (*node, error) {
	args := append([]string{"-db", w.url, "-role", role, "-secret", secret}, flags...)
	cmd := exec.Command(nodeBinary(w.t), args...)
	app := fmt.Sprintf("fi-%s-%d", role, nodeSeq.Add(1))
	cmd.Env = append(os.Environ(), "PGAPPNAME="+app) // pgx reads it
	logs, err := os.OpenFile(w.logs, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logs.Close() // the child has its own descriptor
	cmd.Stderr = logs
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	n := &node{app: app, cmd: cmd, exited: make(chan struct{})}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if line := sc.Text(); strings.HasPrefix(line, "ready") {
				ready <- strings.TrimSpace(strings.TrimPrefix(line, "ready"))
			}
		}
		_ = cmd.Wait()
		close(n.exited)
	}()
	w.t.Cleanup(n.kill)
	select {
	case n.url = <-ready:
		return n, nil
	case <-n.exited:
		return nil, fmt.Errorf("node %s exited before it was ready (%v); its stderr:\n%s", role, cmd.ProcessState, w.logTail(2<<10))
	case <-time.After(30 * time.Second):
		n.kill()
		return nil, fmt.Errorf("node %s not ready within 30s", role)
	}
}

// mustStart is start failing the test on error.
func (w *world) mustStart(role string, flags ...string) *node {
	w.t.Helper()
	n, err := w.start(role, flags...)
	require.NoError(w.t, err)
	return n
}

// inWritingTx reports whether one of n's connections is inside a
// transaction that has written (holds a transaction id) right now.
func (w *world) inWritingTx(n *node) bool {
	var writing bool
	err := w.pool.QueryRow(context.Background(),
		`SELECT count(*) > 0 FROM pg_stat_activity WHERE application_name = $1 AND backend_xid IS NOT NULL`, n.app).Scan(&writing)
	return err == nil && writing
}

// kills counts a scenario's SIGKILLs of workers, and those of a worker
// with a writing transaction open.
type kills struct{ all, midTx atomic.Int64 }

// replace kills victim (see kill), counting it in k, and starts a worker
// with flags in its place.
func (w *world) replace(victim *node, k *kills, flags ...string) (*node, error) {
	if w.inWritingTx(victim) { // looked at just before the kill
		k.midTx.Add(1)
	}
	victim.kill()
	k.all.Add(1)
	return w.start("worker", flags...)
}

// kill sends SIGKILL (no chance to release anything) and waits for the
// process to be gone.
func (n *node) kill() {
	_ = n.cmd.Process.Kill()
	<-n.exited
}

// event is one webhook the test sends: Type picks the node's handler, Data
// its fault (see ./node).
type event struct {
	ID   string
	Type string
	Data map[string]any
}

// newEvents returns n events of typ with random ids starting with prefix.
func newEvents(prefix, typ string, n int) []event {
	run := strings.ToLower(rand.Text()[:8])
	evs := make([]event, n)
	for i := range evs {
		evs[i] = event{ID: fmt.Sprintf("%s_%s_%05d", prefix, run, i), Type: typ}
	}
	return evs
}

func ids(evs []event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.ID
	}
	return out
}

// delivery is one request and its answer, as the sender saw it.
type delivery struct {
	id         string
	status     int // 0 when the request failed without an answer
	body       string
	err        error
	start, end time.Time
}

func (d delivery) acked() bool { return d.status >= 200 && d.status < 300 }

// client posts the webhooks. Its timeout is a provider's: an answer later
// than that is no answer.
var client = &http.Client{
	Timeout:   10 * time.Second,
	Transport: &http.Transport{MaxIdleConnsPerHost: 64},
}

// post signs ev and posts it to url once.
func post(url string, ev event) delivery {
	body, err := json.Marshal(map[string]any{"type": ev.Type, "data": ev.Data})
	d := delivery{id: ev.ID, start: time.Now()}
	if err != nil {
		d.err = err
		return d
	}
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		d.err = err
		return d
	}
	for k, v := range wharf.SignStandardWebhooks(secret, ev.ID, time.Now(), body) {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		d.err, d.end = err, time.Now()
		return d
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	d.status, d.body, d.end = resp.StatusCode, string(b), time.Now()
	return d
}

// postUntilAcked posts ev to url until it is acknowledged (2xx) or stop
// passes, pausing retryAfter between tries as a provider's retry schedule
// does, and returns every delivery made, the last one last. A 503 is an
// answer the library may give under load (the event was not stored in
// time), so callers judge the deliveries, not the first answer.
func postUntilAcked(url string, ev event, retryAfter time.Duration, stop time.Time) []delivery {
	var ds []delivery
	for {
		d := post(url, ev)
		ds = append(ds, d)
		if d.acked() || time.Now().After(stop) {
			return ds
		}
		time.Sleep(retryAfter) // the provider's schedule, not a wait for async work
	}
}

// sender delivers events the way a provider does: each until it is
// acknowledged (2xx), retrying failures after a short pause, with a
// bounded number of requests in flight and, optionally, a paced rate.
type sender struct {
	url         string
	concurrency int
	// every spaces the first deliveries of successive events; zero sends
	// as fast as the concurrency allows.
	every time.Duration
	// retryAfter is the pause before a failed delivery is retried.
	retryAfter time.Duration
	// deadline bounds the retries of each event, from its first delivery.
	deadline time.Duration

	mu   sync.Mutex
	log  []delivery
	sent atomic.Int64 // events whose first delivery has started
}

// send delivers every event until acknowledged and returns every delivery
// made, or an error if some event was still not acknowledged when its
// retries ran out (deadline).
func (s *sender) send(evs []event) ([]delivery, error) {
	work := make(chan event)
	var wg sync.WaitGroup
	var unacked atomic.Int64
	for range s.concurrency {
		wg.Go(func() {
			for ev := range work {
				ds := postUntilAcked(s.url, ev, s.retryAfter, time.Now().Add(s.deadline))
				if !ds[len(ds)-1].acked() {
					unacked.Add(1)
				}
				s.mu.Lock()
				s.log = append(s.log, ds...)
				s.mu.Unlock()
			}
		})
	}
	next := time.Now()
	for _, ev := range evs {
		if s.every > 0 {
			time.Sleep(time.Until(next)) // pacing the load
			next = next.Add(s.every)
		}
		s.sent.Add(1)
		work <- ev
	}
	close(work)
	wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := unacked.Load(); n > 0 {
		return s.log, fmt.Errorf("%d of %d events not acknowledged within %s of retries", n, len(evs), s.deadline)
	}
	return s.log, nil
}

// ackedIDs returns the ids that got at least one 2xx.
func ackedIDs(log []delivery) map[string]bool {
	out := map[string]bool{}
	for _, d := range log {
		if d.acked() {
			out[d.id] = true
		}
	}
	return out
}

// eventually polls cond every 20ms until it holds, failing the test with
// what cond last said when timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s; %s", what, timeout, state)
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
}

// census is where the events ended up, read at the end of a scenario.
type census struct {
	effects map[string]int // event id -> effect rows
	dead    map[string]bool
	queued  int // rows left in the queue, any state
}

func (w *world) census() census {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := census{effects: map[string]int{}, dead: map[string]bool{}}
	rows, err := w.pool.Query(ctx, `SELECT event_id, count(*) FROM fi_effects GROUP BY event_id`)
	require.NoError(w.t, err)
	var id string
	var n int
	_, err = pgx.ForEachRow(rows, []any{&id, &n}, func() error { c.effects[id] = n; return nil })
	require.NoError(w.t, err)
	rows, err = w.pool.Query(ctx, `SELECT event_id FROM wharf.dead_letters WHERE source = $1 AND status = 'dead'`, source)
	require.NoError(w.t, err)
	_, err = pgx.ForEachRow(rows, []any{&id}, func() error { c.dead[id] = true; return nil })
	require.NoError(w.t, err)
	c.queued = w.count(`SELECT count(*) FROM wharf.queue`)
	return c
}

// lostAndDoubled counts, among ids, those without an effect and those
// with more than one.
func (c census) lostAndDoubled(ids []string) (lost, doubled int) {
	for _, id := range ids {
		switch n := c.effects[id]; {
		case n == 0 && !c.dead[id]:
			lost++
		case n > 1:
			doubled++
		}
	}
	return lost, doubled
}

// drained waits until the queue is empty and every id in want has an
// effect or a dead letter, and returns how long that took.
func (w *world) drained(timeout time.Duration, want []string) time.Duration {
	w.t.Helper()
	start := time.Now()
	eventually(w.t, timeout, "the queue to drain", func() (bool, string) {
		c := w.census()
		lost, _ := c.lostAndDoubled(want)
		return c.queued == 0 && lost == 0, fmt.Sprintf("%d queued, %d of %d events without an effect or a dead letter", c.queued, lost, len(want))
	})
	return time.Since(start)
}

// requireOnePlace checks invariant 3 on ids after a drain: each event is in
// exactly one of the queue, processed_events (under any handler) and the
// dead letter queue.
func (w *world) requireOnePlace(ids []string) {
	w.t.Helper()
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = idempotency.Key(source, id)
	}
	// Counted per table and joined, not looked up per id: the queue has no
	// index on event_id, nor processed_events on key alone.
	rows, err := w.pool.Query(context.Background(), `
SELECT e.id, coalesce(q.n, 0) + coalesce(p.n, 0) + coalesce(d.n, 0) AS places
FROM unnest($2::text[], $3::text[]) AS e(id, key)
LEFT JOIN (SELECT event_id, count(*) AS n FROM wharf.queue WHERE source = $1 GROUP BY event_id) q ON q.event_id = e.id
LEFT JOIN (SELECT key, count(*) AS n FROM wharf.processed_events GROUP BY key) p ON p.key = e.key
LEFT JOIN (SELECT event_id, count(*) AS n FROM wharf.dead_letters WHERE source = $1 AND status = 'dead' GROUP BY event_id) d ON d.event_id = e.id
WHERE coalesce(q.n, 0) + coalesce(p.n, 0) + coalesce(d.n, 0) <> 1`, source, ids, keys)
	require.NoError(w.t, err)
	bad, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (string, error) {
		var id string
		var n int
		err := r.Scan(&id, &n)
		return fmt.Sprintf("%s in %d places", id, n), err
	})
	require.NoError(w.t, err)
	require.Empty(w.t, bad, "invariant 3: an acknowledged event is in exactly one place")
}

// row is one scenario's line of RELIABILITY.md's table.
type row struct {
	scenario string
	events   int    // events sent (distinct ids)
	acked    int    // events acknowledged with a 2xx
	faults   string // what was injected
	lost     int    // acknowledged events with no effect (nor dead letter)
	doubled  int    // events with more than one effect
	dlq      int    // dead letters at the end, before any replay
	recovery string // time to recover, as the scenario defines it
}

// report logs r as a markdown row, and appends it to $WHARF_FAULT_REPORT
// when set, with the command that reproduces it.
func report(t *testing.T, r row) {
	t.Helper()
	mode, cmd := "short", fmt.Sprintf("go test -race -count=1 -run '^%s$' ./internal/faultinject/", t.Name())
	if long() {
		mode, cmd = "long", fmt.Sprintf("go test -count=1 -timeout 30m -run '^%s$' ./internal/faultinject/ -long", t.Name())
	}
	line := fmt.Sprintf("| %s | %s | %d | %d | %s | %d | %d | %d | %s | `%s` |",
		r.scenario, mode, r.events, r.acked, r.faults, r.lost, r.doubled, r.dlq, r.recovery, cmd)
	t.Log("\n" + line)
	path := os.Getenv("WHARF_FAULT_REPORT")
	if path == "" {
		return
	}
	reportMu.Lock()
	defer reportMu.Unlock()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err == nil {
		_, err = fmt.Fprintln(f, line)
		err = errors.Join(err, f.Close())
	}
	require.NoError(t, err, "write WHARF_FAULT_REPORT")
}

var reportMu sync.Mutex

// ms formats a duration for the table.
func ms(d time.Duration) string {
	if d >= 10*time.Second {
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(10 * time.Millisecond).String()
}
