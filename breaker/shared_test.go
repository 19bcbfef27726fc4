package breaker_test

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/breaker"
	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/internal/migrate"
	"github.com/wharfhq/wharf/internal/testio"
)

// These tests need PostgreSQL and real time, so they run outside synctest
// bubbles. Open timeouts are seconds long, so a slow machine cannot let an
// open run out between two steps that expect it in force; the tests that
// need one to run out poll for it with a deadline. Registries made with NewManualSync move shared state only when
// the test calls Sync, so every publication and read happens in the order
// the test says; TestSharedRefresherPropagatesWithoutSync runs the real
// background refresher and polls with a deadline.

// process returns a Registry standing for one worker process named owner,
// sharing state through pool.
func process(t *testing.T, pool *pgxpool.Pool, owner string, def breaker.Settings, rec *recorder) *breaker.Registry {
	t.Helper()
	cfg := breaker.Config{
		Default: def,
		Shared:  &breaker.SharedConfig{Pool: pool, Owner: owner},
	}
	if rec != nil {
		cfg.OnStateChange = rec.record
	}
	r, err := breaker.NewManualSync(cfg)
	require.NoError(t, err)
	t.Cleanup(r.Close)
	return r
}

func syncAll(t *testing.T, rs ...*breaker.Registry) {
	t.Helper()
	for _, r := range rs {
		require.NoError(t, r.Sync(context.Background()))
	}
}

// sharedRow reads the breakers row of name.
func sharedRow(t *testing.T, pool *pgxpool.Pool, name string) (gen int64, state, changedBy string, openFor time.Duration) {
	t.Helper()
	var us int64
	err := pool.QueryRow(context.Background(), `
		SELECT generation, state, changed_by, coalesce(extract(epoch FROM open_until - now()) * 1e6, 0)::bigint
		FROM wharf.breakers WHERE name = $1`, name).Scan(&gen, &state, &changedBy, &us)
	require.NoError(t, err)
	return gen, state, changedBy, time.Duration(us) * time.Microsecond
}

// tripAtOnce opens at the first failure for 2s, then lets one probe
// through: the tests that wait for an open to run out wait 2s.
var tripAtOnce = breaker.Settings{
	Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 1,
	OpenTimeout: 2 * time.Second, HalfOpenProbes: 1,
}

// requireSharedRow asserts the breakers row of name and returns how long
// its open has left.
func requireSharedRow(t *testing.T, pool *pgxpool.Pool, name string, wantGen int64, wantState, wantBy, why string) time.Duration {
	t.Helper()
	gen, state, by, openFor := sharedRow(t, pool, name)
	require.Equal(t, wantGen, gen, why)
	require.Equal(t, wantState, state, why)
	require.Equal(t, wantBy, by, why)
	return openFor
}

// requireOpenFor asserts that breaker name of r is open for about openFor,
// the time a shared open has left.
func requireOpenFor(t *testing.T, r *breaker.Registry, name string, openFor time.Duration) {
	t.Helper()
	st := requireState(t, r, name, breaker.StateOpen)
	require.WithinRange(t, st.Until, time.Now().Add(openFor-time.Second), time.Now().Add(openFor+time.Second))
}

