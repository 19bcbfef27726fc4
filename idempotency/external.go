package idempotency

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
)

// Lock is a key held in the external mode, returned by Begin. Pass it to
// Finish (or FinishTx) with the outcome, to Release to give the key up
// without one, or to Extend to keep it longer. Its Token fences it: once
// another caller has taken the key over, every call with this Lock returns
// ErrLockLost and changes nothing.
type Lock struct {
	Consumer string // as given to Begin
	Key      string // as given to Begin
	// Token is this holder's random fence token, stored in the key's row.
	Token int64
	// LockedUntil is when the lock expires (database clock); Extend moves
	// it. After it, another Begin may take the key over.
	LockedUntil time.Time
	// Attempt is 1 for a key taken for the first time, and counts up with
	// each takeover of an abandoned lock: above 1, an earlier holder began
	// the side effect and may or may not have done it, so send the
	// downstream the same DownstreamKey and let it deduplicate.
	Attempt int
}

// DownstreamKey is DownstreamKey(l.Consumer, l.Key): the idempotency key to
// send the downstream. It is the same for every attempt and takeover.
func (l *Lock) DownstreamKey() string { return DownstreamKey(l.Consumer, l.Key) }

// Outcome is what Begin returns for a key whose side effect has finished.
type Outcome struct {
	// Result is what Finish stored; nil if it stored none.
	Result []byte
	// FinishedAt is when Finish committed (database clock).
	FinishedAt time.Time
}

// beginRetries bounds how often Begin re-reads a key that changed between
// its two statements (released, pruned or expired meanwhile).
const beginRetries = 5

// Begin takes (consumer, key) for a side effect that cannot roll back (a
// payment API, an email): the external mode, in the spirit of Stripe's
// idempotency keys. It returns exactly one of:
//
//   - a *Lock: the key is yours, in progress, until Lock.LockedUntil
//     (Config.LockDuration from now). Do the side effect, sending the
//     downstream Lock.DownstreamKey() if it takes an idempotency key, then
//     call Finish with the outcome, or Release if it should be retried.
//   - an *Outcome: the side effect already finished; here is what Finish
//     stored. Do not repeat it.
//   - an error wrapping ErrInProgress: another caller holds the key and its
//     lock is live. The *KeyError's LockedUntil says when it expires.
//
// A key whose holder's lock expired without Finish or Release (the holder
// crashed or hung) is taken over by the next Begin, atomically: of any
// number of callers racing for it, exactly one gets a Lock, with Attempt
// above 1 and a new Token; the old holder's Finish is then refused with
// ErrLockLost.
//
// The state lives in processed_events, the table Claim uses, with mode
// "external": a key taken with Begin cannot be claimed with Claim or Once
// and vice versa (ErrModeMismatch), so a consumer cannot mix up the two for
// one key. Begin commits before it returns (with synchronous_commit on), so
// that other replicas see the key in progress while the side effect runs.
func (s *Store) Begin(ctx context.Context, consumer, key string) (*Lock, *Outcome, error) {
	if err := validKey(consumer, key); err != nil {
		return nil, nil, err
	}
	for range beginRetries {
		token := newToken()
		lock := &Lock{Consumer: consumer, Key: key, Token: token}
		var attempts int32
		taken := true
		err := s.autocommit(ctx, s.sql.begin, []any{consumer, key, token, s.cfg.LockDuration.Milliseconds()},
			func(row pgx.Row) error {
				err := row.Scan(&lock.LockedUntil, &attempts)
				if errors.Is(err, pgx.ErrNoRows) {
					taken, err = false, nil
				}
				return err
			})
		if err != nil {
			return nil, nil, dbError("begin", consumer, key, err)
		}
		if taken {
			lock.Attempt = int(attempts)
			return lock, nil, nil
		}

		var (
			mode        Mode
			state       *string
			lockedUntil *time.Time
			live        *bool
			result      []byte
			processedAt time.Time
		)
		err = s.pool.QueryRow(ctx, s.sql.read, consumer, key).Scan(&mode, &state, &lockedUntil, &live, &result, &processedAt)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			continue // released or pruned since: try again
		case err != nil:
			return nil, nil, dbError("begin", consumer, key, err)
		case mode != ModeExternal:
			return nil, nil, &KeyError{Consumer: consumer, Key: key, Err: ErrModeMismatch, Mode: mode,
				Reason: fmt.Sprintf("the key was claimed in the %s mode (Claim or Once), not usable with Begin", mode)}
		case state == nil || (*state == "in_progress" && (lockedUntil == nil || live == nil)):
			// Only a hand-edited row looks like this; the package never
			// writes one.
			return nil, nil, dbError("begin", consumer, key, errors.New("the row has no state or no lock deadline"))
		case *state == "finished":
			return nil, &Outcome{Result: result, FinishedAt: processedAt}, nil
		case *live:
			return nil, nil, &KeyError{Consumer: consumer, Key: key, Err: ErrInProgress, LockedUntil: *lockedUntil,
				Reason: "locked until " + lockedUntil.UTC().Format(time.RFC3339Nano)}
		}
		// The lock expired between the two statements: take it over.
	}
	return nil, nil, &KeyError{Consumer: consumer, Key: key, Err: ErrInProgress,
		Reason: fmt.Sprintf("the key changed hands %d times while Begin looked at it", beginRetries)}
}

