package main

import (
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/internal/sqlschema"
)

// defaultDatabaseURL is the server when neither --database-url nor
// $DATABASE_URL is given.
const defaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/postgres"

// defaultConnectTimeout bounds connecting to the server when the URL sets
// no connect_timeout (or 0): pgx has no default, and would wait for ever on
// a server that accepts the connection and never answers.
const defaultConnectTimeout = 10 * time.Second

// connectTimeoutNote ends the help of each --database-url flag.
var connectTimeoutNote = ". Connecting gives up after " + defaultConnectTimeout.String() + " unless the URL sets connect_timeout (seconds)"

// poolConfig parses the server's URL into a pool's config whose
// connections give up after connectTimeout (0 for defaultConnectTimeout)
// unless the URL sets its own connect_timeout.
func poolConfig(url string, connectTimeout time.Duration) (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("database url: %w", err)
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = cmp.Or(connectTimeout, defaultConnectTimeout)
	}
	return cfg, nil
}

// serverURL is the server a command talks to: its --database-url flag,
// else $DATABASE_URL, else the default.
func serverURL(flag string, getenv func(string) string) string {
	return cmp.Or(flag, getenv("DATABASE_URL"), defaultDatabaseURL)
}

// dbOptions are the flags of every command that works on the wharf schema
// of one database (all but bench, which works in a scratch database).
type dbOptions struct {
	databaseURL    string
	schema         string
	getenv         func(string) string
	connectTimeout time.Duration // env.connectTimeout
}

func (o *dbOptions) register(fs *flag.FlagSet, e *env) {
	o.getenv, o.connectTimeout = e.getenv, e.connectTimeout
	fs.StringVar(&o.databaseURL, "database-url", "", "the database holding wharf's tables; defaults to $DATABASE_URL, else "+defaultDatabaseURL+connectTimeoutNote)
	o.schema = sqlschema.Default
	fs.Func("schema", "the schema holding wharf's tables, the service's Config.Schema (default \""+sqlschema.Default+"\")", func(s string) error {
		o.schema = s
		return sqlschema.Validate(s)
	})
}

// connect opens a small pool on the database and checks that it answers,
// so that an unreachable server is reported once, with a hint, instead of
// as the failure of the command's first query.
func (o *dbOptions) connect(ctx context.Context) (*pgxpool.Pool, error) {
	cfg, err := poolConfig(serverURL(o.databaseURL, o.getenv), o.connectTimeout)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = 4
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err == nil {
		if err = pool.Ping(ctx); err != nil {
			pool.Close()
		}
	}
	if err != nil {
		addr := net.JoinHostPort(cfg.ConnConfig.Host, strconv.Itoa(int(cfg.ConnConfig.Port)))
		return nil, fmt.Errorf("connect to database %q: %w (is PostgreSQL running at %s? set --database-url or $DATABASE_URL)",
			cfg.ConnConfig.Database, err, addr)
	}
	return pool, nil
}

// open is connect for the commands that read or change wharf's tables:
// it also checks that the schema holds every migration this code knows (a
// newer schema is fine: newer migrations only add), so that a database
// never migrated gets a hint rather than "relation does not exist".
func (o *dbOptions) open(ctx context.Context) (*pgxpool.Pool, error) {
	pool, err := o.connect(ctx)
	if err != nil {
		return nil, err
	}
	m, err := wharf.NewMigrator(pool, wharf.MigratorConfig{Schema: o.schema})
	var st wharf.MigrationStatus
	if err == nil {
		st, err = m.Status(ctx)
	}
	switch {
	case err != nil:
	case st.Current == 0:
		err = fmt.Errorf("schema %q is not migrated: run wharf migrate up", o.schema)
	case len(st.Pending) > 0:
		err = fmt.Errorf("schema %q lacks %d migration(s) this wharf needs (%s first): run wharf migrate up", o.schema, len(st.Pending), st.Pending[0])
	}
	if err != nil {
		pool.Close()
		return nil, err
	}
	return pool, nil
}

// withPool runs fn on the pool of a migrated schema and closes it after.
func (o *dbOptions) withPool(ctx context.Context, fn func(pool *pgxpool.Pool) error) error {
	pool, err := o.open(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	return fn(pool)
}

// printJSON writes v as indented JSON, for the -json output of every
// command.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printList prints rows as a table under header, one line each, or none
// when there are no rows.
func printList[T any](w io.Writer, none, header string, rows []T, line func(tw io.Writer, r T)) error {
	if len(rows) == 0 {
		fmt.Fprintln(w, none)
		return nil
	}
	return table(w, func(tw io.Writer) {
		fmt.Fprintln(tw, header)
		for _, r := range rows {
			line(tw, r)
		}
	})
}

// table writes tab-separated rows as aligned columns.
func table(w io.Writer, fill func(tw io.Writer)) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fill(tw)
	return tw.Flush()
}

// cell returns s with its control characters (newlines and tabs included)
// and invalid UTF-8 escaped as strconv.Quote escapes them, for a table cell
// or a one-line field. Ids, types, errors and headers come from outside: raw,
// a newline would split a row and an escape sequence would reach the
// terminal.
func cell(s string) string { return escapeControls(s, false) }

// textBlock is cell for text shown on lines of its own (a body): its
// newlines and tabs are kept.
func textBlock(s string) string { return escapeControls(s, true) }

// escapeControls is cell, or textBlock when keepLines.
func escapeControls(s string, keepLines bool) string {
	escaped := func(r rune) bool {
		return unicode.IsControl(r) && !(keepLines && (r == '\n' || r == '\t')) || r == utf8.RuneError
	}
	if !strings.ContainsFunc(s, escaped) {
		return s
	}
	var b strings.Builder
	for len(s) > 0 {
		r, size := utf8.DecodeRuneInString(s)
		if escaped(r) {
			q := strconv.Quote(s[:size])
			b.WriteString(q[1 : len(q)-1])
		} else {
			b.WriteString(s[:size])
		}
		s = s[size:]
	}
	return b.String()
}
