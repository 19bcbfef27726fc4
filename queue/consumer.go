package queue

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/puddle/v2"

	"github.com/wharfhq/wharf/internal/pgnotify"
)

// Defaults for ConsumerConfig.
const (
	DefaultWorkers         = 4
	DefaultTxBatch         = 100
	DefaultMaxTxDuration   = 100 * time.Millisecond
	DefaultPollInterval    = time.Second
	DefaultRescueInterval  = 5 * time.Second
	DefaultShutdownTimeout = 30 * time.Second
	// MaxTxBatch bounds ConsumerConfig.TxBatch: the most events one fetch
	// claims.
	MaxTxBatch = 1000
	// MaxTxSavepoints is the most savepoints one transaction takes. A
	// handler's first statement opens its event's savepoint, and each
	// savepoint that writes holds a subtransaction id until the commit:
	// past 64 in one transaction, Postgres's per-backend cache of them
	// overflows and every session's snapshots slow down. A transaction
	// whose handlers have opened this many takes no more events; the rest
	// of its chunk goes to the next one. Events whose handlers do not touch
	// the database take none, and share transactions up to TxBatch.
	MaxTxSavepoints = 50
)

// Handler processes one event. It runs inside tx, under a savepoint of its
// own; the Consumer completes the event in the same transaction and commits
// it with the handler's writes, so database effects happen exactly once per
// completed event. Return nil when done, an error to retry the event after
// its backoff (the handler's writes are rolled back), RetryIn(d, err) to
// retry after d instead, Permanent(err) to exhaust it at once, or
// Defer(...) to put it back without spending an attempt. A panic counts as
// an error.
//
// The handler must not commit or roll back tx (that returns ErrTxOwned).
// Its ctx is not cancelled when Run's context is; it is cancelled only if
// the handler outlives ConsumerConfig.ShutdownTimeout.
type Handler func(ctx context.Context, tx pgx.Tx, ev *Event) error

// ConsumerConfig configures a Consumer.
type ConsumerConfig struct {
	// Handler processes each event. Required.
	Handler Handler

	// Workers is how many transactions run at once; each holds one pool
	// connection while it runs. Defaults to 4.
	Workers int

	// TxBatch is the most events one transaction processes, each under a
	// savepoint; one commit for many events is what makes draining fast. A
	// handler failure rolls back only its own event. A transaction also
	// stops at MaxTxSavepoints events whose handlers used the database.
	// Workers are handed chunks of at most TxBatch events, fewer when the
	// handlers are slow (see MaxTxDuration). At most 1000. Defaults to 100;
	// 1 gives every event its own transaction.
	TxBatch int

	// MaxTxDuration stops adding events to a transaction once it has run
	// this long, so slow handlers get one transaction each and their
	// completed neighbours are not held back. It also sizes the chunks of
	// events a worker is handed: about as many as its recent transactions
	// ran in this long, so a process does not lease more than it can soon
	// run while other replicas idle. Defaults to 100ms.
	MaxTxDuration time.Duration

	// Only restricts the consumer to these kinds (source, type or AnyType).
	// A consumer never fetches an event it cannot handle, so during a
	// rolling deploy old code leaves new event types alone. While more
	// than half of the first 1,000 due events are of kinds the consumer
	// skips (checked every 5 seconds), it fetches by kind
	// (FetchParams.ByKind), so that a backlog of other kinds does not slow
	// its fetches. Defaults to every event.
	Only []Kind

	// Exclude, when set, is called before each fetch and its kinds are left
	// in the queue untouched (an open circuit breaker's events, say).
	Exclude func() []Kind

	// PollInterval is how often an idle consumer looks for due events when
	// no notification arrives (scheduled retries, or NOTIFY unavailable).
	// Defaults to 1s.
	PollInterval time.Duration

	// PollOnly disables LISTEN, for a PgBouncer in transaction mode, where a
	// LISTEN connection cannot be kept. Consumers in the same process as the
	// Queue's Enqueue are still woken at once. Defaults to false.
	PollOnly bool

	// HeartbeatInterval is how often leases of held events are extended.
	// Defaults to a third of the Queue's LeaseDuration.
	HeartbeatInterval time.Duration

	// RescueInterval is how often expired leases are looked for. Defaults
	// to 5s.
	RescueInterval time.Duration

	// ShutdownTimeout is how long Run waits, after its context ends, for
	// running handlers to finish before cancelling their contexts; it then
	// waits for them to return, so a handler that ignores its context
	// keeps Run from returning. Events fetched but not started are
	// released at once with their attempts given back. Defaults to 30s.
	ShutdownTimeout time.Duration

	// Prepare, when set, runs at the start of each worker transaction with
	// the events the transaction will try, before their handlers and
	// outside their savepoints, and may leave each event something in
	// Event.Prepared. It lets per-event bookkeeping (the Pipeline's
	// idempotency claims) be one statement per transaction instead of one
	// per event. Its writes commit with the transaction, so Unprepare must
	// undo those of the events the transaction does not complete. When it
	// fails, the transaction is rolled back and its events are released
	// unrun, attempts given back.
	Prepare func(ctx context.Context, tx pgx.Tx, evs []*Event) error

	// Unprepare runs just before the commit of a transaction whose Prepare
	// ran, with the events it does not complete: failed, deferred, or left
	// for the next transaction (MaxTxDuration, shutdown). Required with
	// Prepare.
	Unprepare func(ctx context.Context, tx pgx.Tx, evs []*Event) error

	// BatchKey, when set, groups each transaction's events for
	// BatchHandler: two or more events given the same non-empty key run
	// together, in one BatchHandler call under one savepoint, ahead of the
	// transaction's other events, which run one by one through Handler.
	// limit, when positive, caps the events of one call (a downstream bulk
	// API's maximum, or a timeout sized for so many): a larger group runs
	// in several calls. The limit given with a key's first event applies.
	// It is called after Prepare. Required with BatchHandler.
	BatchKey func(ev *Event) (key string, limit int)

	// BatchHandler handles one group of events (see BatchKey) at once, for
	// handlers that write many events' effects in one statement. When it
	// returns nil, every event of the group is done; a Defer error defers
	// them all. Any other error, or a panic, rolls the group's writes back,
	// and its events run again one by one through Handler, which decides
	// each one's outcome, so an event that fails spends its attempt alone.
	// If the consumer stops before they run alone, each counts a failed
	// attempt instead, since the call may have had effects outside the
	// database. Defaults to none: every event runs through Handler.
	BatchHandler func(ctx context.Context, tx pgx.Tx, evs []*Event) error

	// Committed, when set, is called after the consumer commits a
	// transaction that ran handlers, recorded failures or rescued events
	// (and so may have run Config.OnExhausted): writes that others wait to
	// hear of, such as event log appends, are announced then, once
	// visible. It runs on the goroutine that committed and must not block.
	Committed func()

	// Name identifies this consumer as the lease holder in the queue table
	// and in error histories. Defaults to "hostname:pid:random".
	Name string

	// Logger receives the consumer's warnings, an info record for each
	// rescue of events whose lease expired, and debug records. Defaults
	// to the Queue's logger.
	Logger *slog.Logger
}

