package eventlog

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ErrHeldOff is returned by CatchUp when the projection cannot run now: a
// Rebuild of it is in progress, or another runner of it (on this or
// another replica) is applying a batch. Nothing was applied; try again
// later. Run waits for these by itself.
var ErrHeldOff = errors.New("eventlog: projection held off by a rebuild or another runner")

// ProjectionFunc applies a batch of events, in log order, to the
// projection's own tables through tx. The projection saves its checkpoint
// in tx and commits it with these writes, so each event's effects land
// exactly once however runners crash. Return an error (or panic) to roll
// the whole batch back; it is retried after ProjectionConfig.RetryDelay.
//
// Events the function appends through tx (AppendTx) reach the projection
// in a later batch, after this one commits.
//
// tx must not be committed or rolled back (that returns ErrTxOwned). ctx
// is not cancelled when Run's context ends, only when the batch outlives
// ShutdownTimeout after that.
//
// Keep batches short: like any write transaction, a batch's transaction
// holds the transaction-id horizon, and so every tailing reader and every
// other projection, back while it runs. Work outside the database (an
// HTTP call) belongs in an outbox that the function writes to, not in the
// function.
type ProjectionFunc func(ctx context.Context, tx pgx.Tx, events []Event) error

// ResetFunc empties a projection's tables (DELETE, TRUNCATE, or DROP and
// CREATE) through tx, for Rebuild, which resets the checkpoint in the same
// transaction. It must not commit or roll back tx.
type ResetFunc func(ctx context.Context, tx pgx.Tx) error

// Projection runs a ProjectionFunc over the log from a stored checkpoint:
// a subscription that keeps a read model, an outbox or a report up to date
// with exactly-once effects on the database. Create it with
// Log.NewProjection and call Run; see the package documentation.
type Projection struct {
	log     *Log
	cfg     ProjectionConfig
	key     int64 // advisory lock: shared by batches, exclusive by Rebuild
	logger  *slog.Logger
	running atomic.Bool
	wake    chan struct{} // capacity 1
}

// NewProjection returns a Projection of the log. It does no I/O.
func (l *Log) NewProjection(cfg ProjectionConfig) (*Projection, error) {
	c := cfg.withDefaults(l)
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &Projection{
		log:    l,
		cfg:    c,
		key:    projectionLockKey(l.cfg.Schema, c.Name),
		logger: c.Logger.With("projection", c.Name),
		wake:   make(chan struct{}, 1),
	}, nil
}

// projectionLockKey derives the advisory lock key of a projection, so
// projections, and schemas, do not wait for each other.
func projectionLockKey(schema, name string) int64 {
	sum := sha256.Sum256([]byte("wharf.eventlog.projection:" + schema + "\x00" + name))
	return int64(binary.BigEndian.Uint64(sum[:8]))
}

// Name is the projection's name, the key of its checkpoint.
func (p *Projection) Name() string { return p.cfg.Name }

// Checkpoint returns the cursor of the last event the projection applied
// (the zero Cursor before the first).
func (p *Projection) Checkpoint(ctx context.Context) (Cursor, error) {
	var c Cursor
	err := p.log.pool.QueryRow(ctx, p.log.sql.readCheckpoint, p.cfg.Name).Scan(&c.TxID, &c.Position)
	if errors.Is(err, pgx.ErrNoRows) {
		return Cursor{}, nil
	}
	if err != nil {
		return Cursor{}, fmt.Errorf("eventlog: projection %q: read checkpoint: %w", p.cfg.Name, err)
	}
	return c, nil
}

