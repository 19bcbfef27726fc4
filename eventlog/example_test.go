package eventlog_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wharfhq/wharf/eventlog"
	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/internal/migrate"
)

func Example() {
	ctx := context.Background()
	pool := examplePool() // a pool on a database migrated with wharf.Migrate
	log, err := eventlog.New(pool, eventlog.Config{})
	if err != nil {
		panic(err)
	}
	defer log.Close()

	// Open an account: NoStream, it must not exist yet.
	res, err := log.Append(ctx, "account-1", eventlog.NoStream,
		eventlog.NewEvent{Type: "account.opened", Data: []byte(`{"owner": "ada"}`)},
		eventlog.NewEvent{Type: "money.deposited", Data: []byte(`{"amount": 100}`),
			Metadata: eventlog.Metadata{SourceEventID: "evt_1NG8", Actor: "stripe"}},
	)
	if err != nil {
		panic(err)
	}
	fmt.Println("version after opening:", res.Version)

	// A second "open" loses: the stream exists.
	_, err = log.Append(ctx, "account-1", eventlog.NoStream, eventlog.NewEvent{Type: "account.opened", Data: []byte(`{}`)})
	fmt.Println(errors.Is(err, eventlog.ErrVersionConflict), err)

	// Fold the stream into its state, decide, append at the version read.
	balance, version, err := eventlog.Load(ctx, log, "account-1", 0, func(balance int, ev eventlog.Event) (int, error) {
		var d struct{ Amount int }
		if err := json.Unmarshal(ev.Data, &d); err != nil {
			return balance, err
		}
		switch ev.Type {
		case "money.deposited":
			balance += d.Amount
		case "money.withdrawn":
			balance -= d.Amount
		}
		return balance, nil
	})
	if err != nil {
		panic(err)
	}
	fmt.Println("balance", balance, "at version", version)
	if balance >= 30 {
		res, err = log.Append(ctx, "account-1", version, eventlog.NewEvent{Type: "money.withdrawn", Data: []byte(`{"amount": 30}`)})
		if err != nil {
			panic(err) // errors.Is(err, ErrVersionConflict): someone else wrote; load again and decide again
		}
		fmt.Println("version after withdrawing:", res.Version)
	}
	// Output:
	// version after opening: 2
	// true eventlog: stream "account-1": version conflict: expected no stream, found version 2
	// balance 100 at version 2
	// version after withdrawing: 3
}

func ExampleProjection() {
	ctx := context.Background()
	pool := examplePool()
	log, err := eventlog.New(pool, eventlog.Config{})
	if err != nil {
		panic(err)
	}
	defer log.Close()
	if _, err := pool.Exec(ctx, `CREATE TABLE order_counts (event_type text PRIMARY KEY, n int NOT NULL)`); err != nil {
		panic(err)
	}

	counts, err := log.NewProjection(eventlog.ProjectionConfig{
		Name:     "order-counts",
		Category: "order-",
		Handler: func(ctx context.Context, tx pgx.Tx, events []eventlog.Event) error {
			for _, ev := range events {
				if _, err := tx.Exec(ctx, `
INSERT INTO order_counts (event_type, n) VALUES ($1, 1)
ON CONFLICT (event_type) DO UPDATE SET n = order_counts.n + 1`, ev.Type); err != nil {
					return err // the batch rolls back, checkpoint included
				}
			}
			return nil
		},
	})
	if err != nil {
		panic(err)
	}

	for _, stream := range []string{"order-1", "order-2", "invoice-1"} {
		if _, err := log.Append(ctx, stream, eventlog.NoStream, eventlog.NewEvent{Type: "placed", Data: []byte(`{}`)}); err != nil {
			panic(err)
		}
	}
	if _, err := log.Append(ctx, "order-1", 1, eventlog.NewEvent{Type: "paid", Data: []byte(`{}`)}); err != nil {
		panic(err)
	}

	// A service would run counts.Run(ctx) in the background; CatchUp
	// applies what is there now. (The tail can wait a moment for older
	// write transactions of this database, hence the loop.)
	for applied := 0; applied < 3; {
		n, err := counts.CatchUp(ctx)
		if err != nil {
			panic(err)
		}
		applied += n
	}
	rows, _ := pool.Query(ctx, `SELECT event_type, n FROM order_counts ORDER BY event_type`)
	for rows.Next() {
		var typ string
		var n int
		if err := rows.Scan(&typ, &n); err != nil {
			panic(err)
		}
		fmt.Println(typ, n)
	}
	// Output:
	// paid 1
	// placed 2
}

// The examples share one database, created on first use and dropped after
// the tests: an Example function has no *testing.T for dbtest.
var (
	exampleOnce sync.Once
	exampleDB   string
	examplePl   *pgxpool.Pool
)

// examplePool returns a pool on a database migrated like wharf.Migrate
// does, for the examples.
func examplePool() *pgxpool.Pool {
	exampleOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		admin, err := pgx.Connect(ctx, dbtest.URL())
		if err != nil {
			panic(fmt.Sprintf("cannot reach PostgreSQL at %s (see internal/dbtest for how to start one): %v", dbtest.URL(), err))
		}
		defer admin.Close(ctx)
		var b [6]byte
		_, _ = rand.Read(b[:])
		exampleDB = "wharf_test_example_" + hex.EncodeToString(b[:])
		if _, err := admin.Exec(ctx, "CREATE DATABASE "+exampleDB); err != nil {
			panic(err)
		}
		examplePl, err = pgxpool.New(ctx, withDatabase(dbtest.URL(), exampleDB))
		if err != nil {
			panic(err)
		}
		if _, err := migrate.Up(ctx, examplePl, "wharf"); err != nil {
			panic(err)
		}
	})
	return examplePl
}

// withDatabase points a postgres:// URL or keyword/value string at db.
func withDatabase(conn, db string) string {
	if strings.HasPrefix(conn, "postgres://") || strings.HasPrefix(conn, "postgresql://") {
		u, err := url.Parse(conn)
		if err != nil {
			panic(err)
		}
		u.Path = "/" + db
		return u.String()
	}
	return conn + " dbname=" + db
}

func TestMain(m *testing.M) {
	code := m.Run()
	if examplePl != nil {
		examplePl.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if admin, err := pgx.Connect(ctx, dbtest.URL()); err == nil {
			_, _ = admin.Exec(ctx, "DROP DATABASE IF EXISTS "+exampleDB+" WITH (FORCE)")
			_ = admin.Close(ctx)
		}
		cancel()
	}
	os.Exit(code)
}
