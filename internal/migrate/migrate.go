// Package migrate applies wharf's embedded SQL migrations to a schema.
//
// Migrations are numbered files in migrations/ (NNNN_name.sql), applied in
// order, each in its own transaction, while one session holds an advisory
// lock derived from the schema name: ten replicas starting at once apply each
// migration exactly once, the other nine wait and then find nothing to do.
// Applied versions are recorded in <schema>.schema_migrations.
package migrate

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wharfhq/wharf/internal/sqlschema"
)

//go:embed migrations/*.sql
var files embed.FS

// ErrSchemaNewer is returned when the database holds migrations this code
// does not know: a newer release migrated it. Migrate refuses to touch it;
// running code keeps working against it (new migrations only add).
var ErrSchemaNewer = errors.New("schema is newer than this code")

// Migration is one embedded migration file.
type Migration struct {
	Version int
	Name    string
	SQL     string // with {schema} placeholders
}

// All returns the embedded migrations in version order. It panics if the
// embedded files are misnamed or numbered with gaps, which a test catches.
func All() []Migration {
	entries, err := fs.Glob(files, "migrations/*.sql")
	if err != nil {
		panic(err)
	}
	all := make([]Migration, 0, len(entries))
	for _, entry := range entries {
		base := strings.TrimSuffix(path.Base(entry), ".sql")
		num, name, ok := strings.Cut(base, "_")
		version, err := strconv.Atoi(num)
		if !ok || err != nil || version <= 0 {
			panic(fmt.Sprintf("migrate: file %q is not named NNNN_name.sql", entry))
		}
		body, err := files.ReadFile(entry)
		if err != nil {
			panic(err)
		}
		all = append(all, Migration{Version: version, Name: name, SQL: string(body)})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Version < all[j].Version })
	for i, m := range all {
		if m.Version != i+1 {
			panic(fmt.Sprintf("migrate: versions must run 1, 2, 3, ... without gaps; found %d at position %d", m.Version, i+1))
		}
	}
	return all
}

// Latest is the highest version this code knows.
func Latest() int { return len(All()) }

// Fingerprint is a short hash of every embedded migration, used to name test
// template databases so a changed migration never reuses a stale template.
func Fingerprint() string {
	h := sha256.New()
	for _, m := range All() {
		fmt.Fprintf(h, "%d %s\n%s\n", m.Version, m.Name, m.SQL)
	}
	return fmt.Sprintf("%x", h.Sum(nil))[:12]
}

// Applied is one row of schema_migrations.
type Applied struct {
	Version   int
	Name      string
	AppliedAt time.Time
}

// Status describes a schema relative to this code.
type Status struct {
	Schema  string
	Applied []Applied   // in version order
	Pending []Migration // known to this code, not yet applied
	Latest  int         // highest version this code knows
}

// Current is the highest applied version, 0 for an empty schema.
func (s Status) Current() int {
	if len(s.Applied) == 0 {
		return 0
	}
	return s.Applied[len(s.Applied)-1].Version
}

// Newer reports whether the schema holds versions this code does not know.
func (s Status) Newer() bool { return s.Current() > s.Latest }

// lockKey derives the advisory lock key for a schema, so migrations of
// different schemas in one database do not wait for each other.
func lockKey(schema string) int64 {
	sum := sha256.Sum256([]byte("wharf.migrate:" + schema))
	return int64(binary.BigEndian.Uint64(sum[:8]))
}

// Up applies every pending migration to schema and returns the versions it
// applied (none when the schema is current). The schema must be validated.
func Up(ctx context.Context, pool *pgxpool.Pool, schema string) ([]int, error) {
	var applied []int
	err := withLock(ctx, pool, schema, func(conn *pgx.Conn) error {
		status, err := readStatus(ctx, conn, schema)
		if err != nil {
			return err
		}
		if status.Newer() {
			return fmt.Errorf("schema %q is at version %d, this code knows up to %d: %w",
				schema, status.Current(), status.Latest, ErrSchemaNewer)
		}
		for _, m := range status.Pending {
			if err := apply(ctx, conn, schema, m); err != nil {
				return err
			}
			applied = append(applied, m.Version)
		}
		return nil
	})
	return applied, err
}

// ReadStatus reports what is applied and pending, without changing anything
// and without taking the migration lock.
func ReadStatus(ctx context.Context, pool *pgxpool.Pool, schema string) (Status, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return Status{}, err
	}
	defer conn.Release()
	return readStatus(ctx, conn.Conn(), schema)
}

func readStatus(ctx context.Context, conn *pgx.Conn, schema string) (Status, error) {
	status := Status{Schema: schema, Latest: Latest()}
	var exists bool
	err := conn.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`,
		pgx.Identifier{schema, "schema_migrations"}.Sanitize()).Scan(&exists)
	if err != nil {
		return status, fmt.Errorf("read schema_migrations: %w", err)
	}
	if exists {
		rows, err := conn.Query(ctx, sqlschema.Render(
			`SELECT version, name, applied_at FROM {schema}.schema_migrations ORDER BY version`, schema))
		if err != nil {
			return status, fmt.Errorf("read schema_migrations: %w", err)
		}
		status.Applied, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (Applied, error) {
			var a Applied
			err := row.Scan(&a.Version, &a.Name, &a.AppliedAt)
			return a, err
		})
		if err != nil {
			return status, fmt.Errorf("read schema_migrations: %w", err)
		}
	}
	done := make(map[int]bool, len(status.Applied))
	for _, a := range status.Applied {
		done[a.Version] = true
	}
	for _, m := range All() {
		if !done[m.Version] {
			status.Pending = append(status.Pending, m)
		}
	}
	return status, nil
}

// withLock runs fn on one connection while it holds the schema's migration
// lock. The lock is session-level, so it is released explicitly; if that
// fails the connection is closed, which releases it too, rather than going
// back to the pool still holding it.
func withLock(ctx context.Context, pool *pgxpool.Pool, schema string, fn func(*pgx.Conn) error) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	key := lockKey(schema)
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, key); err != nil {
		return fmt.Errorf("take migration lock: %w", err)
	}
	fnErr := fn(conn.Conn())
	unlockCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := conn.Exec(unlockCtx, `SELECT pg_advisory_unlock($1)`, key); err != nil {
		_ = conn.Conn().Close(unlockCtx)
	}
	return fnErr
}

// bootstrap creates the schema and its migrations table; it runs with every
// migration, inside its transaction, so a fresh schema needs no extra step.
const bootstrap = `
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);`

func apply(ctx context.Context, conn *pgx.Conn, schema string, m Migration) error {
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		// No arguments, so pgx sends the simple protocol and a file may
		// hold several statements.
		if _, err := tx.Exec(ctx, sqlschema.Render(bootstrap, schema)); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, sqlschema.Render(m.SQL, schema)); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, sqlschema.Render(
			`INSERT INTO {schema}.schema_migrations (version, name) VALUES ($1, $2)`, schema), m.Version, m.Name)
		return err
	})
	if err != nil {
		return fmt.Errorf("apply migration %04d_%s to schema %q: %w", m.Version, m.Name, schema, err)
	}
	return nil
}
