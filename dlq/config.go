package dlq

import (
	"fmt"
	"log/slog"

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
	// recorded with the entry and offered as a filter. Defaults to
	// "source/type", e.g. "stripe/invoice.paid".
	HandlerName func(ev *queue.Event) string

	// Logger receives warnings. Defaults to discarding them.
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	c.Schema = sqlschema.Or(c.Schema)
	if c.HandlerName == nil {
		c.HandlerName = func(ev *queue.Event) string { return ev.Source + "/" + ev.Type }
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
