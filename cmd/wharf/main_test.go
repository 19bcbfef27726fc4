package main

import (
	"context"
	"encoding/json"
	"os"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/internal/testio"
)

// TestMain lets bench drain -procs re-execute the test binary as its worker
// processes, as it re-executes wharf itself.
func TestMain(m *testing.M) {
	if len(os.Args) > 2 && os.Args[1] == "bench" && os.Args[2] == "worker" {
		main()
	}
	os.Exit(m.Run())
}

// wharfRun runs the command line in-process and returns its exit code,
// stdout and stderr.
func wharfRun(ctx context.Context, args ...string) (int, string, string) {
	var stdout, stderr testio.Buffer
	code := run(ctx, args, &env{stdout: &stdout, stderr: &stderr, stdin: strings.NewReader(""), getenv: func(string) string { return "" }})
	return code, stdout.String(), stderr.String()
}

// userDatabase returns the URL of an empty database of the test's own, to
// hand the bench as the user's database: the bench must create its scratch
// database next to it and leave it untouched (requireUntouched).
func userDatabase(t *testing.T) string {
	t.Helper()
	return dbtest.Database(t, dbtest.Options{Empty: true})
}

// requireUntouched fails unless the database at url has no tables and no
// wharf_bench_* database is left from name.
func requireUntouched(t *testing.T, url, scratch string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)
	var tables, scratchLeft int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')`).Scan(&tables))
	require.Zero(t, tables, "the bench wrote into the user's database")
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM pg_database WHERE datname = $1`, scratch).Scan(&scratchLeft))
	require.Zero(t, scratchLeft, "scratch database %s was not dropped", scratch)
}

// benchJSON runs a bench with -json against a fresh user database, requires
// exit code 0, decodes its summary into out, and checks that the scratch
// database is gone and the user's untouched.
func benchJSON(t *testing.T, out any, args ...string) {
	t.Helper()
	url := userDatabase(t)
	args = append(args, "-json", "-progress", "100ms", "-database-url", url)
	code, stdout, stderr := wharfRun(context.Background(), args...)
	require.Equal(t, exitOK, code, "stderr:\n%s\nstdout:\n%s", stderr, stdout)
	require.NoError(t, json.Unmarshal([]byte(stdout), out), stdout)
	var head struct{ Database string }
	require.NoError(t, json.Unmarshal([]byte(stdout), &head))
	require.Regexp(t, `^wharf_bench_[0-9a-f]{12}$`, head.Database)
	require.Contains(t, stderr, "scratch database "+head.Database)
	requireUntouched(t, url, head.Database)
}

func TestBenchIngest(t *testing.T) {
	t.Parallel()
	var res ingestResult
	benchJSON(t, &res, "bench", "ingest", "-d", "1s", "-c", "4")
	require.Equal(t, "ingest", res.Mode)
	for name, side := range map[string]ingestSide{"wharf": res.Wharf, "baseline": res.Baseline} {
		require.Positive(t, side.Requests, name)
		require.Equal(t, side.Requests, side.Accepted, "%s: every request is accepted", name)
		require.Equal(t, side.Accepted, side.Stored, "%s: every accepted event is stored", name)
		require.Empty(t, side.Errors, name)
		require.Positive(t, side.PerSecond, name)
		require.Positive(t, side.Ack.P50, name)
		require.LessOrEqual(t, side.Ack.P50, side.Ack.P95, name)
		require.LessOrEqual(t, side.Ack.P95, side.Ack.P99, name)
		if runtime.GOOS == "linux" { // CPU times come from getrusage and /proc
			require.NotNil(t, side.CPU, name)
			require.Positive(t, side.CPU.Bench, name)
			require.NotNil(t, side.CPU.Postgres, "%s: the test server runs on this machine", name)
			require.Positive(t, *side.CPU.Postgres, "%s: every request reached Postgres", name)
		}
	}
	require.Positive(t, res.Ratio)
	require.InDelta(t, res.Wharf.PerSecond/res.Baseline.PerSecond, res.Ratio, 1e-9)
	require.Positive(t, res.Memory.PeakRSSKiB)
}

// requireDrained checks that every preloaded event was processed exactly
// once on both sides.
func requireDrained(t *testing.T, res drainResult, events, warmup int64, handler string) {
	t.Helper()
	total := events + warmup
	rows := total
	if handler == "noop" {
		rows = 0
	}
	require.Equal(t, drainChecks{
		Preloaded: total, HandlerCalls: total, Processed: total, BusinessRows: rows,
		BaselineClaimed: total, BaselineBusiness: rows,
	}, res.Checks)
	require.Equal(t, events, res.Wharf.Events)
	require.Equal(t, events, res.Baseline.Events)
	require.Positive(t, res.Wharf.PerSecond)
	require.Positive(t, res.Baseline.PerSecond)
	require.Positive(t, res.Ratio)
}

func TestBenchDrain(t *testing.T) {
	t.Parallel()
	var res drainResult
	benchJSON(t, &res, "bench", "drain", "-n", "200", "-warmup", "20")
	require.Equal(t, "insert", res.Handler)
	require.Equal(t, 4, res.Conns)
	requireDrained(t, res, 200, 20, "insert")
}

func TestBenchDrainProcs(t *testing.T) {
	t.Parallel()
	var res drainResult
	benchJSON(t, &res, "bench", "drain", "-procs", "2", "-workers", "2", "-handler", "noop", "-n", "200", "-warmup", "20", "-rounds", "3")
	require.Equal(t, 2, res.Procs)
	require.Equal(t, 4, res.Conns, "the baseline gets as many connections as all worker processes' workers")
	requireDrained(t, res, 200, 20, "noop")
	require.Positive(t, res.Memory.WorkerPeakRSSKiB)
}

func TestBenchE2E(t *testing.T) {
	t.Parallel()
	var res e2eResult
	benchJSON(t, &res, "bench", "e2e", "-d", "1s", "-c", "4", "-workers", "2", "-sample", "200ms")
	for name, side := range map[string]e2eSide{"wharf": res.Wharf, "baseline": res.Baseline} {
		require.Positive(t, side.Accepted, name)
		require.Equal(t, side.Requests, side.Accepted, name)
		require.Equal(t, side.Accepted, side.Processed, "%s: every accepted event is processed once", name)
		require.Empty(t, side.Errors, name)
		require.Positive(t, side.ProcessRate, name)
		require.Positive(t, side.Latency.P50, name)
		require.LessOrEqual(t, side.Latency.P50, side.Latency.P99, name)
		require.NotEmpty(t, side.Backlog, name)
		for i := 1; i < len(side.Backlog); i++ {
			require.Greater(t, side.Backlog[i].T, side.Backlog[i-1].T, name)
		}
	}
	require.Positive(t, res.Ratio)
	require.Positive(t, res.LatencyRatio)
}

// TestBenchKeep: -keep leaves the scratch database, holding the bench's
// rows, and says where it is.
func TestBenchKeep(t *testing.T) {
	t.Parallel()
	url := userDatabase(t)
	code, stdout, stderr := wharfRun(context.Background(), "bench", "drain", "-n", "10", "-warmup", "0", "-rounds", "1", "-keep", "-json", "-database-url", url)
	require.Equal(t, exitOK, code, stderr)
	var res drainResult
	require.NoError(t, json.Unmarshal([]byte(stdout), &res))
	require.Contains(t, stderr, "kept the scratch database "+res.Database)

	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	t.Cleanup(func() {
		_, err := conn.Exec(ctx, "DROP DATABASE "+pgx.Identifier{res.Database}.Sanitize()+" WITH (FORCE)")
		require.NoError(t, err)
		require.NoError(t, conn.Close(ctx))
	})
	cfg, err := pgx.ParseConfig(url)
	require.NoError(t, err)
	cfg.Database = res.Database
	kept, err := pgx.ConnectConfig(ctx, cfg)
	require.NoError(t, err)
	defer kept.Close(ctx)
	var rows int
	require.NoError(t, kept.QueryRow(ctx, `SELECT count(*) FROM bench_orders`).Scan(&rows))
	require.Equal(t, 10, rows)
}

// TestBenchInterrupted: Ctrl-C (the context ending) mid-run exits 130 and
// still drops the scratch database.
func TestBenchInterrupted(t *testing.T) {
	t.Parallel()
	url := userDatabase(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr testio.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"bench", "ingest", "-d", "1m", "-c", "2", "-progress", "20ms", "-database-url", url},
			&env{stdout: &stdout, stderr: &stderr, stdin: strings.NewReader(""), getenv: func(string) string { return "" }})
	}()
	// Interrupt once it is sending.
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(stderr.String(), "ingest/") {
		require.True(t, time.Now().Before(deadline), "no progress line within 20s; stderr:\n%s", stderr.String())
		select {
		case code := <-done:
			t.Fatalf("exited %d before it was interrupted; stderr:\n%s", code, stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	cancel()
	require.Equal(t, exitInterrupted, <-done, stderr.String())
	m := regexp.MustCompile(`scratch database (wharf_bench_[0-9a-f]+)`).FindStringSubmatch(stderr.String())
	require.NotNil(t, m, stderr.String())
	require.Empty(t, stdout.String(), "no summary for an interrupted run")
	requireUntouched(t, url, m[1])
}