// Finish stores the outcome of a side effect begun with Begin: the key
// becomes finished, and every later Begin for it returns an Outcome with
// this result (nil is fine: "done, nothing to report"). result must be at
// most MaxResultLen bytes.
//
// It returns an error wrapping ErrLockLost, and stores nothing, if lock no
// longer holds the key: its lock expired and another caller took the key
// over (that caller's outcome will count), or it was released. A lock that
// expired but was not taken over may still finish. Calling Finish again
// with the same lock after it succeeded (say, a retry after a network
// error) succeeds and changes nothing.
//
// A definitive failure of the side effect (a declined card) is an outcome
// too: store it, so a duplicate does not try again. Release is for
// failures worth retrying.
//
// Finish commits before it returns, with synchronous_commit on.
func (s *Store) Finish(ctx context.Context, lock *Lock, result []byte) error {
	if err := checkLock("Finish", lock, result); err != nil {
		return err
	}
	return s.finish(ctx, nil, lock, result)
}

// FinishTx is Finish inside the caller's transaction, so that the outcome
// and the caller's own writes about it (the payment id in an orders row)
// commit together. If tx rolls back, the key stays in progress under lock,
// which can still Finish, or Release. A database error leaves tx aborted.
func (s *Store) FinishTx(ctx context.Context, tx pgx.Tx, lock *Lock, result []byte) error {
	if err := checkLock("FinishTx", lock, result); err != nil {
		return err
	}
	if tx == nil {
		return &KeyError{Consumer: lock.Consumer, Key: lock.Key, Err: ErrInvalidArgument, Reason: "FinishTx needs the caller's transaction, got nil"}
	}
	return s.finish(ctx, tx, lock, result)
}

func (s *Store) finish(ctx context.Context, tx pgx.Tx, lock *Lock, result []byte) error {
	args := []any{lock.Consumer, lock.Key, lock.Token, result}
	done := true
	scan := func(row pgx.Row) error {
		var at time.Time
		err := row.Scan(&at)
		if errors.Is(err, pgx.ErrNoRows) {
			done, err = false, nil
		}
		return err
	}
	var err error
	if tx == nil {
		err = s.autocommit(ctx, s.sql.finish, args, scan)
	} else {
		err = scan(tx.QueryRow(ctx, s.sql.finish, args...))
	}
	if err != nil {
		return dbError("finish", lock.Consumer, lock.Key, err)
	}
	if done {
		return nil
	}
	// Nothing changed: finished already by this very lock, or lost.
	var q interface {
		QueryRow(context.Context, string, ...any) pgx.Row
	} = s.pool
	if tx != nil {
		q = tx
	}
	var at time.Time
	switch err := q.QueryRow(ctx, s.sql.finishedBy, lock.Consumer, lock.Key, lock.Token).Scan(&at); {
	case err == nil:
		return nil
	case errors.Is(err, pgx.ErrNoRows):
		return lostError(lock)
	default:
		return dbError("finish", lock.Consumer, lock.Key, err)
	}
}

// Extend pushes the lock's expiry to Config.LockDuration from now and
// updates lock.LockedUntil, for a side effect that runs longer than
// expected. It returns an error wrapping ErrLockLost if the key was taken
// over or released meanwhile.
func (s *Store) Extend(ctx context.Context, lock *Lock) error {
	if err := checkLock("Extend", lock, nil); err != nil {
		return err
	}
	var until time.Time
	err := s.pool.QueryRow(ctx, s.sql.extend, lock.Consumer, lock.Key, lock.Token, s.cfg.LockDuration.Milliseconds()).Scan(&until)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return lostError(lock)
	case err != nil:
		return dbError("extend", lock.Consumer, lock.Key, err)
	}
	lock.LockedUntil = until
	return nil
}