func TestSharedOpenStopsTheOtherProcessWithoutCallingTheDownstream(t *testing.T) {
	t.Parallel()
	pool := dbtest.Pool(t)
	settings := breaker.Settings{Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 2, OpenTimeout: time.Minute}
	recB := &recorder{}
	a := process(t, pool, "worker-a", settings, nil)
	b := process(t, pool, "worker-b", settings, recB)
	syncAll(t, a, b)

	downA := &downstream{err: errRefused}
	for range 2 {
		require.ErrorIs(t, a.Execute(ctx, "billing", downA.call), breaker.ErrDownstream)
	}
	requireState(t, a, "billing", breaker.StateOpen)
	syncAll(t, a) // publishes the open

	gen, state, by, openFor := sharedRow(t, pool, "billing")
	require.Equal(t, int64(1), gen)
	require.Equal(t, "open", state)
	require.Equal(t, "worker-a", by)
	require.Greater(t, openFor, 50*time.Second, "open for what was left of A's timeout")
	require.LessOrEqual(t, openFor, time.Minute)

	// B has never used "billing": it learns of it from the table.
	require.Empty(t, b.Open())
	before := time.Now()
	syncAll(t, b)
	openList := b.Open()
	require.Len(t, openList, 1)
	require.Equal(t, "billing", openList[0].Name)
	require.WithinRange(t, openList[0].Until, before.Add(50*time.Second), time.Now().Add(time.Minute))

	downB := &downstream{}
	err := b.Execute(ctx, "billing", downB.call)
	open := requireOpenError(t, err, "billing")
	require.Equal(t, openList[0].Until, open.Until)
	require.Zero(t, downB.calls.Load(), "B did not call the downstream to find out")
	require.Equal(t, []string{"closed>open (shared)"}, recB.transitions())
	require.Equal(t, open.Until, recB.all()[0].Until)

	// Other downstreams of B are untouched.
	require.NoError(t, b.Execute(ctx, "ledger", downB.call))
	require.Equal(t, int64(1), downB.calls.Load())
}

func TestSharedCloseAfterProbesReopensTheOtherProcess(t *testing.T) {
	t.Parallel()
	pool := dbtest.Pool(t)
	settings := tripAtOnce
	recB := &recorder{}
	a := process(t, pool, "worker-a", settings, nil)
	b := process(t, pool, "worker-b", settings, recB)

	downA := &downstream{err: errRefused}
	require.ErrorIs(t, a.Execute(ctx, "billing", downA.call), breaker.ErrDownstream)
	syncAll(t, a, b)
	require.Equal(t, []string{"closed>open (shared)"}, recB.transitions())

	// A's timeout passes; its probe succeeds and it closes.
	dbtest.Eventually(t, 10*time.Second, "A to go half-open", func() bool {
		st, err := a.State("billing")
		require.NoError(t, err)
		return st.State == breaker.StateHalfOpen
	})
	downA.set(nil)
	require.NoError(t, a.Execute(ctx, "billing", downA.call))
	requireState(t, a, "billing", breaker.StateClosed)
	syncAll(t, a)
	gen, state, by, _ := sharedRow(t, pool, "billing")
	require.Equal(t, int64(2), gen)
	require.Equal(t, "closed", state)
	require.Equal(t, "worker-a", by)

	// B closes from the table, without a probe of its own: it made no call.
	syncAll(t, b)
	requireState(t, b, "billing", breaker.StateClosed)
	changes := recB.all()
	require.Equal(t, breaker.StateClosed, changes[len(changes)-1].To)
	require.True(t, changes[len(changes)-1].Shared)
	downB := &downstream{}
	require.NoError(t, b.Execute(ctx, "billing", downB.call))
	require.Equal(t, int64(1), downB.calls.Load())
}

func TestSharedCountsTripTheFleetTogether(t *testing.T) {
	t.Parallel()
	pool := dbtest.Pool(t)
	settings := breaker.Settings{MinRequests: 10, FailureRate: 0.5, OpenTimeout: time.Minute}
	a := process(t, pool, "worker-a", settings, nil)
	b := process(t, pool, "worker-b", settings, nil)

	// Each sees 5 failed calls of 5: under MinRequests alone.
	for _, r := range []*breaker.Registry{a, b} {
		for range 5 {
			require.ErrorIs(t, r.Execute(ctx, "billing", func(context.Context) error { return errRefused }), breaker.ErrDownstream)
		}
		requireState(t, r, "billing", breaker.StateClosed)
	}
	syncAll(t, a, b, a) // both publish their counts and read the other's

	// One more failure at B: 5 (A) + 6 (B) = 11 counted, all failed.
	require.ErrorIs(t, b.Execute(ctx, "billing", func(context.Context) error { return errRefused }), breaker.ErrDownstream)
	requireState(t, b, "billing", breaker.StateOpen)
	syncAll(t, b, a)
	requireState(t, a, "billing", breaker.StateOpen)

	// Successes elsewhere keep the fleet's rate under the threshold.
	c := process(t, pool, "worker-c", settings, nil)
	d := process(t, pool, "worker-d", settings, nil)
	for range 20 {
		require.NoError(t, c.Execute(ctx, "search", func(context.Context) error { return nil }))
	}
	syncAll(t, c, d)
	for range 10 {
		_ = d.Execute(ctx, "search", func(context.Context) error { return errRefused })
	}
	requireState(t, d, "search", breaker.StateClosed) // 10 failed of 30
}

