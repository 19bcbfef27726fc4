package queue

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wharfhq/wharf/internal/pgnotify"
)

// Queue stores events and hands them out under leases. It is safe for
// concurrent use. Create it with New; call Close when done enqueueing.
type Queue struct {
	pool      *pgxpool.Pool
	cfg       Config
	sql       statements
	worker    string // default leased_by and error-history worker name
	notify    *pgnotify.Notifier
	committer *committer

	// setReadCommitted is set once a fetch or an insert in a transaction
	// of the queue's own found that the pool's transactions default to
	// another isolation level (a role's or database's setting): from then
	// on sendOwn runs those transactions between BEGIN ISOLATION LEVEL
	// READ COMMITTED and COMMIT, two statements more that the usual
	// default does not need.
	setReadCommitted atomic.Bool

	// rescueIdleTimeout is the rescues' idle_in_transaction_session_timeout:
	// the constant of that name, which tests shorten.
	rescueIdleTimeout time.Duration
}

// New returns a Queue on pool. It does no I/O; the schema must have been
// migrated with wharf.Migrate.
func New(pool *pgxpool.Pool, cfg Config) (*Queue, error) {
	if pool == nil {
		return nil, fmt.Errorf("%w: pool is nil", ErrInvalidConfig)
	}
	c := cfg.withDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	q := &Queue{pool: pool, cfg: c, sql: render(c.Schema, c.DuplicateIf), worker: defaultWorkerName(), rescueIdleTimeout: rescueIdleTimeout}
	q.notify = pgnotify.New(pool, pgnotify.Channel(c.Schema, "queue"), c.Logger)
	q.committer = newCommitter(q)
	return q, nil
}

// Close stops the group committers and the notifier after answering every
// Enqueue already waiting. Later Enqueue calls return ErrClosed; everything
// else keeps working.
func (q *Queue) Close() {
	q.committer.close()
	q.notify.Close()
}

// Schema is the schema the queue's tables live in.
func (q *Queue) Schema() string { return q.cfg.Schema }

func defaultWorkerName() string {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown"
	}
	return fmt.Sprintf("%s:%d:%04x", host, os.Getpid(), rand.IntN(1<<16))
}

// querier is what both a pool and a transaction can do.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// Enqueue stores ev durably and reports whether it was new. Concurrent
// calls are written together, many rows in one INSERT and one commit
// (group commit), but each call returns only after its own row is
// committed with synchronous_commit on. An invalid event returns an error
// wrapping ErrInvalidEvent, writes nothing, and never fails the events
// batched with it.
//
// If ctx ends first, Enqueue returns its error and the event may or may not
// have been stored; a retry with the same source and id is deduplicated.
func (q *Queue) Enqueue(ctx context.Context, ev NewEvent) (EnqueueResult, error) {
	if err := ev.validate(); err != nil {
		return EnqueueResult{}, err
	}
	return q.committer.submit(ctx, &ev)
}

// EnqueueTx stores ev in the caller's transaction: it is visible, and
// durable, when the caller commits. It sets synchronous_commit on for that
// transaction. Consumers are not woken (a notification sent before the
// caller commits would find nothing): call Notify after committing, or the
// event is picked up within the consumers' poll interval. With
// Config.DuplicateIf, the transaction must be READ COMMITTED (Postgres's
// default): in another, EnqueueTx stores nothing and returns an error
// wrapping ErrNotReadCommitted.
func (q *Queue) EnqueueTx(ctx context.Context, tx pgx.Tx, ev NewEvent) (EnqueueResult, error) {
	if err := ev.validate(); err != nil {
		return EnqueueResult{}, err
	}
	res, err := q.insert(ctx, tx, false, []*NewEvent{&ev})
	if err != nil {
		return EnqueueResult{}, err
	}
	return res[0], nil
}

// EnqueueBatch stores evs in one statement and one commit. If any event is
// invalid it returns that event's error and writes nothing. Results are in
// the order of evs; an id repeated within evs is a duplicate after its
// first occurrence.
func (q *Queue) EnqueueBatch(ctx context.Context, evs []NewEvent) ([]EnqueueResult, error) {
	ptrs, err := validateAll(evs)
	if err != nil {
		return nil, err
	}
	res, err := q.insert(ctx, q.pool, true, ptrs)
	if err == nil {
		q.Notify()
	}
	return res, err
}

// EnqueueBatchTx is EnqueueBatch inside the caller's transaction, which it
// sets to commit with synchronous_commit on. Call Notify after committing.
func (q *Queue) EnqueueBatchTx(ctx context.Context, tx pgx.Tx, evs []NewEvent) ([]EnqueueResult, error) {
	ptrs, err := validateAll(evs)
	if err != nil {
		return nil, err
	}
	return q.insert(ctx, tx, false, ptrs)
}

