package eventlog

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
// into one, so a busy append path sends at most a few hundred a second.
// Projections that are busy do not need them; idle ones wake on the first.
const minNotifyInterval = 2 * time.Millisecond

// channelName is the NOTIFY channel of a schema's event log. Channel names
// are identifiers of at most 63 bytes, so the schema part is cut at 53 (two
// schemas sharing 53 leading bytes would only share wake-ups).
func channelName(schema string) string {
	return fmt.Sprintf("%.53s.event_log", schema)
}

// notifier wakes projections after events are committed: local ones
// through a channel at once, others through NOTIFY sent from its own
// goroutine after the commit, never inside the appending transaction (a
// NOTIFY there takes a cluster-wide lock until commit and serialises every
// concurrent commit).
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

func newNotifier(pool *pgxpool.Pool, channel string, log *slog.Logger) *notifier {
	return &notifier{
		pool:    pool,
		channel: channel,
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

// wakeLocal wakes the projections of this process.
func (n *notifier) wakeLocal() {
	n.mu.Lock()
	for wake := range n.local {
		poke(wake)
	}
	n.mu.Unlock()
}

// signal wakes local projections now and owes one NOTIFY to the others.
func (n *notifier) signal() {
	n.wakeLocal()
	select {
	case <-n.stop:
		return
	default:
	}
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
		case <-time.After(minNotifyInterval):
		}
	}
}

func (n *notifier) send() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := n.pool.Exec(ctx, notifySQL, n.channel); err != nil {
		n.log.Warn("eventlog: notify failed; projections elsewhere fall back to polling", "error", err)
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

// listener holds one LISTEN connection per Log, shared by the projections
// running from it: opened (outside the pool) when the first starts, closed
// when the last stops.
type listener struct {
	connConfig *pgx.ConnConfig
	channel    string
	log        *slog.Logger
	wake       func()

	mu     sync.Mutex
	refs   int
	cancel context.CancelFunc
	done   chan struct{}
}

func newListener(connConfig *pgx.ConnConfig, channel string, log *slog.Logger, wake func()) *listener {
	return &listener{connConfig: connConfig, channel: channel, log: log, wake: wake}
}

// acquire starts listening unless already listening; release undoes one
// acquire and stops listening after the last.
func (l *listener) acquire() (release func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.refs++
	if l.refs == 1 {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		l.cancel, l.done = cancel, done
		go func() {
			defer close(done)
			listen(ctx, l.connConfig, l.channel, l.log, l.wake)
		}()
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.refs--
			if l.refs == 0 {
				l.cancel()
				<-l.done
			}
		})
	}
}

// listen holds a dedicated connection (not one of the pool's) that LISTENs
// on channel and calls wake on every notification, reconnecting with
// backoff until ctx ends. While it is disconnected projections still poll.
func listen(ctx context.Context, connConfig *pgx.ConnConfig, channel string, log *slog.Logger, wake func()) {
	delay := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := listenOnce(ctx, connConfig, channel, wake, func() { delay = 100 * time.Millisecond })
		if ctx.Err() != nil {
			return
		}
		log.Warn("eventlog: LISTEN connection lost; polling until it is back", "error", err, "retry_in", delay)
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
