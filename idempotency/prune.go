package idempotency

import (
	"context"
	"fmt"
)

// Prune deletes keys processed longer ago than Config.Retention, in
// batches of Config.PruneBatch, each its own short transaction, and
// returns how many it deleted. It never deletes a key in progress in the
// external mode whose lock is live; one whose lock expired longer ago than
// the retention is deleted like any other.
//
// A redelivery of an event whose key was pruned runs again, so the
// retention must outlive every provider's retry window (see
// Config.Retention). Call Prune periodically, say hourly; runs on several
// replicas at once are safe (each skips rows another is deleting), though
// one is enough. If ctx ends, Prune stops after the batch in flight and
// returns what it deleted with the context's error.
func (s *Store) Prune(ctx context.Context) (deleted int64, err error) {
	retention := s.cfg.Retention.Milliseconds()
	for {
		if err := ctx.Err(); err != nil {
			return deleted, fmt.Errorf("idempotency: prune: %w", err)
		}
		tag, err := s.pool.Exec(ctx, s.sql.prune, retention, s.cfg.PruneBatch)
		if err != nil {
			return deleted, fmt.Errorf("idempotency: prune keys older than %s: %w", s.cfg.Retention, err)
		}
		deleted += tag.RowsAffected()
		if tag.RowsAffected() < int64(s.cfg.PruneBatch) {
			return deleted, nil
		}
	}
}
