// Package dbtest gives each test its own PostgreSQL database, cloned from a
// template that holds every wharf migration, so tests run with t.Parallel()
// and never see each other's rows.
//
// The server comes from $DATABASE_URL (default
// postgres://postgres@127.0.0.1:5432/postgres). When no server answers, the
// test fails with a message saying how to start one; it never skips.
package dbtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wharfhq/wharf/internal/migrate"
	"github.com/wharfhq/wharf/internal/sqlschema"
)

// DefaultURL is used when $DATABASE_URL is unset.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/postgres"

// URL returns the server the tests use.
func URL() string {
	if u := os.Getenv("DATABASE_URL"); u != "" {
		return u
	}
	return DefaultURL
}

// howToStart is appended to every connection failure.
const howToStart = `wharf's tests need a PostgreSQL server (version 13 or later).
Point DATABASE_URL at one (default ` + DefaultURL + `), or start one:
  Debian/Ubuntu:  pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start
  Docker:         docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres:16
  any install:    initdb -D /tmp/pg -U postgres --auth=trust && pg_ctl -D /tmp/pg -l /tmp/pg.log start`

var (
	adminOnce sync.Once
	admin     *pgxpool.Pool
	adminErr  error

	templateOnce sync.Once
	templateName string
	templateErr  error
)

func adminPool() (*pgxpool.Pool, error) {
	adminOnce.Do(func() {
		cfg, err := pgxpool.ParseConfig(URL())
		if err != nil {
			adminErr = fmt.Errorf("parse DATABASE_URL %q: %w", URL(), err)
			return
		}
		cfg.MaxConns = 4
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		pool, err := pgxpool.NewWithConfig(ctx, cfg)
		if err == nil {
			err = pool.Ping(ctx)
		}
		if err != nil {
			adminErr = fmt.Errorf("cannot reach PostgreSQL at %s: %w\n%s", URL(), err, howToStart)
			return
		}
		admin = pool
	})
	return admin, adminErr
}

// Options adjust the database a test gets.
type Options struct {
	// MaxConns is the pool size. Defaults to 16.
	MaxConns int32
	// Empty skips the migrations: the database has no wharf schema, for
	// tests of Migrate itself.
	Empty bool
}

// Pool returns a pool on a fresh, migrated database (schema "wharf") that is
// dropped when the test ends.
func Pool(t testing.TB) *pgxpool.Pool {
	return PoolWith(t, Options{})
}

// PoolWith is Pool with options.
func PoolWith(t testing.TB, opts Options) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(Database(t, opts))
	if err != nil {
		t.Fatalf("dbtest: %v", err)
	}
	cfg.MaxConns = opts.MaxConns
	if cfg.MaxConns == 0 {
		cfg.MaxConns = 16
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("dbtest: %v", err)
	}
	t.Cleanup(pool.Close) // runs before the drop registered by Database
	return pool
}

// Database creates a fresh database for the test, drops it (forcibly, so a
// leaked connection cannot keep it alive) when the test ends, and returns its
// connection string, for tests that start other processes.
func Database(t testing.TB, opts Options) string {
	t.Helper()
	pool, err := adminPool()
	if err != nil {
		t.Fatalf("dbtest: %v", err)
	}
	source := "template1"
	if !opts.Empty {
		if source, err = template(pool); err != nil {
			t.Fatalf("dbtest: build template database: %v", err)
		}
	}
	name := "wharf_test_" + randomSuffix()
	ctx := context.Background()
	if _, err := pool.Exec(ctx, fmt.Sprintf("CREATE DATABASE %s TEMPLATE %s",
		pgx.Identifier{name}.Sanitize(), pgx.Identifier{source}.Sanitize())); err != nil {
		t.Fatalf("dbtest: create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := pool.Exec(ctx, fmt.Sprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)",
			pgx.Identifier{name}.Sanitize())); err != nil {
			t.Errorf("dbtest: drop database %s: %v", name, err)
		}
	})
	return withDatabase(URL(), name)
}

// withDatabase returns connString (URL or keyword/value form) pointing at
// database name.
func withDatabase(connString, name string) string {
	if strings.HasPrefix(connString, "postgres://") || strings.HasPrefix(connString, "postgresql://") {
		u, err := url.Parse(connString)
		if err != nil {
			panic(err) // adminPool parsed it already
		}
		u.Path = "/" + name
		return u.String()
	}
	return connString + " dbname=" + name
}

// template returns the name of a database holding every migration, building
// it once per server and migration set. Test binaries of several packages
// run at once, so the build is guarded by an advisory lock, done under a
// temporary name and renamed when complete.
func template(admin *pgxpool.Pool) (string, error) {
	templateOnce.Do(func() {
		templateName = "wharf_tpl_" + migrate.Fingerprint()
		templateErr = buildTemplate(admin, templateName)
	})
	return templateName, templateErr
}

func buildTemplate(admin *pgxpool.Pool, name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := admin.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	const lockKey = 0x77686172665f7470 // "wharf_tp"
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, int64(lockKey)); err != nil {
		return err
	}
	defer conn.Exec(context.Background(), `SELECT pg_advisory_unlock($1)`, int64(lockKey)) //nolint:errcheck // the session ends with the pool anyway

	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		return err
	}
	if exists {
		return nil
	}
	building := name + "_building"
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{building}.Sanitize()+" WITH (FORCE)"); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{building}.Sanitize()); err != nil {
		return err
	}
	pool, err := pgxpool.New(ctx, withDatabase(URL(), building))
	if err != nil {
		return err
	}
	_, err = migrate.Up(ctx, pool, sqlschema.Default)
	pool.Close()
	if err != nil {
		return err
	}
	for _, stmt := range []string{
		"ALTER DATABASE " + pgx.Identifier{building}.Sanitize() + " RENAME TO " + pgx.Identifier{name}.Sanitize(),
		// Nobody may connect to a template: CREATE DATABASE refuses to copy
		// a database that has sessions.
		"ALTER DATABASE " + pgx.Identifier{name}.Sanitize() + " WITH ALLOW_CONNECTIONS false",
	} {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return err
		}
	}
	return nil
}

func randomSuffix() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
