package eventlog

import (
	"context"
	"log/slog"
	"sync"

	"github.com/jackc/pgx/v5"

	"github.com/wharfhq/wharf/internal/pgnotify"
)

// channelName is the NOTIFY channel of a schema's event log.
func channelName(schema string) string { return pgnotify.Channel(schema, "event_log") }

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
			pgnotify.Listen(ctx, l.connConfig, l.channel, l.log, l.wake)
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