// Run applies batches of new events until ctx ends, then returns nil after
// the batch in flight has committed or rolled back (within
// ShutdownTimeout). It never cancels a running query because ctx ended:
// that would close the connection under the batch.
//
// An idle projection wakes when events are appended (Append in this
// process at once; elsewhere through LISTEN/NOTIFY, on one connection per
// Log outside the pool) and polls every PollInterval as the fallback. A
// failing batch is rolled back and retried after RetryDelay, doubling up
// to MaxRetryDelay: a projection stops at an event its function cannot
// apply and resumes there once it can (the log keeps the event; fix the
// code and redeploy). While a Rebuild runs, or another runner of the same
// projection holds its checkpoint, Run waits.
//
// Run uses one pool connection per batch. It returns ErrAlreadyRunning if
// this Projection is already running.
func (p *Projection) Run(ctx context.Context) error {
	if !p.running.CompareAndSwap(false, true) {
		return ErrAlreadyRunning
	}
	defer p.running.Store(false)

	// Batches' contexts outlive ctx: cancelling a running pgx query closes
	// its connection, so the shutdown signal reaches them only after
	// ShutdownTimeout.
	batchCtx, hardStop := context.WithCancel(context.WithoutCancel(ctx))
	defer hardStop()
	var timerMu sync.Mutex
	var timer *time.Timer
	stopWatch := context.AfterFunc(ctx, func() {
		timerMu.Lock()
		timer = time.AfterFunc(p.cfg.ShutdownTimeout, hardStop)
		timerMu.Unlock()
	})
	defer func() {
		stopWatch()
		timerMu.Lock()
		if timer != nil {
			timer.Stop()
		}
		timerMu.Unlock()
	}()

	unsubscribe := p.log.notify.Subscribe(p.wake)
	defer unsubscribe()
	if !p.log.cfg.PollOnly {
		release := p.log.listen.acquire()
		defer release()
	}

	failures, held := 0, 0
	for ctx.Err() == nil {
		n, err := p.step(batchCtx)
		wait, wakeable := p.cfg.PollInterval, true
		if !errors.Is(err, errTailHeld) || n > 0 {
			held = 0 // the tail moved: back off from the start
		}
		switch {
		case errors.Is(err, errTailHeld):
			// Look again soon, backing off from 5ms to a second (or the
			// poll interval, if shorter): the transaction holding the
			// horizon usually ends in moments, and the events are known
			// to be there, so no wake-up may come for them. (The batch
			// may have applied the events below the horizon first.)
			held++
			wait = min(minTailRetry<<min(held-1, 16), maxTailRetry, p.cfg.PollInterval)
			failures = 0
			p.logger.Debug("eventlog: projection waits for the tail, held back by an older transaction", "retry_in", wait)
		case errors.Is(err, ErrHeldOff):
			p.logger.Debug("eventlog: projection held off by a rebuild or another runner")
		case err != nil:
			failures++
			wait, wakeable = p.retryDelay(failures), false
			p.logger.Warn("eventlog: projection batch failed; retrying", "error", err, "failures", failures, "retry_in", wait)
		case n == p.cfg.BatchSize:
			failures = 0
			continue // there may be more
		default:
			failures = 0
		}
		if !p.sleep(ctx, wait, wakeable) {
			break
		}
	}
	return nil
}

// minTailRetry and maxTailRetry bound the waits of a projection whose tail
// is held back.
const (
	minTailRetry = 5 * time.Millisecond
	maxTailRetry = time.Second
)

// retryDelay is RetryDelay doubled per consecutive failure after the
// first, capped at MaxRetryDelay.
func (p *Projection) retryDelay(failures int) time.Duration {
	d := p.cfg.RetryDelay
	for i := 1; i < failures && d < MaxRetryDelay; i++ {
		d *= 2
	}
	return min(d, MaxRetryDelay)
}

// sleep waits for d, a wake-up (if wakeable) or the end of ctx; it reports
// whether ctx is still live.
func (p *Projection) sleep(ctx context.Context, d time.Duration, wakeable bool) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	var wake chan struct{}
	if wakeable {
		wake = p.wake
	}
	select {
	case <-ctx.Done():
		return false
	case <-wake:
	case <-t.C:
	}
	return true
}

// CatchUp applies batches until the projection has reached the tail of
// the log (the horizon; see TailLag) and returns how many events it
// applied: for a projection run on demand rather than by Run, and for
// tests. It returns ErrHeldOff when a Rebuild or another runner holds the
// projection, and the first error of a failing batch (rolled back).
func (p *Projection) CatchUp(ctx context.Context) (int, error) {
	total := 0
	for {
		n, err := p.step(ctx)
		total += n
		if errors.Is(err, errTailHeld) {
			return total, nil
		}
		if err != nil || n < p.cfg.BatchSize {
			return total, err
		}
	}
}

