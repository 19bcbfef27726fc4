package wharf_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/internal/dbtest"
)

// probe serves p.HealthHandler over real HTTP and returns the answer.
func probe(t *testing.T, p *wharf.Pipeline) (int, string) {
	t.Helper()
	srv := httptest.NewServer(p.HealthHandler())
	t.Cleanup(srv.Close)
	resp, err := http.Get(srv.URL)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(body)
}

func pipelineOn(t *testing.T, pool *pgxpool.Pool) *wharf.Pipeline {
	t.Helper()
	p, err := wharf.New(pool, wharf.Config{})
	require.NoError(t, err)
	t.Cleanup(p.Close)
	return p
}

func TestHealthReadyWhenMigrated(t *testing.T) {
	t.Parallel()
	p := pipelineOn(t, dbtest.Pool(t))
	code, body := probe(t, p)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "ok\n", body)
}

// A database that answers and holds the schema but takes no writes (a
// standby still behind the address after a failover, or one set
// read-only) is not ready: every event stored or processed there fails.
func TestHealthNotReadyWhenDatabaseReadOnly(t *testing.T) {
	t.Parallel()
	cfg, err := pgxpool.ParseConfig(dbtest.Database(t, dbtest.Options{}))
	require.NoError(t, err)
	cfg.ConnConfig.RuntimeParams["default_transaction_read_only"] = "on"
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	p := pipelineOn(t, pool)
	require.ErrorIs(t, p.Ready(context.Background()), wharf.ErrNotReady)
	code, body := probe(t, p)
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, body, "read-only")
}

// A database the code's migrations have not reached is not ready, and the
// answer says what to do; after Migrate it is.
func TestHealthNotReadyBeforeMigrate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := dbtest.PoolWith(t, dbtest.Options{Empty: true})
	p := pipelineOn(t, pool)
	require.ErrorIs(t, p.Ready(ctx), wharf.ErrNotReady)
	code, body := probe(t, p)
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, body, "run wharf.Migrate")

	require.NoError(t, wharf.Migrate(ctx, pool))
	code, _ = probe(t, p)
	require.Equal(t, http.StatusOK, code)
}

// Run refuses a schema behind this code at once, saying what to do,
// instead of logging a failed fetch at every poll.
func TestRunRefusesASchemaBehindTheCode(t *testing.T) {
	t.Parallel()
	pool := dbtest.PoolWith(t, dbtest.Options{Empty: true})
	p := pipelineOn(t, pool)
	require.NoError(t, p.Source("acme", wharf.StandardWebhooks(testSecret)))
	require.NoError(t, p.Handle("acme", "order.paid", func(context.Context, pgx.Tx, wharf.Event) error { return nil }))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := p.Run(ctx)
	require.ErrorIs(t, err, wharf.ErrNotReady)
	require.ErrorContains(t, err, "run wharf.Migrate")
}

func TestRunAfterCloseIsRefused(t *testing.T) {
	t.Parallel()
	p := pipelineOn(t, dbtest.Pool(t))
	require.NoError(t, p.Source("acme", wharf.StandardWebhooks(testSecret)))
	require.NoError(t, p.Handle("acme", "order.paid", func(context.Context, pgx.Tx, wharf.Event) error { return nil }))
	p.Close()
	require.ErrorIs(t, p.Run(context.Background()), wharf.ErrClosed)
}

func TestHealthNotReadyWhenDatabaseDown(t *testing.T) {
	t.Parallel()
	// Nothing listens on port 1; the pool connects lazily, so New succeeds.
	pool, err := pgxpool.New(context.Background(), "postgres://postgres@127.0.0.1:1/postgres?connect_timeout=1")
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	p := pipelineOn(t, pool)
	err = p.Ready(context.Background())
	require.ErrorIs(t, err, wharf.ErrNotReady)
	require.ErrorContains(t, err, "127.0.0.1", "Ready's error carries the driver's")
	code, body := probe(t, p)
	require.Equal(t, http.StatusServiceUnavailable, code)
	// Whoever can reach the probe learns nothing of the connection.
	require.Equal(t, "wharf: not ready: the database does not answer, or refused the check\n", body)
}

// After Close the endpoint can store nothing (every delivery is answered
// 503), so the probe must not say ready and keep traffic coming.
func TestHealthNotReadyAfterClose(t *testing.T) {
	t.Parallel()
	p := pipelineOn(t, dbtest.Pool(t))
	require.NoError(t, p.Source("acme", wharf.StandardWebhooks(testSecret)))
	code, _ := probe(t, p)
	require.Equal(t, http.StatusOK, code)

	p.Close()
	srv := httptest.NewServer(p.Handler("acme"))
	t.Cleanup(srv.Close)
	body := []byte(`{"type":"order.paid"}`)
	resp := postTo(t, srv.URL, body, wharf.SignStandardWebhooks(testSecret, "evt_after_close", time.Now(), body))
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "a closed pipeline stores nothing")

	require.ErrorIs(t, p.Ready(context.Background()), wharf.ErrNotReady)
	require.ErrorIs(t, p.Ready(context.Background()), wharf.ErrClosed)
	code, body2 := probe(t, p)
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, body2, "closed")
}
