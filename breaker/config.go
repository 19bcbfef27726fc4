package breaker

import (
	"fmt"
	"log/slog"
	"math"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wharfhq/wharf/internal/sqlschema"
)

// Defaults for Settings.
const (
	DefaultTrip                = TripOnFailureRate
	DefaultFailureRate         = 0.5
	DefaultMinRequests         = 10
	DefaultConsecutiveFailures = 5
	DefaultWindow              = time.Minute
	DefaultWindowBuckets       = 6
	DefaultOpenTimeout         = 30 * time.Second
	DefaultHalfOpenProbes      = 3
	DefaultHalfOpenWait        = time.Second
)

// DefaultRefreshInterval is SharedConfig.RefreshInterval's default.
const DefaultRefreshInterval = time.Second

// MaxNameBytes is the longest breaker name accepted.
const MaxNameBytes = 200

// TripMode chooses what opens a closed breaker. The zero value means "not
// set": Config.Default's mode, then DefaultTrip (TripOnFailureRate).
type TripMode int

const (
	// TripOnFailureRate opens the breaker when, over the rolling Window, at
	// least MinRequests calls were counted (successes plus failures;
	// excluded calls do not count) and at least FailureRate of them failed.
	// It is the default. In shared mode the counts of every process are
	// added up.
	TripOnFailureRate TripMode = iota + 1

	// TripOnConsecutiveFailures opens the breaker after ConsecutiveFailures
	// counted failures in a row within the rolling Window; a success resets
	// the run, an excluded call does not. It suits a downstream called too
	// rarely to reach MinRequests. Counts are per process even in shared
	// mode (a run of failures does not add up across processes).
	TripOnConsecutiveFailures
)

// String returns "failure-rate" or "consecutive-failures".
func (m TripMode) String() string {
	switch m {
	case TripOnFailureRate:
		return "failure-rate"
	case TripOnConsecutiveFailures:
		return "consecutive-failures"
	default:
		return fmt.Sprintf("TripMode(%d)", int(m))
	}
}

// Settings is the policy of one breaker. Every field's zero value means
// "not set": in Config.Default it takes the package default (the Default*
// constants); in a Config.Breakers entry it takes Config.Default's value.
// Negative values are invalid.
type Settings struct {
	// Trip chooses what opens the breaker. Defaults to TripOnFailureRate.
	Trip TripMode

	// FailureRate is the fraction of counted calls, in (0, 1], that must
	// fail over the Window for TripOnFailureRate. Defaults to 0.5.
	FailureRate float64

	// MinRequests is how many calls (successes plus failures) the Window
	// must hold before TripOnFailureRate may trip, so one failure out of
	// one call does not open the breaker. Defaults to 10.
	MinRequests int

	// ConsecutiveFailures is how many counted failures in a row open the
	// breaker under TripOnConsecutiveFailures. Defaults to 5.
	ConsecutiveFailures int

	// Window is the rolling period over which a closed breaker counts
	// calls; counts older than Window are forgotten one bucket at a time.
	// Defaults to 1m.
	Window time.Duration

	// WindowBuckets is how many buckets the Window rolls by (each
	// Window/WindowBuckets long). Defaults to 6 (10s buckets with the
	// default Window).
	WindowBuckets int

	// OpenTimeout is how long an open breaker rejects every call before it
	// lets probes through (half-open). Defaults to 30s.
	OpenTimeout time.Duration

	// HalfOpenProbes is how many calls a half-open breaker lets through; it
	// closes once that many have succeeded in a row and opens again on the
	// first counted failure. Defaults to 3.
	HalfOpenProbes int

	// HalfOpenWait is how long a call turned away by a half-open breaker,
	// whose probes are all in flight, is told to wait (OpenError.Until).
	// Defaults to 1s.
	HalfOpenWait time.Duration

	// Classify decides which errors count as failures, which as successes
	// and which are excluded. Defaults to DefaultClassifier.
	Classify Classifier
}

