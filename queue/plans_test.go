package queue_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/queue"
)

// The queue's hot statements (fetch, completion, the group-commit insert
// and its duplicate recheck) run on generic plans, made once per
// connection. A generic plan made while the queue is empty is the one a
// connection keeps as the queue fills, so each statement's plan, made on
// an empty database (never analyzed, then analyzed), must reach rows only
// through indexes, the fetch through the fetch index kind by kind: a
// sequential or bitmap scan there would read a whole table on every call
// once it holds a backlog. Checked for a plain Queue and for the
// Pipeline's, whose insert and recheck carry its DuplicateIf condition
// (dead letters and processed keys).
func TestHotStatementPlans(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := dbtest.Pool(t)
	plain, err := queue.New(pool, queue.Config{})
	require.NoError(t, err)
	defer plain.Close()
	p, err := wharf.New(pool, wharf.Config{})
	require.NoError(t, err)
	defer p.Close()

	type statement struct {
		name, settings, sql, args string
		mustUse                   []string
	}
	const (
		fetchArgs  = `100, 1, 60000, 'w'`
		kindArgs   = `, ARRAY['s'], ARRAY['t']`
		insertArgs = `ARRAY['s'], ARRAY['id'], ARRAY['t'], ARRAY[''], ARRAY[3], ARRAY[NULL]::timestamptz[],
			ARRAY['\x00'::bytea], ARRAY['{}'::jsonb], ARRAY['h']`
	)
	// mustUse holds patterns. A walking fetch and the count of skipped
	// events read the fetch index in run_at order. A fetch by kind walks
	// each kind's events of each handler name through the kind index from
	// their first entry (not the whole index with a filter), and one that
	// reads its kinds off the queue seeks each next kind.
	const (
		walk     = "queue_fetch_idx"
		byKind   = `queue_fetch_kind_idx on queue \w+ .*\n\s*Index Cond: .*source.* = .*event_type.* = .*COALESCE\(handler, ''::text\)\)::text = `
		skipScan = `queue_fetch_kind_idx on queue \w+ .*\n\s*Index Cond: \(ROW\(source, event_type\) > ROW\(`
	)
	// recheck runs only with a DuplicateIf, so only for the Pipeline's.
	statements := func(q *queue.Queue, duplicateIf []string) []statement {
		walks, byKinds, skipped, payloads, heldPayloads, complete, insert, recheck := queue.RenderedSQL(q)
		var all []statement
		for i, payload := range []string{"", " (no payload)"} {
			all = append(all,
				statement{"fetch" + payload, queue.FetchSettingsSQL, walks[i][0][0], fetchArgs, []string{walk}},
				statement{"fetch only" + payload, queue.FetchSettingsSQL, walks[i][1][0], fetchArgs + kindArgs, []string{walk}},
				statement{"fetch exclude" + payload, queue.FetchSettingsSQL, walks[i][0][1], fetchArgs + kindArgs, []string{walk}},
				statement{"fetch only and exclude" + payload, queue.FetchSettingsSQL, walks[i][1][1], fetchArgs + kindArgs + kindArgs, []string{walk}},
				statement{"fetch by listed kinds" + payload, queue.FetchSettingsSQL, byKinds[i][0], fetchArgs + kindArgs, []string{byKind}},
				statement{"fetch by kinds present" + payload, queue.FetchSettingsSQL, byKinds[i][1], fetchArgs + kindArgs + kindArgs, []string{byKind, skipScan}})
		}
		all = append(all,
			statement{"skipped", queue.IndexPlansSQL, skipped[0][0], `1000`, []string{walk}},
			statement{"skipped only and exclude", queue.IndexPlansSQL, skipped[1][1], `1000` + kindArgs + kindArgs, []string{walk}})
		all = append(all, []statement{
			{"payloads", queue.IndexPlansSQL, payloads, `ARRAY[1, 2]`, []string{"queue_payloads_pkey"}},
			{"held payloads", queue.IndexPlansSQL, heldPayloads, `ARRAY[1, 2], ARRAY[3, 4]`, []string{"queue_pkey", "queue_payloads_pkey"}},
			{"complete", queue.IndexPlansSQL, complete, `ARRAY[1, 2], ARRAY[3, 4]`, []string{"queue_pkey"}},
			{"insert", queue.OwnEnqueueSQL, insert, insertArgs, duplicateIf},
		}...)
		if duplicateIf == nil {
			return all
		}
		return append(all, statement{"recheck", queue.OwnEnqueueSQL, recheck, `ARRAY['s'], ARRAY['id']`, []string{"queue_pkey"}})
	}
	all := append(statements(plain, nil),
		statements(p.Queue(), []string{"processed_events_pkey", "dead_letters_dead_event_idx"})...)
	for _, analyzed := range []bool{false, true} {
		if analyzed {
			_, err := pool.Exec(ctx, `ANALYZE`)
			require.NoError(t, err)
		}
		for _, s := range all {
			plan := genericPlan(t, pool, s.settings, s.sql, s.args)
			for _, pattern := range s.mustUse {
				require.Regexp(t, pattern, plan, "%s (analyzed: %v):\n%s", s.name, analyzed, plan)
			}
			require.NotContains(t, plan, "Seq Scan", "%s (analyzed: %v):\n%s", s.name, analyzed, plan)
			require.NotContains(t, plan, "Bitmap", "%s (analyzed: %v):\n%s", s.name, analyzed, plan)
		}
	}
}

