package idempotency

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Store records which (consumer, key) pairs have been processed, in the
// processed_events table. It is safe for concurrent use and holds no
// resources of its own: create it with New and share it.
type Store struct {
	pool *pgxpool.Pool
	cfg  Config
	sql  statements
}

// New returns a Store on pool. It does no I/O; the schema must have been
// migrated with wharf.Migrate. It returns an error wrapping
// ErrInvalidConfig if pool is nil or cfg cannot work.
func New(pool *pgxpool.Pool, cfg Config) (*Store, error) {
	if pool == nil {
		return nil, fmt.Errorf("%w: pool is nil", ErrInvalidConfig)
	}
	c := cfg.withDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &Store{pool: pool, cfg: c, sql: render(c.Schema)}, nil
}

// Config returns the configuration in effect, defaults filled in.
func (s *Store) Config() Config { return s.cfg }

// Claim records, inside the caller's transaction tx, that consumer is
// processing key, and reports whether this is the first claim: when first
// is true, do the work in tx; when false, the key was already processed
// (or is being processed by a transaction that has since committed), so
// skip the work and commit or roll back as you like.
//
// Claim is one INSERT … ON CONFLICT DO NOTHING; it never reads before it
// writes. The claim is part of tx: if tx rolls back, the claim goes with
// it, and a redelivery of the event runs the work again. If tx commits, the
// claim and the work are durable together. That is what makes database
// effects exactly-once: a crash at any point leaves both or neither.
//
// While another open transaction holds a claim on the same key, Claim
// waits for it to end: if it commits, Claim returns false; if it rolls
// back, Claim takes the key and returns true. Run the work only after
// Claim returns. A second Claim of the same key in the same transaction
// returns false.
//
// There is no variant without a transaction: a claim committed on its own,
// before the work, would lose the event if the work then failed.
//
// Errors: ErrInvalidKey or ErrInvalidArgument for bad input (nothing is
// sent); ErrModeMismatch when the key was taken with Begin (tx is still
// usable). Any other error came from the database, and tx is then aborted:
// roll it back (or to a savepoint taken before Claim). Under REPEATABLE
// READ or SERIALIZABLE, a conflict with a claim committed after tx's
// snapshot is a serialization failure (SQLSTATE 40001): retry the
// transaction.
func (s *Store) Claim(ctx context.Context, tx pgx.Tx, consumer, key string) (first bool, err error) {
	if err := validKey(consumer, key); err != nil {
		return false, err
	}
	if tx == nil {
		return false, &KeyError{Consumer: consumer, Key: key, Err: ErrInvalidArgument, Reason: "Claim needs the caller's transaction, got nil"}
	}
	tag, err := tx.Exec(ctx, s.sql.claim, consumer, key)
	if err != nil {
		return false, dbError("claim", consumer, key, err)
	}
	if tag.RowsAffected() == 1 {
		return true, nil
	}
	return false, s.checkLostClaim(ctx, tx, consumer, key)
}

// BeginClaim begins a transaction on the Store's pool and claims key for
// consumer in it, both in one round trip: a transaction that exists to do
// one event's work pays for the claim with no round trip of its own (Claim
// costs one). The claim means what Claim's does: when first is true, do the
// work in tx and commit it; when false, the key was already processed,
// so roll tx back (or commit it, which changes nothing).
//
// The caller owns tx and must end it. On any error no transaction is
// returned: it has been rolled back. Errors are Claim's.
func (s *Store) BeginClaim(ctx context.Context, consumer, key string) (tx pgx.Tx, first bool, err error) {
	if err := validKey(consumer, key); err != nil {
		return nil, false, err
	}
	b := &pgx.Batch{}
	b.BeginTx(pgx.TxOptions{})
	b.Queue(s.sql.claim, consumer, key)
	br := s.pool.SendBatch(ctx, b)
	tx = br.Tx()
	var tag pgconn.CommandTag
	if _, err = br.Exec(); err == nil { // BEGIN
		tag, err = br.Exec()
	}
	if closeErr := br.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		err = dbError("begin and claim", consumer, key, err)
	} else if tag.RowsAffected() == 0 {
		err = s.checkLostClaim(ctx, tx, consumer, key)
	}
	if err != nil {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return nil, false, err
	}
	return tx, tag.RowsAffected() == 1, nil
}

// checkLostClaim runs after a claim of key inserted nothing: the key was
// taken, which is a plain duplicate unless it was taken in the external
// mode (ErrModeMismatch).
func (s *Store) checkLostClaim(ctx context.Context, tx pgx.Tx, consumer, key string) error {
	var mode Mode
	switch err := tx.QueryRow(ctx, s.sql.mode, consumer, key).Scan(&mode); {
	case errors.Is(err, pgx.ErrNoRows):
		// Pruned between the two statements: it was there, so this
		// claim was not the first.
		return nil
	case err != nil:
		return dbError("claim", consumer, key, err)
	case mode != ModeTx:
		return &KeyError{Consumer: consumer, Key: key, Err: ErrModeMismatch, Mode: mode,
			Reason: fmt.Sprintf("the key was taken in the %s mode (Begin), not claimable with Claim", mode)}
	}
	return nil
}

// Once runs fn at most once per (consumer, key), in a transaction of its
// own that also claims the key, and reports whether it ran: ran is true
// when this call ran fn and committed its transaction, false when the key
// had already been claimed (fn was not called) or when fn or the commit
// failed (its writes were rolled back, with the claim, so a retry runs fn
// again). fn must do its database work in tx and not commit or roll it
// back itself. If the commit's outcome is unknown (the connection broke),
// Once returns an error and a retry finds out: it runs fn only if that
// commit did not happen.
//
// Once is Claim for services that do not use the Pipeline or a queue
// consumer and have no transaction of their own. Concurrent calls for one
// key wait for each other, as with Claim: one runs fn, the rest return
// false once it commits, or the next runs fn if it fails.
//
// An error returned by fn is wrapped, naming the consumer and key
// (errors.Is and errors.As see through). If fn panics, the transaction is
// rolled back and the panic goes on.
func (s *Store) Once(ctx context.Context, consumer, key string, fn func(ctx context.Context, tx pgx.Tx) error) (ran bool, err error) {
	if err := validKey(consumer, key); err != nil {
		return false, err
	}
	if fn == nil {
		return false, &KeyError{Consumer: consumer, Key: key, Err: ErrInvalidArgument, Reason: "Once needs a function, got nil"}
	}
	tx, first, err := s.BeginClaim(ctx, consumer, key)
	if err != nil {
		return false, err
	}
	committed := false
	defer func() {
		if !committed {
			// Rolled back even when ctx is done (or on a panic), so the
			// connection goes back to the pool clean.
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	if !first {
		return false, nil // processed already; the deferred rollback ends tx
	}
	if err := fn(ctx, tx); err != nil {
		return false, fmt.Errorf("idempotency: consumer %s, key %s: %w", quote(consumer), quote(key), err)
	}
	committed = true // a failed commit ends the transaction too
	if err := tx.Commit(ctx); err != nil {
		return false, dbError("commit", consumer, key, err)
	}
	return true, nil
}
