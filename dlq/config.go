package dlq

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5"

	"github.com/wharfhq/wharf/internal/sqlschema"
	"github.com/wharfhq/wharf/queue"
)

// Defaults for Config and ReplayOptions.
const (
	DefaultReplayBatch = 100
	DefaultListLimit   = 50
	MaxListLimit       = 1000
)

// Config configures a DLQ. The zero value is usable.
type Config struct {
	// Schema holds the dead_letters table (created by wharf.Migrate), and
	// the queue that events are replayed into. Defaults to "wharf".
	Schema string

	// HandlerName names the handler an exhausted event was meant for, as
	// recorded with the entry and offered as a filter. Defaults to the
	// event's Handler, or "source/type" (e.g. "stripe/invoice.paid") when
	// it has none.
	HandlerName func(ev *queue.Event) string

	// OnReplay, when set, runs inside each replay's transaction with the
	// entries it sends back to the queue, so a record of the replay (an
	// audit log entry) commits with it or not at all. Defaults to nil.
	OnReplay func(ctx context.Context, tx pgx.Tx, replayed []Replayed) error

	// Logger receives warnings. Defaults to discarding them.
	Logger *slog.Logger
}

// Replayed names an entry a replay sent back to the queue.
type Replayed struct {
	ID      int64 // the entry's id
	Source  string
	EventID string
	Type    string
}

func (c Config) withDefaults() Config {
	c.Schema = sqlschema.Or(c.Schema)
	if c.HandlerName == nil {
		c.HandlerName = func(ev *queue.Event) string {
			if ev.Handler != "" {
				return ev.Handler
			}
			return ev.Source + "/" + ev.Type
		}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c Config) validate() error {
	if err := sqlschema.Validate(c.Schema); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	return nil
}
