// Package dlq is wharf's dead letter queue (pattern 3): events that failed
// every attempt are kept whole, with every attempt's error, for inspection
// and replay, never dropped.
//
// An event moves from the queue to the table dead_letters in the
// transaction that removes it from the queue, so it is in exactly one of
// the two, never both and never neither; that holds for events that failed
// in a handler and for those whose worker died on every attempt (the
// rescuer exhausts them through the same hook).
//
//	dead, err := dlq.New(pool, dlq.Config{})
//	q, err := queue.New(pool, queue.Config{OnExhausted: dead.Move})
//
//	entries, next, err := dead.List(ctx, dlq.Filter{Source: "stripe", ErrorContains: "timeout"}, dlq.Page{Limit: 50})
//	res, err := dead.Replay(ctx, q, entries[0].ID) // back to the queue, attempts reset
//
// Replay is idempotent: replaying an entry twice, even concurrently, makes
// one queue row. Replayed and discarded entries stay in the table, for
// audit, until Purge removes them; dead entries are never purged.
//
// Deduplication of redeliveries against dead entries (a provider retrying
// an event that is dead should get a duplicate, not a new queue row) is the
// Pipeline's job at ingestion; if a redelivered copy is queued anyway and
// dies too, its history is merged into the one dead entry.
package dlq
