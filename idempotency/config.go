package idempotency

import (
	"fmt"
	"time"

	"github.com/wharfhq/wharf/internal/sqlschema"
)

// Defaults for Config.
const (
	// DefaultRetention keeps a processed key for 7 days: more than twice
	// the longest provider retry window we know of (Stripe retries for up
	// to 3 days), so a late redelivery still finds its key.
	DefaultRetention = 7 * 24 * time.Hour

	// DefaultLockDuration is how long a Begin holds a key in the external
	// mode before another caller may take it over: longer than any sane
	// downstream call, timeout included.
	DefaultLockDuration = 5 * time.Minute

	// DefaultPruneBatch is how many keys one prune statement deletes.
	DefaultPruneBatch = 1000
)

// Limits on Config.
const (
	// MinRetention is the shortest Retention accepted. It is there to catch
	// unit mistakes (a bare 7 is 7ns); a retention under the providers'
	// retry windows (3 days for Stripe) lets a late redelivery run again.
	MinRetention = time.Hour

	// MinLockDuration is the shortest LockDuration accepted.
	MinLockDuration = time.Second

	// MaxPruneBatch is the largest PruneBatch accepted: a bigger batch
	// holds its row locks, and its share of WAL, for too long.
	MaxPruneBatch = 100_000
)

// Config configures a Store. The zero value is usable: every field has a
// documented default. Negative values, and values outside the documented
// limits, are refused with ErrInvalidConfig.
type Config struct {
	// Schema holds the processed_events table (created by wharf.Migrate).
	// Defaults to "wharf".
	Schema string

	// Retention is how long a processed key is kept: Prune deletes keys
	// processed longer ago than this, and a redelivery arriving later is
	// processed again. It must outlive the longest retry window of every
	// provider whose events reach this store (Stripe: 3 days), plus the
	// longest time an event may wait in your queue or dead letter queue
	// before it is replayed. Defaults to 7 days; at least MinRetention
	// (1h), and longer than LockDuration.
	Retention time.Duration

	// LockDuration is how long Begin holds a key in the external mode.
	// Until it passes, a duplicate gets ErrInProgress; after it, the key
	// counts as abandoned (its holder crashed) and the next Begin takes it
	// over. Make it longer than your slowest side effect, timeouts
	// included, or call Extend. Defaults to 5 minutes; at least
	// MinLockDuration (1s).
	LockDuration time.Duration

	// PruneBatch is how many keys one statement of Prune deletes; each
	// batch is its own short transaction, so pruning never holds many locks
	// for long. Defaults to 1000; at most MaxPruneBatch.
	PruneBatch int
}

func (c *Config) withDefaults() Config {
	out := *c
	out.Schema = sqlschema.Or(out.Schema)
	if out.Retention == 0 {
		out.Retention = DefaultRetention
	}
	if out.LockDuration == 0 {
		out.LockDuration = DefaultLockDuration
	}
	if out.PruneBatch == 0 {
		out.PruneBatch = DefaultPruneBatch
	}
	return out
}

func (c *Config) validate() error {
	if err := sqlschema.Validate(c.Schema); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	switch {
	case c.Retention < MinRetention:
		return fmt.Errorf("%w: Retention %s is under %s", ErrInvalidConfig, c.Retention, MinRetention)
	case c.LockDuration < MinLockDuration:
		return fmt.Errorf("%w: LockDuration %s is under %s", ErrInvalidConfig, c.LockDuration, MinLockDuration)
	case c.LockDuration >= c.Retention:
		// A lock outliving the retention would be a key that is both
		// "still running" and "forgotten".
		return fmt.Errorf("%w: LockDuration %s is not shorter than Retention %s", ErrInvalidConfig, c.LockDuration, c.Retention)
	case c.PruneBatch < 1 || c.PruneBatch > MaxPruneBatch:
		return fmt.Errorf("%w: PruneBatch %d is outside 1..%d", ErrInvalidConfig, c.PruneBatch, MaxPruneBatch)
	}
	return nil
}