func TestSharedSecondTripAdoptsTheFirstOpen(t *testing.T) {
	t.Parallel()
	pool := dbtest.Pool(t)
	settings := tripAtOnce
	a := process(t, pool, "worker-a", settings, nil)
	b := process(t, pool, "worker-b", settings, nil)

	// Both trip before either hears of the other.
	require.Error(t, a.Execute(ctx, "billing", func(context.Context) error { return errRefused }))
	require.Error(t, b.Execute(ctx, "billing", func(context.Context) error { return errRefused }))
	syncAll(t, a, b)
	gen, state, by, _ := sharedRow(t, pool, "billing")
	require.Equal(t, int64(1), gen, "the second open did not restamp the first")
	require.Equal(t, "open", state)
	require.Equal(t, "worker-a", by)

	// B adopted generation 1, so its close ends A's open.
	dbtest.Eventually(t, 10*time.Second, "B to go half-open", func() bool {
		st, err := b.State("billing")
		require.NoError(t, err)
		return st.State == breaker.StateHalfOpen
	})
	require.NoError(t, b.Execute(ctx, "billing", func(context.Context) error { return nil }))
	syncAll(t, b)
	gen, state, by, _ = sharedRow(t, pool, "billing")
	require.Equal(t, int64(2), gen)
	require.Equal(t, "closed", state)
	require.Equal(t, "worker-b", by)
	syncAll(t, a)
	requireState(t, a, "billing", breaker.StateClosed)
}

func TestSharedStaleCloseDoesNotEndANewerOpen(t *testing.T) {
	t.Parallel()
	pool := dbtest.Pool(t)
	settings := tripAtOnce
	a := process(t, pool, "worker-a", settings, nil)
	require.Error(t, a.Execute(ctx, "billing", func(context.Context) error { return errRefused }))
	syncAll(t, a)

	// Meanwhile another process reopened it (generation 7, an hour).
	_, err := pool.Exec(ctx, `UPDATE wharf.breakers SET generation = 7, open_until = now() + interval '1 hour', changed_by = 'worker-z' WHERE name = 'billing'`)
	require.NoError(t, err)

	dbtest.Eventually(t, 10*time.Second, "A to go half-open", func() bool {
		st, err := a.State("billing")
		require.NoError(t, err)
		return st.State == breaker.StateHalfOpen
	})
	require.NoError(t, a.Execute(ctx, "billing", func(context.Context) error { return nil }))
	requireState(t, a, "billing", breaker.StateClosed)
	syncAll(t, a)

	gen, state, by, openFor := sharedRow(t, pool, "billing")
	require.Equal(t, int64(7), gen, "A's close was over generation 1 and changed nothing")
	require.Equal(t, "open", state)
	require.Equal(t, "worker-z", by)
	// And A adopted the newer open, for the time it has left.
	st := requireState(t, a, "billing", breaker.StateOpen)
	require.WithinRange(t, st.Until, time.Now().Add(openFor-time.Minute), time.Now().Add(openFor+time.Minute))
	require.Greater(t, time.Until(st.Until), 50*time.Minute)
}

