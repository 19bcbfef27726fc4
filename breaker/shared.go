package breaker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/sony/gobreaker/v2"
)

// sharedState shares a Registry's breakers with other processes through
// the breakers and breaker_counts tables. Calls never wait for it: it runs
// in its own goroutine, once per RefreshInterval and at once after a local
// transition, and changes the local breakers only by adopting transitions
// (see Breaker.adopt) and by handing them the others' counts.
type sharedState struct {
	r     *Registry
	cfg   SharedConfig
	sql   statements
	wakeC chan struct{}

	cancel    context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once

	mu     sync.Mutex // serialises sync and close
	closed bool
	syncs  int
}

// publication is a local transition waiting to be published.
type publication struct {
	inst *instance // the instance that made it; stale once replaced
	to   State     // StateOpen or StateClosed
}

// otherCounts are the other processes' counts of one breaker.
type otherCounts struct {
	generation         int64
	requests, failures uint64
}

// countsRow is one process's counts of one breaker, as stored.
type countsRow struct {
	generation         int64
	requests, failures int64
}

// stateRow is one row of the breakers table, as read.
type stateRow struct {
	name        string
	generation  int64
	state       string
	remainingUS int64
}

// countsAgg is one row of readCountsSQL.
type countsAgg struct {
	name string
	otherCounts
}

const (
	// syncTimeout bounds one refresh, so a stalled database delays the
	// next one instead of stopping them.
	syncTimeout = 10 * time.Second
	// pruneEvery is how many refreshes pass between prunes of dead
	// processes' counts.
	pruneEvery = 300
)

func newSharedState(r *Registry, cfg SharedConfig) *sharedState {
	return &sharedState{
		r:     r,
		cfg:   cfg,
		sql:   renderSQL(cfg.Schema),
		wakeC: make(chan struct{}, 1),
		done:  make(chan struct{}),
	}
}

func (s *sharedState) start() {
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go s.run(ctx)
}

// wake asks for a refresh now; wakes coalesce.
func (s *sharedState) wake() {
	select {
	case s.wakeC <- struct{}{}:
	default:
	}
}

func (s *sharedState) run(ctx context.Context) {
	defer close(s.done)
	ticker := time.NewTicker(s.cfg.RefreshInterval)
	defer ticker.Stop()
	failing := false // log when refreshes start and stop failing, not each one
	for {
		err := s.refresh(ctx)
		switch {
		case ctx.Err() != nil || errors.Is(err, ErrClosed):
		case err != nil && !failing:
			failing = true
			s.r.cfg.logger.Warn("breaker: refresh of shared state failed; breakers go on locally, retrying every refresh interval",
				"owner", s.cfg.Owner, "error", err)
		case err == nil && failing:
			failing = false
			s.r.cfg.logger.Info("breaker: refresh of shared state works again", "owner", s.cfg.Owner)
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		case <-s.wakeC:
		}
	}
}

// refresh is sync for the refresher goroutine. The adoptions sync reports
// call OnStateChange there, and a panic in it is logged instead of ending
// the process; on a call, such a panic reaches the caller.
func (s *sharedState) refresh(ctx context.Context) (err error) {
	defer func() {
		if r := recover(); r != nil {
			s.r.cfg.logger.Error("breaker: OnStateChange panicked on a change the shared-state refresher adopted",
				"owner", s.cfg.Owner, "panic", r, "stack", string(debug.Stack()))
		}
	}()
	return s.sync(ctx)
}

func (s *sharedState) close() {
	s.closeOnce.Do(func() {
		if s.cancel != nil {
			s.cancel()
			<-s.done
		}
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := s.cfg.Pool.Exec(ctx, s.sql.deleteOwnCounts, s.cfg.Owner); err != nil {
			s.r.cfg.logger.Warn("breaker: could not remove this process's shared counts; they expire within a window",
				"owner", s.cfg.Owner, "error", err)
		}
	})
}

// sync publishes pending transitions and changed counts, reads the shared
// state and the others' counts, all in one round trip, then adopts what
// changed.
func (s *sharedState) sync(ctx context.Context) error {
	err := s.syncLocked(ctx)
	// Adoptions are reported after the lock is let go, so OnStateChange
	// may call Sync.
	for _, b := range s.r.all() {
		b.flush()
	}
	return err
}