// inherit fills s's unset fields from parent.
func (s Settings) inherit(parent Settings) Settings {
	if s.Trip == 0 {
		s.Trip = parent.Trip
	}
	if s.FailureRate == 0 {
		s.FailureRate = parent.FailureRate
	}
	if s.MinRequests == 0 {
		s.MinRequests = parent.MinRequests
	}
	if s.ConsecutiveFailures == 0 {
		s.ConsecutiveFailures = parent.ConsecutiveFailures
	}
	if s.Window == 0 {
		s.Window = parent.Window
	}
	if s.WindowBuckets == 0 {
		s.WindowBuckets = parent.WindowBuckets
	}
	if s.OpenTimeout == 0 {
		s.OpenTimeout = parent.OpenTimeout
	}
	if s.HalfOpenProbes == 0 {
		s.HalfOpenProbes = parent.HalfOpenProbes
	}
	if s.HalfOpenWait == 0 {
		s.HalfOpenWait = parent.HalfOpenWait
	}
	if s.Classify == nil {
		s.Classify = parent.Classify
	}
	return s
}

// packageDefaults is the root of inheritance.
var packageDefaults = Settings{
	Trip:                DefaultTrip,
	FailureRate:         DefaultFailureRate,
	MinRequests:         DefaultMinRequests,
	ConsecutiveFailures: DefaultConsecutiveFailures,
	Window:              DefaultWindow,
	WindowBuckets:       DefaultWindowBuckets,
	OpenTimeout:         DefaultOpenTimeout,
	HalfOpenProbes:      DefaultHalfOpenProbes,
	HalfOpenWait:        DefaultHalfOpenWait,
	Classify:            DefaultClassifier,
}

// maxProbes caps HalfOpenProbes; gobreaker counts them in a uint32.
const maxProbes = 10_000

// validate checks s as given (before inheritance): unset fields are fine,
// negative or out-of-range ones are not. where names the settings in
// messages.
func (s Settings) validate(where string) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrInvalidConfig, where, fmt.Sprintf(format, args...))
	}
	switch {
	case s.Trip < 0 || s.Trip > TripOnConsecutiveFailures:
		return bad("Trip %d is not a TripMode", int(s.Trip))
	case math.IsNaN(s.FailureRate) || s.FailureRate < 0 || s.FailureRate > 1:
		return bad("FailureRate %g is outside (0, 1]", s.FailureRate)
	case s.MinRequests < 0:
		return bad("MinRequests %d is negative", s.MinRequests)
	case s.ConsecutiveFailures < 0:
		return bad("ConsecutiveFailures %d is negative", s.ConsecutiveFailures)
	case s.Window < 0:
		return bad("Window %s is negative", s.Window)
	case s.WindowBuckets < 0 || s.WindowBuckets > 1000:
		return bad("WindowBuckets %d is outside 1..1000", s.WindowBuckets)
	case s.OpenTimeout < 0:
		return bad("OpenTimeout %s is negative", s.OpenTimeout)
	case s.HalfOpenProbes < 0 || s.HalfOpenProbes > maxProbes:
		return bad("HalfOpenProbes %d is outside 1..%d", s.HalfOpenProbes, maxProbes)
	case s.HalfOpenWait < 0:
		return bad("HalfOpenWait %s is negative", s.HalfOpenWait)
	}
	return nil
}

// validateResolved checks a fully inherited s for combinations that cannot
// work.
func (s Settings) validateResolved(where string) error {
	if s.Window/time.Duration(s.WindowBuckets) < time.Millisecond {
		return fmt.Errorf("%w: %s: Window %s split in %d buckets makes buckets shorter than 1ms",
			ErrInvalidConfig, where, s.Window, s.WindowBuckets)
	}
	return nil
}

// Config configures a Registry. The zero value is usable: every breaker
// gets the package defaults, and state is kept in this process only.
type Config struct {
	// Default is the policy of every breaker; unset fields take the
	// package defaults (the Default* constants).
	Default Settings

	// Breakers overrides Default for named downstreams; unset fields take
	// Default's value. Defaults to none.
	Breakers map[string]Settings

	// OnStateChange, if set, is called after every state change of every
	// breaker, in order per breaker, from the goroutine whose call caused
	// it (or the shared-state refresher), never while a breaker's lock is
	// held: it may call the Registry. It should return quickly. A panic in
	// it reaches the call that caused the change; one on a change the
	// refresher adopted is logged. Defaults to nil.
	OnStateChange func(StateChange)

	// Shared, if set, shares breaker state with every Registry that uses
	// the same database and schema (see SharedConfig). Defaults to nil:
	// each process keeps its own state.
	Shared *SharedConfig

	// Logger receives warnings (a failed refresh of shared state). Defaults
	// to discarding them.
	Logger *slog.Logger
}