func TestSharedAdoptedOpenReopensForAFullTimeoutAfterAFailedProbe(t *testing.T) {
	t.Parallel()
	pool := dbtest.Pool(t)
	settings := breaker.Settings{
		Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 1,
		OpenTimeout: time.Hour, HalfOpenProbes: 1,
	}
	b := process(t, pool, "worker-b", settings, nil)
	// Another process opened it with 2s left.
	_, err := pool.Exec(ctx, `INSERT INTO wharf.breakers (name, generation, state, open_until, changed_by)
		VALUES ('billing', 3, 'open', now() + interval '2 seconds', 'worker-z')`)
	require.NoError(t, err)
	syncAll(t, b)
	st := requireState(t, b, "billing", breaker.StateOpen)
	require.Less(t, time.Until(st.Until), 3*time.Second, "adopted for the time the open had left, not B's own hour")

	dbtest.Eventually(t, 10*time.Second, "B to go half-open", func() bool {
		st, err := b.State("billing")
		require.NoError(t, err)
		return st.State == breaker.StateHalfOpen
	})
	require.ErrorIs(t, b.Execute(ctx, "billing", func(context.Context) error { return errRefused }), breaker.ErrDownstream)
	st = requireState(t, b, "billing", breaker.StateOpen)
	require.Greater(t, time.Until(st.Until), 59*time.Minute, "its own reopen lasts its own OpenTimeout")
	syncAll(t, b)
	gen, state, by, openFor := sharedRow(t, pool, "billing")
	require.Equal(t, int64(4), gen)
	require.Equal(t, "open", state)
	require.Equal(t, "worker-b", by)
	require.Greater(t, openFor, 59*time.Minute)
}

func TestSharedRefresherPropagatesWithoutSync(t *testing.T) {
	t.Parallel()
	pool := dbtest.Pool(t)
	settings := breaker.Settings{Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 1, OpenTimeout: time.Minute}
	newProcess := func(owner string) *breaker.Registry {
		r, err := breaker.New(breaker.Config{
			Default: settings,
			Shared:  &breaker.SharedConfig{Pool: pool, Owner: owner, RefreshInterval: 20 * time.Millisecond},
		})
		require.NoError(t, err)
		t.Cleanup(r.Close)
		return r
	}
	a, b := newProcess("worker-a"), newProcess("worker-b")
	require.Error(t, a.Execute(ctx, "billing", func(context.Context) error { return errRefused }))
	// A publishes on its own at once; B reads within a refresh interval.
	dbtest.Eventually(t, 10*time.Second, "B to see A's open", func() bool { return len(b.Open()) == 1 })
	called := false
	requireOpenError(t, b.Execute(ctx, "billing", func(context.Context) error { called = true; return nil }), "billing")
	require.False(t, called)
}

// A panic in OnStateChange on a change the background refresher adopted
// is logged, and the refresher goes on: it used to end the process.
func TestSharedRefresherSurvivesAPanickingOnStateChange(t *testing.T) {
	t.Parallel()
	pool := dbtest.Pool(t)
	settings := breaker.Settings{Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 1, OpenTimeout: time.Minute}
	var logs testio.Buffer
	var panicked atomic.Bool
	adopted := make(chan string, 10)
	b, err := breaker.New(breaker.Config{
		Default: settings,
		Shared:  &breaker.SharedConfig{Pool: pool, Owner: "worker-b", RefreshInterval: 20 * time.Millisecond},
		Logger:  slog.New(slog.NewTextHandler(&logs, nil)),
		OnStateChange: func(c breaker.StateChange) {
			if panicked.CompareAndSwap(false, true) {
				panic("a bug in the callback")
			}
			adopted <- c.Breaker
		},
	})
	require.NoError(t, err)
	t.Cleanup(b.Close)
	a := process(t, pool, "worker-a", settings, nil)

	for _, name := range []string{"billing", "ledger"} {
		require.Error(t, a.Execute(ctx, name, func(context.Context) error { return errRefused }))
		syncAll(t, a)
		dbtest.Eventually(t, 10*time.Second, "B to adopt A's open of "+name, func() bool {
			for _, st := range b.Open() {
				if st.Name == name {
					return true
				}
			}
			return false
		})
	}
	select {
	case name := <-adopted:
		require.Equal(t, "ledger", name, "the change after the panic is delivered")
	case <-time.After(10 * time.Second):
		t.Fatal("no change delivered after the callback panicked")
	}
	require.Contains(t, logs.String(), "a bug in the callback")
}