// genericPlan returns the generic plan of sql, under settings, with args
// (SQL expressions) for its parameters. EXPLAIN without ANALYZE runs
// nothing.
func genericPlan(t *testing.T, pool *pgxpool.Pool, settings, sql, args string) string {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx) //nolint:errcheck
	_, err = tx.Exec(ctx, settings)
	require.NoError(t, err)
	// Prepared statements belong to the session, not the transaction.
	_, err = tx.Exec(ctx, "PREPARE hot AS "+sql)
	require.NoError(t, err)
	rows, err := tx.Query(ctx, "EXPLAIN EXECUTE hot("+args+")")
	require.NoError(t, err)
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "DEALLOCATE hot")
	require.NoError(t, err)
	return strings.Join(lines, "\n")
}

// A fetch by kind reads the queue only for the kinds it takes: a backlog
// of other kinds ahead of them (a handler's whose breaker is open, types
// no handler takes, a paused source's), or of its kinds stored for a
// paused handler, costs it nothing, where a walk of
// all available events in run_at order reads past every one of them (the
// last case, with the walk, shows that the count can see it). Measured
// by the rows the fetch's plan read, for each way a fetch can
// name its kinds; the fetches run in transactions that are rolled back.
func TestFetchReadsOnlyItsKinds(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, pool := newQueue(t, queue.Config{})

	const backlog = 1000
	evs := append(eventsOfKind("s", "skipped", backlog), eventsOfKind("paused", "t", backlog)...)
	// Events of the wanted kind itself, stored for a paused handler.
	for i := range backlog {
		ev := event("s", fmt.Sprintf("held-%d", i))
		ev.Type, ev.Handler = "wanted", "held"
		evs = append(evs, ev)
	}
	evs = append(evs, eventsOfKind("s", "wanted", 5)...)
	leaseEnqueue(t, q, evs...)
	require.NoError(t, q.Pause(ctx, queue.PauseTarget{Source: "paused"}, "test"))
	require.NoError(t, q.Pause(ctx, queue.PauseTarget{Handler: "held"}, "test"))
	_, err := pool.Exec(ctx, `ANALYZE wharf.queue`)
	require.NoError(t, err)

	wanted, skipped := queue.Kind{Source: "s", Type: "wanted"}, queue.Kind{Source: "s", Type: "skipped"}
	cases := []struct {
		name          string
		only, exclude []queue.Kind
	}{
		{"only the wanted kind", []queue.Kind{wanted}, nil},
		{"only kinds, one excluded", []queue.Kind{skipped, wanted}, []queue.Kind{skipped}},
		{"only kinds of a paused source too", []queue.Kind{wanted, {Source: "paused", Type: "t"}}, nil},
		{"only every type, one excluded", []queue.Kind{{Source: "s", Type: queue.AnyType}}, []queue.Kind{skipped}},
		{"every kind but the excluded", nil, []queue.Kind{skipped}},
	}
	for _, tc := range cases {
		sql, args := queue.FetchStatement(q, queue.FetchParams{Limit: 10, Only: tc.only, Exclude: tc.exclude, ByKind: true})
		claimed, read := explainFetch(t, pool, sql, args)
		require.Equal(t, 5, claimed, tc.name)
		// Each wanted event twice (once to find the oldest, once to lock
		// them), plus about one entry per handler name of the wanted kind
		// (2) and, for a fetch that reads its kinds off the queue, per
		// kind present (3) (EXPLAIN rounds each node's rows per loop).
		require.LessOrEqual(t, read, 2*5+2*(2+3), "%s: queue rows read", tc.name)
	}

	// The walk reads past the whole backlog ahead, of the skipped kinds
	// and of the paused handler.
	sql, args := queue.FetchStatement(q, queue.FetchParams{Limit: 10, Only: []queue.Kind{wanted}})
	claimed, read := explainFetch(t, pool, sql, args)
	require.Equal(t, 5, claimed)
	require.GreaterOrEqual(t, read, 3*backlog+5, "walk: queue rows read")
}

// explainFetch runs the fetch sql with args under EXPLAIN ANALYZE, as Fetch
// would run it, in a transaction it rolls back, and returns how many
// events it claimed and how many queue rows or index entries it read on
// its way to them (by any path but the primary key, by which it claims
// the rows it chose).
func explainFetch(t *testing.T, pool *pgxpool.Pool, sql string, args []any) (claimed, read int) {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx) //nolint:errcheck
	_, err = tx.Exec(ctx, queue.FetchSettingsSQL)
	require.NoError(t, err)
	var plans []struct{ Plan planNode }
	require.NoError(t, tx.QueryRow(ctx, "EXPLAIN (ANALYZE, FORMAT JSON) "+sql, args...).Scan(&plans))
	require.Len(t, plans, 1)
	var walk func(n planNode)
	walk = func(n planNode) {
		if strings.HasSuffix(n.NodeType, "Scan") && n.RelationName == "queue" && n.IndexName != "queue_pkey" {
			read += int((n.ActualRows + n.RowsRemovedByFilter) * n.ActualLoops)
		}
		for _, c := range n.Plans {
			walk(c)
		}
	}
	walk(plans[0].Plan)
	return int(plans[0].Plan.ActualRows), read
}

// planNode is a node of EXPLAIN (FORMAT JSON)'s plan tree.
type planNode struct {
	NodeType            string     `json:"Node Type"`
	RelationName        string     `json:"Relation Name"`
	IndexName           string     `json:"Index Name"`
	ActualRows          float64    `json:"Actual Rows"`
	ActualLoops         float64    `json:"Actual Loops"`
	RowsRemovedByFilter float64    `json:"Rows Removed by Filter"`
	Plans               []planNode `json:"Plans"`
}