func validateAll(evs []NewEvent) ([]*NewEvent, error) {
	ptrs := make([]*NewEvent, len(evs))
	for i := range evs {
		if err := evs[i].validate(); err != nil {
			return nil, err
		}
		ptrs[i] = &evs[i]
	}
	return ptrs, nil
}

// insert writes validated events in one round trip: the settings (which
// turn synchronous_commit on) and the INSERT travel as one pipelined batch,
// which runs in one transaction: the caller's, or, when own, one of its
// own (sendOwn), which a refusal for the isolation level sends again at
// READ COMMITTED.
// Events get ids in the order given, which orders events of one ordering
// key.
func (q *Queue) insert(ctx context.Context, db querier, own bool, evs []*NewEvent) ([]EnqueueResult, error) {
	if len(evs) == 0 {
		return nil, nil
	}
	// A key repeated within the batch is written once, as given first.
	n := len(evs)
	var (
		sources      = make([]string, 0, n)
		ids          = make([]string, 0, n)
		types        = make([]string, 0, n)
		orderingKeys = make([]string, 0, n)
		maxAttempts  = make([]int32, 0, n)
		runAts       = make([]*time.Time, 0, n)
		bodies       = make([][]byte, 0, n)
		headers      = make([][]byte, 0, n)
		handlers     = make([]string, 0, n)
		first        = make([]bool, n)
		seen         = make(map[[2]string]bool, n)
	)
	for i, ev := range evs {
		key := [2]string{ev.Source, ev.ID}
		if seen[key] {
			continue
		}
		seen[key] = true
		first[i] = true
		sources = append(sources, ev.Source)
		ids = append(ids, ev.ID)
		types = append(types, ev.Type)
		orderingKeys = append(orderingKeys, ev.OrderingKey)
		attempts := ev.MaxAttempts
		if attempts == 0 {
			attempts = q.cfg.MaxAttempts
		}
		maxAttempts = append(maxAttempts, int32(attempts))
		var runAt *time.Time
		if !ev.RunAt.IsZero() {
			runAt = &ev.RunAt
		}
		runAts = append(runAts, runAt)
		bodies = append(bodies, ev.Body)
		headers = append(headers, encodeHeaders(ev.Headers))
		handlers = append(handlers, ev.Handler)
	}

	b := &pgx.Batch{}
	if own {
		b.Queue(ownEnqueueSQL)
	} else {
		b.Queue(syncCommitSQL)
	}
	b.Queue(q.sql.insert, sources, ids, types, orderingKeys, maxAttempts, runAts, bodies, headers, handlers)
	if q.cfg.DuplicateIf != "" {
		b.Queue(q.sql.recheck, sources, ids)
	}
	inserted := make(map[[2]string]int64, len(ids))
	levelSet := q.setReadCommitted.Load() // sendOwn sets it if this is true
	read := func(br pgx.BatchResults) error {
		if _, err := br.Exec(); err != nil { // the settings
			return err
		}
		rows, err := br.Query()
		if err != nil {
			return err
		}
		var id *int64
		var source, eventID *string
		var isolation string
		if _, err := pgx.ForEachRow(rows, []any{&id, &source, &eventID, &isolation}, func() error {
			if id != nil { // a row of NULLs: nothing inserted
				inserted[[2]string{*source, *eventID}] = *id
			}
			return nil
		}); err != nil {
			return err
		}
		if !readsCommitted(isolation) {
			if q.cfg.DuplicateIf != "" {
				return &notReadCommittedError{isolation}
			}
			if own {
				// Stored all the same (no recheck needs the level), but
				// racing inserts of one key would fail where READ
				// COMMITTED says duplicate: the next ones set it.
				q.setReadCommitted.Store(true)
			}
		}
		if q.cfg.DuplicateIf == "" {
			return nil
		}
		taken, err := readIDs(br)
		if err != nil {
			return err
		}
		for key, id := range inserted {
			if taken[id] {
				delete(inserted, key)
			}
		}
		return nil
	}
	var err error
	if own {
		err = q.sendOwn(ctx, b, read)
	} else {
		err = readBatch(db.SendBatch(ctx, b), read)
	}
	var notRC *notReadCommittedError
	if errors.As(err, &notRC) && own && !levelSet {
		// Nothing was stored: again, now setting the level.
		q.setReadCommitted.Store(true)
		return q.insert(ctx, db, own, evs)
	}
	if err != nil {
		return nil, fmt.Errorf("queue: store %d event(s): %w", len(ids), err)
	}

	out := make([]EnqueueResult, n)
	for i, ev := range evs {
		id, ok := inserted[[2]string{ev.Source, ev.ID}]
		if ok && first[i] {
			out[i] = EnqueueResult{QueueID: id}
		} else {
			out[i] = EnqueueResult{Duplicate: true}
		}
	}
	return out, nil
}

// notifyIfKeyed wakes consumers when any of evs has an ordering key: once
// such an event leaves the running state its key's next event is due, and
// no enqueue will announce it.
func (q *Queue) notifyIfKeyed(evs []*Event) {
	for _, ev := range evs {
		if ev.OrderingKey != "" {
			q.Notify()
			return
		}
	}
}