// errTailHeld: a live batch reached the horizon, having applied the
// events below it, if any, and committed events wait after it beyond the
// horizon.
var errTailHeld = errors.New("eventlog: the tail is held back by an older transaction")

// errNoCheckpoint: the checkpoint row is missing or locked by another
// runner (SKIP LOCKED cannot tell which).
var errNoCheckpoint = errors.New("eventlog: checkpoint row missing or locked")

// step runs one batch of the live projection, creating its checkpoint
// when it is missing.
func (p *Projection) step(ctx context.Context) (int, error) {
	n, err := p.batch(ctx, p.log.pool, false, p.cfg.BatchSize)
	if !errors.Is(err, errNoCheckpoint) {
		return n, err
	}
	tag, err := p.log.pool.Exec(ctx, p.log.sql.ensureCheckpoint, p.cfg.Name)
	if err != nil {
		return 0, fmt.Errorf("eventlog: projection %q: create checkpoint: %w", p.cfg.Name, err)
	}
	if tag.RowsAffected() == 0 {
		return 0, ErrHeldOff // it exists: another runner holds it
	}
	return p.batch(ctx, p.log.pool, false, p.cfg.BatchSize)
}

// beginner is a pool or a connection.
type beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// batch applies up to size events after the checkpoint, in one
// transaction: lock the checkpoint, read the events after it, run the
// function, move the checkpoint, commit. A live batch (rebuild false)
// first takes the projection's lock shared and stops if a Rebuild holds it
// exclusively; a rebuild's batches run on the rebuild's own connection,
// which holds that lock, and skip it.
func (p *Projection) batch(ctx context.Context, db beginner, rebuild bool, size int) (applied int, err error) {
	tx, err := db.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("eventlog: projection %q: begin: %w", p.cfg.Name, err)
	}
	defer func() {
		if err != nil || applied == 0 {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()

	// Lock and checkpoint in one round trip. When held off, the checkpoint
	// row is locked for a moment for nothing, and released by the rollback.
	b := &pgx.Batch{}
	if !rebuild {
		b.Queue(holdSQL, p.key)
		b.Queue(p.log.sql.lockCheckpoint, p.cfg.Name)
	} else {
		// A rebuild waits for the row rather than skipping it: the only
		// other holder can be a live batch about to find itself held off.
		b.Queue(p.log.sql.lockCheckpointWait, p.cfg.Name)
	}
	free := true
	var cursor Cursor
	br := tx.SendBatch(ctx, b)
	if !rebuild {
		err = br.QueryRow().Scan(&free)
	}
	if err == nil {
		err = br.QueryRow().Scan(&cursor.TxID, &cursor.Position)
	}
	if closeErr := br.Close(); closeErr != nil && (err == nil || errors.Is(err, pgx.ErrNoRows)) {
		err = closeErr
	}
	switch {
	case !free:
		return 0, ErrHeldOff
	case errors.Is(err, pgx.ErrNoRows):
		return 0, errNoCheckpoint
	case err != nil:
		return 0, fmt.Errorf("eventlog: projection %q: lock checkpoint: %w", p.cfg.Name, err)
	}

	events, next, err := p.log.readAll(ctx, tx, p.cfg.Category, cursor, size)
	if err != nil {
		return 0, fmt.Errorf("eventlog: projection %q: %w", p.cfg.Name, err)
	}
	if len(events) == 0 && rebuild {
		return 0, nil
	}
	if len(events) > 0 {
		if err := p.call(ctx, tx, events); err != nil {
			return 0, fmt.Errorf("eventlog: projection %q: batch after %s: %w", p.cfg.Name, cursor, err)
		}
		if _, err := tx.Exec(ctx, p.log.sql.saveCheckpoint, p.cfg.Name, next.TxID, next.Position); err != nil {
			return 0, fmt.Errorf("eventlog: projection %q: save checkpoint: %w", p.cfg.Name, err)
		}
	}
	// A short live batch reached the horizon: if committed events wait
	// beyond it, the caller looks again soon, whether or not this batch
	// applied anything (their wake-ups came before it).
	held := false
	if !rebuild && len(events) < size {
		if held, err = p.pending(ctx, tx, next); err != nil {
			return 0, err
		}
	}
	if len(events) == 0 {
		if held {
			return 0, errTailHeld
		}
		return 0, nil
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("eventlog: projection %q: commit: %w", p.cfg.Name, err)
	}
	if held {
		return len(events), errTailHeld
	}
	return len(events), nil
}

// pending reports whether committed events of the projection wait after
// cursor, beyond the horizon, as tx sees them (the events its function
// appended in tx included).
func (p *Projection) pending(ctx context.Context, tx pgx.Tx, cursor Cursor) (bool, error) {
	var pending bool
	var err error
	if p.cfg.Category == "" {
		err = tx.QueryRow(ctx, p.log.sql.pending[0], cursor.TxID, cursor.Position).Scan(&pending)
	} else {
		err = tx.QueryRow(ctx, p.log.sql.pending[1], cursor.TxID, cursor.Position, likePrefix(p.cfg.Category)).Scan(&pending)
	}
	if err != nil {
		return false, fmt.Errorf("eventlog: projection %q: %w", p.cfg.Name, err)
	}
	return pending, nil
}

// call runs the projection's function, turning a panic into an error with
// its stack, and refuses a nil return over a failed transaction.
func (p *Projection) call(ctx context.Context, tx pgx.Tx, events []Event) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
		}
	}()
	if err := p.cfg.Handler(ctx, ownedTx{tx}, events); err != nil {
		return err
	}
	return txUsable(tx)
}

