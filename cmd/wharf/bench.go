package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/internal/benchkit"
)

var benchCommand = &command{
	name:    "bench",
	summary: "measure wharf against raw-SQL baselines on a PostgreSQL server",
	help: `wharf bench measures wharf on your PostgreSQL server, each figure against a
raw-SQL baseline that does the same work in the same run, and prints both and
their ratio (wharf ÷ baseline; above 1 means wharf is faster). Absolute
numbers drift with whatever else the machine does; the ratio drifts less.

Each run creates a scratch database wharf_bench_<random> on the server,
migrates it with wharf.Migrate, and drops it at the end (also on Ctrl-C)
unless -keep: it never writes to the tables of the database in the URL.
The role needs CREATEDB.

While it runs, a progress line goes to stderr; the summary goes to stdout
(-json for a JSON object).`,
	subcommands: []*command{ingestCommand, drainCommand, e2eCommand, workerCommand},
}

// benchOptions are the flags every bench mode takes.
type benchOptions struct {
	databaseURL string
	keep        bool
	json        bool
	progress    time.Duration
	getenv      func(string) string
	// connectTimeout is env.connectTimeout.
	connectTimeout time.Duration
}

func (o *benchOptions) server() string { return serverURL(o.databaseURL, o.getenv) }

func (o *benchOptions) register(fs *flag.FlagSet, e *env) {
	o.getenv, o.connectTimeout = e.getenv, e.connectTimeout
	fs.StringVar(&o.databaseURL, "database-url", "",
		"the PostgreSQL server; defaults to $DATABASE_URL, else "+defaultDatabaseURL+". Its own database is only used to create and drop the scratch database"+connectTimeoutNote)
	fs.BoolVar(&o.keep, "keep", false, "keep the scratch database instead of dropping it, to look at it with psql")
	fs.BoolVar(&o.json, "json", false, "print the summary as one JSON object")
	fs.DurationVar(&o.progress, "progress", time.Second, "how often the progress line on stderr is updated; 0 for none")
}

// scratch is the database a bench runs in, and the connection to the
// user's database that created it and drops it.
type scratch struct {
	name  string
	admin *pgx.Conn
	pool  *pgxpool.Pool
}

// openScratch creates and migrates a scratch database on o's server, with
// benchkit's tables, and a pool of maxConns on it.
func openScratch(ctx context.Context, o *benchOptions, maxConns int32, stderr io.Writer) (*scratch, error) {
	cfg, err := poolConfig(o.server(), o.connectTimeout)
	if err != nil {
		return nil, err
	}
	admin, err := pgx.ConnectConfig(ctx, cfg.ConnConfig.Copy())
	if err != nil {
		return nil, fmt.Errorf("connect to the server: %w (is PostgreSQL running? set --database-url or $DATABASE_URL)", err)
	}
	s := &scratch{name: "wharf_bench_" + randomHex(6), admin: admin}
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{s.name}.Sanitize()); err != nil {
		admin.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("create scratch database %s (the role needs CREATEDB): %w", s.name, err)
	}
	fmt.Fprintf(stderr, "wharf bench: scratch database %s on %s:%d\n", s.name, cfg.ConnConfig.Host, cfg.ConnConfig.Port)
	cfg.ConnConfig.Database = s.name
	cfg.MaxConns = maxConns
	if s.pool, err = pgxpool.NewWithConfig(ctx, cfg); err == nil {
		if err = wharf.Migrate(ctx, s.pool); err == nil {
			_, err = s.pool.Exec(ctx, benchkit.Tables)
		}
	}
	if err != nil {
		return nil, errors.Join(fmt.Errorf("prepare scratch database %s: %w", s.name, err), s.close(false, io.Discard))
	}
	return s, nil
}

// close closes the pool and drops the database (forcibly: a worker process
// still connected must not keep it alive), or says where it is when keep.
// It runs after Ctrl-C too, so it does not use the run's context.
func (s *scratch) close(keep bool, stderr io.Writer) error {
	if s.pool != nil {
		s.pool.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	defer s.admin.Close(ctx)
	if keep {
		fmt.Fprintf(stderr, "kept the scratch database %s (drop it with: DROP DATABASE %s;)\n", s.name, s.name)
		return nil
	}
	if _, err := s.admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{s.name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop scratch database %s: %w", s.name, err)
	}
	return nil
}

// count runs a count(*) query in the scratch database.
func (s *scratch) count(ctx context.Context, sql string) (int64, error) {
	var n int64
	err := s.pool.QueryRow(ctx, sql).Scan(&n)
	return n, err
}

// serverPIDs returns the pids of the server processes that serve the
// bench, for its CPU figures: the scratch database's backends and the
// server's own processes (checkpointer, WAL writer and so on, shared with
// other databases), not the backends of other databases. Nil when it
// cannot tell.
func (s *scratch) serverPIDs(ctx context.Context) map[int]bool {
	rows, err := s.pool.Query(ctx, `SELECT pid FROM pg_stat_activity WHERE datname = current_database() OR datname IS NULL`)
	if err != nil {
		return nil
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return nil
	}
	in := make(map[int]bool, len(pids))
	for _, pid := range pids {
		in[int(pid)] = true
	}
	return in
}

// withScratch runs fn in a scratch database and cleans up after it,
// whatever happens.
func withScratch(ctx context.Context, o *benchOptions, e *env, maxConns int32, fn func(s *scratch) error) (err error) {
	s, err := openScratch(ctx, o, maxConns, e.stderr)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, s.close(o.keep, e.stderr)) }()
	return fn(s)
}

// serve serves h on 127.0.0.1 at a free port until stop is called, and
// returns its base URL.
func serve(h http.Handler) (url string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, fmt.Errorf("listen for the bench's HTTP server: %w", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }() // returns ErrServerClosed at stop
	return "http://" + ln.Addr().String(), func() { _ = srv.Close() }, nil
}

// emit prints the summary: result as JSON with -json, else table.
func emit(o *benchOptions, e *env, result any, table func(w io.Writer)) error {
	if o.json {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(result)
	}
	table(e.stdout)
	return nil
}

// writeTable prints a right-aligned table of tab-separated cells: the
// header, then one row per side.
func writeTable(w io.Writer, header string, rows ...string) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	for _, row := range append([]string{header}, rows...) {
		fmt.Fprintln(tw, row+"\t")
	}
	tw.Flush()
}

// eachSide runs check on wharf's side and the baseline's, and returns the
// first error.
func eachSide[S any](wharf, baseline S, check func(name string, side S) error) error {
	if err := check("wharf", wharf); err != nil {
		return err
	}
	return check("baseline", baseline)
}

// ratio is a ÷ b, 0 when b is.
func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// memory is the peak resident set size of this process and of its largest
// worker process (bench drain -procs), in KiB.
type memory struct {
	PeakRSSKiB       int64 `json:"peak_rss_kib"`
	WorkerPeakRSSKiB int64 `json:"worker_peak_rss_kib,omitempty"`
}

func peakMemory() memory {
	self, children := peakRSS()
	return memory{PeakRSSKiB: self, WorkerPeakRSSKiB: children}
}

func (m memory) String() string {
	s := fmt.Sprintf("peak RSS %.1f MiB", float64(m.PeakRSSKiB)/1024)
	if m.WorkerPeakRSSKiB > 0 {
		s += fmt.Sprintf(", largest worker process %.1f MiB", float64(m.WorkerPeakRSSKiB)/1024)
	}
	return s
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}

// isTerminal says whether w is a terminal, where the progress line
// rewrites itself instead of scrolling.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
