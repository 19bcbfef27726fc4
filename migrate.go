package wharf

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wharfhq/wharf/internal/migrate"
	"github.com/wharfhq/wharf/internal/sqlschema"
)

// ErrInvalidSchema is returned when a schema name is not a plain lower-case
// SQL identifier ([a-z_][a-z0-9_]*, at most 63 bytes).
var ErrInvalidSchema = errors.New("wharf: invalid schema name")

// ErrSchemaNewer is returned by Migrate when the database was migrated by a
// newer release of wharf than this one. Migrate refuses to touch such a
// schema; the rest of this release keeps working against it, because newer
// migrations keep every column and table older code uses (they add, and
// may replace an index, which can make an old release's reads slower), so
// old replicas run on during a rolling deploy. One exception: migration
// 11 changes the event log's read order, and a cursor or projection
// checkpoint of one order means something else in the other, so stop
// every older process that reads the event log (projections, audit
// readers, wharf log tail) before applying it; older processes that only
// append may run on.
var ErrSchemaNewer = migrate.ErrSchemaNewer

// MigratorConfig configures a Migrator.
type MigratorConfig struct {
	// Schema is the Postgres schema that holds wharf's tables. It is created
	// if missing. Defaults to "wharf".
	Schema string
}

// Migrator applies wharf's embedded migrations to one schema.
type Migrator struct {
	pool   *pgxpool.Pool
	schema string
}

// NewMigrator returns a Migrator for cfg.Schema, or an error wrapping
// ErrInvalidSchema.
func NewMigrator(pool *pgxpool.Pool, cfg MigratorConfig) (*Migrator, error) {
	schema := sqlschema.Or(cfg.Schema)
	if err := sqlschema.Validate(schema); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidSchema, err)
	}
	if pool == nil {
		return nil, errors.New("wharf: migrator: pool is nil")
	}
	return &Migrator{pool: pool, schema: schema}, nil
}

// Migrate brings the default schema ("wharf") up to date. It is safe to call
// from every replica at start-up: one applies the migrations, the others
// wait for it and then find nothing to do.
func Migrate(ctx context.Context, pool *pgxpool.Pool) error {
	m, err := NewMigrator(pool, MigratorConfig{})
	if err != nil {
		return err
	}
	_, err = m.Migrate(ctx)
	return err
}

// Migrate applies every pending migration, each in its own transaction,
// under an advisory lock, and returns the versions it applied (none when the
// schema is current). It returns an error wrapping ErrSchemaNewer, and
// changes nothing, when the schema is newer than this code.
func (m *Migrator) Migrate(ctx context.Context) ([]int, error) {
	applied, err := migrate.Up(ctx, m.pool, m.schema)
	if err != nil {
		return applied, fmt.Errorf("wharf: migrate: %w", err)
	}
	return applied, nil
}

// MigrationStatus describes a schema relative to this code.
type MigrationStatus struct {
	Schema  string             `json:"schema"`
	Current int                `json:"current"` // highest applied version; 0 for a schema never migrated
	Latest  int                `json:"latest"`  // highest version this code knows
	Applied []AppliedMigration `json:"applied"`
	Pending []string           `json:"pending"` // names of migrations not yet applied, as NNNN_name
}

// AppliedMigration is one applied migration.
type AppliedMigration struct {
	Version   int       `json:"version"`
	Name      string    `json:"name"`
	AppliedAt time.Time `json:"applied_at"`
}

// Status reports the applied and pending migrations without changing
// anything.
func (m *Migrator) Status(ctx context.Context) (MigrationStatus, error) {
	st, err := migrate.ReadStatus(ctx, m.pool, m.schema)
	if err != nil {
		return MigrationStatus{}, fmt.Errorf("wharf: migration status: %w", err)
	}
	out := MigrationStatus{Schema: st.Schema, Current: st.Current(), Latest: st.Latest}
	for _, a := range st.Applied {
		out.Applied = append(out.Applied, AppliedMigration(a))
	}
	for _, p := range st.Pending {
		out.Pending = append(out.Pending, fmt.Sprintf("%04d_%s", p.Version, p.Name))
	}
	return out, nil
}