func (c ConsumerConfig) withDefaults(q *Queue) ConsumerConfig {
	if c.Workers == 0 {
		c.Workers = DefaultWorkers
	}
	if c.TxBatch == 0 {
		c.TxBatch = DefaultTxBatch
	}
	if c.MaxTxDuration == 0 {
		c.MaxTxDuration = DefaultMaxTxDuration
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = q.cfg.LeaseDuration / 3
	}
	if c.RescueInterval == 0 {
		c.RescueInterval = DefaultRescueInterval
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.Name == "" {
		c.Name = q.worker
	}
	if c.Logger == nil {
		c.Logger = q.cfg.Logger
	}
	return c
}

func (c ConsumerConfig) validate(q *Queue) error {
	switch {
	case c.Handler == nil:
		return fmt.Errorf("%w: ConsumerConfig.Handler is nil", ErrInvalidConfig)
	case c.Workers < 1:
		return fmt.Errorf("%w: Workers %d is under 1", ErrInvalidConfig, c.Workers)
	case c.TxBatch < 1 || c.TxBatch > MaxTxBatch:
		return fmt.Errorf("%w: TxBatch %d is outside 1..%d", ErrInvalidConfig, c.TxBatch, MaxTxBatch)
	case c.MaxTxDuration < 0 || c.PollInterval < time.Millisecond || c.RescueInterval < time.Millisecond || c.ShutdownTimeout < 0:
		return fmt.Errorf("%w: MaxTxDuration, PollInterval, RescueInterval and ShutdownTimeout must be positive", ErrInvalidConfig)
	case c.HeartbeatInterval <= 0 || c.HeartbeatInterval >= q.cfg.LeaseDuration:
		return fmt.Errorf("%w: HeartbeatInterval %s must be positive and shorter than LeaseDuration %s",
			ErrInvalidConfig, c.HeartbeatInterval, q.cfg.LeaseDuration)
	}
	if (c.Prepare == nil) != (c.Unprepare == nil) {
		return fmt.Errorf("%w: set both Prepare and Unprepare, or neither", ErrInvalidConfig)
	}
	if (c.BatchKey == nil) != (c.BatchHandler == nil) {
		return fmt.Errorf("%w: set both BatchKey and BatchHandler, or neither", ErrInvalidConfig)
	}
	for _, k := range c.Only {
		if k.Source == "" || k.Type == "" {
			return fmt.Errorf("%w: Only has a kind with an empty source or type (use AnyType for every type)", ErrInvalidConfig)
		}
	}
	return nil
}

// ConnsNeeded is how many pool connections a consumer with this many
// workers needs at once: one per worker, and two for the short statements
// of the fetcher, the heartbeats and the rescuer, which run apart and may
// wait a moment for each other's connection (each holds one for a round
// trip or a short transaction, while a worker may hold its own for as
// long as its handlers run). LISTEN uses a connection of its own outside
// the pool. A process that also calls Enqueue needs Config.Committers
// more, plus one for the notifier.
func ConnsNeeded(workers int) int { return workers + 2 }

// Consumer runs a Handler over the queue's events: it fetches due events in
// batches for idle workers, runs each batch in one transaction with a
// savepoint per event, heartbeats the leases it holds, rescues events whose
// worker died, and wakes on LISTEN/NOTIFY with polling as the fallback.
type Consumer struct {
	q   *Queue
	cfg ConsumerConfig
	log *slog.Logger

	running atomic.Bool
	wake    chan struct{} // capacity 1
	chunks  chan []*Event // fetched events for workers; made by each Run
	freed   chan struct{} // a worker finished its chunk; made by each Run

	// perEvent is a moving average of how long a transaction takes per
	// event it runs, in nanoseconds; zero until one has committed.
	perEvent atomic.Int64

	// byKind is whether fetches walk each kind on their own
	// (FetchParams.ByKind), as last decided at probedAt (see
	// chooseFetch). Only the fetch loop sets them.
	byKind   atomic.Bool
	probedAt time.Time

	mu        sync.Mutex
	active    map[int64]*Event // leases held, for heartbeats
	wakeup    *time.Timer      // wakes the fetcher when a retry falls due; under mu
	wakeTimes []time.Time      // when to wake it, earliest first; wakeup fires at the first; under mu
}

// NewConsumer returns a Consumer of q. It returns an error wrapping
// ErrPoolTooSmall when the pool cannot serve every worker at once (see
// ConnsNeeded).
func NewConsumer(q *Queue, cfg ConsumerConfig) (*Consumer, error) {
	c := cfg.withDefaults(q)
	if err := c.validate(q); err != nil {
		return nil, err
	}
	if maxConns := int(q.pool.Config().MaxConns); maxConns < ConnsNeeded(c.Workers) {
		return nil, fmt.Errorf("%w: MaxConns is %d, a consumer with %d workers needs at least %d "+
			"(one per worker, one fetcher, one for heartbeats and rescues; add Committers+1 if this process also enqueues)",
			ErrPoolTooSmall, maxConns, c.Workers, ConnsNeeded(c.Workers))
	}
	return &Consumer{
		q:      q,
		cfg:    c,
		log:    c.Logger,
		wake:   make(chan struct{}, 1),
		active: map[int64]*Event{},
	}, nil
}

// Run consumes until ctx ends, then shuts down gracefully: it stops
// fetching, releases at once the fetched events that have not started
// (attempts given back), lets running handlers finish within
// ShutdownTimeout, and returns.
// It returns an error if called while already running, and one wrapping
// ErrPoolClosed, after the same shutdown, if the pool is closed under it.
func (c *Consumer) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("queue: consumer is already running")
	}
	defer c.running.Store(false)
	c.chunks = make(chan []*Event, prefetchFactor*c.cfg.Workers)
	c.freed = make(chan struct{}, prefetchFactor*c.cfg.Workers)

	// Handlers' contexts outlive ctx: cancelling a running pgx query closes
	// its connection, so a shutdown signal must not reach them directly.
	handlerCtx, hardStop := context.WithCancel(context.WithoutCancel(ctx))
	defer hardStop()
	bgCtx, stopBackground := context.WithCancel(context.WithoutCancel(ctx))
	var background sync.WaitGroup
	background.Go(func() { c.every(bgCtx, c.cfg.HeartbeatInterval, c.heartbeat) })
	background.Go(func() { c.every(bgCtx, c.cfg.RescueInterval, c.rescue) })
	if !c.cfg.PollOnly {
		connConfig := c.q.pool.Config().ConnConfig
		background.Go(func() {
			pgnotify.Listen(bgCtx, connConfig, pgnotify.Channel(c.q.cfg.Schema, "queue"), c.log, func() { pgnotify.Poke(c.wake) })
		})
	}
	unsubscribe := c.q.notify.Subscribe(c.wake)

	var workers sync.WaitGroup
	for range c.cfg.Workers {
		workers.Go(func() {
			for chunk := range c.chunks {
				c.process(handlerCtx, ctx, chunk)
				c.freed <- struct{}{}
			}
		})
	}
	err := c.fetchLoop(ctx)
	c.releaseWaiting()
	close(c.chunks)

	finished := make(chan struct{})
	go func() {
		workers.Wait()
		close(finished)
	}()
	select {
	case <-finished:
	case <-time.After(c.cfg.ShutdownTimeout):
		c.log.Warn("queue: shutdown timeout passed; cancelling running handlers", "timeout", c.cfg.ShutdownTimeout)
		hardStop()
		<-finished
	}
	unsubscribe()
	stopBackground()
	background.Wait()
	return err
}

