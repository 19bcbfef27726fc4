package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/wharfhq/wharf"
)

var migrateCommand = &command{
	name:    "migrate",
	summary: "create or upgrade wharf's tables, or show which migrations are applied",
	help: `wharf migrate applies wharf's migrations to a schema (wharf by default),
as wharf.Migrate does at a service's start-up, or reports where it stands.`,
	subcommands: []*command{migrateUpCommand, migrateStatusCommand},
}

var migrateUpCommand = &command{
	name:    "up",
	summary: "apply every pending migration",
	help: `Applies every migration this wharf knows and the schema lacks, each in its own
transaction, under an advisory lock (replicas migrating at start-up at the same
time wait, then find nothing to do). It creates the schema if missing. A schema
that a newer release of wharf migrated is left untouched, with an error.

Examples:
  wharf migrate up
  wharf migrate up --database-url postgres://app@db:5432/app --schema webhooks`,
	flags: func(fs *flag.FlagSet, e *env) func(context.Context, *env, []string) error {
		var db dbOptions
		db.register(fs, e)
		return func(ctx context.Context, e *env, _ []string) error {
			return db.withMigrator(ctx, func(m *wharf.Migrator) error {
				return migrateUp(ctx, e, m, db.schema)
			})
		}
	},
}

func migrateUp(ctx context.Context, e *env, m *wharf.Migrator, schema string) error {
	applied, err := m.Migrate(ctx)
	if errors.Is(err, wharf.ErrSchemaNewer) {
		return fmt.Errorf("%w (upgrade this wharf CLI to migrate it; services of this release keep working against it)", err)
	}
	if err != nil {
		return err
	}
	if len(applied) == 0 {
		fmt.Fprintf(e.stdout, "schema %q is up to date\n", schema)
		return nil
	}
	fmt.Fprintf(e.stdout, "schema %q: applied migration(s) %v\n", schema, applied)
	return nil
}

var migrateStatusCommand = &command{
	name:    "status",
	summary: "list applied and pending migrations",
	help: `Lists the migrations applied to the schema, with when, and those this wharf
knows that are still pending. It changes nothing.

Examples:
  wharf migrate status
  wharf migrate status --json`,
	flags: func(fs *flag.FlagSet, e *env) func(context.Context, *env, []string) error {
		var db dbOptions
		db.register(fs, e)
		asJSON := fs.Bool("json", false, "print the status as one JSON object")
		return func(ctx context.Context, e *env, _ []string) error {
			return db.withMigrator(ctx, func(m *wharf.Migrator) error {
				st, err := m.Status(ctx)
				if err != nil {
					return err
				}
				if *asJSON {
					return printJSON(e.stdout, st)
				}
				return printMigrationStatus(e.stdout, st)
			})
		}
	},
}

// withMigrator runs fn with a Migrator of the schema, on a database whose
// schema may not be migrated yet.
func (o *dbOptions) withMigrator(ctx context.Context, fn func(m *wharf.Migrator) error) error {
	pool, err := o.connect(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	m, err := wharf.NewMigrator(pool, wharf.MigratorConfig{Schema: o.schema})
	if err != nil {
		return err
	}
	return fn(m)
}

func printMigrationStatus(w io.Writer, st wharf.MigrationStatus) error {
	switch {
	case st.Current == 0:
		fmt.Fprintf(w, "schema %q is not migrated: run wharf migrate up\n", st.Schema)
	case st.Current > st.Latest:
		fmt.Fprintf(w, "schema %q is at version %d, newer than this wharf knows (%d): a newer release migrated it; services of this release keep working against it\n",
			st.Schema, st.Current, st.Latest)
	case len(st.Pending) > 0:
		fmt.Fprintf(w, "schema %q is at version %d of %d: run wharf migrate up\n", st.Schema, st.Current, st.Latest)
	default:
		fmt.Fprintf(w, "schema %q is up to date (version %d)\n", st.Schema, st.Current)
	}
	return table(w, func(tw io.Writer) {
		fmt.Fprintln(tw, "\nVERSION\tNAME\tAPPLIED AT")
		for _, a := range st.Applied {
			fmt.Fprintf(tw, "%d\t%s\t%s\n", a.Version, a.Name, a.AppliedAt.Local().Format(time.DateTime))
		}
		for _, p := range st.Pending {
			version, name, _ := strings.Cut(p, "_")
			fmt.Fprintf(tw, "%s\t%s\tpending\n", strings.TrimLeft(version, "0"), name)
		}
	})
}
