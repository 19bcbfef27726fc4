package console

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/wharfhq/wharf"
	"github.com/wharfhq/wharf/breaker"
	"github.com/wharfhq/wharf/dlq"
	"github.com/wharfhq/wharf/eventlog"
	"github.com/wharfhq/wharf/idempotency"
	"github.com/wharfhq/wharf/queue"
)

// Defaults and limits for Config.
const (
	// DefaultTokenTTL is how long a form's CSRF token stays valid: a page
	// left open overnight needs a reload before its buttons work again.
	DefaultTokenTTL = 12 * time.Hour
	// DefaultThroughputMinutes is how many minutes the overview's
	// throughput chart covers.
	DefaultThroughputMinutes = 15
	// MinCSRFKeyBytes is the shortest Config.CSRFKey accepted.
	MinCSRFKeyBytes = 32
)

// ErrInvalidConfig is wrapped by every *ConfigError: New returns no
// Console.
var ErrInvalidConfig = errors.New("console: invalid config")

// ConfigError says which Config field cannot work and why. errors.Is(err,
// ErrInvalidConfig) is true for it.
type ConfigError struct {
	Field  string
	Reason string
}

// Error names the field and the reason.
func (e *ConfigError) Error() string {
	return fmt.Sprintf("console: invalid config: %s: %s", e.Field, e.Reason)
}

// Unwrap makes errors.Is(err, ErrInvalidConfig) true.
func (e *ConfigError) Unwrap() error { return ErrInvalidConfig }

// Config configures a Console. Set Pipeline, or the pieces a service uses
// (DLQ, Queue, Breakers, AuditLog, Idempotency), not both: a service that
// uses only the dlq and queue packages gets the pages those serve, and the
// overview leaves out the rest. Every piece carries its own schema.
type Config struct {
	// Pipeline supplies every piece: its DLQ, Queue, Breakers, AuditLog and
	// Idempotency store, and its Replay, which records each replay in the
	// audit trail. Defaults to nil.
	Pipeline *wharf.Pipeline

	// DLQ serves the dead-letter pages and actions. Without it the
	// dead-letter pages answer 404. Defaults to nil.
	DLQ *dlq.DLQ
	// Queue gives the overview its depth figures, pauses and unhandled
	// types, is what pause and resume act on, and is where replays send
	// entries back to (required with DLQ when AllowActions is set, and then
	// in the DLQ's schema). Defaults to nil.
	Queue *queue.Queue
	// Breakers gives the overview the breakers' states. Defaults to nil.
	Breakers *breaker.Registry
	// AuditLog gives the entry page its delivery's audit trail and serves
	// the audit lookup page (a Pipeline's, when Config.Audit is on).
	// Defaults to nil.
	AuditLog *eventlog.Log
	// Idempotency gives the overview its throughput: the events handlers
	// processed per minute, counted from their idempotency claims.
	// Defaults to nil.
	Idempotency *idempotency.Store

	// AllowActions enables replay and discard of dead letters, and pause
	// and resume of sources and handlers. When false the console is
	// read-only: no button is rendered and every POST gets 403. Defaults
	// to false.
	AllowActions bool

	// CSRFKey signs the token every form carries, at least 32 bytes.
	// Defaults to 32 random bytes drawn by New: tokens then stop working
	// when the process restarts, and replicas behind one load balancer do
	// not accept each other's (set the same key on each).
	CSRFKey []byte
	// TokenTTL is how long a form's token stays valid. Defaults to 12h.
	TokenTTL time.Duration
	// TrustedOrigins are origins ("https://ops.example.com") other than
	// the console's own whose browsers may post to it, for a console
	// reached through another host name than the one it sees in Host.
	// Defaults to none.
	TrustedOrigins []string

	// MaskHeaders names further headers whose values the entry page
	// masks, besides the signature, credential and cookie headers it
	// always masks (see the package doc). Defaults to none.
	MaskHeaders []string

	// ThroughputMinutes is how many minutes the overview's throughput
	// covers, 1 to idempotency.MaxRateMinutes. Defaults to 15.
	ThroughputMinutes int

	// Logger receives the errors behind 500 answers and a record of every
	// action. Defaults to discarding them.
	Logger *slog.Logger
}

// withDefaults returns cfg with every zero field set to its default.
func (cfg Config) withDefaults() Config {
	if cfg.TokenTTL == 0 {
		cfg.TokenTTL = DefaultTokenTTL
	}
	if cfg.ThroughputMinutes == 0 {
		cfg.ThroughputMinutes = DefaultThroughputMinutes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return cfg
}

// validate reports the first field that cannot work.
func (cfg Config) validate() error {
	pieces := cfg.DLQ != nil || cfg.Queue != nil || cfg.Breakers != nil || cfg.AuditLog != nil || cfg.Idempotency != nil
	switch {
	case cfg.Pipeline != nil && pieces:
		return &ConfigError{"Pipeline", "set either Pipeline or the pieces (DLQ, Queue, Breakers, AuditLog, Idempotency), not both"}
	case cfg.Pipeline == nil && !pieces:
		return &ConfigError{"Pipeline", "nothing to show: set Pipeline, or at least one of DLQ, Queue, Breakers, AuditLog, Idempotency"}
	case cfg.AllowActions && cfg.Pipeline == nil && cfg.DLQ != nil && cfg.Queue == nil:
		return &ConfigError{"Queue", "AllowActions needs the Queue that replays go back to"}
	case cfg.AllowActions && cfg.DLQ != nil && cfg.Queue != nil && cfg.DLQ.Schema() != cfg.Queue.Schema():
		return &ConfigError{"Queue", fmt.Sprintf("the queue's schema %q is not the DLQ's %q: a replay sends entries back to the queue in the DLQ's schema", cfg.Queue.Schema(), cfg.DLQ.Schema())}
	case cfg.CSRFKey != nil && len(cfg.CSRFKey) < MinCSRFKeyBytes:
		return &ConfigError{"CSRFKey", fmt.Sprintf("%d bytes is shorter than %d", len(cfg.CSRFKey), MinCSRFKeyBytes)}
	case cfg.TokenTTL < time.Minute:
		return &ConfigError{"TokenTTL", fmt.Sprintf("%s is shorter than a minute", cfg.TokenTTL)}
	case cfg.ThroughputMinutes < 1 || cfg.ThroughputMinutes > idempotency.MaxRateMinutes:
		return &ConfigError{"ThroughputMinutes", fmt.Sprintf("%d is outside 1..%d", cfg.ThroughputMinutes, idempotency.MaxRateMinutes)}
	}
	for _, h := range cfg.MaskHeaders {
		if h == "" {
			return &ConfigError{"MaskHeaders", "an empty header name"}
		}
	}
	return nil
}

// parts are the pieces the pages read, from Pipeline or from Config.
type parts struct {
	dlq      *dlq.DLQ
	queue    *queue.Queue
	breakers *breaker.Registry
	audit    *eventlog.Log
	idem     *idempotency.Store
	pipeline *wharf.Pipeline
}

// parts resolves the pieces: a Pipeline's own, or the Config's.
func (cfg Config) parts() parts {
	if p := cfg.Pipeline; p != nil {
		return parts{dlq: p.DLQ(), queue: p.Queue(), breakers: p.Breakers(), audit: p.AuditLog(), idem: p.Idempotency(), pipeline: p}
	}
	return parts{dlq: cfg.DLQ, queue: cfg.Queue, breakers: cfg.Breakers, audit: cfg.AuditLog, idem: cfg.Idempotency}
}