// releaseWaiting gives back, at once, the chunks fetched ahead that no
// worker has taken: their workers may be busy with a handler for up to
// ShutdownTimeout, and a process killed meanwhile would leave them leased,
// for the rescuer to count an attempt they never had.
func (c *Consumer) releaseWaiting() {
	var waiting []*Event
	for {
		select {
		case chunk := <-c.chunks:
			waiting = append(waiting, chunk...)
		default:
			if len(waiting) > 0 {
				c.release(waiting)
			}
			return
		}
	}
}

// prefetchFactor is how many chunks per worker may be fetched ahead: one
// running and one waiting, so a worker that finishes never waits for a
// fetch round trip. Waiting events are leased and heart-beaten like
// running ones.
const prefetchFactor = 2

// fetchLoop fetches chunks for free worker slots until ctx ends, or until
// a fetch finds the pool closed, which it returns: no retry can succeed.
func (c *Consumer) fetchLoop(ctx context.Context) error {
	free := prefetchFactor * c.cfg.Workers
	poll := time.NewTimer(c.cfg.PollInterval)
	defer poll.Stop()
	for {
		for drained := false; !drained; {
			select {
			case <-c.freed:
				free++
			default:
				drained = true
			}
		}
		if free == 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-c.freed:
				free++
			}
			continue
		}
		if ctx.Err() != nil {
			return nil
		}
		size := c.chunkSize()
		limit := min(free*size, MaxTxBatch)
		evs, err := c.fetch(ctx, limit)
		if errors.Is(err, puddle.ErrClosedPool) {
			c.log.Error("queue: the pool was closed; the consumer stops")
			return fmt.Errorf("%w: %w", ErrPoolClosed, err)
		}
		if err != nil {
			c.log.Warn("queue: fetch failed; retrying after the poll interval", "error", err)
		}
		if len(evs) == 1 && evs[0].Rescued {
			if !c.isolate(ctx, evs[0], &free) {
				return nil
			}
			continue // there may be more: a rescued event comes alone
		}
		for _, chunk := range split(evs, free, size) {
			c.chunks <- chunk
			free--
		}
		c.chooseFetch(ctx)
		if err == nil && len(evs) == limit {
			continue // there may be more
		}
		poll.Reset(c.cfg.PollInterval)
		select {
		case <-ctx.Done():
			return nil
		case <-c.wake:
		case <-poll.C:
		}
	}
}