// Notify wakes idle consumers of this queue, in this process at once and in
// others through a coalesced NOTIFY. Enqueue and EnqueueBatch call it
// themselves; call it after committing a transaction that used EnqueueTx.
func (q *Queue) Notify() {
	q.notify.Signal()
}

// WakeLocal wakes idle consumers of this queue in this process only, to
// fetch now: for a change that only this process sees, such as one of its
// circuit breakers closing, after which events it left in the queue may be
// fetched again.
func (q *Queue) WakeLocal() {
	q.notify.WakeLocal()
}

// FetchParams selects what Fetch claims.
type FetchParams struct {
	// Limit is the most events to claim. Required, 1 to 1000.
	Limit int
	// Only, when non-empty, restricts the fetch to these kinds.
	Only []Kind
	// Exclude leaves these kinds out (applied after Only).
	Exclude []Kind
	// ByKind walks each kind the fetch takes on its own, oldest first,
	// instead of walking every due event oldest first and skipping those
	// of other kinds. Choose it when many due events ahead are of kinds
	// the fetch skips (a backlog behind an open circuit breaker, types no
	// handler takes): it never reads them. It costs more than the walk when
	// several kinds it takes have backlogs. A Consumer chooses by itself
	// (ConsumerConfig.Only).
	ByKind bool
	// Worker is recorded as the lease holder. Defaults to
	// "hostname:pid:random".
	Worker string
}

// Fetch claims up to p.Limit due events in one statement (FOR UPDATE SKIP
// LOCKED, so concurrent fetchers never wait for each other or get the same
// event), marks them running under a new lease of Config.LeaseDuration and
// counts the attempt. Events scheduled for later are never returned. Of
// events sharing an ordering key only the oldest, and only when no other
// event of its key is running, is returned. A rescued event (Event.Rescued)
// is returned alone, whatever the limit.
func (q *Queue) Fetch(ctx context.Context, p FetchParams) ([]*Event, error) {
	events, err := q.fetch(ctx, p, true)
	if err != nil {
		return nil, err
	}
	for _, ev := range events {
		if err := ev.decodeColumns(); err != nil {
			return nil, fmt.Errorf("queue: fetch: %w", err)
		}
	}
	return events, nil
}

