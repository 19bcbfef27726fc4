// Package pgnotify wakes waiting workers, in this process and in others,
// after something they wait for has been committed: the queue's consumers
// and the event log's projections. Local waiters get a channel poke at
// once; other processes get a NOTIFY, coalesced and sent from its own
// goroutine after the commit, never inside the committing transaction (a
// NOTIFY there takes a cluster-wide lock until commit and serialises every
// concurrent commit). Waiters poll as well, so a lost wake-up only delays.
package pgnotify

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// minInterval spaces NOTIFYs: signals that arrive meanwhile collapse into
// one, so a busy write path sends at most a few hundred a second. Busy
// waiters do not need them; idle ones wake on the first.
const minInterval = 2 * time.Millisecond

const notifySQL = `SELECT pg_notify($1, '')`

// Channel is the NOTIFY channel of one schema's name ("queue",
// "event_log"). Channel names are identifiers of at most 63 bytes, so the
// schema part is cut to fit (two schemas sharing their leading bytes would
// only share wake-ups).
func Channel(schema, name string) string {
	return fmt.Sprintf("%.*s.%s", 62-len(name), schema, name)
}

// Notifier wakes the waiters of one channel. Create it with New.
type Notifier struct {
	pool    *pgxpool.Pool
	channel string
	log     *slog.Logger

	pending   chan struct{} // capacity 1: one NOTIFY owed, however many signals
	startOnce sync.Once
	stopOnce  sync.Once
	stop      chan struct{}
	done      chan struct{}

	mu    sync.Mutex
	local map[chan struct{}]struct{}
}

// New returns a Notifier sending NOTIFYs on channel through pool. It starts
// its goroutine at the first Signal.
func New(pool *pgxpool.Pool, channel string, log *slog.Logger) *Notifier {
	return &Notifier{
		pool:    pool,
		channel: channel,
		log:     log,
		pending: make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
		local:   map[chan struct{}]struct{}{},
	}
}

// Subscribe registers a local wake channel (capacity 1); the returned func
// removes it.
func (n *Notifier) Subscribe(wake chan struct{}) func() {
	n.mu.Lock()
	n.local[wake] = struct{}{}
	n.mu.Unlock()
	return func() {
		n.mu.Lock()
		delete(n.local, wake)
		n.mu.Unlock()
	}
}

// WakeLocal wakes the waiters of this process.
func (n *Notifier) WakeLocal() {
	n.mu.Lock()
	for wake := range n.local {
		Poke(wake)
	}
	n.mu.Unlock()
}

// Signal wakes local waiters now and owes one NOTIFY to other processes.
// Call it after the commit.
func (n *Notifier) Signal() {
	n.WakeLocal()
	select {
	case <-n.stop:
		return
	default:
	}
	n.startOnce.Do(func() { go n.run() })
	Poke(n.pending)
}

// Poke sends on a capacity-1 channel without blocking; a full channel
// already holds the wake-up.
func Poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (n *Notifier) run() {
	defer close(n.done)
	for {
		select {
		case <-n.stop:
			select {
			case <-n.pending: // owed: send it before stopping
				n.send()
			default:
			}
			return
		case <-n.pending:
		}
		n.send()
		select {
		case <-n.stop:
		case <-time.After(minInterval):
		}
	}
}

func (n *Notifier) send() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := n.pool.Exec(ctx, notifySQL, n.channel); err != nil {
		n.log.Warn("wharf: NOTIFY failed; waiters in other processes fall back to polling", "channel", n.channel, "error", err)
	}
}

// Close sends a NOTIFY still owed and stops the Notifier's goroutine.
// Signals after Close wake only local waiters.
func (n *Notifier) Close() {
	n.stopOnce.Do(func() {
		close(n.stop)
		started := true
		n.startOnce.Do(func() { started = false })
		if started {
			<-n.done
		}
	})
}

// Listen holds a dedicated connection (not one of the pool's) that LISTENs
// on channel and calls wake on every notification, and once on each
// (re)connection for what was committed while no one listened. It
// reconnects with backoff until ctx ends; meanwhile waiters poll.
func Listen(ctx context.Context, connConfig *pgx.ConnConfig, channel string, log *slog.Logger, wake func()) {
	delay := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := listenOnce(ctx, connConfig, channel, wake, func() { delay = 100 * time.Millisecond })
		if ctx.Err() != nil {
			return
		}
		log.Warn("wharf: LISTEN connection lost; polling until it is back", "channel", channel, "error", err, "retry_in", delay)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(delay*2, 10*time.Second)
	}
}

func listenOnce(ctx context.Context, connConfig *pgx.ConnConfig, channel string, wake, connected func()) error {
	conn, err := pgx.ConnectConfig(ctx, connConfig.Copy())
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		return err
	}
	connected()
	wake()
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return err
		}
		wake()
	}
}