// isolationWait bounds each of isolate's two waits. A slow or hung
// handler elsewhere in the process, or a rescued event that runs long,
// then holds the process's fetching back by at most this much; past it
// the rescued event merely runs beside the others.
const isolationWait = time.Second

// isolate runs a rescued event with nothing else in flight in this
// process: it may be what killed the last worker that held it, and if it
// kills this one too, no other event should lose an attempt with it. It
// waits for the chunks already handed out to finish, hands the event to a
// worker, and waits for it to finish before fetching resumes. It returns
// false if ctx ended first (releasing the event if it had not started).
func (c *Consumer) isolate(ctx context.Context, ev *Event, free *int) bool {
	if !c.awaitIdle(ctx, free) {
		c.release([]*Event{ev})
		return false
	}
	c.chunks <- []*Event{ev}
	*free--
	return c.awaitIdle(ctx, free)
}

// awaitIdle counts finished chunks into free until every slot is free or
// isolationWait has passed. It returns false if ctx ended first.
func (c *Consumer) awaitIdle(ctx context.Context, free *int) bool {
	timeout := time.NewTimer(isolationWait)
	defer timeout.Stop()
	for *free < prefetchFactor*c.cfg.Workers {
		select {
		case <-ctx.Done():
			return false
		case <-c.freed:
			*free++
		case <-timeout.C:
			return true
		}
	}
	return true
}

// fetch claims events and starts heart-beating them. The statement runs to
// completion even if ctx ends meanwhile: cancelling it could lose the
// claimed rows' lease tokens with the connection, leaving them leased to
// nobody until the rescuer counts an attempt they never had.
func (c *Consumer) fetch(ctx context.Context, limit int) ([]*Event, error) {
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	started := time.Now()
	evs, err := c.q.fetch(fctx, FetchParams{Limit: limit, Only: c.cfg.Only, Exclude: c.excluded(), Worker: c.cfg.Name, ByKind: c.byKind.Load()}, false)
	for _, ev := range evs {
		ev.fetchStarted = started
	}
	c.track(evs)
	return evs, err
}

// excluded returns the kinds ConsumerConfig.Exclude leaves out now.
func (c *Consumer) excluded() []Kind {
	if c.cfg.Exclude == nil {
		return nil
	}
	return c.cfg.Exclude()
}

// How a Consumer chooses between walking every due event and walking each
// of its kinds (FetchParams.ByKind): every skipProbeInterval it counts,
// of the first skipProbeDepth due events, those its fetches would skip,
// and fetches by kind while they are more than half.
const (
	skipProbeInterval = 5 * time.Second
	skipProbeDepth    = 1000
)

// chooseFetch sets c.byKind when a probe is due. A walk is the cheaper
// fetch, unless many due events ahead are of kinds this consumer skips (a
// backlog behind an open breaker, types no handler takes, another
// consumer's kinds, a paused source): it reads past every one of them,
// while a fetch by kind never reads them. The fetch loop calls it after
// handing out what it fetched, so that the probe's round trip delays no
// event. A probe that fails leaves the choice as it was.
func (c *Consumer) chooseFetch(ctx context.Context) {
	if time.Since(c.probedAt) < skipProbeInterval {
		return
	}
	c.probedAt = time.Now()
	pctx, cancel := context.WithTimeout(ctx, skipProbeInterval)
	defer cancel()
	skipped, err := c.q.skipped(pctx, skipProbeDepth, c.cfg.Only, c.excluded())
	if err != nil {
		c.log.Debug("queue: counting skipped events failed; fetching as before", "error", err)
		return
	}
	if byKind := skipped > skipProbeDepth/2; c.byKind.Swap(byKind) != byKind {
		c.log.Debug("queue: fetch strategy changed", "by_kind", byKind, "skipped_ahead", skipped)
	}
}

// chunkSize is how many events to hand a worker at once: as many as its
// transactions have lately run in MaxTxDuration, between 1 and TxBatch.
// Until a transaction has committed it is 1, so a consumer that starts on
// slow handlers does not lease a backlog it cannot soon run; fast ones
// reach TxBatch after their first transactions.
func (c *Consumer) chunkSize() int {
	perEvent := c.perEvent.Load()
	if perEvent == 0 {
		return 1
	}
	return int(max(1, min(int64(c.cfg.TxBatch), int64(c.cfg.MaxTxDuration)/perEvent)))
}