// fetch is Fetch, leaving the events' JSON columns undecoded, and without
// their bodies and headers unless withPayload: a Consumer's workers load
// and decode those themselves, off the fetcher's path (see loadPayloads).
func (q *Queue) fetch(ctx context.Context, p FetchParams, withPayload bool) ([]*Event, error) {
	if p.Limit < 1 || p.Limit > 1000 {
		return nil, fmt.Errorf("%w: FetchParams.Limit %d is outside 1..1000", ErrInvalidConfig, p.Limit)
	}
	worker := p.Worker
	if worker == "" {
		worker = q.worker
	}
	sql, kindArgs := q.fetchStatement(p, withPayload)
	if sql == "" {
		return nil, nil // by kind, every kind asked for is excluded
	}
	token := rand.Int64()
	args := append([]any{p.Limit, token, q.cfg.LeaseDuration.Milliseconds(), worker}, kindArgs...)
	// The statements travel in one round trip and run in one implicit
	// transaction, so the settings apply to the fetch only.
	b := &pgx.Batch{}
	b.Queue(fetchSettingsSQL)
	b.Queue(sql, args...)
	var events []*Event
	err := q.sendOwn(ctx, b, func(br pgx.BatchResults) error {
		var isolation string
		if err := br.QueryRow().Scan(&isolation, nil, nil, nil, nil); err != nil {
			return err
		}
		if !readsCommitted(isolation) {
			// This fetch ran at another level, which at worst fails it
			// on a row changed meanwhile; the next ones set the level.
			q.setReadCommitted.Store(true)
		}
		rows, err := br.Query()
		if err != nil {
			return err
		}
		events, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (*Event, error) {
			ev := &Event{Lease: Lease{Token: token}}
			err := row.Scan(&ev.QueueID, &ev.Source, &ev.ID, &ev.Type, &ev.OrderingKey, &ev.Handler, &ev.ReceivedAt,
				&ev.Attempt, &ev.MaxAttempts, &ev.errorsJSON, &ev.Lease.ExpiresAt, &ev.Rescued, &ev.Deferrals, &ev.Body, &ev.headersJSON)
			if err != nil {
				return nil, err
			}
			ev.Lease.QueueID = ev.QueueID
			return ev, nil
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("queue: fetch: %w", err)
	}
	return events, nil
}

// sendOwn sends b as a transaction of the queue's own and reads its
// results with read: as one implicit transaction, or, once the pool's
// connections were found to default to another isolation level
// (setReadCommitted), between BEGIN ISOLATION LEVEL READ COMMITTED and
// COMMIT in the same round trip. (SET TRANSACTION at the head of an
// implicit transaction would do, but makes the server log a warning each
// time.) A transaction that fails is rolled back before its connection
// goes back to the pool.
func (q *Queue) sendOwn(ctx context.Context, b *pgx.Batch, read func(pgx.BatchResults) error) error {
	if !q.setReadCommitted.Load() {
		return readBatch(q.pool.SendBatch(ctx, b), read)
	}
	conn, err := q.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	wrapped := &pgx.Batch{}
	wrapped.Queue(beginReadCommittedSQL)
	wrapped.QueuedQueries = append(wrapped.QueuedQueries, b.QueuedQueries...)
	wrapped.Queue(`COMMIT`)
	err = readBatch(conn.SendBatch(ctx, wrapped), func(br pgx.BatchResults) error {
		if _, err := br.Exec(); err != nil {
			return err
		}
		if err := read(br); err != nil {
			return err
		}
		_, err := br.Exec()
		return err
	})
	if err != nil && conn.Conn().PgConn().TxStatus() != 'I' {
		// A connection still in the transaction would be closed by the
		// pool on release; rolling back keeps it, unless that hangs.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		_, _ = conn.Exec(rctx, `ROLLBACK`)
		cancel()
	}
	return err
}

// readsCommitted reports whether a transaction of isolation level (as
// transaction_isolation names it) takes a new snapshot for each statement:
// READ COMMITTED, and READ UNCOMMITTED, which Postgres runs the same way.
func readsCommitted(level string) bool {
	return level == "read committed" || level == "read uncommitted"
}

// readBatch reads br's results with read, then closes it.
func readBatch(br pgx.BatchResults, read func(pgx.BatchResults) error) error {
	err := read(br)
	if closeErr := br.Close(); err == nil {
		err = closeErr
	}
	return err
}

func boolIndex(b bool) int {
	if b {
		return 1
	}
	return 0
}

// fetchStatement returns the fetch statement for p and its arguments from
// $5 on: for a walk, the Only and Exclude arrays it was given; by kind,
// its kinds listed (listKinds), or, when they must be read off the queue,
// the Only and Exclude arrays. It returns "" for a fetch by kind whose
// Exclude leaves nothing of Only. A walk, the hot path of every drain,
// takes its statement as it is: listing its kinds would cost every fetch
// work to spare only the rare one whose kinds are all excluded (which
// finds nothing; a Consumer fetches by kind while such events are many).
func (q *Queue) fetchStatement(p FetchParams, withPayload bool) (sql string, kindArgs []any) {
	statements := q.sql.fetchNoPayload
	if withPayload {
		statements = q.sql.fetch
	}
	if !p.ByKind {
		return statements.walk[boolIndex(len(p.Only) > 0)][boolIndex(len(p.Exclude) > 0)], kindArrays(p.Only, p.Exclude)
	}
	kinds, listed := listKinds(p.Only, p.Exclude)
	if listed && len(kinds) == 0 {
		return "", nil
	}
	if !listed {
		onlySources, onlyTypes := splitKinds(p.Only)
		excludeSources, excludeTypes := splitKinds(p.Exclude)
		return statements.byKind[kindsPresent], []any{onlySources, onlyTypes, excludeSources, excludeTypes}
	}
	sources, types := splitKinds(kinds)
	return statements.byKind[kindsListed], []any{sources, types}
}

// kindArrays returns the arrays of the walk's kind filters: Only's sources
// and types when it is given, then Exclude's when it is.
func kindArrays(only, exclude []Kind) []any {
	var args []any
	for _, kinds := range [][]Kind{only, exclude} {
		if len(kinds) > 0 {
			sources, types := splitKinds(kinds)
			args = append(args, sources, types)
		}
	}
	return args
}

// skipped counts, of the first n due events, those a walking fetch with
// only and exclude would read past (skippedSQL).
func (q *Queue) skipped(ctx context.Context, n int, only, exclude []Kind) (int, error) {
	// One round trip, one transaction of the queue's own: the settings
	// hold the count to the walk's index, as they do the fetch.
	b := &pgx.Batch{}
	b.Queue(indexPlansSQL)
	b.Queue(q.sql.skipped[boolIndex(len(only) > 0)][boolIndex(len(exclude) > 0)], append([]any{n}, kindArrays(only, exclude)...)...)
	var count int
	err := q.sendOwn(ctx, b, func(br pgx.BatchResults) error {
		if _, err := br.Exec(); err != nil {
			return err
		}
		return br.QueryRow().Scan(&count)
	})
	if err != nil {
		return 0, fmt.Errorf("queue: count skipped events: %w", err)
	}
	return count, nil
}

// How a by-kind fetch knows its kinds: the index into fetchStatements.byKind.
const (
	kindsListed  = iota // from the caller (listKinds)
	kindsPresent        // read off the queue
)

// listKinds returns the kinds a fetch with Only and Exclude takes, each
// once, when Only names them all with their types; listed is false when
// Only is empty or has an AnyType kind, whose types the fetch must read
// off the queue.
func listKinds(only, exclude []Kind) (kinds []Kind, listed bool) {
	if len(only) == 0 {
		return nil, false
	}
	for _, k := range only {
		if k.Type == AnyType {
			return nil, false
		}
		if slices.Contains(kinds, k) || slices.Contains(exclude, k) || slices.Contains(exclude, Kind{Source: k.Source, Type: AnyType}) {
			continue
		}
		kinds = append(kinds, k)
	}
	return kinds, true
}

// splitKinds returns kinds as the two parallel arrays the fetch takes,
// empty (never NULL) when kinds is.
func splitKinds(kinds []Kind) (sources, types []string) {
	sources = make([]string, len(kinds))
	types = make([]string, len(kinds))
	for i, k := range kinds {
		sources[i], types[i] = k.Source, k.Type
	}
	return sources, types
}

// leaseArrays returns the (ids, tokens) arrays the lease statements take.
func leaseArrays(evs []*Event) (ids, tokens []int64) {
	ids = make([]int64, len(evs))
	tokens = make([]int64, len(evs))
	for i, ev := range evs {
		ids[i], tokens[i] = ev.QueueID, ev.Lease.Token
	}
	return ids, tokens
}

// collectIDs runs a lease statement and returns the set of ids it changed.
// Settings, when given, are sent ahead of it in the same round trip.
func collectIDs(ctx context.Context, db querier, settings, sql string, args ...any) (map[int64]bool, error) {
	b := &pgx.Batch{}
	if settings != "" {
		b.Queue(settings)
	}
	b.Queue(sql, args...)
	br := db.SendBatch(ctx, b)
	defer br.Close()
	if settings != "" {
		if _, err := br.Exec(); err != nil {
			return nil, err
		}
	}
	changed, err := readIDs(br)
	if err != nil {
		return nil, err
	}
	return changed, br.Close()
}

// readIDs reads the next result of br, a column of ids, as a set.
func readIDs(br pgx.BatchResults) (map[int64]bool, error) {
	rows, err := br.Query()
	if err != nil {
		return nil, err
	}
	ids := map[int64]bool{}
	var id int64
	_, err = pgx.ForEachRow(rows, []any{&id}, func() error {
		ids[id] = true
		return nil
	})
	return ids, err
}

// lostError names the events whose lease was lost, wrapping ErrLeaseLost.
func lostError(op string, evs []*Event, changed map[int64]bool) error {
	var lost []int64
	for _, ev := range evs {
		if !changed[ev.QueueID] {
			lost = append(lost, ev.QueueID)
		}
	}
	if len(lost) == 0 {
		return nil
	}
	return fmt.Errorf("queue: %s event(s) %v: %w", op, lost, ErrLeaseLost)
}

// Complete removes ev from the queue: it was processed. It returns an error
// wrapping ErrLeaseLost, and changes nothing, if the caller no longer holds
// ev's lease.
func (q *Queue) Complete(ctx context.Context, ev *Event) error {
	err := q.complete(ctx, q.pool, indexPlansSQL, []*Event{ev})
	if err == nil {
		q.notifyIfKeyed([]*Event{ev})
	}
	return err
}

// CompleteTx is Complete inside the caller's transaction, so the event is
// removed if and only if the caller's own writes commit. For an event with
// an ordering key, call Notify after committing so the key's next event
// starts without waiting for a poll.
func (q *Queue) CompleteTx(ctx context.Context, tx pgx.Tx, ev *Event) error {
	return q.complete(ctx, tx, "", []*Event{ev})
}

// complete removes evs, with settings (if any) sent first.
func (q *Queue) complete(ctx context.Context, db querier, settings string, evs []*Event) error {
	ids, tokens := leaseArrays(evs)
	changed, err := collectIDs(ctx, db, settings, q.sql.complete, ids, tokens)
	if err != nil {
		return fmt.Errorf("queue: complete: %w", err)
	}
	return lostError("complete", evs, changed)
}

// Retry records cause as ev's failed attempt and reschedules it after the
// backoff for its attempt number (or after the delay of a RetryIn cause).
// If that was its last attempt, or cause is Permanent, it is exhausted
// instead (see Config.OnExhausted) and Retry reports true.
func (q *Queue) Retry(ctx context.Context, ev *Event, cause error) (exhausted bool, err error) {
	err = pgx.BeginTxFunc(ctx, q.pool, readCommitted, func(tx pgx.Tx) error {
		exhausted, err = q.RetryTx(ctx, tx, ev, cause)
		return err
	})
	if err == nil {
		q.notifyIfKeyed([]*Event{ev})
	}
	return exhausted, err
}

// RetryTx is Retry inside the caller's transaction. The caller's
// transaction must be usable: after a failed statement, roll back to a
// savepoint first.
func (q *Queue) RetryTx(ctx context.Context, tx pgx.Tx, ev *Event, cause error) (exhausted bool, err error) {
	f := failureOf(ev, cause)
	if _, err := q.fail(ctx, tx, []failure{f}); err != nil {
		return false, err
	}
	return f.permanent || ev.Attempt >= ev.MaxAttempts, nil
}

// failure is one failed attempt to record.
type failure struct {
	ev        *Event
	msg       string
	permanent bool           // exhaust now, whatever attempts are left
	after     *time.Duration // retry after this instead of the backoff
	rescued   bool           // its lease expired unfinished: fetched alone next time
}

// failureOf describes a handler's error as a failure of ev.
func failureOf(ev *Event, err error) failure {
	f := failure{ev: ev, msg: "unknown error"}
	if err == nil {
		return f
	}
	f.msg = err.Error()
	var permanent *PermanentError
	f.permanent = errors.As(err, &permanent)
	var retry *RetryError
	if errors.As(err, &retry) {
		f.after = &retry.After
	}
	return f
}

// fail records failed attempts, in tx: events with attempts left are
// rescheduled with backoff, the rest are exhausted. Each history entry
// takes its attempt number and worker from the row. It returns the
// shortest retry delay it scheduled (zero when none).
func (q *Queue) fail(ctx context.Context, tx pgx.Tx, failures []failure) (soonest time.Duration, err error) {
	var retry, exhaust []*Event
	var retryDelays []int64
	var retryMsgs, exhaustMsgs []string
	var retryRescued []bool
	for _, f := range failures {
		msg := truncateError(f.msg)
		if f.permanent || f.ev.Attempt >= f.ev.MaxAttempts {
			exhaust = append(exhaust, f.ev)
			exhaustMsgs = append(exhaustMsgs, msg)
			continue
		}
		retry = append(retry, f.ev)
		delay := q.cfg.Backoff.delay(f.ev.Attempt, rand.Float64())
		if f.after != nil {
			delay = *f.after
		}
		retryDelays = append(retryDelays, delay.Milliseconds())
		if soonest == 0 || delay < soonest {
			soonest = max(delay, time.Millisecond)
		}
		retryMsgs = append(retryMsgs, msg)
		retryRescued = append(retryRescued, f.rescued)
	}
	if len(retry) > 0 {
		ids, tokens := leaseArrays(retry)
		changed, err := collectIDs(ctx, tx, "", q.sql.retry, ids, tokens, retryDelays, retryMsgs, retryRescued)
		if err != nil {
			return 0, fmt.Errorf("queue: retry: %w", err)
		}
		if err := lostError("retry", retry, changed); err != nil {
			return 0, err
		}
	}
	if len(exhaust) > 0 {
		return soonest, q.exhaust(ctx, tx, exhaust, exhaustMsgs)
	}
	return soonest, nil
}

// exhaust takes events that used their last attempt out of circulation:
// to the OnExhausted hook, in tx, or parked as state "exhausted".
func (q *Queue) exhaust(ctx context.Context, tx pgx.Tx, evs []*Event, msgs []string) error {
	ids, tokens := leaseArrays(evs)
	if q.cfg.OnExhausted == nil {
		changed, err := collectIDs(ctx, tx, "", q.sql.exhaustKeep, ids, tokens, msgs)
		if err != nil {
			return fmt.Errorf("queue: exhaust: %w", err)
		}
		return lostError("exhaust", evs, changed)
	}
	rows, err := tx.Query(ctx, q.sql.exhaustRemove, ids, tokens, msgs)
	if err != nil {
		return fmt.Errorf("queue: exhaust: %w", err)
	}
	removed, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (*Event, error) {
		ev := &Event{}
		err := row.Scan(&ev.QueueID, &ev.Source, &ev.ID, &ev.Type, &ev.OrderingKey, &ev.Handler, &ev.ReceivedAt,
			&ev.Attempt, &ev.MaxAttempts, &ev.errorsJSON, &ev.Body, &ev.headersJSON)
		if err != nil {
			return nil, err
		}
		return ev, ev.decodeColumns()
	})
	if err != nil {
		return fmt.Errorf("queue: exhaust: %w", err)
	}
	changed := make(map[int64]bool, len(removed))
	for _, ev := range removed {
		changed[ev.QueueID] = true
	}
	if err := lostError("exhaust", evs, changed); err != nil {
		return err
	}
	if err := q.cfg.OnExhausted(ctx, tx, removed); err != nil {
		return fmt.Errorf("queue: exhaust: OnExhausted: %w", err)
	}
	return nil
}

// Defer puts ev back without spending an attempt, due at until (now if
// zero): the attempt Fetch counted is given back. Use it when the event
// cannot run yet for a reason that is not its own fault.
func (q *Queue) Defer(ctx context.Context, ev *Event, until time.Time) error {
	err := q.deferEvents(ctx, q.pool, []*Event{ev}, []DeferError{{Until: until}})
	if err == nil {
		q.notifyIfKeyed([]*Event{ev})
	}
	return err
}

// DeferTx is Defer inside the caller's transaction.
func (q *Queue) DeferTx(ctx context.Context, tx pgx.Tx, ev *Event, until time.Time) error {
	return q.deferEvents(ctx, tx, []*Event{ev}, []DeferError{{Until: until}})
}

// Release puts events back, due now, with their attempts given back: for a
// worker that stops before running them (a shutdown).
func (q *Queue) Release(ctx context.Context, evs ...*Event) error {
	err := q.deferEvents(ctx, q.pool, evs, make([]DeferError, len(evs)))
	if err == nil {
		q.Notify()
	}
	return err
}

// deferEvents puts evs back as how says, one DeferError each: due at its
// Until (now if zero), counting a deferral when it is Counted.
func (q *Queue) deferEvents(ctx context.Context, db querier, evs []*Event, how []DeferError) error {
	if len(evs) == 0 {
		return nil
	}
	ids, tokens := leaseArrays(evs)
	runAts := make([]*time.Time, len(how))
	counted := make([]int32, len(how))
	for i, d := range how {
		if !d.Until.IsZero() {
			runAts[i] = &how[i].Until
		}
		if d.Counted {
			counted[i] = 1
		}
	}
	changed, err := collectIDs(ctx, db, "", q.sql.deferEvents, ids, tokens, runAts, counted)
	if err != nil {
		return fmt.Errorf("queue: defer: %w", err)
	}
	return lostError("defer", evs, changed)
}

// Heartbeat extends the leases of evs by Config.LeaseDuration and updates
// each extended event's Lease.ExpiresAt. Events locked by an open
// transaction are skipped, not waited for (the lock itself keeps them from
// being rescued). It returns the number extended.
func (q *Queue) Heartbeat(ctx context.Context, evs ...*Event) (int, error) {
	expires, err := q.extend(ctx, evs)
	for _, ev := range evs {
		if at, ok := expires[ev.QueueID]; ok {
			ev.Lease.ExpiresAt = at
		}
	}
	return len(expires), err
}

// extend is Heartbeat without touching evs, for a Consumer, whose handlers
// may be reading them meanwhile: it returns when each extended lease now
// expires, by queue id.
func (q *Queue) extend(ctx context.Context, evs []*Event) (map[int64]time.Time, error) {
	if len(evs) == 0 {
		return nil, nil
	}
	ids, tokens := leaseArrays(evs)
	rows, err := q.pool.Query(ctx, q.sql.heartbeat, ids, tokens, q.cfg.LeaseDuration.Milliseconds())
	if err != nil {
		return nil, fmt.Errorf("queue: heartbeat: %w", err)
	}
	expires := map[int64]time.Time{}
	var id int64
	var at time.Time
	if _, err := pgx.ForEachRow(rows, []any{&id, &at}, func() error {
		expires[id] = at
		return nil
	}); err != nil {
		return nil, fmt.Errorf("queue: heartbeat: %w", err)
	}
	return expires, nil
}

// Rescue returns events whose lease expired (their worker died or stalled)
// to the queue, at most limit of them: each counts as a failed attempt and
// is retried after its backoff, or exhausted if it has no attempts left, so
// an event that kills its worker every time still ends. It returns how many
// it rescued. Consumers run it periodically; call it directly only if you
// fetch by hand.
//
// Exhausting an event runs Config.OnExhausted (the dead letter queue, an
// audit record), which may wait on a lock that a stalled worker's open
// transaction holds. So Rescue waits at most rescueLockTimeout for any
// lock; if a batch times out, it rescues the events one at a time and
// leaves those that still wait for a later call, so one stalled
// transaction holds back no other rescue. A rescue whose own process
// stalls between statements holds its events for at most 30 s more (or
// the session's own shorter idle_in_transaction_session_timeout):
// Postgres then ends its session, so OnExhausted must not leave the
// transaction idle that long.
func (q *Queue) Rescue(ctx context.Context, limit int) (int, error) {
	found, err := q.rescueBatch(ctx, limit, nil)
	if err == nil || !isLockTimeout(err) {
		if err != nil {
			return 0, fmt.Errorf("queue: rescue: %w", err)
		}
		return len(found), nil
	}
	var n int
	var waiting []int64
	for n+len(waiting) < limit {
		found, err := q.rescueBatch(ctx, 1, waiting)
		switch {
		case err == nil && len(found) == 0:
			return n, nil
		case err == nil:
			n++
		case isLockTimeout(err) && len(found) == 1:
			waiting = append(waiting, found[0])
		default:
			return n, fmt.Errorf("queue: rescue: %w", err)
		}
	}
	return n, nil
}

// rescueLockTimeout bounds each lock wait of a rescue (see Rescue).
const rescueLockTimeout = time.Second

// rescueIdleTimeout ends a rescue's session when its transaction waits on
// the client this long between statements: a process that stalls
// mid-rescue (stopped, its VM frozen) would otherwise keep the expired
// events it locked from every other rescuer until it resumes. Postgres
// ends the session, which rolls the rescue back, and the events go to the
// next rescuer. (A stall while the server is still sending a large result
// is not idle time, and is not cut short.)
const rescueIdleTimeout = 30 * time.Second

// rescueSettingsSQL starts a rescue's transaction: lock_timeout $1 (in
// ms), and an idle_in_transaction_session_timeout of $2 (an interval)
// unless the session has a shorter one of its own.
const rescueSettingsSQL = `
SELECT set_config('lock_timeout', $1, true),
       set_config('idle_in_transaction_session_timeout',
           CASE WHEN current_setting('idle_in_transaction_session_timeout')::interval > interval '0'
                 AND current_setting('idle_in_transaction_session_timeout')::interval < $2::text::interval
                THEN current_setting('idle_in_transaction_session_timeout')
                ELSE $2::text END, true)`

// rescueBatch rescues up to limit expired events, other than those in
// skip, in one transaction, and returns the ids it found: rescued, unless
// it returns an error.
func (q *Queue) rescueBatch(ctx context.Context, limit int, skip []int64) (found []int64, err error) {
	err = pgx.BeginTxFunc(ctx, q.pool, readCommitted, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, rescueSettingsSQL, fmt.Sprint(rescueLockTimeout.Milliseconds()), fmt.Sprintf("%dms", q.rescueIdleTimeout.Milliseconds())); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, q.sql.expired, limit, skip)
		if err != nil {
			return err
		}
		var failures []failure
		var id, token int64
		var attempt, maxAttempts int
		var leasedBy string
		_, err = pgx.ForEachRow(rows, []any{&id, &token, &attempt, &maxAttempts, &leasedBy}, func() error {
			ev := &Event{QueueID: id, Attempt: attempt, MaxAttempts: maxAttempts, Lease: Lease{QueueID: id, Token: token}}
			failures = append(failures, failure{ev: ev, msg: fmt.Sprintf("lease expired: worker %s stopped heart-beating", leasedBy), rescued: true})
			found = append(found, id)
			return nil
		})
		if err != nil {
			return err
		}
		_, err = q.fail(ctx, tx, failures)
		return err
	})
	return found, err
}

