package wharf_test

import (
	"context"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/internal/migrate"
)

func TestMigrateConcurrentReplicasApplyOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := dbtest.PoolWith(t, dbtest.Options{Empty: true, MaxConns: 12})

	const replicas = 10
	results := make([][]int, replicas)
	errs := make([]error, replicas)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, err := wharf.NewMigrator(pool, wharf.MigratorConfig{})
			if err != nil {
				errs[i] = err
				return
			}
			<-start
			results[i], errs[i] = m.Migrate(ctx)
		}()
	}
	close(start)
	wg.Wait()

	applied := map[int]int{}
	for i := range replicas {
		require.NoError(t, errs[i], "replica %d", i)
		for _, v := range results[i] {
			applied[v]++
		}
	}
	require.Len(t, applied, migrate.Latest(), "every migration applied by some replica")
	for v, n := range applied {
		require.Equal(t, 1, n, "migration %d applied %d times", v, n)
	}

	var rows int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM wharf.schema_migrations`).Scan(&rows))
	require.Equal(t, migrate.Latest(), rows)

	again, err := wharf.NewMigrator(pool, wharf.MigratorConfig{})
	require.NoError(t, err)
	versions, err := again.Migrate(ctx)
	require.NoError(t, err)
	require.Empty(t, versions, "re-running is a no-op")
}

func TestMigrateRefusesNewerSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := dbtest.Pool(t)

	future := migrate.Latest() + 1
	_, err := pool.Exec(ctx, `INSERT INTO wharf.schema_migrations (version, name) VALUES ($1, 'from_the_future')`, future)
	require.NoError(t, err)

	err = wharf.Migrate(ctx, pool)
	require.ErrorIs(t, err, wharf.ErrSchemaNewer)
	require.Contains(t, err.Error(), "newer")

	m, err := wharf.NewMigrator(pool, wharf.MigratorConfig{})
	require.NoError(t, err)
	st, err := m.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, future, st.Current)
	require.Equal(t, migrate.Latest(), st.Latest)
	require.Empty(t, st.Pending)
}

func TestMigrateCustomSchemaAndStatus(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := dbtest.PoolWith(t, dbtest.Options{Empty: true})

	m, err := wharf.NewMigrator(pool, wharf.MigratorConfig{Schema: "hooks_v2"})
	require.NoError(t, err)
	st, err := m.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, 0, st.Current)
	require.Len(t, st.Pending, migrate.Latest())

	applied, err := m.Migrate(ctx)
	require.NoError(t, err)
	require.Len(t, applied, migrate.Latest())

	st, err = m.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, migrate.Latest(), st.Current)
	require.Empty(t, st.Pending)

	var exists bool
	require.NoError(t, pool.QueryRow(ctx, `SELECT to_regclass('hooks_v2.queue') IS NOT NULL AND to_regclass('wharf.queue') IS NULL`).Scan(&exists))
	require.True(t, exists, "tables land in the configured schema only")
}

func TestMigratorRejectsInvalidSchema(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"Wharf", "1wharf", "wh-arf", `wharf"; DROP TABLE x; --`, "pg_wharf", "a234567890123456789012345678901234567890123456789012345678901234"} {
		_, err := wharf.NewMigrator(nil, wharf.MigratorConfig{Schema: name})
		require.ErrorIs(t, err, wharf.ErrInvalidSchema, "schema %q", name)
	}
}
