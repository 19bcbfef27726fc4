package idempotency_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/idempotency"
)

// remaining lists the keys left in processed_events, sorted.
func remaining(t testing.TB, pool *pgxpool.Pool) []string {
	t.Helper()
	r, err := pool.Query(context.Background(), `SELECT key FROM wharf.processed_events ORDER BY key`)
	require.NoError(t, err)
	keys, err := pgx.CollectRows(r, pgx.RowTo[string])
	require.NoError(t, err)
	return keys
}

// age sets processed_at of key to the retention ago plus offset (an SQL
// interval: '1 hour' is older than the retention, '-1 hour' younger).
func age(t testing.TB, pool *pgxpool.Pool, store *idempotency.Store, key, offset string) {
	t.Helper()
	require.EqualValues(t, 1, exec(t, pool, `
UPDATE wharf.processed_events
SET processed_at = now() - $2 * interval '1 millisecond' - $3::interval
WHERE key = $1`, key, store.Config().Retention.Milliseconds(), offset))
}

// Prune deletes keys older than the retention, in batches, and keeps
// younger keys and every key in progress whose lock is live, however old.
// An in-progress key whose lock expired is deleted like any other.
func TestPruneRemovesOnlyOldKeys(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, pool := newStore(t, idempotency.Config{PruneBatch: 2}) // 5 old keys: 3 batches
	require.Equal(t, idempotency.DefaultRetention, store.Config().Retention)

	for _, k := range []string{"old-1", "old-2", "old-3", "young", "edge"} {
		require.True(t, claimIn(t, pool, store, "billing", k))
	}
	finished := begin(t, store, "charge", "old-finished")
	require.NoError(t, store.Finish(ctx, finished, []byte("r")))
	begin(t, store, "charge", "old-live")
	begin(t, store, "charge", "old-expired")
	begin(t, store, "charge", "young-live")
	for _, k := range []string{"old-1", "old-2", "old-3", "old-finished", "old-live", "old-expired"} {
		age(t, pool, store, k, "1 hour")
	}
	age(t, pool, store, "edge", "-1 hour") // just inside the retention
	expire(t, pool, "charge", "old-expired")

	deleted, err := store.Prune(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 5, deleted)
	require.Equal(t, []string{"edge", "old-live", "young", "young-live"}, remaining(t, pool))

	deleted, err = store.Prune(ctx)
	require.NoError(t, err)
	require.Zero(t, deleted)

	// The old live lock is pruned once it expires.
	expire(t, pool, "charge", "old-live")
	deleted, err = store.Prune(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 1, deleted)
	require.Equal(t, []string{"edge", "young", "young-live"}, remaining(t, pool))
}

// Prune never waits for a row another transaction holds (it would hold its
// own batch's locks meanwhile): it skips it, and a later run deletes it.
func TestPruneSkipsLockedRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, pool := newStore(t, idempotency.Config{})
	for _, k := range []string{"a", "b", "c"} {
		require.True(t, claimIn(t, pool, store, "billing", k))
		age(t, pool, store, k, "1 hour")
	}
	holder := beginTx(t, pool)
	_, err := holder.Exec(ctx, `SELECT 1 FROM wharf.processed_events WHERE key = 'b' FOR UPDATE`)
	require.NoError(t, err)

	// If Prune waited for "b" it would not return; the deadline turns
	// that into a failure rather than a hung test.
	waitCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	deleted, err := store.Prune(waitCtx)
	require.NoError(t, err)
	require.EqualValues(t, 2, deleted)
	require.Equal(t, []string{"b"}, remaining(t, pool))

	require.NoError(t, holder.Rollback(ctx))
	deleted, err = store.Prune(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 1, deleted)
	require.Empty(t, remaining(t, pool))
}

// A cancelled context stops Prune before it deletes anything more.
func TestPruneStopsWhenContextEnds(t *testing.T) {
	t.Parallel()
	store, pool := newStore(t, idempotency.Config{})
	require.True(t, claimIn(t, pool, store, "billing", "a"))
	age(t, pool, store, "a", "1 hour")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	deleted, err := store.Prune(ctx)
	require.ErrorIs(t, err, context.Canceled)
	require.Zero(t, deleted)
	require.Equal(t, []string{"a"}, remaining(t, pool))
}

// A prune finds the rows past the retention without reading the table,
// also after the table has reused the space of earlier prunes: new claims
// land in the pages that old rows left, so the table is in processed_at
// order only at first. (With the BRIN index of migration 8, each reused
// block range soon spanned the whole retention, and a batch read every
// range from the first page on: a run cost the table's size again for
// each batch.) The table here lives through two retentions of a claim
// every ten seconds, pruned and vacuumed day by day, and then holds an
// hour's claims past the retention, as an hourly prune finds it.
func TestPruneFindsOldRowsWithoutReadingTheTable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, pool := newStore(t, idempotency.Config{Retention: 7 * 24 * time.Hour})
	const days, perDay = 15, 8000
	for day := days; day >= 1; day-- {
		exec(t, pool, `
INSERT INTO wharf.processed_events (consumer, key, mode, processed_at)
SELECT 'c', md5(random()::text), 'tx', now() - $1 * interval '1 day' + i * interval '1 day' / $2
FROM generate_series(0, $2 - 1) AS i`, day, perDay)
		exec(t, pool, `DELETE FROM wharf.processed_events WHERE processed_at < now() - ($1 + 7) * interval '1 day' - interval '1 hour'`, day-1)
		exec(t, pool, `VACUUM ANALYZE wharf.processed_events`)
	}
	var pages, old int
	require.NoError(t, pool.QueryRow(ctx, `SELECT relpages FROM pg_class WHERE oid = 'wharf.processed_events'::regclass`).Scan(&pages))
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM wharf.processed_events WHERE processed_at < now() - interval '7 days'`).Scan(&old))
	require.InDelta(t, perDay/24, old, 2, "an hour's claims past the retention")

	tx := beginTx(t, pool)
	defer tx.Rollback(ctx) //nolint:errcheck // only explained
	var plans []struct{ Plan planNode }
	require.NoError(t, tx.QueryRow(ctx, `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) `+idempotency.PruneSQL(store),
		store.Config().Retention.Milliseconds(), store.Config().PruneBatch).Scan(&plans))
	var left int
	require.NoError(t, tx.QueryRow(ctx, `SELECT count(*) FROM wharf.processed_events WHERE processed_at < now() - interval '7 days'`).Scan(&left))
	require.Zero(t, left, "the batch deleted every old row")
	find := plans[0].Plan.finder()
	require.NotNil(t, find, "the plan has a scan that finds the batch")
	require.Less(t, find.Hit+find.Read, pages/4,
		"the %s finding %d old rows read %d buffers of a table of %d pages", find.Type, old, find.Hit+find.Read, pages)
}

// planNode is a node of EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON).
type planNode struct {
	Type  string     `json:"Node Type"`
	Hit   int        `json:"Shared Hit Blocks"`
	Read  int        `json:"Shared Read Blocks"`
	Plans []planNode `json:"Plans"`
}

// finder returns the scan that picks the prune's batch: the first scan
// below the node, but for the TID scan by which the DELETE reaches the
// rows found. Its buffers include its children's (a bitmap's index scan).
func (n *planNode) finder() *planNode {
	if strings.HasSuffix(n.Type, "Scan") && n.Type != "Tid Scan" {
		return n
	}
	for i := range n.Plans {
		if f := n.Plans[i].finder(); f != nil {
			return f
		}
	}
	return nil
}
