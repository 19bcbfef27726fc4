package idempotency_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf/idempotency"
	"github.com/wharfhq/wharf/internal/dbtest"
	"github.com/wharfhq/wharf/internal/migrate"
)

// Bad consumers and keys are refused with ErrInvalidKey by every entry
// point, before anything is sent: nothing is written, functions are not
// called, and the caller's transaction stays usable.
func TestBadKeysWriteNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, pool := newStore(t, idempotency.Config{})
	cases := []struct {
		name, consumer, key, reason string
	}{
		{"empty consumer", "", "k", "consumer is empty"},
		{"empty key", "c", "", "key is empty"},
		{"key from an empty event id", "c", idempotency.Key("stripe", ""), "key is empty"},
		{"NUL in consumer", "c\x00", "k", "consumer holds a NUL byte"},
		{"NUL in key", "c", "evt\x001", "key holds a NUL byte"},
		{"invalid UTF-8 consumer", "c\xff", "k", "consumer is not valid UTF-8"},
		{"invalid UTF-8 key", "c", "evt_\xc3\x28", "key is not valid UTF-8"},
		{"consumer too long", strings.Repeat("c", idempotency.MaxConsumerLen+1), "k", "consumer is 201 bytes, over the limit of 200"},
		{"key too long", "c", strings.Repeat("k", idempotency.MaxKeyLen+1), "key is 1025 bytes, over the limit of 1024"},
	}
	for _, c := range cases {
		called := false
		txFn := func(context.Context, pgx.Tx) error { called = true; return nil }
		extFn := func(context.Context, *idempotency.Lock) ([]byte, error) { called = true; return nil, nil }

		tx := beginTx(t, pool)
		first, err := store.Claim(ctx, tx, c.consumer, c.key)
		require.False(t, first, c.name)
		ke := keyError(t, err, idempotency.ErrInvalidKey, c.consumer, c.key)
		require.Equal(t, c.reason, ke.Reason, c.name)
		require.True(t, strings.HasPrefix(err.Error(), "idempotency: consumer "), c.name)
		_, err = tx.Exec(ctx, `SELECT 1`)
		require.NoError(t, err, "%s: nothing may have been sent in the transaction", c.name)
		require.NoError(t, tx.Commit(ctx))

		ran, err := store.Once(ctx, c.consumer, c.key, txFn)
		require.False(t, ran)
		keyError(t, err, idempotency.ErrInvalidKey, c.consumer, c.key)
		lock, out, err := store.Begin(ctx, c.consumer, c.key)
		require.Nil(t, lock)
		require.Nil(t, out)
		keyError(t, err, idempotency.ErrInvalidKey, c.consumer, c.key)
		_, ran, err = store.Do(ctx, c.consumer, c.key, extFn)
		require.False(t, ran)
		keyError(t, err, idempotency.ErrInvalidKey, c.consumer, c.key)
		require.False(t, called, c.name)
	}
	require.Zero(t, rows(t, pool))

	// An over-long key is named in messages by its first bytes only.
	_, _, err := store.Begin(ctx, "c", strings.Repeat("k", 5000))
	require.Less(t, len(err.Error()), 300)
	require.Contains(t, err.Error(), "(5000 bytes)")
}

// Keys at the limits, multi-byte characters included, are stored: the
// primary key's btree entry fits.
func TestKeysAtTheLimitsAreStored(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, pool := newStore(t, idempotency.Config{})
	consumer := strings.Repeat("ç", idempotency.MaxConsumerLen/2) // 2 bytes each
	key := strings.Repeat("€", idempotency.MaxKeyLen/3) + "k"     // 3 bytes each, plus one
	require.Len(t, consumer, idempotency.MaxConsumerLen)
	require.Len(t, key, idempotency.MaxKeyLen)
	require.True(t, claimIn(t, pool, store, consumer, key))
	require.False(t, claimIn(t, pool, store, consumer, key))
	extKey := strings.Repeat("€", idempotency.MaxKeyLen/3) + "e"
	require.NoError(t, store.Finish(ctx, begin(t, store, consumer, extKey), []byte("ok")))
	require.Equal(t, 2, rows(t, pool))
}