// txUsable returns an error when tx can no longer run statements: one of
// them failed (Postgres aborts the transaction) or the connection is gone.
func txUsable(tx pgx.Tx) error {
	if status := tx.Conn().PgConn().TxStatus(); status != 'T' { // 'T': in a transaction block
		return fmt.Errorf("the function returned nil but its transaction is not usable (status %q); a failed statement aborts the transaction", status)
	}
	return nil
}

// ownedTx is the transaction a ProjectionFunc or ResetFunc sees: the
// batch's, minus the power to end it.
type ownedTx struct{ pgx.Tx }

func (ownedTx) Commit(context.Context) error   { return ErrTxOwned }
func (ownedTx) Rollback(context.Context) error { return ErrTxOwned }

// Rebuild resets the projection and replays the whole log (or its
// category) through its function: for when a bug corrupted the
// projection's tables, or its function changed. reset empties the
// projection's tables in the same transaction that moves the checkpoint
// back to the start, so no one ever sees the tables empty with the
// checkpoint still advanced. The replay then runs in batches of
// RebuildBatchSize, each committed with its checkpoint; progress, if not
// nil, is called after the reset with (0, total) and after each batch with
// the events applied so far and the total (the events below the horizon
// when the rebuild started, raised if more arrive meanwhile).
//
// While Rebuild runs, the live projection, on every replica, is held off:
// Rebuild holds the projection's advisory lock exclusively on its own
// connection for its whole run (waiting for a live batch in flight to
// commit first), and each live batch needs that lock shared. Rebuild
// returns when the replay reaches the horizon, having replayed at least
// the events that were below it when Rebuild began; the live projection
// then continues from there. That lock is a session's, held across
// transactions, so Rebuild needs connections that are sessions of their
// own: not a pool behind PgBouncer in transaction mode (which runs each
// transaction on whichever server connection is free, and can leave the
// lock on one that other clients then use). Run a rebuild through a
// direct connection to Postgres.
//
// If ctx ends, Rebuild stops after the batch in flight and returns ctx's
// error; the tables and the checkpoint are consistent, and the live
// projection continues the replay from where it stopped. A batch that
// fails stops the rebuild the same way, with its error.
func (p *Projection) Rebuild(ctx context.Context, reset ResetFunc, progress func(done, total int64)) error {
	if reset == nil {
		return fmt.Errorf("%w: projection %q: Rebuild needs a reset function", ErrInvalidArgument, p.cfg.Name)
	}
	if progress == nil {
		progress = func(int64, int64) {}
	}
	conn, err := p.log.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("eventlog: projection %q: rebuild: %w", p.cfg.Name, err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, rebuildLockSQL, p.key); err != nil {
		// The lock may have been granted as ctx ended: close the
		// connection, which releases it, rather than return it to the pool.
		_ = conn.Conn().Close(context.WithoutCancel(ctx))
		return fmt.Errorf("eventlog: projection %q: rebuild: take the projection's lock: %w", p.cfg.Name, err)
	}
	err = p.rebuild(ctx, conn, reset, progress)

	// A session lock outlives transactions: release it explicitly, and if
	// that fails close the connection (which releases it) rather than
	// return it to the pool still locked, where live batches on it would
	// pass the lock (a session never conflicts with itself).
	unlockCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	var unlocked bool
	if uerr := conn.QueryRow(unlockCtx, rebuildUnlockSQL, p.key).Scan(&unlocked); uerr != nil || !unlocked {
		_ = conn.Conn().Close(unlockCtx)
	}
	p.log.Notify() // the live projection may continue
	return err
}