// SharedConfig makes several processes share one breaker per downstream
// through PostgreSQL. The tables are created by wharf.Migrate.
type SharedConfig struct {
	// Pool reaches the database. Required.
	Pool *pgxpool.Pool

	// Schema holds the breakers and breaker_counts tables. Defaults to
	// "wharf".
	Schema string

	// RefreshInterval is how often the Registry publishes its counts and
	// reads the others' state; a process learns of a breaker another
	// opened within about this long. Transitions of its own breakers are
	// published at once, not at the next refresh. Defaults to 1s.
	RefreshInterval time.Duration

	// Owner names this process in the shared tables; two live Registries
	// must not share one. Defaults to host:pid:random.
	Owner string
}

// resolved is a validated Config with every default applied.
type resolved struct {
	def      Settings
	breakers map[string]Settings
	onChange func(StateChange)
	logger   *slog.Logger
	shared   *SharedConfig
}

func (c *Config) resolve() (*resolved, error) {
	if err := c.Default.validate("Default"); err != nil {
		return nil, err
	}
	out := &resolved{
		def:      c.Default.inherit(packageDefaults),
		breakers: make(map[string]Settings, len(c.Breakers)),
		onChange: c.OnStateChange,
		logger:   c.Logger,
	}
	if err := out.def.validateResolved("Default"); err != nil {
		return nil, err
	}
	for name, s := range c.Breakers {
		if err := validateName(name); err != nil {
			return nil, fmt.Errorf("%w: Breakers: %w", ErrInvalidConfig, err)
		}
		where := fmt.Sprintf("breaker %q", name)
		if err := s.validate(where); err != nil {
			return nil, err
		}
		s = s.inherit(out.def)
		if err := s.validateResolved(where); err != nil {
			return nil, err
		}
		out.breakers[name] = s
	}
	if out.logger == nil {
		out.logger = slog.New(slog.DiscardHandler)
	}
	if c.Shared != nil {
		sc := *c.Shared
		sc.Schema = sqlschema.Or(sc.Schema)
		if err := sqlschema.Validate(sc.Schema); err != nil {
			return nil, fmt.Errorf("%w: Shared: %v", ErrInvalidConfig, err)
		}
		switch {
		case sc.Pool == nil:
			return nil, fmt.Errorf("%w: Shared: Pool is nil", ErrInvalidConfig)
		case sc.RefreshInterval < 0:
			return nil, fmt.Errorf("%w: Shared: RefreshInterval %s is negative", ErrInvalidConfig, sc.RefreshInterval)
		case sc.RefreshInterval == 0:
			sc.RefreshInterval = DefaultRefreshInterval
		}
		if sc.Owner == "" {
			sc.Owner = defaultOwner()
		}
		if !utf8.ValidString(sc.Owner) || len(sc.Owner) > MaxNameBytes || strings.ContainsRune(sc.Owner, 0) {
			return nil, fmt.Errorf("%w: Shared: Owner %q is not valid UTF-8 of at most %d bytes without NUL", ErrInvalidConfig, sc.Owner, MaxNameBytes)
		}
		out.shared = &sc
	}
	return out, nil
}

// settingsFor returns the resolved settings of breaker name.
func (r *resolved) settingsFor(name string) Settings {
	if s, ok := r.breakers[name]; ok {
		return s
	}
	return r.def
}

// validateName checks a breaker name: 1 to MaxNameBytes bytes of valid
// UTF-8 without NUL, which PostgreSQL text cannot hold (in shared mode one
// such name would fail every refresh, every breaker's). The error wraps
// ErrInvalidName.
func validateName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w %q: empty", ErrInvalidName, name)
	case len(name) > MaxNameBytes:
		return fmt.Errorf("%w %q: longer than %d bytes", ErrInvalidName, name, MaxNameBytes)
	case !utf8.ValidString(name):
		return fmt.Errorf("%w %q: not valid UTF-8", ErrInvalidName, name)
	case strings.ContainsRune(name, 0):
		return fmt.Errorf("%w %q: contains NUL", ErrInvalidName, name)
	}
	return nil
}