func TestSharedCloseRemovesOwnCounts(t *testing.T) {
	t.Parallel()
	pool := dbtest.Pool(t)
	a, err := breaker.NewManualSync(breaker.Config{Shared: &breaker.SharedConfig{Pool: pool, Owner: "worker-a"}})
	require.NoError(t, err)
	require.ErrorIs(t, a.Execute(ctx, "billing", func(context.Context) error { return errRefused }), breaker.ErrDownstream)
	syncAll(t, a)
	var n int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM wharf.breaker_counts WHERE owner = 'worker-a' AND failures = 1`).Scan(&n))
	require.Equal(t, 1, n)

	a.Close()
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM wharf.breaker_counts WHERE owner = 'worker-a'`).Scan(&n))
	require.Zero(t, n)
	require.ErrorIs(t, a.Sync(ctx), breaker.ErrClosed)
	a.Close() // twice is fine
	require.NoError(t, a.Execute(ctx, "billing", func(context.Context) error { return nil }), "breakers keep working locally")
}

func TestSharedSchemaIsConfigurable(t *testing.T) {
	t.Parallel()
	pool := dbtest.Pool(t)
	_, err := migrate.Up(ctx, pool, "elsewhere")
	require.NoError(t, err)
	settings := breaker.Settings{Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 1, OpenTimeout: time.Minute}
	inSchema := func(schema, owner string) *breaker.Registry {
		r, err := breaker.NewManualSync(breaker.Config{Default: settings, Shared: &breaker.SharedConfig{Pool: pool, Schema: schema, Owner: owner}})
		require.NoError(t, err)
		t.Cleanup(r.Close)
		return r
	}
	a, b, other := inSchema("elsewhere", "worker-a"), inSchema("elsewhere", "worker-b"), inSchema("wharf", "worker-c")
	require.Error(t, a.Execute(ctx, "billing", func(context.Context) error { return errRefused }))
	syncAll(t, a, b, other)
	requireState(t, b, "billing", breaker.StateOpen)
	requireState(t, other, "billing", breaker.StateClosed)
	var n int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM elsewhere.breakers`).Scan(&n))
	require.Equal(t, 1, n)
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM wharf.breakers`).Scan(&n))
	require.Zero(t, n)

	missing := inSchema("never_migrated", "worker-d")
	err = missing.Sync(ctx)
	require.Error(t, err)
	require.Contains(t, err.Error(), `breaker: sync shared state (owner "worker-d")`)
}

func TestSharedOpenAdoptedByAProcessAlreadyOpenOnItsOwn(t *testing.T) {
	t.Parallel()
	pool := dbtest.Pool(t)
	settings := tripAtOnce
	b := process(t, pool, "worker-b", settings, nil)

	// B trips on the outage before it has seen the first open another
	// process published (an hour, generation 1).
	require.ErrorIs(t, b.Execute(ctx, "billing", func(context.Context) error { return errRefused }), breaker.ErrDownstream)
	_, err := pool.Exec(ctx, `INSERT INTO wharf.breakers (name, generation, state, open_until, changed_by)
		VALUES ('billing', 1, 'open', now() + interval '1 hour', 'worker-z')`)
	require.NoError(t, err)
	syncAll(t, b)

	openFor := requireSharedRow(t, pool, "billing", 1, "open", "worker-z", "B's open did not overwrite the one in force")
	// B adopted it: it probes when the fleet does, not 2s after its own trip.
	requireOpenFor(t, b, "billing", openFor)
	requireOpenError(t, b.Execute(ctx, "billing", func(context.Context) error { return nil }), "billing")
}