// observe folds the time a committed transaction took for n events into
// perEvent, an exponential moving average weighting the newest by 1/4.
func (c *Consumer) observe(elapsed time.Duration, n int) {
	sample := max(1, int64(elapsed)/int64(n))
	for {
		old := c.perEvent.Load()
		next := sample
		if old != 0 {
			next = old + (sample-old)/4
		}
		if c.perEvent.CompareAndSwap(old, next) {
			return
		}
	}
}

// split deals evs into at most slots chunks of at most size events: full
// chunks when there are many, one event per chunk when there are few, so
// a handful of events still run in parallel.
func split(evs []*Event, slots, size int) [][]*Event {
	n := min(slots, len(evs))
	n = max(n, (len(evs)+size-1)/size)
	chunks := make([][]*Event, 0, n)
	for i := range n {
		lo, hi := i*len(evs)/n, (i+1)*len(evs)/n
		chunks = append(chunks, evs[lo:hi])
	}
	return chunks
}

// maxWakeTimes bounds the wake-up times a Consumer keeps; the latest are
// dropped beyond it, and the poll finds their events. wakeGranularity is
// how far apart they are at least.
const (
	maxWakeTimes    = 64
	wakeGranularity = 5 * time.Millisecond
)

// wakeAt wakes the fetcher at t, when this process retried or deferred an
// event due then and t comes before the next poll: a short backoff then
// costs its own length, not a poll interval. One timer serves, set to the
// earliest time asked for; the later ones are kept for after it, since a
// wake-up that finds nothing due must not cost a later one (a deferral to
// the end of an open breaker, while a short retry's wake-up was pending).
func (c *Consumer) wakeAt(t time.Time) {
	if time.Until(t) >= c.cfg.PollInterval {
		return
	}
	// Rounded up, so that times a few milliseconds apart (jittered
	// backoffs) share one wake-up, which never comes early.
	t = t.Add(wakeGranularity - 1).Truncate(wakeGranularity)
	c.mu.Lock()
	defer c.mu.Unlock()
	i, found := slices.BinarySearchFunc(c.wakeTimes, t, time.Time.Compare)
	if found || i == maxWakeTimes {
		return
	}
	if len(c.wakeTimes) == maxWakeTimes {
		c.wakeTimes = c.wakeTimes[:maxWakeTimes-1]
	}
	c.wakeTimes = slices.Insert(c.wakeTimes, i, t)
	if i == 0 {
		c.armWakeup()
	}
}

// armWakeup sets the timer to the earliest wake-up time. c.mu is held.
func (c *Consumer) armWakeup() {
	d := max(time.Until(c.wakeTimes[0]), 0)
	if c.wakeup == nil {
		c.wakeup = time.AfterFunc(d, c.fire)
	} else {
		c.wakeup.Reset(d)
	}
}

// fire is the wake-up timer's function: it drops the times that have
// come, sets the timer to the next, and wakes the fetcher.
func (c *Consumer) fire() {
	c.mu.Lock()
	now := time.Now()
	passed := 0
	for passed < len(c.wakeTimes) && !c.wakeTimes[passed].After(now) {
		passed++
	}
	c.wakeTimes = slices.Delete(c.wakeTimes, 0, passed)
	if len(c.wakeTimes) > 0 {
		c.armWakeup()
	}
	c.mu.Unlock()
	pgnotify.Poke(c.wake)
}

func (c *Consumer) track(evs []*Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ev := range evs {
		c.active[ev.QueueID] = ev
	}
}

// untrack stops heart-beating evs. Only the lease each one holds: an
// event whose lease this consumer lost (rescued while its run stalled)
// may have been fetched again, under a new lease that a live run holds,
// and the stale run's end must not stop that lease's heartbeats.
func (c *Consumer) untrack(evs []*Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ev := range evs {
		if c.active[ev.QueueID] == ev {
			delete(c.active, ev.QueueID)
		}
	}
}

// every runs fn every interval, the first time one interval after it is
// called, until ctx ends.
func (c *Consumer) every(ctx context.Context, interval time.Duration, fn func(context.Context)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn(ctx)
		}
	}
}

func (c *Consumer) heartbeat(ctx context.Context) {
	c.mu.Lock()
	evs := make([]*Event, 0, len(c.active))
	for _, ev := range c.active {
		evs = append(evs, ev)
	}
	c.mu.Unlock()
	if _, err := c.q.extend(ctx, evs); err != nil && ctx.Err() == nil {
		c.log.Warn("queue: heartbeat failed", "events", len(evs), "error", err)
	}
}

func (c *Consumer) rescue(ctx context.Context) {
	const limit = 500
	for {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		n, err := c.q.Rescue(rctx, limit)
		cancel()
		if n > 0 {
			// Also when err is set: Rescue falls back to one transaction
			// per event, and returns those it committed before failing.
			c.log.Info("queue: rescued events whose lease expired", "events", n)
			c.committed()
		}
		if err != nil {
			if ctx.Err() == nil {
				c.log.Warn("queue: rescue failed", "error", err)
			}
			return
		}
		if n < limit {
			return
		}
	}
}

// process runs one chunk, in as many transactions as MaxTxDuration needs.
// Once runCtx ends, events not yet started are released.
func (c *Consumer) process(handlerCtx, runCtx context.Context, chunk []*Event) {
	for pending := c.decodeChunk(c.loadPayloads(chunk)); len(pending) > 0; {
		if runCtx.Err() != nil {
			c.handBack(pending)
			return
		}
		pending = c.runTx(handlerCtx, runCtx, pending)
	}
}

