// Package wharf is an embeddable library for resilient webhook consumers on
// PostgreSQL.
//
// A service stores every webhook it accepts in a Postgres queue before it
// acknowledges it, and processes it later in a transaction that also records
// the event as processed, so nothing acknowledged is lost and nothing is
// processed twice. The patterns live in their own packages, each usable on
// its own:
//
//   - queue: validate, store, acknowledge; workers process later.
//   - idempotency: the provider's event id as the key of processed work.
//   - dlq: events that keep failing, kept for inspection and replay.
//   - breaker: circuit breakers around downstream calls.
//   - eventlog: an append-only log for audit and replay.
//
// This package holds what ties them together. Every table lives in one
// schema (wharf by default) that Migrate creates and upgrades:
//
//	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
//	if err != nil { ... }
//	if err := wharf.Migrate(ctx, pool); err != nil { ... }
package wharf
