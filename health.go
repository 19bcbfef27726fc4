package wharf

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// ErrNotReady is wrapped by Ready's errors: the database does not answer or
// is read-only, its schema lacks migrations this code needs, or the
// Pipeline is closed.
var ErrNotReady = errors.New("wharf: not ready")

// healthTimeout bounds one readiness check, under the usual probe timeouts.
const healthTimeout = 2 * time.Second

// Ready reports whether the Pipeline can work: the database answers, takes
// writes, and its schema holds every migration this code knows. A schema
// that a newer release migrated is ready (old replicas keep working during
// a rolling deploy). After Close it is not ready: the endpoints store
// nothing.
func (p *Pipeline) Ready(ctx context.Context) error {
	if p.closed.Load() {
		return fmt.Errorf("%w: %w", ErrNotReady, ErrClosed)
	}
	m, err := NewMigrator(p.pool, MigratorConfig{Schema: p.cfg.Schema})
	if err != nil {
		return err
	}
	st, err := m.Status(ctx)
	if err != nil {
		return fmt.Errorf("%w: %w: %v", ErrNotReady, errDatabaseDown, err)
	}
	if st.Current < st.Latest {
		return fmt.Errorf("%w: schema %q is at migration %d, this code needs %d: %w", ErrNotReady, st.Schema, st.Current, st.Latest, errMigrationsMissing)
	}
	// A standby (say, still behind the address after a failover), or a
	// server set to read-only, answers and holds the schema, but every
	// event stored or processed there fails.
	var readOnly string
	if err := p.pool.QueryRow(ctx, `SELECT current_setting('transaction_read_only')`).Scan(&readOnly); err != nil {
		return fmt.Errorf("%w: %w: %v", ErrNotReady, errDatabaseDown, err)
	}
	if readOnly == "on" {
		return fmt.Errorf("%w: the database is read-only (a standby, or default_transaction_read_only is on)", ErrNotReady)
	}
	return nil
}

// errMigrationsMissing ends Ready's error for a schema behind this code.
var errMigrationsMissing = errors.New("run wharf.Migrate")

// errDatabaseDown is in Ready's error when the database did not answer,
// or answered the check with an error; the driver's own error, which can
// name the host, user and database, follows it.
var errDatabaseDown = errors.New("the database does not answer, or refused the check")

// HealthHandler answers readiness probes with Ready: 200 "ok", or 503 and
// the reason. It reads only schema_migrations, whatever the queue holds.
// When the database does not answer, or refuses the check (a missing
// privilege, say), the answer says only that, and the driver's error,
// which can name the host, user and database, goes to Config.Logger.
// Mount it where the orchestrator probes, e.g.
// mux.Handle("GET /readyz", p.HealthHandler()).
func (p *Pipeline) HealthHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), healthTimeout)
		defer cancel()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		err := p.Ready(ctx)
		if err == nil {
			fmt.Fprintln(w, "ok")
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
		if errors.Is(err, errDatabaseDown) {
			p.cfg.Logger.Warn("wharf: readiness probe: the database does not answer, or refused the check", "error", err)
			fmt.Fprintf(w, "%v: %v\n", ErrNotReady, errDatabaseDown)
			return
		}
		fmt.Fprintln(w, err)
	})
}