// Release gives the key up without an outcome, so that the next Begin
// takes it at once rather than after the lock expires: call it when the
// side effect failed in a way worth retrying (and, if it may have reached
// the downstream, retry with the same DownstreamKey). It returns an error
// wrapping ErrLockLost if the key was taken over or released meanwhile.
func (s *Store) Release(ctx context.Context, lock *Lock) error {
	if err := checkLock("Release", lock, nil); err != nil {
		return err
	}
	tag, err := s.pool.Exec(ctx, s.sql.release, lock.Consumer, lock.Key, lock.Token)
	if err != nil {
		return dbError("release", lock.Consumer, lock.Key, err)
	}
	if tag.RowsAffected() == 0 {
		return lostError(lock)
	}
	return nil
}

// Do runs the side effect fn at most once per (consumer, key) to a stored
// outcome, with Begin, Finish and Release:
//
//   - if an earlier call finished, it returns that call's result with ran
//     false, and fn is not called;
//   - if another caller holds the key, it returns an error wrapping
//     ErrInProgress, and fn is not called;
//   - otherwise it calls fn (ran is true) with the lock, whose
//     DownstreamKey fn should send the downstream. If fn succeeds, its
//     result is stored with Finish and returned. If fn fails, the key is
//     released, so that a retry calls fn again at once, and fn's error is
//     returned, wrapped. If the lock was taken over while fn ran (it ran
//     longer than Config.LockDuration without Extend), the result is
//     returned with an error wrapping ErrLockLost: the side effect may
//     have happened twice unless the downstream deduplicated it by key.
//     If storing the outcome fails for another reason (the database is
//     unreachable), the result is returned with that error and the key
//     stays in progress until its lock expires; the next Begin then takes
//     it over and repeats fn, with the same DownstreamKey.
//
// Return an error from fn only for failures worth retrying; encode a
// definitive failure (a declined card) in the result.
func (s *Store) Do(ctx context.Context, consumer, key string, fn func(ctx context.Context, lock *Lock) ([]byte, error)) (result []byte, ran bool, err error) {
	if err := validKey(consumer, key); err != nil {
		return nil, false, err
	}
	if fn == nil {
		return nil, false, &KeyError{Consumer: consumer, Key: key, Err: ErrInvalidArgument, Reason: "Do needs a function, got nil"}
	}
	lock, outcome, err := s.Begin(ctx, consumer, key)
	switch {
	case err != nil:
		return nil, false, err
	case outcome != nil:
		return outcome.Result, false, nil
	}
	result, err = fn(ctx, lock)
	if err != nil {
		err = fmt.Errorf("idempotency: consumer %s, key %s: %w", quote(consumer), quote(key), err)
		if relErr := s.Release(context.WithoutCancel(ctx), lock); relErr != nil && !errors.Is(relErr, ErrLockLost) {
			err = errors.Join(err, relErr)
		}
		return nil, true, err
	}
	if err := s.Finish(ctx, lock, result); err != nil {
		return result, true, err
	}
	return result, true, nil
}

// autocommit runs one statement in an implicit transaction of its own,
// with synchronous_commit on, in one round trip, and scans its row.
func (s *Store) autocommit(ctx context.Context, sql string, args []any, scan func(pgx.Row) error) error {
	b := &pgx.Batch{}
	b.Queue(syncCommitSQL)
	b.Queue(sql, args...).QueryRow(scan)
	return s.pool.SendBatch(ctx, b).Close()
}

func checkLock(op string, lock *Lock, result []byte) error {
	if lock == nil {
		return fmt.Errorf("%w: %s needs the lock Begin returned, got nil", ErrInvalidArgument, op)
	}
	if err := validKey(lock.Consumer, lock.Key); err != nil {
		return err
	}
	if len(result) > MaxResultLen {
		return &KeyError{Consumer: lock.Consumer, Key: lock.Key, Err: ErrInvalidArgument,
			Reason: fmt.Sprintf("result is %d bytes, over the limit of %d", len(result), MaxResultLen)}
	}
	return nil
}

func lostError(lock *Lock) error {
	return &KeyError{Consumer: lock.Consumer, Key: lock.Key, Err: ErrLockLost,
		Reason: fmt.Sprintf("token %d no longer holds the key (taken over after its lock expired, or released)", lock.Token)}
}

// newToken returns a random, non-zero fence token. It is random rather than
// a counter so that a key deleted (released, pruned) and taken again never
// hands out a token a stale holder still has.
func newToken() int64 {
	return rand.Int64N(1<<63-1) + 1
}
