package eventlog_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/eventlog"
	"github.com/wharfhq/wharf/internal/dbtest"
)

// newLog returns a Log on a fresh database with a pool of maxConns (16
// when 0), closed at cleanup.
func newLog(t testing.TB, maxConns int32, cfg eventlog.Config) (*eventlog.Log, *pgxpool.Pool) {
	t.Helper()
	pool := dbtest.PoolWith(t, dbtest.Options{MaxConns: maxConns})
	l, err := eventlog.New(pool, cfg)
	require.NoError(t, err)
	t.Cleanup(l.Close)
	return l, pool
}

// ev returns an event of type typ with data {"n": n}.
func ev(typ string, n int) eventlog.NewEvent {
	return eventlog.NewEvent{Type: typ, Data: fmt.Appendf(nil, `{"n": %d}`, n)}
}

// readAllUntil loops ReadAll from the start until it has returned want
// events, polling: the tail can be held back for a moment by a short
// transaction of this database, such as the NOTIFY an Append sends.
func readAllUntil(t testing.TB, l *eventlog.Log, want int) []eventlog.Event {
	t.Helper()
	var all []eventlog.Event
	var cursor eventlog.Cursor
	dbtest.Eventually(t, 30*time.Second, fmt.Sprintf("ReadAll to return %d events", want), func() bool {
		events, next, err := l.ReadAll(context.Background(), cursor, eventlog.MaxReadLimit)
		require.NoError(t, err)
		all, cursor = append(all, events...), next
		require.LessOrEqual(t, len(all), want)
		return len(all) == want
	})
	return all
}

// signalHandler is a slog.Handler that sends, without blocking, every
// record whose message contains match.
type signalHandler struct {
	match string
	ch    chan string
}

func (h *signalHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *signalHandler) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, h.match) {
		select {
		case h.ch <- r.Message:
		default:
		}
	}
	return nil
}
func (h *signalHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *signalHandler) WithGroup(string) slog.Handler      { return h }

func jsonUnmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }

// begin starts a transaction that is rolled back at cleanup unless it
// ended before, so a failing test never leaves the pool waiting for it.
func begin(t testing.TB, pool *pgxpool.Pool) pgx.Tx {
	t.Helper()
	tx, err := pool.Begin(context.Background())
	require.NoError(t, err)
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	return tx
}

// logOn returns a Log on the database at url through a pool of its own,
// configured by configure (when not nil), both closed at cleanup.
func logOn(t testing.TB, url string, configure func(*pgxpool.Config)) (*eventlog.Log, *pgxpool.Pool) {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	require.NoError(t, err)
	if configure != nil {
		configure(cfg)
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	l, err := eventlog.New(pool, eventlog.Config{PollOnly: true})
	require.NoError(t, err)
	t.Cleanup(l.Close)
	return l, pool
}

// writeElsewhere begins a transaction in another, empty database of the
// cluster and gives it a transaction id; it is rolled back at cleanup
// unless it ended before.
func writeElsewhere(t testing.TB) pgx.Tx {
	t.Helper()
	ctx := context.Background()
	other, err := pgxpool.New(ctx, dbtest.Database(t, dbtest.Options{Empty: true}))
	require.NoError(t, err)
	t.Cleanup(other.Close)
	tx, err := other.Begin(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = tx.Rollback(ctx) })
	_, err = tx.Exec(ctx, `SELECT pg_current_xact_id()`)
	require.NoError(t, err)
	return tx
}
