package queue_test

import (
	"context"
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
// through indexes, the fetch through the fetch index in run_at order: a
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
	// recheck runs only with a DuplicateIf, so only for the Pipeline's.
	statements := func(q *queue.Queue, duplicateIf []string) []statement {
		fetch, payloads, heldPayloads, complete, insert, recheck := queue.RenderedSQL(q)
		var all []statement
		for i, payload := range []string{"", " (no payload)"} {
			all = append(all,
				statement{"fetch" + payload, queue.FetchSettingsSQL, fetch[i][0][0], fetchArgs, []string{"queue_fetch_idx"}},
				statement{"fetch only" + payload, queue.FetchSettingsSQL, fetch[i][1][0], fetchArgs + kindArgs, []string{"queue_fetch_idx"}},
				statement{"fetch exclude" + payload, queue.FetchSettingsSQL, fetch[i][0][1], fetchArgs + kindArgs, []string{"queue_fetch_idx"}},
				statement{"fetch only and exclude" + payload, queue.FetchSettingsSQL, fetch[i][1][1], fetchArgs + kindArgs + kindArgs, []string{"queue_fetch_idx"}})
		}
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
			for _, index := range s.mustUse {
				require.Contains(t, plan, index, "%s (analyzed: %v):\n%s", s.name, analyzed, plan)
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