// loadPayloads reads the bodies and headers of chunk's events in one round
// trip: the fetcher leaves them out, so that its statement, the one every
// worker waits on, does less. If that fails the chunk is released unrun
// (attempts given back). A chunk that waited long enough for a lease to
// lapse (half the lease, measured from before the fetch was sent) is read
// with heldPayloadsSQL; an event it does not find under its lease lost
// the lease while it waited, and is dropped.
func (c *Consumer) loadPayloads(chunk []*Event) []*Event {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	missing := make(map[int64]*Event, len(chunk)) // until its payload is read
	waited := false                               // long enough that a lease may have lapsed
	for _, ev := range chunk {
		missing[ev.QueueID] = ev
		waited = waited || time.Since(ev.fetchStarted) >= c.q.cfg.LeaseDuration/2
	}
	ids, tokens := leaseArrays(chunk)
	b := &pgx.Batch{}
	b.Queue(indexPlansSQL)
	if waited {
		b.Queue(c.q.sql.heldPayloads, ids, tokens)
	} else {
		b.Queue(c.q.sql.payloads, ids)
	}
	br := c.q.pool.SendBatch(ctx, b)
	_, err := br.Exec()
	if err == nil {
		var id int64
		var body, headers []byte
		var rows pgx.Rows
		if rows, err = br.Query(); err == nil {
			_, err = pgx.ForEachRow(rows, []any{&id, &body, &headers}, func() error {
				if ev := missing[id]; ev != nil {
					ev.Body, ev.headersJSON = body, headers
					delete(missing, id)
				}
				return nil
			})
		}
	}
	if closeErr := br.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		c.log.Warn("queue: cannot read the payloads of fetched events; releasing them", "events", len(chunk), "error", err)
		c.release(chunk)
		return nil
	}
	if len(missing) == 0 {
		return chunk
	}
	loaded, lost := chunk[:0], make([]*Event, 0, len(missing))
	for _, ev := range chunk {
		if missing[ev.QueueID] == nil {
			loaded = append(loaded, ev)
		} else {
			lost = append(lost, ev)
		}
	}
	c.log.Warn("queue: fetched events lost their leases before they ran; dropping them", "events", len(lost))
	c.untrack(lost)
	return loaded
}

// decodeChunk decodes the JSON columns of chunk's events (the error history
// and the headers), which the fetcher leaves to the workers so that its
// own path, the one every worker waits on, stays short. It returns the
// events that decoded; one whose stored JSON does not decode fails its
// attempt without running, and comes back after its backoff like any
// failure, or is exhausted.
func (c *Consumer) decodeChunk(chunk []*Event) []*Event {
	decoded := chunk[:0]
	var bad outcomes
	for _, ev := range chunk {
		if err := ev.decodeColumns(); err != nil {
			c.log.Warn("queue: a fetched event's stored JSON does not decode; it counts a failed attempt", "queue_id", ev.QueueID, "error", err)
			bad.failed = append(bad.failed, failureOf(ev, err))
			continue
		}
		decoded = append(decoded, ev)
	}
	if len(bad.failed) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c.recordFailures(ctx, &bad)
	}
	return decoded
}

// outcomes collects what happened to each event of one transaction.
type outcomes struct {
	done       []*Event
	failed     []failure
	deferred   []*Event
	deferrals  []DeferError  // how each deferred event goes back
	retryIn    time.Duration // the soonest retry scheduled, zero for none
	savepoints int           // events whose handlers opened their savepoint
}

// dueTimes returns when the transaction's retried events (the soonest of
// them) and each of its deferred events are due again.
func (o *outcomes) dueTimes(now time.Time) []time.Time {
	var at []time.Time
	if o.retryIn > 0 {
		at = append(at, now.Add(o.retryIn))
	}
	for _, d := range o.deferrals {
		if !d.Until.IsZero() {
			at = append(at, d.Until)
		}
	}
	return at
}

func (o *outcomes) ran() []*Event {
	evs := append([]*Event(nil), o.done...)
	for _, f := range o.failed {
		evs = append(evs, f.ev)
	}
	return append(evs, o.deferred...)
}

// runTx runs events in one transaction until MaxTxDuration passes, its
// handlers have opened MaxTxSavepoints savepoints, or the consumer stops,
// commits them with their completions, and returns the events it did not
// get to. If the transaction breaks or does not commit, every event that
// ran counts a failed attempt (see recover).
func (c *Consumer) runTx(handlerCtx, runCtx context.Context, evs []*Event) (rest []*Event) {
	start := time.Now()
	tx, err := c.begin(handlerCtx)
	if err != nil {
		c.log.Warn("queue: cannot start a transaction; releasing its events", "events", len(evs), "error", err)
		c.handBack(evs)
		return nil
	}
	if c.cfg.Prepare != nil {
		if err := c.cfg.Prepare(handlerCtx, tx, evs); err != nil {
			_ = tx.Rollback(context.WithoutCancel(handlerCtx))
			c.log.Warn("queue: cannot prepare a transaction; releasing its events", "events", len(evs), "error", err)
			c.handBack(evs)
			return nil
		}
	}
	var out outcomes
	var broken error
	units := c.units(evs)
	for i := 0; i < len(units); i++ {
		if i > 0 && (time.Since(start) >= c.cfg.MaxTxDuration || out.savepoints >= MaxTxSavepoints || runCtx.Err() != nil) {
			rest = slices.Concat(units[i:]...)
			break
		}
		split := false
		if len(units[i]) == 1 {
			broken = c.runOne(handlerCtx, tx, units[i][0], &out)
		} else {
			split, broken = c.runBatch(handlerCtx, tx, units[i], &out)
		}
		if broken != nil {
			rest = slices.Concat(units[i+1:]...)
			break
		}
		if split {
			units = slices.Insert(units, i+1, alone(units[i])...)
		}
	}
	fctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if broken == nil {
		broken = c.finish(fctx, tx, &out, rest)
	}
	if broken != nil {
		_ = tx.Rollback(fctx)
		c.recover(fctx, &out, broken)
	} else {
		ran := out.ran()
		if len(ran) > 0 { // none when a failed batch was all it ran
			c.observe(time.Since(start), len(ran))
		}
		c.untrack(ran)
		c.committed()
	}
	for _, at := range out.dueTimes(time.Now()) {
		c.wakeAt(at)
	}
	c.q.notifyIfKeyed(out.ran())
	return rest
}