func (p *Projection) rebuild(ctx context.Context, conn *pgxpool.Conn, reset ResetFunc, progress func(done, total int64)) error {
	// Statements run to completion even if ctx ends; ctx is checked between
	// batches.
	work := context.WithoutCancel(ctx)
	err := pgx.BeginFunc(work, conn, func(tx pgx.Tx) error {
		if err := callReset(work, tx, reset); err != nil {
			return err
		}
		_, err := tx.Exec(work, p.log.sql.resetCheckpoint, p.cfg.Name)
		return err
	})
	if err != nil {
		return fmt.Errorf("eventlog: projection %q: rebuild: reset: %w", p.cfg.Name, err)
	}

	var total int64
	sql, args := p.log.sql.count[0], []any(nil)
	if p.cfg.Category != "" {
		sql, args = p.log.sql.count[1], []any{likePrefix(p.cfg.Category)}
	}
	err = afterStatus(work, conn, sql, func(br pgx.BatchResults) error { return br.QueryRow().Scan(&total) }, args...)
	if err != nil {
		return fmt.Errorf("eventlog: projection %q: rebuild: count events: %w", p.cfg.Name, err)
	}
	progress(0, total)
	read := func() (int, error) { return p.batch(work, conn, true, p.cfg.RebuildBatchSize) }
	if done, err := replay(ctx, p.cfg.RebuildBatchSize, total, read, progress); err != nil {
		return fmt.Errorf("eventlog: projection %q: rebuild stopped after %d of %d events: %w", p.cfg.Name, done, max(total, done), err)
	}
	return nil
}

// replay calls read, which applies the next batch of at most size events
// and returns how many it applied, until a batch comes back short with
// at least total events applied: the horizon. A short batch before that
// is read again soon: the total events were below the horizon when the
// rebuild began, so they are final, and that read's horizon only seemed
// lower (a prepared transaction of another database, committed between
// the read's snapshot and its look at pg_prepared_xacts, holds one read
// back; see horizonSQL). progress gets (done, total) after each batch that
// applied events.
func replay(ctx context.Context, size int, total int64, read func() (int, error), progress func(done, total int64)) (done int64, err error) {
	short := 0 // short batches in a row before reaching total
	for {
		if err := ctx.Err(); err != nil {
			return done, err
		}
		n, err := read()
		if err != nil {
			return done, err
		}
		if n > 0 {
			done += int64(n)
			total = max(total, done)
			progress(done, total)
		}
		switch {
		case n == size:
			short = 0
		case done >= total:
			return done, nil
		default:
			short++
			wait := time.NewTimer(min(minTailRetry<<min(short-1, 16), maxTailRetry))
			select {
			case <-ctx.Done():
				wait.Stop()
			case <-wait.C:
			}
		}
	}
}

// callReset runs a ResetFunc, turning a panic into an error.
func callReset(ctx context.Context, tx pgx.Tx, reset ResetFunc) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
		}
	}()
	if err := reset(ctx, ownedTx{tx}); err != nil {
		return err
	}
	return txUsable(tx)
}
