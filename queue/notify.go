package queue

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// minNotifyInterval spaces NOTIFYs: signals that arrive meanwhile collapse
// into one, so a busy ingest path sends at most a few hundred a second.
// Consumers that are already busy do not need them; idle ones wake on the
// first.
const minNotifyInterval = 2 * time.Millisecond

// channelName is the NOTIFY channel of a schema's queue. Channel names are
// identifiers of at most 63 bytes, so the schema part is cut at 57 (two
// schemas sharing 57 leading bytes would only share wake-ups).
func channelName(schema string) string {
	return fmt.Sprintf("%.57s.queue", schema)
}

// notifier wakes consumers after events are committed: local ones through a
// channel at once, others through NOTIFY sent from its own goroutine after
// the commit, never inside the inserting transaction (a NOTIFY there takes a
// cluster-wide lock until commit and serialises every concurrent commit).
type notifier struct {
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

func newNotifier(pool *pgxpool.Pool, schema string, log *slog.Logger) *notifier {
	return &notifier{
		pool:    pool,
		channel: channelName(schema),
		log:     log,
		pending: make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
		local:   map[chan struct{}]struct{}{},
	}
}

// subscribe registers a local wake channel (capacity 1); the returned func
// removes it.
func (n *notifier) subscribe(wake chan struct{}) func() {
	n.mu.Lock()
	n.local[wake] = struct{}{}
	n.mu.Unlock()
	return func() {
		n.mu.Lock()
		delete(n.local, wake)
		n.mu.Unlock()
	}
}

func (n *notifier) signal() {
	n.mu.Lock()
	for wake := range n.local {
		poke(wake)
	}
	n.mu.Unlock()
	n.startOnce.Do(func() { go n.run() })
	poke(n.pending)
}

// poke sends on a capacity-1 channel without blocking; a full channel
// already holds the wake-up.
func poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (n *notifier) run() {
	defer close(n.done)
	for {
		select {
		case <-n.stop:
			return
		case <-n.pending:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if _, err := n.pool.Exec(ctx, notifySQL, n.channel); err != nil {
			n.log.Warn("queue: notify failed; consumers fall back to polling", "error", err)
		}
		cancel()
		select {
		case <-n.stop:
			return
		case <-time.After(minNotifyInterval):
		}
	}
}

func (n *notifier) close() {
	n.stopOnce.Do(func() {
		close(n.stop)
		started := true
		n.startOnce.Do(func() { started = false })
		if started {
			<-n.done
		}
	})
}

// listen holds a dedicated connection (not one of the pool's) that LISTENs
// on channel and calls wake on every notification, reconnecting with
// backoff until ctx ends. While it is disconnected consumers still poll.
func listen(ctx context.Context, connConfig *pgx.ConnConfig, channel string, log *slog.Logger, wake func()) {
	delay := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := listenOnce(ctx, connConfig, channel, wake, func() { delay = 100 * time.Millisecond })
		if ctx.Err() != nil {
			return
		}
		log.Warn("queue: LISTEN connection lost; polling until it is back", "error", err, "retry_in", delay)
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
	// Events may have been committed while no one listened.
	wake()
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return err
		}
		wake()
	}
}
