package idempotency

// PruneSQL is the statement one batch of Prune runs, for tests that look
// at its plan.
func PruneSQL(s *Store) string { return s.sql.prune }