func (s *sharedState) syncLocked(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	ctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()

	now := time.Now()
	breakers := s.r.all()
	batch := &pgx.Batch{}

	// 1. Transitions. Only the latest per breaker is kept, so a breaker
	// that opened and closed again since the last refresh publishes the
	// close alone (which changes nothing unless the open got out).
	type published struct {
		b       *Breaker
		p       *publication
		gen     int64
		applied bool
	}
	var pubs []*published
	for _, b := range breakers {
		p := b.pub.Load()
		if p == nil {
			continue
		}
		if p.inst != b.cur.Load() {
			b.pub.CompareAndSwap(p, nil) // made by an instance since replaced
			continue
		}
		pr := &published{b: b, p: p}
		scan := func(row pgx.Row) error {
			err := row.Scan(&pr.gen)
			if errors.Is(err, pgx.ErrNoRows) {
				return nil
			}
			pr.applied = err == nil
			return err
		}
		switch p.to {
		case StateOpen:
			until := p.inst.until.Load()
			if until == nil || !until.After(now) {
				b.pub.CompareAndSwap(p, nil) // over before it could be published
				continue
			}
			batch.Queue(s.sql.publishOpen, b.name, until.Sub(now).Microseconds(), s.cfg.Owner, b.knownGen.Load()).QueryRow(scan)
		default:
			batch.Queue(s.sql.publishClose, b.name, b.knownGen.Load(), s.cfg.Owner).QueryRow(scan)
		}
		pubs = append(pubs, pr)
	}

	// 2. This process's counts, for the breakers that trip on a rate and
	// whose counts changed (or would expire before the next change).
	var (
		names                     []string
		gens, reqs, fails, window []int64
		rows                      []countsRow
		counted                   []*Breaker
	)
	for _, b := range breakers {
		if b.settings.Trip != TripOnFailureRate {
			continue
		}
		row := b.countsRow()
		if row == b.lastCounts && (row == (countsRow{generation: row.generation}) || now.Sub(b.lastCountsAt) < b.settings.Window/2) {
			continue
		}
		names = append(names, b.name)
		gens = append(gens, row.generation)
		reqs = append(reqs, row.requests)
		fails = append(fails, row.failures)
		window = append(window, b.settings.Window.Microseconds())
		rows = append(rows, row)
		counted = append(counted, b)
	}
	if len(names) > 0 {
		batch.Queue(s.sql.writeCounts, names, s.cfg.Owner, gens, reqs, fails, window)
	}

	// 3. What everyone published.
	var states []stateRow
	batch.Queue(s.sql.readState).Query(func(rs pgx.Rows) error {
		var err error
		states, err = pgx.CollectRows(rs, func(row pgx.CollectableRow) (stateRow, error) {
			var st stateRow
			err := row.Scan(&st.name, &st.generation, &st.state, &st.remainingUS)
			return st, err
		})
		return err
	})
	var others []countsAgg
	batch.Queue(s.sql.readCounts, s.cfg.Owner).Query(func(rs pgx.Rows) error {
		var err error
		others, err = pgx.CollectRows(rs, func(row pgx.CollectableRow) (countsAgg, error) {
			var c countsAgg
			err := row.Scan(&c.name, &c.generation, &c.requests, &c.failures)
			return c, err
		})
		return err
	})
	if s.syncs%pruneEvery == 0 {
		batch.Queue(s.sql.pruneCounts)
	}
	s.syncs++

	if err := s.cfg.Pool.SendBatch(ctx, batch).Close(); err != nil {
		return fmt.Errorf("breaker: sync shared state (owner %q): %w", s.cfg.Owner, err)
	}

	for _, pr := range pubs {
		if pr.applied {
			pr.b.knownGen.Store(pr.gen)
		}
		pr.b.pub.CompareAndSwap(pr.p, nil)
	}
	for i, b := range counted {
		b.lastCounts, b.lastCountsAt = rows[i], now
	}

	// 4. Adopt the transitions other processes published.
	for _, st := range states {
		b, err := s.r.Breaker(st.name)
		if err != nil {
			s.r.cfg.logger.Warn("breaker: ignoring a shared breaker row", "error", err)
			continue
		}
		if b.pub.Load() != nil || st.generation == b.knownGen.Load() {
			// Seen already, or a local transition is waiting to be
			// published: the read after it reconciles the two.
			continue
		}
		b.knownGen.Store(st.generation)
		switch {
		case st.state == "closed":
			b.adopt(StateClosed, 0)
		case st.remainingUS > 0:
			b.adopt(StateOpen, time.Duration(st.remainingUS)*time.Microsecond)
		default:
			// An open that ran out with nobody reporting a probe: whoever
			// tripped may be gone. This process's own breaker decides.
		}
	}

	// 5. The others' counts under the generation each breaker knows.
	byName := make(map[string][]otherCounts, len(others))
	for _, c := range others {
		if _, err := s.r.Breaker(c.name); err != nil { // so a first call here already counts them
			continue
		}
		byName[c.name] = append(byName[c.name], c.otherCounts)
	}
	for _, b := range s.r.all() {
		var found *otherCounts
		gen := b.knownGen.Load()
		for _, c := range byName[b.name] {
			if c.generation == gen {
				found = &c
				break
			}
		}
		b.others.Store(found)
	}
	return nil
}

// countsRow returns what this process stores of b's counts: those of the
// rolling window while closed, none otherwise.
func (b *Breaker) countsRow() countsRow {
	inst := b.cur.Load()
	row := countsRow{generation: b.knownGen.Load()}
	if inst.cb.State() == gobreaker.StateClosed {
		c := inst.cb.Counts()
		row.requests = int64(c.TotalSuccesses) + int64(c.TotalFailures)
		row.failures = int64(c.TotalFailures)
	}
	return row
}

// defaultOwner names this process: host, pid and a random suffix, so two
// Registries in one process do not collide either.
func defaultOwner() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	var buf [4]byte
	_, _ = rand.Read(buf[:])
	owner := host + ":" + strconv.Itoa(os.Getpid()) + ":" + hex.EncodeToString(buf[:])
	if len(owner) > MaxNameBytes {
		owner = owner[len(owner)-MaxNameBytes:]
	}
	return owner
}