// isLockTimeout reports whether err is Postgres's lock_not_available,
// which lock_timeout raises.
func isLockTimeout(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "55P03"
}

// SourceStats counts one source's (or kind's) events by state.
type SourceStats struct {
	Due       int64 // available and due now
	Scheduled int64 // available, due later (retry backoff or RunAt)
	Running   int64
	Exhausted int64
}

func (s SourceStats) add(o SourceStats) SourceStats {
	return SourceStats{s.Due + o.Due, s.Scheduled + o.Scheduled, s.Running + o.Running, s.Exhausted + o.Exhausted}
}

// Stats describes the queue at one moment.
type Stats struct {
	SourceStats  // totals over all sources
	BySource     map[string]SourceStats
	ByKind       map[Kind]SourceStats
	OldestDueAge time.Duration // how long the oldest due event has waited; 0 if none
	// Unhandled counts, by kind, the waiting events stored without a
	// handler name (NewEvent.Handler): under a Pipeline, the types that no
	// handler of the process that stored them took.
	Unhandled map[Kind]int64
	Paused    []Pause // paused sources and handlers, whose due events wait
}

// Stats counts events by state, source and type, measures the oldest due
// event's wait and lists what is paused. It scans the queue table, which
// holds only live events.
func (q *Queue) Stats(ctx context.Context) (Stats, error) {
	rows, err := q.pool.Query(ctx, q.sql.stats)
	if err != nil {
		return Stats{}, fmt.Errorf("queue: stats: %w", err)
	}
	st := Stats{BySource: map[string]SourceStats{}, ByKind: map[Kind]SourceStats{}, Unhandled: map[Kind]int64{}}
	var k Kind
	var s SourceStats
	var unhandled int64
	var oldest *time.Time
	var now time.Time
	_, err = pgx.ForEachRow(rows, []any{&k.Source, &k.Type, &s.Due, &s.Scheduled, &s.Running, &s.Exhausted, &unhandled, &oldest, &now}, func() error {
		st.ByKind[k] = s
		st.BySource[k.Source] = st.BySource[k.Source].add(s)
		st.SourceStats = st.SourceStats.add(s)
		if unhandled > 0 {
			st.Unhandled[k] = unhandled
		}
		if oldest != nil {
			st.OldestDueAge = max(st.OldestDueAge, now.Sub(*oldest))
		}
		return nil
	})
	if err != nil {
		return Stats{}, fmt.Errorf("queue: stats: %w", err)
	}
	if st.Paused, err = q.Pauses(ctx); err != nil {
		return Stats{}, err
	}
	return st, nil
}