// units orders a transaction's events into what runTx runs one at a time:
// first the groups that BatchKey forms (two or more events with one key,
// in calls of at most the key's limit), each for one BatchHandler call,
// then every other event alone.
func (c *Consumer) units(evs []*Event) [][]*Event {
	if c.cfg.BatchKey == nil {
		return alone(evs)
	}
	type group struct {
		evs   []*Event
		limit int
	}
	var groups []*group
	index := map[string]*group{}
	var single []*Event
	for _, ev := range evs {
		key, limit := "", 0
		if !ev.alone {
			key, limit = c.cfg.BatchKey(ev)
		}
		if key == "" {
			single = append(single, ev)
			continue
		}
		g, ok := index[key]
		if !ok {
			g = &group{limit: limit}
			index[key] = g
			groups = append(groups, g)
		}
		g.evs = append(g.evs, ev)
	}
	units := make([][]*Event, 0, len(evs))
	for _, g := range groups {
		for rest := g.evs; len(rest) > 0; {
			n := len(rest)
			if g.limit > 0 {
				n = min(n, g.limit)
			}
			if n > 1 {
				units = append(units, rest[:n:n])
			} else {
				single = append(single, rest[0])
			}
			rest = rest[n:]
		}
	}
	return append(units, alone(single)...)
}

// alone makes each event a unit of its own.
func alone(evs []*Event) [][]*Event {
	units := make([][]*Event, len(evs))
	for i := range evs {
		units[i] = evs[i : i+1]
	}
	return units
}

// begin opens a transaction that runs with synchronous_commit on, in one
// round trip.
func (c *Consumer) begin(ctx context.Context) (pgx.Tx, error) {
	b := &pgx.Batch{}
	b.BeginTx(readCommitted)
	b.Queue(syncCommitSQL)
	br := c.q.pool.SendBatch(ctx, b)
	var err error
	for range 2 { // BEGIN, settings
		if _, err = br.Exec(); err != nil {
			break
		}
	}
	if closeErr := br.Close(); err == nil {
		err = closeErr
	}
	tx := br.Tx()
	if err != nil {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return nil, err
	}
	return tx, nil
}

// runOne runs one event under its own savepoint and records its outcome.
// It returns an error only when the transaction itself is broken (the
// connection failed, or the savepoint could not be rolled back to); the
// caller then rolls everything back.
func (c *Consumer) runOne(ctx context.Context, tx pgx.Tx, ev *Event, out *outcomes) error {
	htx := &handlerTx{Tx: tx}
	err := protect(func() error { return c.cfg.Handler(ctx, htx, ev) })
	if htx.savepoint {
		out.savepoints++
	}
	if err == nil && htx.err == nil && (!htx.savepoint || !htx.failed()) {
		out.done = append(out.done, ev)
		return nil
	}
	switch {
	case err == nil && htx.err != nil:
		err = htx.err
	case err == nil:
		err = ErrTxAborted
	}
	var deferred *DeferError
	if errors.As(err, &deferred) {
		out.deferred = append(out.deferred, ev)
		out.deferrals = append(out.deferrals, *deferred)
	} else {
		out.failed = append(out.failed, failureOf(ev, err))
	}
	if !htx.savepoint {
		return nil // the handler wrote nothing
	}
	return rollbackSavepoint(ctx, tx)
}

// rollbackSavepoint undoes the writes of the handler that ran last; the
// transaction is usable again after it even if a statement in it failed.
// It runs on ctx without its cancellation: a handler that outlived the
// shutdown timeout has its context cancelled, and the rollback must still
// happen, or the events that completed before it in the transaction
// would be rolled back too.
func rollbackSavepoint(ctx context.Context, tx pgx.Tx) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if _, err := tx.Exec(ctx, rollbackSavepointSQL); err != nil {
		return fmt.Errorf("roll back savepoint: %w", err)
	}
	return nil
}