func TestSharedOpenAfterTheRowWasDeletedIsAdopted(t *testing.T) {
	t.Parallel()
	pool := dbtest.Pool(t)
	settings := breaker.Settings{Trip: breaker.TripOnConsecutiveFailures, ConsecutiveFailures: 1, OpenTimeout: time.Hour}
	b := process(t, pool, "worker-b", settings, nil)

	// Z opened it first (generation 1); B has seen that open after it ran
	// out with nobody reporting a probe, so B stays closed.
	z := process(t, pool, "worker-z", settings, nil)
	require.ErrorIs(t, z.Execute(ctx, "billing", func(context.Context) error { return errRefused }), breaker.ErrDownstream)
	syncAll(t, z)
	requireSharedRow(t, pool, "billing", 1, "open", "worker-z", "the first open")
	_, err := pool.Exec(ctx, `UPDATE wharf.breakers SET open_until = now() - interval '1 second' WHERE name = 'billing'`)
	require.NoError(t, err)
	syncAll(t, b)
	requireState(t, b, "billing", breaker.StateClosed)

	// An operator deletes the row; then A trips.
	_, err = pool.Exec(ctx, `DELETE FROM wharf.breakers WHERE name = 'billing'`)
	require.NoError(t, err)
	a := process(t, pool, "worker-a", settings, nil)
	require.ErrorIs(t, a.Execute(ctx, "billing", func(context.Context) error { return errRefused }), breaker.ErrDownstream)
	syncAll(t, a)

	// The new open is not the generation B knows, so B adopts it.
	gen, state, by, openFor := sharedRow(t, pool, "billing")
	require.Equal(t, "open", state)
	require.Equal(t, "worker-a", by)
	require.NotEqual(t, int64(1), gen, "a new open, not the generation B has seen")
	syncAll(t, b)
	requireOpenFor(t, b, "billing", openFor)
}

func TestSharedFailedProbeReopensForAllWhileThePublishedOpenLasts(t *testing.T) {
	t.Parallel()
	pool := dbtest.Pool(t)
	settings := tripAtOnce
	a := process(t, pool, "worker-a", settings, nil)
	c := process(t, pool, "worker-c", settings, nil)
	require.ErrorIs(t, a.Execute(ctx, "billing", func(context.Context) error { return errRefused }), breaker.ErrDownstream)
	syncAll(t, a, c)
	requireState(t, c, "billing", breaker.StateOpen)
	// The database stamped A's open later than A's own clock ends it: the
	// publication waited (for a pool connection, the network), and a
	// now() read later gives the same time left a later end.
	_, err := pool.Exec(ctx, `UPDATE wharf.breakers SET open_until = open_until + interval '1 minute' WHERE name = 'billing'`)
	require.NoError(t, err)

	dbtest.Eventually(t, 10*time.Second, "A to go half-open", func() bool {
		st, err := a.State("billing")
		require.NoError(t, err)
		return st.State == breaker.StateHalfOpen
	})
	require.ErrorIs(t, a.Execute(ctx, "billing", func(context.Context) error { return errRefused }), breaker.ErrDownstream)
	syncAll(t, a, c)

	// A's failed probe ended the open A published: its reopen replaces it
	// for everyone, instead of being refused while that open lasts.
	gen, state, by, openFor := sharedRow(t, pool, "billing")
	require.Equal(t, "open", state)
	require.Equal(t, "worker-a", by)
	require.Greater(t, gen, int64(1))
	require.LessOrEqual(t, openFor, settings.OpenTimeout)
	requireOpenFor(t, c, "billing", openFor)
}