// Other misuse is refused with ErrInvalidArgument, changing nothing.
func TestMisuseIsRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, pool := newStore(t, idempotency.Config{})

	_, err := store.Claim(ctx, nil, "c", "k")
	keyError(t, err, idempotency.ErrInvalidArgument, "c", "k")
	_, err = store.Once(ctx, "c", "k", nil)
	keyError(t, err, idempotency.ErrInvalidArgument, "c", "k")
	_, _, err = store.Do(ctx, "c", "k", nil)
	keyError(t, err, idempotency.ErrInvalidArgument, "c", "k")
	require.ErrorIs(t, store.Finish(ctx, nil, nil), idempotency.ErrInvalidArgument)
	require.ErrorIs(t, store.Extend(ctx, nil), idempotency.ErrInvalidArgument)
	require.ErrorIs(t, store.Release(ctx, nil), idempotency.ErrInvalidArgument)
	require.Zero(t, rows(t, pool))

	lock := begin(t, store, "c", "k")
	before, _ := readRow(t, pool, "c", "k")
	err = store.Finish(ctx, lock, make([]byte, idempotency.MaxResultLen+1))
	ke := keyError(t, err, idempotency.ErrInvalidArgument, "c", "k")
	require.Contains(t, ke.Reason, "over the limit of 1048576")
	require.ErrorIs(t, store.FinishTx(ctx, nil, lock, nil), idempotency.ErrInvalidArgument)
	after, _ := readRow(t, pool, "c", "k")
	require.Equal(t, before, after)
	require.NoError(t, store.Finish(ctx, lock, make([]byte, idempotency.MaxResultLen)))
}

func TestNewValidatesConfig(t *testing.T) {
	t.Parallel()
	pool := dbtest.Pool(t)
	_, err := idempotency.New(nil, idempotency.Config{})
	require.ErrorIs(t, err, idempotency.ErrInvalidConfig)

	for name, cfg := range map[string]idempotency.Config{
		"negative retention":        {Retention: -time.Hour},
		"retention under 1h":        {Retention: 59 * time.Minute},
		"unitless retention":        {Retention: 7},
		"negative lock":             {LockDuration: -time.Second},
		"lock under 1s":             {LockDuration: 999 * time.Millisecond},
		"lock as long as retention": {Retention: 2 * time.Hour, LockDuration: 2 * time.Hour},
		"negative prune batch":      {PruneBatch: -1},
		"prune batch too big":       {PruneBatch: idempotency.MaxPruneBatch + 1},
		"upper-case schema":         {Schema: "Wharf"},
		"quoted schema":             {Schema: `w"; DROP TABLE x; --`},
	} {
		store, err := idempotency.New(pool, cfg)
		require.Nil(t, store, name)
		require.ErrorIs(t, err, idempotency.ErrInvalidConfig, name)
		require.True(t, strings.HasPrefix(err.Error(), "idempotency: invalid config: "), name)
	}

	store, err := idempotency.New(pool, idempotency.Config{})
	require.NoError(t, err)
	require.Equal(t, idempotency.Config{
		Schema:       "wharf",
		Retention:    7 * 24 * time.Hour,
		LockDuration: 5 * time.Minute,
		PruneBatch:   1000,
	}, store.Config())
	require.GreaterOrEqual(t, idempotency.DefaultRetention, 3*24*time.Hour, "must outlive Stripe's 3-day retry window")
}

// A store on another schema reads and writes only that schema's table.
func TestCustomSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := dbtest.Pool(t)
	_, err := migrate.Up(ctx, pool, "idem_alt")
	require.NoError(t, err)
	store, err := idempotency.New(pool, idempotency.Config{Schema: "idem_alt"})
	require.NoError(t, err)
	require.True(t, claimIn(t, pool, store, "c", "k"))
	require.True(t, begin(t, store, "c", "ext") != nil)
	require.Equal(t, 2, dbtest.Count(t, pool, `SELECT count(*) FROM idem_alt.processed_events`))
	require.Zero(t, rows(t, pool), "nothing in the default schema")

	exec(t, pool, `UPDATE idem_alt.processed_events SET processed_at = now() - interval '30 days', locked_until = now() - interval '1 day' WHERE key = 'ext'`)
	deleted, err := store.Prune(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 1, deleted)
}