// runBatch runs a group of events in one BatchHandler call under one
// savepoint and records their outcome if the call decides it: done, or all
// deferred. Otherwise it rolls the group's writes back and reports split:
// the events are to run again one by one. Like runOne, it returns an error
// only when the transaction is broken.
func (c *Consumer) runBatch(ctx context.Context, tx pgx.Tx, evs []*Event, out *outcomes) (split bool, broken error) {
	htx := &handlerTx{Tx: tx}
	err := protect(func() error { return c.cfg.BatchHandler(ctx, htx, evs) })
	if htx.savepoint {
		out.savepoints++
	}
	if err == nil && htx.err == nil && (!htx.savepoint || !htx.failed()) {
		out.done = append(out.done, evs...)
		return false, nil
	}
	var deferred *DeferError
	if errors.As(err, &deferred) {
		for _, ev := range evs {
			out.deferred = append(out.deferred, ev)
			out.deferrals = append(out.deferrals, *deferred)
		}
	} else {
		split = true
		for _, ev := range evs {
			ev.alone = true
		}
		c.log.Debug("queue: a batch of events failed; they run again one by one", "events", len(evs), "error", cmp.Or(err, htx.err, ErrTxAborted))
	}
	if !htx.savepoint {
		return split, nil
	}
	if rbErr := rollbackSavepoint(ctx, tx); rbErr != nil {
		if split {
			// They ran, and may have had effects outside the database.
			for _, ev := range evs {
				out.failed = append(out.failed, failureOf(ev, fmt.Errorf("batch failed: %v", cmp.Or(err, htx.err, ErrTxAborted))))
			}
		}
		return false, rbErr
	}
	return split, nil
}

// protect runs fn, a handler's call, turning a panic into an error with
// its stack.
func protect(fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
		}
	}()
	return fn()
}

// finish completes, retries and defers the transaction's events in it, then
// commits: the handlers' writes and the queue changes land together. rest
// are the events the transaction did not reach, for Unprepare.
func (c *Consumer) finish(ctx context.Context, tx pgx.Tx, out *outcomes, rest []*Event) error {
	if c.cfg.Unprepare != nil {
		undone := append(out.ran()[len(out.done):], rest...)
		if len(undone) > 0 {
			if err := c.cfg.Unprepare(ctx, tx, undone); err != nil {
				return fmt.Errorf("unprepare: %w", err)
			}
		}
	}
	if len(out.done) > 0 {
		// The handlers are done, so the plan setting reaches only the
		// queue's own statements from here to the commit.
		if err := c.q.complete(ctx, tx, indexPlansSQL, out.done); err != nil {
			return err
		}
	}
	if len(out.failed) > 0 {
		soonest, err := c.q.fail(ctx, tx, out.failed)
		if err != nil {
			return err
		}
		out.retryIn = soonest
	}
	if len(out.deferred) > 0 {
		if err := c.q.deferEvents(ctx, tx, out.deferred, out.deferrals); err != nil {
			return err
		}
	}
	return tx.Commit(ctx)
}

// recover handles a transaction that did not commit: nothing of it
// happened, but every event in it ran and may have had effects outside the
// database, so each counts as a failed attempt; deferred ones are deferred.
func (c *Consumer) recover(ctx context.Context, out *outcomes, cause error) {
	c.log.Warn("queue: transaction did not commit; its events count a failed attempt", "events", len(out.ran()), "cause", cause)
	for _, ev := range out.done {
		out.failed = append(out.failed, failure{ev: ev, msg: "transaction did not commit: " + cause.Error()})
	}
	out.done = nil
	c.recordFailures(ctx, out)
}

// recordFailures records out's failed and deferred events, each in a
// transaction of its own so that one lost lease cannot block the rest, and
// stops heart-beating them. An event that cannot be recorded is left to
// its lease and the rescuer.
func (c *Consumer) recordFailures(ctx context.Context, out *outcomes) {
	var unrecorded int
	for _, f := range out.failed {
		err := pgx.BeginTxFunc(ctx, c.q.pool, readCommitted, func(tx pgx.Tx) error {
			_, err := c.q.fail(ctx, tx, []failure{f})
			return err
		})
		if err != nil && !errors.Is(err, ErrLeaseLost) {
			unrecorded++
		}
	}
	for i, ev := range out.deferred {
		err := c.q.deferEvents(ctx, c.q.pool, []*Event{ev}, out.deferrals[i:i+1])
		if err != nil && !errors.Is(err, ErrLeaseLost) {
			unrecorded++
		}
	}
	if unrecorded > 0 {
		c.log.Warn("queue: cannot record failed attempts; those events run again when their leases expire", "events", unrecorded)
	}
	if unrecorded < len(out.failed)+len(out.deferred) {
		c.committed()
	}
	c.untrack(out.ran())
}

// committed calls ConsumerConfig.Committed, if set.
func (c *Consumer) committed() {
	if c.cfg.Committed != nil {
		c.cfg.Committed()
	}
}

// handBack gives back events a worker will not run: unstarted ones are
// released, attempts given back; those a failed BatchHandler call ran
// (and that were to run again alone) count a failed attempt, since the
// call may have had effects outside the database.
func (c *Consumer) handBack(evs []*Event) {
	var unrun []*Event
	var ran outcomes
	for _, ev := range evs {
		if ev.alone {
			ran.failed = append(ran.failed, failureOf(ev, errBatchUnfinished))
		} else {
			unrun = append(unrun, ev)
		}
	}
	if len(unrun) > 0 {
		c.release(unrun)
	}
	if len(ran.failed) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c.recordFailures(ctx, &ran)
	}
}

// release gives events back unstarted; if that fails they come back when
// their leases expire.
func (c *Consumer) release(evs []*Event) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.q.Release(ctx, evs...); err != nil {
		c.log.Warn("queue: cannot release events; they run again when their leases expire", "events", len(evs), "error", err)
	}
	c.untrack(evs)
}
